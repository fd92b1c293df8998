package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// A client process holds up to a few thousand sockets for the runner and
// obeys one JSON command per line on stdin, answering one JSON line on
// stdout. Splitting the load over processes keeps each under the open-file
// limit and gives each its own GC, so no single generator is the bottleneck.

// clientCmd is one command from the runner.
type clientCmd struct {
	Op string `json:"op"` // connect | count | stats | reset | slow | close | echo | quit

	// connect
	URL       string   `json:"url,omitempty"`
	N         int      `json:"n,omitempty"`    // sockets to add
	Conc      int      `json:"conc,omitempty"` // dials in flight
	IPs       []string `json:"ips,omitempty"`  // source addresses, used round-robin
	TimeoutMS int      `json:"timeout_ms,omitempty"`

	// slow: every Every-th socket stops reading; its receive buffer shrinks
	// to RecvBuf bytes so it fills fast.
	Every   int `json:"every,omitempty"`
	RecvBuf int `json:"recv_buf,omitempty"`

	// close: keep the first Keep sockets.
	Keep int `json:"keep,omitempty"`

	// echo: every socket sends a Size-byte text frame, waits for the
	// answer and sends the next, for Seconds (closed loop); with Rate set,
	// the process sends Rate frames per second over its sockets in turn
	// instead, whatever the answers do (paced).
	Seconds float64 `json:"seconds,omitempty"`
	Size    int     `json:"size,omitempty"`
	Rate    float64 `json:"rate,omitempty"`
}

// clientReply answers a command.
type clientReply struct {
	Err string `json:"err,omitempty"`

	Open      int      `json:"open"`                // sockets held and reading or paused
	Connected int      `json:"connected,omitempty"` // connect: new sockets
	Failed    int      `json:"failed,omitempty"`    // connect: failed handshakes
	Paused    int      `json:"paused,omitempty"`    // slow: sockets that stopped reading
	Seconds   float64  `json:"seconds,omitempty"`   // connect, echo: wall time
	Errors    []string `json:"errors,omitempty"`    // the first few distinct failures

	Frames uint64      `json:"frames"`            // data frames received since reset
	Bytes  uint64      `json:"bytes"`             // their payload bytes
	LastNS int64       `json:"last_ns,omitempty"` // wall time of the last one
	Ended  uint64      `json:"ended"`             // sockets the server closed or cut
	Sent   uint64      `json:"sent,omitempty"`    // echo: frames sent
	Hist   [][2]uint64 `json:"hist,omitempty"`    // stats: latency buckets
}

// sock is one held socket, read by its own goroutine (TLS) or by an epoll
// loop (es set).
type sock struct {
	c      *wsConn
	es     *esock
	loop   *epollLoop
	paused atomic.Bool
	wake   chan struct{} // closed to release a paused reader
	done   chan struct{} // closed when the reader has returned
	closed atomic.Bool   // closed by us: its end is not counted
}

// loadClient is the state of one client process.
type loadClient struct {
	mu    sync.Mutex
	socks []*sock

	frames  [16]paddedCounter
	bytes   [16]paddedCounter
	lastNS  atomic.Int64
	ended   atomic.Uint64
	latency hist

	errMu  sync.Mutex
	errs   []string
	errSet map[string]struct{}

	loops []*epollLoop // created with the first plain socket

	// echo state
	echoUntil atomic.Int64 // unix ns; 0: echo off
	echoSize  int
	inflight  atomic.Int64
	sent      atomic.Uint64
	idle      chan struct{} // signalled when inflight drops to 0 after the deadline
}

type paddedCounter struct {
	atomic.Uint64
	_ [56]byte
}

func sum(cs *[16]paddedCounter) uint64 {
	var t uint64
	for i := range cs {
		t += cs[i].Load()
	}
	return t
}

