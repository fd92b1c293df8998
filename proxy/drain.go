package proxy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/fasthttp/websocket"
)

// drainStep is the granularity of the spread of 1001 closes.
const drainStep = 10 * time.Millisecond

// Drain shuts the door gracefully: new handshakes get 503 + Retry-After,
// Draining reports true (readiness fails), and open sockets are closed with
// 1001 "going away" spread over Drain.Window in random order, so clients do
// not all reconnect to the other replicas in the same instant. It returns
// once every socket's read loop has ended, or when ctx (bounded by
// Drain.Timeout) is done — then the sockets still open are cut and the
// error says so.
func (s *Server) Drain(ctx context.Context) error {
	if s.draining.CompareAndSwap(false, true) {
		s.m.draining.Set(1)
		s.log.Info("draining", "sockets", s.hub.Count(), "window", s.opts.Drain.Window)
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.Drain.Timeout)
	defer cancel()

	var conns []*conn
	s.hub.each(func(c *conn) {
		if c.srv == s {
			conns = append(conns, c)
		}
	})
	rand.Shuffle(len(conns), func(i, j int) { conns[i], conns[j] = conns[j], conns[i] })
	s.spreadClose(ctx, conns, s.drainWindow(ctx))

	select {
	case <-s.track.wait():
		return nil
	case <-ctx.Done():
	}
	s.hub.each(func(c *conn) {
		if c.srv == s {
			c.kill(websocket.CloseGoingAway, "going away")
		}
	})
	select {
	case <-s.track.wait():
	case <-time.After(time.Second):
	}
	return fmt.Errorf("proxy: drain did not finish in time, remaining sockets cut: %w", ctx.Err())
}

// drainWindow is Drain.Window, shortened when ctx's deadline is nearer than
// the window plus CloseTimeout: the last 1001 must leave its peer the time
// to answer before the deadline cuts what is still open (a caller's
// deadline may be shorter than Drain.Timeout, e.g. a shutdown that spent
// time elsewhere first).
func (s *Server) drainWindow(ctx context.Context) time.Duration {
	window := s.opts.Drain.Window
	if d, ok := ctx.Deadline(); ok {
		if left := time.Until(d) - s.closeTimeout(); left < window {
			window = max(left, 0)
		}
	}
	return window
}

// spreadClose closes conns with 1001 evenly over window.
func (s *Server) spreadClose(ctx context.Context, conns []*conn, window time.Duration) {
	closeOne := func(c *conn) { c.close(websocket.CloseGoingAway, "going away", true) }
	if window <= drainStep || len(conns) <= 1 {
		for _, c := range conns {
			closeOne(c)
		}
		return
	}
	t := time.NewTicker(drainStep)
	defer t.Stop()
	start := time.Now()
	done := 0
	for done < len(conns) {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		elapsed := time.Since(start)
		target := len(conns)
		if elapsed < window {
			target = int(int64(len(conns)) * int64(elapsed) / int64(window))
		}
		for ; done < target; done++ {
			closeOne(conns[done])
		}
	}
}
