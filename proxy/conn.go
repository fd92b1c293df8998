package proxy

import (
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/fasthttp/websocket"

	"github.com/wsidecar/wsidecar/bridge"
	"github.com/wsidecar/wsidecar/limits"
)

// conn is one upgraded socket. Field groups are guarded as marked; the
// struct is kept small because there is one per socket.
type conn struct {
	id     string
	serial uint64 // hub-assigned; orders sockets for dedupe
	srv    *Server
	route  *route
	lim    *limitsSnap
	ws     *websocket.Conn // nil only for detached test sockets: writes are discarded
	nc     net.Conn
	// releases are the door's release funcs (Handshake.OnRelease), run
	// when the socket is gone; the Handshake itself is not kept.
	releases []func()
	// runWriter is c.writeLoop, bound once: `go c.writeLoop()` would
	// allocate a closure on every writer start, i.e. per socket per burst.
	runWriter func()

	info        atomic.Pointer[bridge.ConnInfo] // copy-on-write: calls keep a stable snapshot
	connectedAt int64                           // wall clock, unix ns
	lastSeen    atomic.Int64                    // monotonic ns of the last frame or pong
	lastPing    atomic.Int64                    // monotonic ns of the last ping queued
	expires     atomic.Int64                    // wall unix ns when the token expires; 0 never
	calls       atomic.Int32                    // message webhooks in flight
	wdl         int64                           // write deadline last set (unix ns); writer only
	closingFlag atomic.Bool                     // mirrors closing for the read loop's cheap check

	mu         sync.Mutex    // guards the send queue, close state, ws/nc attachment
	q          *ring         // nil while idle: idle sockets hold no queue storage
	room       chan struct{} // made by a reply waiting for queue room; closed when there is some
	reason     string        // close reason sent or to report
	peerReason string
	code       int32          // close code sent or to report
	peerCode   int32          // close code the peer sent; 0 none
	ready      bool           // ws/nc attached: frames queued before the upgrade wait for it
	writing    bool           // a writer goroutine is running
	closing    bool           // a close frame is queued or sent; no more data frames
	closed     bool           // teardown started; nothing more is queued
	werr       bool           // a write failed; the socket is being cut
	initiated  bool           // the server started the close
	killed     bool           // cut without a close frame (Close, drain deadline)
	connected  bool           // the connect webhook accepted: a disconnect is owed
	bg         sync.WaitGroup // writer and pipeline workers

	smu      sync.Mutex // guards the hub-managed state below
	inHub    bool
	user     string
	channels map[string]struct{}
	meta     map[string]string

	// Read goroutine only.
	seq  uint64
	rate limits.ConnLimiter // message and byte buckets, by value: no allocation per socket
	pipe *pipeline
}

// newConn returns a socket not yet in the hub and without a connection.
func newConn(s *Server, id string, rt *route, lim *limitsSnap, releases []func()) *conn {
	c := &conn{id: id, srv: s, route: rt, lim: lim, releases: releases}
	c.runWriter = c.writeLoop
	c.rate.Init(s.adm)
	now := s.mono()
	c.lastSeen.Store(now)
	c.lastPing.Store(now)
	return c
}

// outFrame is one queued frame: a prepared (shared) data message, a raw data
// message or a control frame.
type outFrame struct {
	pm   *websocket.PreparedMessage
	data []byte
	typ  int8
	size int32 // payload bytes, for metrics
}

// ring is a growable FIFO of frames. Rings are pooled (Server.rings) and
// detached from a socket whenever its queue empties.
type ring struct {
	buf  []outFrame
	head int
	n    int
	// wbuf is the writer's batch buffer (frames encoded back to back for
	// one write), kept with the ring so that only sockets with frames
	// queued hold one.
	wbuf []byte
}

func newRing() any { return &ring{buf: make([]outFrame, 8)} }

// maxPooledRing keeps rings that grew under a burst out of the pool.
const maxPooledRing = 64

