package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"syscall"
	"time"
)

// The load client speaks just enough RFC 6455 to hold, read and echo:
// a handshake, unmasked server frames in, masked frames out, pongs and the
// close echo. A general-purpose client (fasthttp/websocket) allocates a
// reader per message and keeps 4 KiB buffers; with 15,000 sockets sharing
// two cores with the server under test, the generator must cost as little
// as it can, so that the figures measure the server and not the client.

// wsOpcode values (RFC 6455 §5.2).
const (
	opText  = 0x1
	opBin   = 0x2
	opClose = 0x8
	opPing  = 0x9
	opPong  = 0xA
)

// wsGUID is the handshake's magic suffix (RFC 6455 §1.3).
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// ipBindAddressNoPort (IP_BIND_ADDRESS_NO_PORT, linux/in.h) defers the
// source port choice from bind() to connect(), so a bound source address
// can reuse a port for a different destination: without it, every socket
// bound to 127.0.0.2 competes for the same 28k ports, TIME_WAIT included.
const ipBindAddressNoPort = 24

// wsConn is one client socket.
type wsConn struct {
	nc  net.Conn
	br  *bufio.Reader
	efd int // ≥ 0 once an epoll loop owns the socket: writes go to it

	wmu  sync.Mutex // frames are written from the reader and the control goroutine
	wbuf []byte
}

// dialWS connects to u (ws:// or wss://) from the source address src and
// completes the handshake within timeout. readBuf sizes the client's read
// buffer.
func dialWS(ctx context.Context, u *url.URL, src net.IP, tlsConf *tls.Config, timeout time.Duration, readBuf int) (*wsConn, error) {
	d := net.Dialer{
		Timeout: timeout,
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
	if src != nil {
		d.LocalAddr = &net.TCPAddr{IP: src}
	}
	nc, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", u.Host, err)
	}
	_ = nc.SetDeadline(time.Now().Add(timeout))
	if u.Scheme == "wss" {
		tc := tls.Client(nc, tlsConf)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("tls handshake: %w", err)
		}
		nc = tc
	}
	var keyRaw [16]byte
	_, _ = rand.Read(keyRaw[:])
	key := base64.StdEncoding.EncodeToString(keyRaw[:])
	path := u.RequestURI()
	req := "GET " + path + " HTTP/1.1\r\nHost: " + u.Host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " +
		key + "\r\n\r\n"
	if _, err := io.WriteString(nc, req); err != nil {
		nc.Close()
		return nil, fmt.Errorf("writing handshake: %w", err)
	}
	br := bufio.NewReaderSize(nc, readBuf)
	status, err := br.ReadSlice('\n')
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("reading handshake answer: %w", err)
	}
	if !bytes.HasPrefix(status, []byte("HTTP/1.1 101")) {
		nc.Close()
		return nil, fmt.Errorf("handshake refused: %q", bytes.TrimSpace(status))
	}
	h := sha1.Sum([]byte(key + wsGUID))
	wantAccept := base64.StdEncoding.EncodeToString(h[:])
	accepted := false
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("reading handshake headers: %w", err)
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte{':'})
		if ok && bytes.EqualFold(bytes.TrimSpace(name), []byte("Sec-WebSocket-Accept")) &&
			string(bytes.TrimSpace(value)) == wantAccept {
			accepted = true
		}
	}
	if !accepted {
		nc.Close()
		return nil, errors.New("handshake: missing or wrong Sec-WebSocket-Accept")
	}
	_ = nc.SetDeadline(time.Time{})
	return &wsConn{nc: nc, br: br, efd: -1}, nil
}

// frameHandler sees each data message's opcode and payload prefix (at most
// len(prefix) bytes; the rest is discarded unread) and its full length.
type frameHandler func(op byte, prefix []byte, n int)

// readLoop reads frames until the connection fails or closes, answering
// pings and the close handshake. Fragmented messages are not expected from
// the servers under test (neither fragments small messages) and are counted
// per frame.
func (c *wsConn) readLoop(onData frameHandler, gate func()) error {
	var hdr [14]byte
	var prefix [32]byte
	for {
		if gate != nil {
			gate()
		}
		if _, err := io.ReadFull(c.br, hdr[:2]); err != nil {
			return err
		}
		op := hdr[0] & 0x0f
		masked := hdr[1]&0x80 != 0
		n := uint64(hdr[1] & 0x7f)
		switch n {
		case 126:
			if _, err := io.ReadFull(c.br, hdr[2:4]); err != nil {
				return err
			}
			n = uint64(binary.BigEndian.Uint16(hdr[2:4]))
		case 127:
			if _, err := io.ReadFull(c.br, hdr[2:10]); err != nil {
				return err
			}
			n = binary.BigEndian.Uint64(hdr[2:10])
		}
		if masked {
			return errors.New("server sent a masked frame")
		}
		if n > 1<<24 {
			return fmt.Errorf("frame of %d bytes: not a benchmark frame", n)
		}
		switch op {
		case opPing, opClose:
			payload := make([]byte, n)
			if _, err := io.ReadFull(c.br, payload); err != nil {
				return err
			}
			if op == opPing {
				if err := c.write(opPong, payload); err != nil {
					return err
				}
				continue
			}
			// Echo the code (RFC 6455 §5.5.1) and stop.
			if len(payload) > 2 {
				payload = payload[:2]
			}
			_ = c.write(opClose, payload)
			return io.EOF
		case opPong:
			if _, err := c.br.Discard(int(n)); err != nil {
				return err
			}
		default:
			k := min(int(n), len(prefix))
			if _, err := io.ReadFull(c.br, prefix[:k]); err != nil {
				return err
			}
			if _, err := c.br.Discard(int(n) - k); err != nil {
				return err
			}
			onData(op, prefix[:k], int(n))
		}
	}
}

// write sends one masked frame.
func (c *wsConn) write(op byte, payload []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := c.wbuf[:0]
	b = append(b, 0x80|op)
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	// A fixed mask is enough for a load generator talking to loopback: the
	// mask exists to defeat cache poisoning by browsers' scripts (§10.3).
	mask := [4]byte{0x12, 0x34, 0x56, 0x78}
	b = append(b, mask[:]...)
	start := len(b)
	b = append(b, payload...)
	for i := range b[start:] {
		b[start+i] ^= mask[i&3]
	}
	c.wbuf = b
	if c.efd >= 0 {
		return writeFD(c.efd, b)
	}
	_, err := c.nc.Write(b)
	return err
}

// shrinkRecvBuffer makes a socket that stops reading fill up fast: the
// kernel then pushes back on the server after a few KiB instead of
// megabytes, which is what a slow mobile client looks like.
func (c *wsConn) shrinkRecvBuffer(n int) {
	if c.efd >= 0 {
		_ = syscall.SetsockoptInt(c.efd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, n)
		return
	}
	nc := c.nc
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, n)
	})
}

// close closes the TCP connection without a closing handshake: the
// benchmark tears down thousands of sockets and the servers handle an
// abrupt end anyway.
func (c *wsConn) close() { _ = c.nc.Close() }