// runClient is the client process's main loop.
func runClient(in io.Reader, out io.Writer) error {
	// Thousands of reader goroutines, little garbage: a lazier GC leaves
	// more of the two cores to the server under test.
	debug.SetGCPercent(400)
	lc := &loadClient{errSet: map[string]struct{}{}, idle: make(chan struct{}, 1)}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	enc := json.NewEncoder(out)
	for sc.Scan() {
		var cmd clientCmd
		if err := json.Unmarshal(sc.Bytes(), &cmd); err != nil {
			_ = enc.Encode(clientReply{Err: fmt.Sprintf("bad command: %v", err)})
			continue
		}
		rep := lc.do(cmd)
		if err := enc.Encode(rep); err != nil {
			return fmt.Errorf("answering the runner: %w", err)
		}
		if cmd.Op == "quit" {
			return nil
		}
	}
	lc.closeAll(0)
	return sc.Err()
}

func (lc *loadClient) do(cmd clientCmd) clientReply {
	var rep clientReply
	switch cmd.Op {
	case "connect":
		rep = lc.connect(cmd)
	case "stats", "count":
		rep.Hist = nil
		if cmd.Op == "stats" {
			rep.Hist = lc.latency.snapshot()
		}
	case "reset":
		for i := range lc.frames {
			lc.frames[i].Store(0)
			lc.bytes[i].Store(0)
		}
		lc.lastNS.Store(0)
		lc.sent.Store(0)
		lc.latency.reset()
	case "slow":
		rep.Paused = lc.slow(cmd.Every, cmd.RecvBuf)
	case "close", "quit":
		lc.closeAll(cmd.Keep)
	case "echo":
		rep = lc.echo(cmd)
	default:
		rep.Err = fmt.Sprintf("unknown op %q", cmd.Op)
	}
	lc.mu.Lock()
	rep.Open = len(lc.socks)
	lc.mu.Unlock()
	rep.Frames, rep.Bytes, rep.LastNS = sum(&lc.frames), sum(&lc.bytes), lc.lastNS.Load()
	rep.Ended, rep.Sent = lc.ended.Load(), lc.sent.Load()
	return rep
}

func (lc *loadClient) noteErr(err error) {
	msg := err.Error()
	if len(msg) > 160 {
		msg = msg[:160]
	}
	lc.errMu.Lock()
	defer lc.errMu.Unlock()
	if _, ok := lc.errSet[msg]; ok || len(lc.errs) >= 5 {
		return
	}
	lc.errSet[msg] = struct{}{}
	lc.errs = append(lc.errs, msg)
}

// connect dials cmd.N more sockets, cmd.Conc at a time.
func (lc *loadClient) connect(cmd clientCmd) clientReply {
	var rep clientReply
	u, err := url.Parse(cmd.URL)
	if err != nil {
		rep.Err = fmt.Sprintf("bad url: %v", err)
		return rep
	}
	var ips []net.IP
	for _, s := range cmd.IPs {
		if ip := net.ParseIP(s); ip != nil {
			ips = append(ips, ip)
		}
	}
	if len(ips) == 0 {
		ips = []net.IP{nil}
	}
	timeout := time.Duration(cmd.TimeoutMS) * time.Millisecond
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	// The generator does not verify the bench's throwaway certificate: it
	// measures the server's handshake cost, not the client's.
	tlsConf := &tls.Config{InsecureSkipVerify: true, ServerName: u.Hostname(), ClientSessionCache: nil}
	conc := max(cmd.Conc, 1)
	lc.mu.Lock()
	base := len(lc.socks)
	lc.mu.Unlock()
	lc.errMu.Lock()
	lc.errs, lc.errSet = nil, map[string]struct{}{}
	lc.errMu.Unlock()

	var next atomic.Int64
	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= cmd.N {
					return
				}
				src := ips[(base+i)%len(ips)]
				c, err := dialWS(context.Background(), u, src, tlsConf, timeout, 2048)
				if err != nil {
					failed.Add(1)
					lc.noteErr(err)
					continue
				}
				s := &sock{c: c, wake: make(chan struct{}), done: make(chan struct{})}
				lc.mu.Lock()
				idx := len(lc.socks)
				lc.socks = append(lc.socks, s)
				lc.mu.Unlock()
				ok.Add(1)
				if err := lc.attach(s, idx); err != nil {
					if !errors.Is(err, errKeepGoroutine) {
						lc.noteErr(err)
					}
					go lc.read(s, idx)
				}
			}
		}()
	}
	wg.Wait()
	rep.Seconds = time.Since(start).Seconds()
	rep.Connected, rep.Failed = int(ok.Load()), int(failed.Load())
	lc.errMu.Lock()
	rep.Errors = append([]string(nil), lc.errs...)
	lc.errMu.Unlock()
	return rep
}

