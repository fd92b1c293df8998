package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/fasthttp/websocket"

	"github.com/wsidecar/wsidecar/bridge"
	"github.com/wsidecar/wsidecar/limits"
)

// errNoBackend is the message-call error when the server has no Backend.
var errNoBackend = errors.New("proxy: no backend configured")

// readLoop is the socket's one long-lived goroutine: it reads messages,
// forwards them to the backend in order and, when the socket ends, tears it
// down.
func (c *conn) readLoop() {
	var cause error
	for {
		typ, r, err := c.ws.NextReader()
		if err != nil {
			cause = err
			break
		}
		c.touch()
		c.srv.m.framesIn.Inc()
		// A route without OnMessage ignores messages, and nothing is
		// forwarded once a close has started; NextReader discards the
		// unread payload, so neither is even copied.
		if c.route.cfg.OnMessage == "" || c.closingFlag.Load() {
			continue
		}
		data, tooBig, err := c.readPayload(r)
		if err != nil {
			cause = err
			break
		}
		if tooBig {
			c.close(websocket.CloseMessageTooBig, "message too big", false)
			continue
		}
		c.srv.m.bytesIn.Add(len(data))
		if typ == websocket.TextMessage && !utf8.Valid(data) {
			c.close(websocket.CloseInvalidFramePayloadData, "invalid UTF-8 in text message", false)
			continue
		}
		if !c.allow(len(data)) {
			continue
		}
		c.seq++
		c.dispatch(c.seq, bridge.Message{Binary: typ == websocket.BinaryMessage, Data: data})
	}
	c.teardown(cause)
}

// readPayload reads one message into a buffer of its own (the backend owns
// it afterwards). SetReadLimit already refuses frames whose declared size
// is too big, but with permessage-deflate it counts compressed bytes, so the
// inflated size is capped here while reading: a decompression bomb stops at
// MaxInflatedSize+1 bytes.
func (c *conn) readPayload(r io.Reader) (data []byte, tooBig bool, err error) {
	limit := c.lim.maxMessage
	if c.srv.compression {
		limit = c.lim.maxInflated
	}
	bp := c.srv.readBufs.Get().(*[]byte)
	buf := (*bp)[:0]
	defer func() {
		if cap(buf) <= maxPooledReadBuf {
			*bp = buf[:0]
			c.srv.readBufs.Put(bp)
		}
	}()
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, rerr := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > limit {
			return nil, true, nil
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return nil, false, rerr
		}
	}
	data = make([]byte, len(buf))
	copy(data, buf)
	return data, false, nil
}

// maxPooledReadBuf keeps buffers grown by one big message out of the pool.
const maxPooledReadBuf = 64 << 10

// dispatch sends one message to the backend: inline on the read goroutine
// when the route allows one call in flight (the read loop then waits, which
// is the backpressure), through the ordered pipeline otherwise.
func (c *conn) dispatch(seq uint64, m bridge.Message) {
	if c.route.inFlight > 1 {
		if c.pipe == nil {
			c.pipe = newPipeline(c, c.route.inFlight, seq)
		}
		c.pipe.submit(seq, m)
		return
	}
	c.calls.Add(1)
	a, err := c.callMessage(seq, m)
	c.calls.Add(-1)
	c.touch()
	c.handleReply(a, err)
}

func (c *conn) callMessage(seq uint64, m bridge.Message) (*bridge.Actions, error) {
	b := c.srv.backend
	if b == nil {
		return nil, errNoBackend
	}
	ctx, cancel := context.WithTimeout(c.srv.base, time.Duration(c.srv.callTimeout.Load()))
	defer cancel()
	return b.Message(ctx, c.info.Load(), seq, m)
}

// handleReply applies a message webhook's answer. Replies are handled in seq
// order (see pipeline).
func (c *conn) handleReply(a *bridge.Actions, err error) {
	if err == nil {
		c.apply(a)
		return
	}
	c.srv.m.msgErrors.Inc()
	unavailable := errors.Is(err, bridge.ErrBackendUnavailable)
	// Debug: an outage would otherwise log once per message per socket; the
	// metric carries the rate.
	c.srv.connLog(c).Debug("message webhook failed", "err", err, "policy", c.route.cfg.OnError)
	switch c.route.cfg.OnError {
	case "drop":
	case "close":
		if unavailable {
			c.close(websocket.CloseTryAgainLater, "backend unavailable", true)
		} else {
			c.close(websocket.CloseInternalServerErr, "backend error", true)
		}
	default: // "reply"
		if unavailable {
			c.reply(bridge.ErrorFrame("backend_unavailable", "backend unavailable, try again later"))
			return
		}
		msg := "backend error"
		var se *bridge.StatusError
		if errors.As(err, &se) {
			msg = fmt.Sprintf("backend answered %d", se.Status)
		}
		c.reply(bridge.ErrorFrame("backend_error", msg))
	}
}

// maxMetaKeys bounds what actions can store on one socket.
const maxMetaKeys = 64

