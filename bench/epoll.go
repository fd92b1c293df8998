package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"
)

// Reading 15,000 sockets with a goroutine each cost the generator about
// 10 µs of CPU per received frame on the 2-core box — as much as the server
// spent sending it — because every frame meant a netpoller wake-up, a
// goroutine switch and two read calls (the second one to find EAGAIN). So
// plain ws:// sockets, once the handshake is done, are handed to a couple
// of level-triggered epoll loops: one read call per ready socket per wake-up,
// a small parse state per socket, no goroutine per socket. TLS sockets keep
// the goroutine reader (they are only held idle).

// esock is one socket owned by an epoll loop.
type esock struct {
	id int32
	fd int
	s  *sock
	on frameHandler

	mu     sync.Mutex // the loop while parsing; close
	closed bool

	// Frame parse state, carried across reads.
	hdr    [14]byte
	hn     int    // header bytes held
	need   int    // header bytes needed: 2, then 4 or 10 with an extended length
	inBody bool   // reading a payload
	op     byte   // opcode of the frame being read
	size   int    // its payload length
	remain uint64 // payload bytes still to come
	pre    [stampLen]byte
	pn     int
	ctl    []byte // control frame payload
}

// epollLoop reads the sockets registered with it.
type epollLoop struct {
	epfd int
	lc   *loadClient

	mu    sync.Mutex
	socks []*esock // by id
	stop  chan struct{}
}

func newEpollLoop(lc *loadClient) (*epollLoop, error) {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	l := &epollLoop{epfd: fd, lc: lc, stop: make(chan struct{})}
	go l.run()
	return l, nil
}

// detachFD takes a plain TCP socket away from Go's netpoller: it
// duplicates the descriptor (the copy shares the non-blocking file
// description) and closes the original, which deregisters it from Go's
// epoll without closing the socket.
func detachFD(nc net.Conn) (int, error) {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return -1, errors.New("not a plain TCP connection")
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = syscall.Dup(int(fd))
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("dup: %w", derr)
	}
	syscall.CloseOnExec(nfd)
	_ = tc.Close()
	return nfd, nil
}

// add registers a detached socket.
func (l *epollLoop) add(fd int, s *sock, on frameHandler) (*esock, error) {
	l.mu.Lock()
	es := &esock{id: int32(len(l.socks)), fd: fd, s: s, on: on, need: 2}
	l.socks = append(l.socks, es)
	l.mu.Unlock()
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: es.id}
	if err := syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return nil, fmt.Errorf("epoll_ctl add: %w", err)
	}
	return es, nil
}

// pause stops reading a socket (the slow-consumer test).
func (l *epollLoop) pause(es *esock) {
	es.mu.Lock()
	defer es.mu.Unlock()
	if !es.closed {
		_ = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, es.fd, nil)
	}
}

// closeSock closes a socket for good.
func (l *epollLoop) closeSock(es *esock) {
	es.mu.Lock()
	defer es.mu.Unlock()
	if es.closed {
		return
	}
	es.closed = true
	_ = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, es.fd, nil)
	_ = syscall.Close(es.fd)
	close(es.s.done)
}

func (l *epollLoop) run() {
	events := make([]syscall.EpollEvent, 256)
	buf := make([]byte, 64<<10)
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		n, err := syscall.EpollWait(l.epfd, events, 100)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			l.lc.noteErr(fmt.Errorf("epoll_wait: %w", err))
			return
		}
		for _, ev := range events[:n] {
			l.mu.Lock()
			var es *esock
			if int(ev.Fd) < len(l.socks) {
				es = l.socks[ev.Fd]
			}
			l.mu.Unlock()
			if es != nil {
				l.service(es, buf)
			}
		}
	}
}

// service reads once from a ready socket and parses what came.
func (l *epollLoop) service(es *esock, buf []byte) {
	es.mu.Lock()
	if es.closed {
		es.mu.Unlock()
		return
	}
	n, err := syscall.Read(es.fd, buf)
	if err == syscall.EAGAIN || err == syscall.EINTR {
		es.mu.Unlock()
		return
	}
	var perr error
	if n > 0 {
		perr = es.parse(buf[:n])
	}
	es.mu.Unlock()
	if n <= 0 || perr != nil {
		if !es.s.closed.Load() {
			l.lc.ended.Add(1)
			switch {
			case perr != nil && !errors.Is(perr, errPeerClosed):
				l.lc.noteErr(fmt.Errorf("socket ended: %w", perr))
			case err != nil:
				l.lc.noteErr(fmt.Errorf("socket ended: %w", err))
			}
		}
		l.closeSock(es)
	}
}

var errPeerClosed = errors.New("server sent close")

// parse consumes bytes of the server's frame stream (es.mu held).
func (es *esock) parse(b []byte) error {
	for len(b) > 0 {
		if !es.inBody {
			k := min(es.need-es.hn, len(b))
			copy(es.hdr[es.hn:], b[:k])
			es.hn += k
			b = b[k:]
			if es.hn < es.need {
				return nil
			}
			if es.need == 2 {
				if es.hdr[1]&0x80 != 0 {
					return errors.New("server sent a masked frame")
				}
				switch es.hdr[1] & 0x7f {
				case 126:
					es.need = 4
					continue
				case 127:
					es.need = 10
					continue
				}
			}
			var size uint64
			switch es.need {
			case 2:
				size = uint64(es.hdr[1] & 0x7f)
			case 4:
				size = uint64(binary.BigEndian.Uint16(es.hdr[2:4]))
			default:
				size = binary.BigEndian.Uint64(es.hdr[2:10])
			}
			if size > 1<<24 {
				return fmt.Errorf("frame of %d bytes: not a benchmark frame", size)
			}
			es.op, es.size, es.remain, es.pn, es.ctl = es.hdr[0]&0x0f, int(size), size, 0, es.ctl[:0]
			es.inBody = true
		}
		k := int(min(es.remain, uint64(len(b))))
		switch es.op {
		case opPing, opClose:
			es.ctl = append(es.ctl, b[:k]...)
		case opPong:
		default:
			if c := min(len(es.pre)-es.pn, k); c > 0 {
				copy(es.pre[es.pn:], b[:c])
				es.pn += c
			}
		}
		es.remain -= uint64(k)
		b = b[k:]
		if es.remain > 0 {
			return nil
		}
		es.inBody, es.hn, es.need = false, 0, 2
		switch es.op {
		case opPing:
			if err := es.s.c.write(opPong, es.ctl); err != nil {
				return err
			}
		case opClose:
			p := es.ctl
			if len(p) > 2 {
				p = p[:2]
			}
			_ = es.s.c.write(opClose, p)
			return errPeerClosed
		case opPong:
		default:
			es.on(es.op, es.pre[:es.pn], es.size)
		}
	}
	return nil
}

// writeFD writes all of b to a non-blocking descriptor, waiting briefly
// when the send buffer is full.
func writeFD(fd int, b []byte) error {
	deadline := time.Now().Add(5 * time.Second)
	for len(b) > 0 {
		n, err := syscall.Write(fd, b)
		if n > 0 {
			b = b[n:]
		}
		switch {
		case err == nil:
		case err == syscall.EAGAIN || err == syscall.EINTR:
			if time.Now().After(deadline) {
				return fmt.Errorf("write: send buffer full for 5s")
			}
			time.Sleep(100 * time.Microsecond)
		default:
			return err
		}
	}
	return nil
}