// errKeepGoroutine: the socket stays with a goroutine reader.
var errKeepGoroutine = errors.New("kept on a goroutine reader")

// attach hands a plain socket to an epoll loop. Sockets with bytes already
// buffered (none of the servers sends before the client) or TLS stay with
// a goroutine reader.
func (lc *loadClient) attach(s *sock, idx int) error {
	if _, isTCP := s.c.nc.(*net.TCPConn); !isTCP || s.c.br.Buffered() > 0 {
		return errKeepGoroutine
	}
	lc.mu.Lock()
	if lc.loops == nil {
		for i := 0; i < 2; i++ {
			l, err := newEpollLoop(lc)
			if err != nil {
				lc.mu.Unlock()
				return err
			}
			lc.loops = append(lc.loops, l)
		}
	}
	l := lc.loops[idx%len(lc.loops)]
	lc.mu.Unlock()
	fd, err := detachFD(s.c.nc)
	if err != nil {
		return err
	}
	s.c.efd = fd
	es, err := l.add(fd, s, lc.onData(s, idx))
	if err != nil {
		_ = syscall.Close(fd)
		return err
	}
	s.es, s.loop = es, l
	return nil
}

// onData returns the frame handler of socket idx: count, record latency
// and, in echo mode, send the next message.
func (lc *loadClient) onData(s *sock, idx int) frameHandler {
	shard := idx & 15
	return func(op byte, prefix []byte, n int) {
		now := time.Now().UnixNano()
		lc.frames[shard].Add(1)
		lc.bytes[shard].Add(uint64(n))
		if now > lc.lastNS.Load() {
			lc.lastNS.Store(now)
		}
		if ts, ok := parseStamp(prefix); ok {
			lc.latency.record(time.Duration(now - ts))
		}
		if until := lc.echoUntil.Load(); until != 0 {
			if now < until {
				if err := s.c.write(opText, stampPayload(nil, time.Now(), lc.echoSize)); err == nil {
					lc.sent.Add(1)
					return
				}
			}
			if lc.inflight.Add(-1) == 0 {
				select {
				case lc.idle <- struct{}{}:
				default:
				}
			}
		}
	}
}

// read is the reader goroutine of a socket no epoll loop took.
func (lc *loadClient) read(s *sock, idx int) {
	defer close(s.done)
	gate := func() {
		if s.paused.Load() {
			<-s.wake
		}
	}
	err := s.c.readLoop(lc.onData(s, idx), gate)
	if !s.closed.Load() {
		lc.ended.Add(1)
		if err != nil && !errors.Is(err, io.EOF) {
			lc.noteErr(fmt.Errorf("socket ended: %w", err))
		}
	}
}

// slow stops every every-th socket from reading and returns how many.
func (lc *loadClient) slow(every, recvBuf int) int {
	if every <= 0 {
		return 0
	}
	lc.mu.Lock()
	defer lc.mu.Unlock()
	n := 0
	for i, s := range lc.socks {
		if i%every == every-1 {
			if recvBuf > 0 {
				s.c.shrinkRecvBuffer(recvBuf)
			}
			s.paused.Store(true)
			if s.es != nil {
				s.loop.pause(s.es)
			}
			n++
		}
	}
	return n
}

// closeAll closes every socket after the first keep and waits for their
// readers.
func (lc *loadClient) closeAll(keep int) {
	lc.mu.Lock()
	if keep > len(lc.socks) {
		keep = len(lc.socks)
	}
	gone := append([]*sock(nil), lc.socks[keep:]...)
	lc.socks = lc.socks[:keep]
	lc.mu.Unlock()
	for _, s := range gone {
		s.closed.Store(true)
		if s.es != nil {
			s.loop.closeSock(s.es)
			continue
		}
		s.c.close()
		if s.paused.Load() {
			close(s.wake)
		}
	}
	deadline := time.After(10 * time.Second)
	for _, s := range gone {
		select {
		case <-s.done:
		case <-deadline:
			return
		}
	}
}

