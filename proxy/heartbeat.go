package proxy

import (
	"time"

	"github.com/fasthttp/websocket"
)

// heartbeatLoop is the one timer of a Server. Each tick it walks the hub's
// shards and, per socket, queues a ping when one is due, closes sockets
// whose peer has been silent longer than Interval+Timeout (a half-open TCP
// peer never answers), and closes sockets whose token has expired. One
// ticker scanning 100k sockets costs a few ms per tick; 100k time.Timers
// would cost memory per socket and timer-heap churn on every frame.
func (s *Server) heartbeatLoop() {
	defer s.hbDone.Done()
	t := time.NewTicker(heartbeatTick(s.interval, s.hbTimeout))
	defer t.Stop()
	for {
		select {
		case <-s.hbStop:
			return
		case <-t.C:
			s.scan()
		}
	}
}

// heartbeatTick resolves deadlines to a quarter of the shorter of interval
// and timeout, between 5ms and 1s.
func heartbeatTick(interval, timeout time.Duration) time.Duration {
	return min(max(min(interval, timeout)/4, 5*time.Millisecond), time.Second)
}

func (s *Server) scan() {
	now := s.mono()
	wall := s.now().UnixNano()
	interval := int64(s.interval)
	dead := int64(s.interval + s.hbTimeout)
	s.hub.each(func(c *conn) {
		if c.srv != s || c.closingFlag.Load() {
			return
		}
		if exp := c.expires.Load(); exp != 0 && wall >= exp {
			c.close(websocket.ClosePolicyViolation, "token expired", true)
			return
		}
		// A socket waiting on its own webhook is not read meanwhile, so
		// its silence proves nothing; the call's timeout bounds the wait.
		if c.calls.Load() == 0 && now-c.lastSeen.Load() > dead {
			c.close(websocket.CloseGoingAway, "heartbeat timeout", false)
			return
		}
		if now-c.lastPing.Load() >= interval {
			c.lastPing.Store(now)
			c.enqueueControl(websocket.PingMessage, nil)
		}
	})
}