func (r *ring) push(f outFrame) {
	if r.n == len(r.buf) {
		nb := make([]outFrame, max(2*len(r.buf), 8))
		for i := 0; i < r.n; i++ {
			nb[i] = r.buf[(r.head+i)%len(r.buf)]
		}
		r.buf, r.head = nb, 0
	}
	r.buf[(r.head+r.n)%len(r.buf)] = f
	r.n++
}

func (r *ring) pop() outFrame {
	f := r.buf[r.head]
	r.buf[r.head] = outFrame{}
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	return f
}

// clear drops every queued frame.
func (r *ring) clear() {
	for r.n > 0 {
		r.pop()
	}
	r.head = 0
}

type enqResult uint8

const (
	enqQueued enqResult = iota
	enqFull             // queue full: dropped
	enqClosed           // socket closing: not queued, not counted
)

// controlSlack lets pings, pongs and the close frame past a full data
// queue, without letting a ping flood grow it without bound.
const controlSlack = 8

// enqueue queues a data frame without blocking. A full queue drops the
// frame, counts it and, under the "close" slow-consumer policy, closes the
// socket with 1013.
func (c *conn) enqueue(f outFrame) enqResult {
	c.mu.Lock()
	if c.closing || c.closed || c.werr {
		c.mu.Unlock()
		return enqClosed
	}
	if c.q != nil && c.q.n >= c.lim.sendQueue {
		c.mu.Unlock()
		c.overflow()
		return enqFull
	}
	start := c.pushLocked(f)
	c.mu.Unlock()
	if start {
		go c.runWriter()
	}
	return enqQueued
}

// enqueueControl queues a ping or pong; dropped when the socket is closing
// or hopelessly behind.
func (c *conn) enqueueControl(typ int, data []byte) {
	c.mu.Lock()
	if c.closing || c.closed || c.werr || c.q != nil && c.q.n >= c.lim.sendQueue+controlSlack {
		c.mu.Unlock()
		return
	}
	start := c.pushLocked(outFrame{typ: int8(typ), data: data})
	c.mu.Unlock()
	if start {
		go c.runWriter()
	}
}

// reply queues a frame answering this socket's own message (a webhook
// reply, an error frame, connect frames). Unlike enqueue it waits for room
// instead of dropping: the producer is the socket's own read loop, so
// waiting pushes back on the client through TCP rather than punishing a
// client that reads fine but writes in bursts. It gives up when the socket
// closes or its writer fails (bounded by WriteTimeout).
func (c *conn) reply(m bridge.Message) {
	typ := int8(websocket.TextMessage)
	if m.Binary {
		typ = websocket.BinaryMessage
	}
	f := outFrame{typ: typ, data: m.Data, size: int32(len(m.Data))}
	c.mu.Lock()
	// Before the hijack no writer can make room (connect frames): queue
	// them all, the backend's document bounds them.
	for c.ready && c.q != nil && c.q.n >= c.lim.sendQueue && !c.closing && !c.closed && !c.werr {
		if c.room == nil {
			c.room = make(chan struct{})
		}
		room := c.room
		c.mu.Unlock()
		<-room
		c.mu.Lock()
	}
	if c.closing || c.closed || c.werr {
		c.mu.Unlock()
		return
	}
	start := c.pushLocked(f)
	c.mu.Unlock()
	if start {
		c.writeInline()
	}
}

// wakeLocked releases a reply waiting for queue room (c.mu held).
func (c *conn) wakeLocked() {
	if c.room != nil {
		close(c.room)
		c.room = nil
	}
}

// pushLocked appends f and reports whether a writer must be started (c.mu
// held).
func (c *conn) pushLocked(f outFrame) bool {
	if c.q == nil {
		c.q = c.srv.rings.Get().(*ring)
	}
	c.q.push(f)
	if c.writing || !c.ready {
		return false
	}
	c.writing = true
	c.bg.Add(1)
	return true
}

