package proxy

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/VictoriaMetrics/metrics"

	"github.com/wsidecar/wsidecar/bridge"
	"github.com/wsidecar/wsidecar/config"
)

// hubFixture is a Server that never listens, for hub tests with sockets
// that have no network connection.
func hubFixture(t testing.TB, lim config.Limits) *Server {
	t.Helper()
	s, err := NewServer(Options{NodeID: "hub", Limits: lim, Metrics: metrics.NewSet(),
		Routes: []config.Route{{Path: "/ws", Auth: "none"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// detached registers a socket without a connection. With writable set its
// writer discards frames (as if the peer read instantly); otherwise frames
// stay queued, so the queue fills like a peer that never reads.
func detached(s *Server, id, user string, writable bool, channels ...string) *conn {
	c := newConn(s, id, s.routes.Load().exact["/ws"], s.limits.Load(), nil)
	c.user, c.ready = user, writable
	c.info.Store(&bridge.ConnInfo{ID: id, Route: "/ws", User: user})
	s.hub.add(c)
	if len(channels) > 0 {
		_, changed := s.hub.subscribeConn(c, channels, nil)
		s.hub.notify(changed)
	}
	return c
}

func queued(c *conn) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.q == nil {
		return 0
	}
	return c.q.n
}

func TestDeliverCounts(t *testing.T) {
	s := hubFixture(t, config.Limits{SendQueue: 4, SlowConsumer: "drop"})
	h := s.Hub()
	a := detached(s, "hub.a", "u1", false, "room", "news")
	b := detached(s, "hub.b", "u1", false, "room")
	c := detached(s, "hub.c", "u2", false, "news")
	full := detached(s, "hub.full", "u3", false, "room")
	for i := 0; i < 4; i++ { // fill its queue
		full.enqueue(outFrame{typ: 1})
	}
	cases := []struct {
		name   string
		target bridge.Target
		want   bridge.Counts
		got    []*conn // sockets that must have received it
	}{
		{"connection", bridge.Target{Connections: []string{"hub.a"}}, bridge.Counts{Delivered: 1}, []*conn{a}},
		{"unknown_connection", bridge.Target{Connections: []string{"hub.zz"}}, bridge.Counts{}, nil},
		{"user", bridge.Target{Users: []string{"u1"}}, bridge.Counts{Delivered: 2}, []*conn{a, b}},
		{"channel_with_full_queue", bridge.Target{Channels: []string{"room"}}, bridge.Counts{Delivered: 2, Dropped: 1}, []*conn{a, b}},
		{"broadcast", bridge.Target{Broadcast: true}, bridge.Counts{Delivered: 3, Dropped: 1}, []*conn{a, b, c}},
		{"broadcast_exclude", bridge.Target{Broadcast: true, Exclude: []string{"hub.a", "hub.full"}}, bridge.Counts{Delivered: 2}, []*conn{b, c}},
		{"dedupe_across_selectors", bridge.Target{Connections: []string{"hub.a", "hub.a"}, Users: []string{"u1"}, Channels: []string{"room", "news"}},
			bridge.Counts{Delivered: 3, Dropped: 1}, []*conn{a, b, c}},
		{"exclude_after_dedupe", bridge.Target{Users: []string{"u1", "u2"}, Exclude: []string{"hub.b"}}, bridge.Counts{Delivered: 2}, []*conn{a, c}},
		{"empty", bridge.Target{}, bridge.Counts{}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := map[*conn]int{a: queued(a), b: queued(b), c: queued(c)}
			got := h.Deliver(&tc.target, bridge.Message{Data: []byte("x")})
			if got != tc.want {
				t.Fatalf("counts %+v, want %+v", got, tc.want)
			}
			for k, n := range before {
				wantN := n
				if slices.Contains(tc.got, k) {
					wantN++
				}
				if queued(k) != wantN {
					t.Fatalf("%s has %d queued, want %d", k.id, queued(k), wantN)
				}
			}
			// Drain the queues again so the next case starts equal.
			for _, k := range []*conn{a, b, c} {
				k.mu.Lock()
				k.releaseQueueLocked()
				k.mu.Unlock()
			}
		})
	}
	if got := metricValue(s.m.set, "wsidecar_send_queue_dropped_total"); got != "3" {
		t.Fatalf("dropped metric %q, want 3", got)
	}
}

type watchLog struct {
	mu    sync.Mutex
	calls []string
}

func (w *watchLog) ChannelsChanged(added, removed []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls = append(w.calls, fmt.Sprintf("+%s -%s", strings.Join(added, ","), strings.Join(removed, ",")))
}

func (w *watchLog) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.calls
	w.calls = nil
	return c
}

func TestChannelWatcher(t *testing.T) {
	s := hubFixture(t, config.Limits{})
	h := s.Hub()
	pre := detached(s, "hub.pre", "", true, "early")
	w := &watchLog{}
	h.SetWatcher(w)
	if got := w.take(); len(got) != 1 || got[0] != "+early -" {
		t.Fatalf("late watcher told %v", got)
	}
	a := detached(s, "hub.a", "u1", true)
	b := detached(s, "hub.b", "u1", true)
	steps := []struct {
		name string
		do   func() int
		n    int
		want []string
	}{
		{"first_subscriber", func() int { return h.Subscribe("hub.a", "", []string{"x", "y"}) }, 1, []string{"+x,y -"}},
		{"user_subscribe_counts_sockets", func() int { return h.Subscribe("", "u1", []string{"x", "z"}) }, 2, []string{"+z -"}},
		{"again_changes_nothing", func() int { return h.Subscribe("", "u1", []string{"x"}) }, 0, nil},
		{"not_last_subscriber", func() int { return h.Unsubscribe("hub.a", "", []string{"x"}) }, 1, nil},
		{"last_subscriber", func() int { return h.Unsubscribe("", "u1", []string{"x", "y"}) }, 2, []string{"+ -x,y"}},
		{"socket_leaves", func() int { h.remove(a); h.remove(b); return 0 }, 0, []string{"+ -z"}},
		{"unknown_conn", func() int { return h.Subscribe("hub.nope", "", []string{"q"}) }, 0, nil},
	}
	for _, st := range steps {
		if n := st.do(); n != st.n {
			t.Fatalf("%s: changed %d sockets, want %d", st.name, n, st.n)
		}
		if got := w.take(); !slices.Equal(got, st.want) {
			t.Fatalf("%s: watcher told %v, want %v", st.name, got, st.want)
		}
	}
	if h.Count() != 1 {
		t.Fatalf("Count = %d", h.Count())
	}
	if st, ok := h.Lookup(pre.id); !ok || !slices.Equal(st.Channels, []string{"early"}) {
		t.Fatalf("Lookup = %+v %v", st, ok)
	}
}

// BenchmarkHubDeliverChannel measures one delivery to a channel of 10,000
// sockets: hub lookup, one frame encoding, and queueing to every socket
// (whose writers discard frames, so socket I/O is not measured).
func BenchmarkHubDeliverChannel(b *testing.B) {
	s := hubFixture(b, config.Limits{SendQueue: 1 << 16, SlowConsumer: "drop"})
	const n = 10000
	for i := 0; i < n; i++ {
		detached(s, fmt.Sprintf("hub.%d", i), "", true, "big")
	}
	t := &bridge.Target{Channels: []string{"big"}}
	m := bridge.Message{Data: []byte(`{"event":"tick","payload":"0123456789abcdef"}`)}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if got := s.Hub().Deliver(t, m); got.Delivered+got.Dropped != n {
			b.Fatalf("counts %+v", got)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/socket")
}

// BenchmarkHeartbeatScan measures one heartbeat tick over 100,000 idle
// sockets (nothing due: the common case between pings).
func BenchmarkHeartbeatScan(b *testing.B) {
	s := hubFixture(b, config.Limits{})
	for i := 0; i < 100000; i++ {
		detached(s, fmt.Sprintf("hub.%d", i), "", true)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.scan()
	}
}