// echo runs the round-trip test on every held socket.
func (lc *loadClient) echo(cmd clientCmd) clientReply {
	var rep clientReply
	lc.mu.Lock()
	socks := append([]*sock(nil), lc.socks...)
	lc.mu.Unlock()
	lc.echoSize = max(cmd.Size, 24)
	if cmd.Rate > 0 {
		return lc.echoPaced(cmd, socks)
	}
	start := time.Now()
	lc.echoUntil.Store(start.Add(time.Duration(cmd.Seconds * float64(time.Second))).UnixNano())
	lc.inflight.Store(int64(len(socks)))
	for _, s := range socks {
		if err := s.c.write(opText, stampPayload(nil, time.Now(), lc.echoSize)); err != nil {
			lc.noteErr(err)
			lc.inflight.Add(-1)
			continue
		}
		lc.sent.Add(1)
	}
	// Wait for the deadline and the last answers (bounded).
	limit := time.After(time.Duration(cmd.Seconds*float64(time.Second)) + 5*time.Second)
wait:
	for lc.inflight.Load() > 0 {
		select {
		case <-lc.idle:
		case <-limit:
			break wait
		case <-time.After(50 * time.Millisecond):
		}
	}
	lc.echoUntil.Store(0)
	rep.Seconds = time.Since(start).Seconds()
	lc.errMu.Lock()
	rep.Errors = append([]string(nil), lc.errs...)
	lc.errMu.Unlock()
	return rep
}

// echoPaced sends cmd.Rate frames per second, round robin over socks, and
// waits for the answers (they are counted and timed by onData).
func (lc *loadClient) echoPaced(cmd clientCmd, socks []*sock) clientReply {
	var rep clientReply
	if len(socks) == 0 {
		return rep
	}
	start := time.Now()
	dur := time.Duration(cmd.Seconds * float64(time.Second))
	sent, next := 0, 0
	var buf []byte
	for {
		el := time.Since(start)
		if el >= dur {
			break
		}
		for want := int(cmd.Rate * el.Seconds()); sent < want; sent++ {
			s := socks[next%len(socks)]
			next++
			buf = stampPayload(buf[:0], time.Now(), lc.echoSize)
			if err := s.c.write(opText, buf); err != nil {
				lc.noteErr(err)
			} else {
				lc.sent.Add(1)
			}
		}
		time.Sleep(500 * time.Microsecond)
	}
	limit := time.Now().Add(5 * time.Second)
	for sum(&lc.frames) < lc.sent.Load() && time.Now().Before(limit) {
		time.Sleep(10 * time.Millisecond)
	}
	rep.Seconds = time.Since(start).Seconds()
	lc.errMu.Lock()
	rep.Errors = append([]string(nil), lc.errs...)
	lc.errMu.Unlock()
	return rep
}

// stampLen is the payload's timestamp prefix: unix ns in 19 digits and a
// space. Same clock on both ends: runner and clients share the machine.
const stampLen = 20

// stampPayload appends a size-byte text payload starting with t.
func stampPayload(dst []byte, t time.Time, size int) []byte {
	ns := t.UnixNano()
	var digits [19]byte
	s := strconv.AppendInt(digits[:0], ns, 10)
	for i := len(s); i < 19; i++ {
		dst = append(dst, '0')
	}
	dst = append(dst, s...)
	dst = append(dst, ' ')
	for len(dst) < size {
		dst = append(dst, 'x')
	}
	return dst
}

// parseStamp reads the timestamp prefix.
func parseStamp(p []byte) (int64, bool) {
	if len(p) < stampLen-1 {
		return 0, false
	}
	var v int64
	for i := 0; i < stampLen-1; i++ {
		d := p[i] - '0'
		if d > 9 {
			return 0, false
		}
		v = v*10 + int64(d)
	}
	return v, true
}

// clientMain is the entry point of `bench client`.
func clientMain() int {
	if err := runClient(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench client:", err)
		return 1
	}
	return 0
}