// releaseQueueLocked gives an empty queue back to the pool (c.mu held).
func (c *conn) releaseQueueLocked() {
	if c.q == nil {
		return
	}
	c.q.clear()
	if cap(c.q.wbuf) > maxBatch+maxFrameHeader {
		c.q.wbuf = nil
	}
	if len(c.q.buf) <= maxPooledRing {
		c.srv.rings.Put(c.q)
	}
	c.q = nil
}

func (c *conn) overflow() {
	if c.srv == nil {
		return
	}
	c.srv.m.dropped.Inc()
	if c.lim.slowClose && c.close(1013, "slow consumer", false) {
		c.srv.m.slowClose.Inc()
		c.srv.connLog(c).Info("closing slow consumer", "queue", c.lim.sendQueue)
	}
}

// writeLoop drains the queue and exits when it is empty, so an idle socket
// has no writer goroutine. On an uncompressed socket it takes every small
// frame queued (up to maxBatch bytes) under one lock, encodes them back to
// back and sends them with one write(2): a socket that fell behind catches
// up in a few syscalls instead of one per frame. The write deadline is set
// per batch, not per frame, and metrics are added per batch.
func (c *conn) writeLoop() {
	defer c.bg.Done()
	for c.writeStep() {
	}
}

// writeStep writes one batch (or one frame) from the queue as the socket's
// writer. When the queue is empty it gives up the writer role and reports
// false.
func (c *conn) writeStep() bool {
	c.mu.Lock()
	if c.werr || c.q == nil || c.q.n == 0 {
		c.writing = false
		c.releaseQueueLocked()
		c.mu.Unlock()
		return false
	}
	timeout := c.srv.writeTimeout()
	if c.closed || c.closing {
		timeout = min(timeout, c.srv.closeTimeout())
	}
	var frames, bytes int
	var buf []byte
	var f outFrame
	if c.ws != nil && !c.srv.compression {
		// Encode under c.mu: the ring and its scratch buffer belong
		// to this writer until it releases the queue, and copying a
		// few KiB costs less than a lock round trip per frame.
		q := c.q
		buf = q.wbuf[:0]
		for q.n > 0 {
			h := &q.buf[q.head]
			if !batchable(h) || len(buf)+len(h.data)+maxFrameHeader > maxBatch {
				break
			}
			buf = appendFrame(buf, h.typ, h.data)
			if h.typ == websocket.TextMessage || h.typ == websocket.BinaryMessage {
				frames++
				bytes += int(h.size)
			}
			q.pop()
		}
		q.wbuf = buf
	}
	if len(buf) == 0 {
		f = c.q.pop()
	}
	c.wakeLocked()
	c.mu.Unlock()
	var err error
	if len(buf) > 0 {
		err = c.writeBatch(buf, timeout)
		if err == nil && frames > 0 {
			c.srv.m.framesOut.Add(frames)
			c.srv.m.bytesOut.Add(bytes)
		}
	} else {
		err = c.writeFrame(&f, timeout)
	}
	if err != nil {
		c.writeFailed(err)
	}
	return true
}

// maxInlineSteps bounds the batches a producer writes itself (writeInline)
// before it hands the rest to a writer goroutine.
const maxInlineSteps = 2

// writeInline is for a producer that may block on the socket (its own read
// loop or pipeline answering its messages): it writes what it just queued
// on its own goroutine instead of starting a writer, which saves a
// goroutine start, exit and wake-up per webhook round trip. The socket's
// writer role was taken by pushLocked; pushes that keep arriving meanwhile
// are left to a writer goroutine after maxInlineSteps batches, so the read
// loop does not turn into the socket's writer.
func (c *conn) writeInline() {
	for range maxInlineSteps {
		if !c.writeStep() {
			c.bg.Done()
			return
		}
	}
	go c.runWriter()
}