// apply carries out an actions document (connect or message reply), in the
// order: user, meta, unsubscribe, subscribe, frames, expiry, close — so a
// reply that moves a socket between channels and says goodbye does it all.
func (c *conn) apply(a *bridge.Actions) {
	if a.Empty() {
		return
	}
	h := c.srv.hub
	if a.User != "" && a.User != c.currentUser() {
		h.setUser(c, a.User)
		ci := *c.info.Load()
		ci.User = a.User
		c.info.Store(&ci)
	}
	if len(a.Meta) > 0 {
		c.smu.Lock()
		if c.meta == nil {
			c.meta = make(map[string]string, len(a.Meta))
		}
		for k, v := range a.Meta {
			if _, ok := c.meta[k]; ok || len(c.meta) < maxMetaKeys {
				c.meta[k] = v
			}
		}
		c.smu.Unlock()
	}
	var changed []string
	if len(a.Unsubscribe) > 0 {
		_, changed = h.unsubscribeConn(c, a.Unsubscribe, changed)
	}
	if len(a.Subscribe) > 0 {
		_, changed = h.subscribeConn(c, a.Subscribe, changed)
	}
	h.notify(changed)
	for _, m := range a.Frames {
		c.reply(m)
	}
	if !a.ExpiresAt.IsZero() {
		c.expires.Store(a.ExpiresAt.UnixNano())
	}
	if a.Close != nil {
		c.close(sendableCode(a.Close.Code), truncateReason(a.Close.Reason), true)
	}
}

// allow applies the per-connection message and byte rates (the socket's
// limits.ConnLimiter, which reads the admission state's current rates) and,
// when the message is over, the route's rate policy: "reply" an error frame,
// "drop" it silently, or "close" with 1008. Refusals are counted by the
// limiter in wsidecar_message_rejections_total{reason}.
func (c *conn) allow(n int) bool {
	reason := c.rate.Allow(n)
	if reason == "" {
		return true
	}
	msg := "message rate exceeded"
	if reason == limits.ReasonByteRate {
		msg = "byte rate exceeded"
	}
	switch c.lim.ratePolicy {
	case "drop":
	case "close":
		c.close(websocket.ClosePolicyViolation, msg, false)
	default:
		c.reply(bridge.ErrorFrame("rate_limited", msg))
	}
	return false
}

// teardown runs once on the read goroutine after the read loop ends:
// finish the writer and pipeline, cut TCP, leave the hub, give back the
// door's slots, and tell the backend.
func (c *conn) teardown(cause error) {
	c.mu.Lock()
	c.closed = true
	c.closingFlag.Store(true)
	c.wakeLocked()
	abnormal := !c.closing && c.peerCode == 0
	if abnormal && c.q != nil {
		c.q.clear()
	}
	c.mu.Unlock()
	if abnormal {
		// Nobody is listening: cut at once so a writer blocked on a dead
		// peer returns now.
		_ = c.nc.Close()
	} else {
		// Let the writer send the close echo, but not for long.
		_ = c.nc.SetWriteDeadline(time.Now().Add(c.srv.closeTimeout()))
	}
	c.bg.Wait()
	_ = c.nc.Close()

	info := c.disconnectInfo(cause)
	c.srv.hub.remove(c)
	if o := c.srv.opts.ConnObserver; o != nil {
		o.Closed(c.id)
	}
	runReleases(c.releases)
	c.route.open.Dec()
	c.srv.connLog(c).Debug("connection closed", "code", info.Code, "reason", info.Reason, "clean", info.Clean, "duration_ms", info.DurationMS)
	if c.route.cfg.OnDisconnect != "" && c.srv.backend != nil {
		c.srv.backend.Disconnect(c.info.Load(), info)
	}
	c.srv.track.done()
}

// disconnectInfo decides the code the backend is told: the server's own
// close, else the peer's, else what the read error says.
func (c *conn) disconnectInfo(cause error) bridge.DisconnectInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := bridge.DisconnectInfo{DurationMS: (c.srv.now().UnixNano() - c.connectedAt) / int64(time.Millisecond)}
	switch {
	case c.initiated:
		d.Code, d.Reason, d.Clean = int(c.code), c.reason, c.peerCode != 0
	case c.peerCode != 0:
		d.Code, d.Reason, d.Clean = int(c.peerCode), c.peerReason, true
	case errors.Is(cause, websocket.ErrReadLimit):
		// The websocket library sent 1009 itself.
		d.Code, d.Reason = websocket.CloseMessageTooBig, "message too big"
	case c.code != 0:
		d.Code, d.Reason = int(c.code), c.reason
	case isProtocolError(cause):
		// The library sent 1002 itself.
		d.Code, d.Reason = websocket.CloseProtocolError, "protocol error"
	default:
		d.Code, d.Reason = websocket.CloseAbnormalClosure, "connection lost"
	}
	return d
}

// isProtocolError recognises the errors the websocket library returns after
// sending a 1002 close (it has no exported type for them).
func isProtocolError(err error) bool {
	if err == nil {
		return false
	}
	var ce *websocket.CloseError
	var ne net.Error
	if errors.As(err, &ce) || errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return false
	}
	return strings.HasPrefix(err.Error(), "websocket: ")
}