// armWrite sets the connection's write deadline to now+timeout unless the
// one already set is at least half a timeout away and not later than that:
// setting a deadline costs a runtime timer update, and a writer draining a
// burst would otherwise pay it per batch. Called by the writer only.
func (c *conn) armWrite(timeout time.Duration) time.Time {
	now := time.Now()
	dl := now.Add(timeout).UnixNano()
	if c.wdl == 0 || c.wdl-now.UnixNano() < int64(timeout)/2 || c.wdl > dl {
		c.wdl = dl
		_ = c.nc.SetWriteDeadline(time.Unix(0, dl))
	}
	return time.Unix(0, c.wdl)
}

// writeBatch writes encoded frames straight to the connection. A write is
// one call on the net.Conn, so it never interleaves with a control frame
// the library writes from the read goroutine (a protocol-error close).
func (c *conn) writeBatch(b []byte, timeout time.Duration) error {
	c.armWrite(timeout)
	_, err := c.nc.Write(b)
	return err
}

func (c *conn) writeFrame(f *outFrame, timeout time.Duration) error {
	if c.ws == nil {
		return nil
	}
	// The library sets the connection's deadline from this on each write.
	_ = c.ws.SetWriteDeadline(c.armWrite(timeout))
	var err error
	if f.pm != nil {
		err = c.ws.WritePreparedMessage(f.pm)
	} else {
		err = c.ws.WriteMessage(int(f.typ), f.data)
	}
	if err == nil && (f.typ == websocket.TextMessage || f.typ == websocket.BinaryMessage) {
		c.srv.m.framesOut.Inc()
		c.srv.m.bytesOut.Add(int(f.size))
	}
	return err
}

// writeFailed stops writing to a socket whose peer is gone or stuck, and
// cuts it so the read loop ends.
func (c *conn) writeFailed(err error) {
	c.mu.Lock()
	c.werr = true
	c.wakeLocked()
	if c.q != nil {
		c.q.clear()
	}
	closeSent := c.closing && err == websocket.ErrCloseSent
	if !c.closing && c.code == 0 {
		c.code, c.reason = websocket.CloseAbnormalClosure, "write failed"
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			c.reason = "write timeout"
		}
	}
	nc := c.nc
	c.mu.Unlock()
	if !closeSent && nc != nil {
		_ = nc.Close()
	}
}

// close starts the closing handshake: queue a close frame (after the frames
// already queued when flush is set, instead of them otherwise) and give the
// peer CloseTimeout to answer before the TCP connection is cut. It reports
// whether this call started the close.
func (c *conn) close(code int, reason string, flush bool) bool {
	c.mu.Lock()
	if c.closing || c.closed {
		c.mu.Unlock()
		return false
	}
	c.closing, c.initiated = true, true
	c.closingFlag.Store(true)
	c.code, c.reason = int32(code), reason
	c.wakeLocked()
	if !flush && c.q != nil {
		c.q.clear()
	}
	start := c.pushLocked(outFrame{typ: websocket.CloseMessage, data: websocket.FormatCloseMessage(code, reason)})
	werr, nc := c.werr, c.nc
	c.mu.Unlock()
	if start {
		go c.runWriter()
	}
	if nc != nil {
		if werr {
			_ = nc.Close()
		} else {
			// The read loop waits for the peer's close frame; the deadline
			// bounds that wait (and frees a reader stuck on a dead peer).
			// Before the hijack, attach sets it.
			_ = nc.SetReadDeadline(time.Now().Add(c.srv.closeTimeout()))
		}
	}
	return true
}

// kill cuts the TCP connection at once (server Close, drain deadline).
func (c *conn) kill(code int, reason string) {
	c.mu.Lock()
	if c.code == 0 && !c.closing && c.peerCode == 0 {
		c.code, c.reason, c.initiated = int32(code), reason, true
	}
	c.killed = true
	c.closingFlag.Store(true)
	c.wakeLocked()
	nc := c.nc
	c.mu.Unlock()
	if nc != nil {
		_ = nc.Close()
	}
}

// onPeerClose runs on the read goroutine when the peer's close frame
// arrives: echo it (RFC 6455 §5.5.1) unless we started the close.
func (c *conn) onPeerClose(code int, text string) error {
	c.mu.Lock()
	c.peerCode, c.peerReason = int32(code), truncateReason(text)
	var start bool
	if !c.closing {
		c.closing = true
		c.closingFlag.Store(true)
		c.wakeLocked()
		echo := code
		if !sendable(echo) {
			echo = websocket.CloseNoStatusReceived // empty close payload
		}
		start = c.pushLocked(outFrame{typ: websocket.CloseMessage, data: websocket.FormatCloseMessage(echo, "")})
	}
	c.mu.Unlock()
	if start {
		go c.runWriter()
	}
	return nil
}

// touch records life from the peer for the heartbeat scanner.
func (c *conn) touch() {
	if c.srv != nil {
		c.lastSeen.Store(c.srv.mono())
	}
}

func (c *conn) currentUser() string {
	c.smu.Lock()
	defer c.smu.Unlock()
	return c.user
}

// state snapshots the socket for the connection endpoints.
func (c *conn) state() bridge.ConnState {
	ci := c.info.Load()
	st := bridge.ConnState{ID: c.id, ConnectedAt: time.Unix(0, c.connectedAt), Channels: []string{}}
	if ci != nil {
		st.Route, st.ClientIP, st.Protocol = ci.Route, ci.ClientIP, ci.Protocol
	}
	c.smu.Lock()
	st.User = c.user
	for ch := range c.channels {
		st.Channels = append(st.Channels, ch)
	}
	if len(c.meta) > 0 {
		st.Meta = make(map[string]string, len(c.meta))
		for k, v := range c.meta {
			st.Meta[k] = v
		}
	}
	c.smu.Unlock()
	slices.Sort(st.Channels)
	return st
}

// sendable reports whether a close code may be sent on the wire
// (RFC 6455 §7.4: 1004-1006 and 1015 are reserved, 1016-2999 unassigned).
func sendable(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// sendableCode maps codes that may not be sent to 1000.
func sendableCode(code int) int {
	if sendable(code) {
		return code
	}
	return websocket.CloseNormalClosure
}

// maxReason is the longest close reason: a control frame payload is 125
// bytes, two of which hold the code (RFC 6455 §5.5).
const maxReason = 123

// truncateReason cuts a close reason to maxReason bytes without splitting a
// UTF-8 sequence.
func truncateReason(s string) string {
	if len(s) <= maxReason {
		return s
	}
	i := maxReason
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i]
}

// attach gives a registered socket its connection (after the 101) and
// starts writing what was queued meanwhile.
func (c *conn) attach(ws *websocket.Conn) {
	c.mu.Lock()
	c.ws, c.nc, c.ready = ws, ws.NetConn(), true
	start := false
	if c.q != nil && c.q.n > 0 && !c.writing {
		c.writing = true
		c.bg.Add(1)
		start = true
	}
	killed, closing := c.killed, c.closing
	c.mu.Unlock()
	if start {
		go c.runWriter()
	}
	switch {
	case killed:
		_ = c.nc.Close()
	case closing:
		_ = c.nc.SetReadDeadline(time.Now().Add(c.srv.closeTimeout()))
	}
}

// unstarted tears down a socket that was registered but never got its
// connection (the upgrade failed or the client left before the 101).
func (c *conn) unstarted(reason string) {
	c.mu.Lock()
	c.closed = true
	c.closingFlag.Store(true)
	c.wakeLocked()
	c.releaseQueueLocked()
	c.mu.Unlock()
	c.srv.hub.remove(c)
	if o := c.srv.opts.ConnObserver; o != nil {
		o.Closed(c.id)
	}
	runReleases(c.releases)
	c.route.open.Dec()
	if c.connected && c.route.cfg.OnDisconnect != "" && c.srv.backend != nil {
		c.srv.backend.Disconnect(c.info.Load(), bridge.DisconnectInfo{Code: websocket.CloseAbnormalClosure, Reason: reason})
	}
	c.srv.track.done()
}
