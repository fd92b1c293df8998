package bridge

// Cluster stories: several RedisBrokers (one per "replica"), each with an
// in-process hub, sharing one real redis-server. The hubs are in-memory
// stand-ins for the proxy's hub with the same contract (dedupe per socket,
// ChannelsChanged on 0→1 and 1→0); everything between the replicas goes
// through Redis.

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/wsidecar/wsidecar/config"
)

// clusterHub is one replica's sockets.
type clusterHub struct {
	discard   bool         // count deliveries without keeping them (benchmarks)
	delivered atomic.Int64 // deliveries so far

	mu      sync.Mutex
	conns   map[string]*clusterConn
	members map[string]int // channel → local subscribers
	watcher interface{ ChannelsChanged(added, removed []string) }
	closes  map[string]int // connection id → close code
}

type clusterConn struct {
	user     string
	channels map[string]bool
	got      []string // payloads in arrival order ("b:" prefix for binary)
}

func newClusterHub() *clusterHub {
	return &clusterHub{conns: map[string]*clusterConn{}, members: map[string]int{}, closes: map[string]int{}}
}

// watch installs the broker as the channel watcher, telling it about the
// channels already present (as the proxy hub's SetWatcher does).
func (h *clusterHub) watch(w interface{ ChannelsChanged(added, removed []string) }) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.watcher = w
	if chans := slices.Sorted(maps.Keys(h.members)); len(chans) > 0 {
		w.ChannelsChanged(chans, nil)
	}
}

// add registers a socket with a user and channels.
func (h *clusterHub) add(id, user string, channels ...string) {
	h.mu.Lock()
	h.conns[id] = &clusterConn{user: user, channels: map[string]bool{}}
	h.mu.Unlock()
	h.Subscribe(id, "", channels)
}

func (h *clusterHub) remove(id string) {
	h.mu.Lock()
	c := h.conns[id]
	h.mu.Unlock()
	if c == nil {
		return
	}
	h.Unsubscribe(id, "", slices.Collect(maps.Keys(c.channels)))
	h.mu.Lock()
	delete(h.conns, id)
	h.mu.Unlock()
}

func (h *clusterHub) Deliver(t *Target, m Message) Counts {
	h.mu.Lock()
	defer h.mu.Unlock()
	var n Counts
	for id, c := range h.conns {
		match := t.Broadcast || slices.Contains(t.Connections, id) || (c.user != "" && slices.Contains(t.Users, c.user))
		for _, ch := range t.Channels {
			match = match || c.channels[ch]
		}
		if !match || slices.Contains(t.Exclude, id) {
			continue
		}
		n.Delivered++
		h.delivered.Add(1)
		if h.discard {
			continue
		}
		p := string(m.Data)
		if m.Binary {
			p = "b:" + p
		}
		c.got = append(c.got, p)
	}
	return n
}

func (h *clusterHub) change(id, user string, channels []string, add bool) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	var targets []*clusterConn
	if id != "" {
		if c := h.conns[id]; c != nil {
			targets = append(targets, c)
		}
	} else {
		for _, c := range h.conns {
			if c.user == user && user != "" {
				targets = append(targets, c)
			}
		}
	}
	var added, removed []string
	n := 0
	for _, c := range targets {
		did := false
		for _, ch := range channels {
			if c.channels[ch] == add {
				continue
			}
			did = true
			if add {
				c.channels[ch] = true
				if h.members[ch]++; h.members[ch] == 1 {
					added = append(added, ch)
				}
			} else {
				delete(c.channels, ch)
				if h.members[ch]--; h.members[ch] == 0 {
					delete(h.members, ch)
					removed = append(removed, ch)
				}
			}
		}
		if did {
			n++
		}
	}
	if h.watcher != nil && len(added)+len(removed) > 0 {
		h.watcher.ChannelsChanged(added, removed)
	}
	return n
}

func (h *clusterHub) Subscribe(id, user string, channels []string) int {
	return h.change(id, user, channels, true)
}

func (h *clusterHub) Unsubscribe(id, user string, channels []string) int {
	return h.change(id, user, channels, false)
}

func (h *clusterHub) state(id string, c *clusterConn) ConnState {
	return ConnState{ID: id, Route: "/ws", User: c.user, Channels: slices.Sorted(maps.Keys(c.channels))}
}

func (h *clusterHub) Lookup(id string) (ConnState, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.conns[id]
	if c == nil {
		return ConnState{}, false
	}
	return h.state(id, c), true
}

func (h *clusterHub) List(user, channel string) []ConnState {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []ConnState
	for _, id := range slices.Sorted(maps.Keys(h.conns)) {
		c := h.conns[id]
		if (user == "" || c.user == user) && (channel == "" || c.channels[channel]) {
			out = append(out, h.state(id, c))
		}
	}
	return out
}

func (h *clusterHub) Disconnect(id string, code int, reason string) bool {
	h.mu.Lock()
	_, ok := h.conns[id]
	if ok {
		h.closes[id] = code
	}
	h.mu.Unlock()
	if ok {
		h.remove(id)
	}
	return ok
}

// got returns what one socket received so far.
func (h *clusterHub) got(id string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c := h.conns[id]; c != nil {
		return slices.Clone(c.got)
	}
	return nil
}

func (h *clusterHub) closedWith(id string) (int, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	code, ok := h.closes[id]
	return code, ok
}

// replica is one broker with its hub and metrics.
type clusterReplica struct {
	node    string
	hub     *clusterHub
	broker  *RedisBroker
	metrics *metrics.Set
	logs    *redisOutput
}

// newReplica starts a broker for node on r. opts may be zero.
func newReplica(t testing.TB, url, node string, opts RedisOptions) *clusterReplica {
	t.Helper()
	return newReplicaWithHub(t, url, node, opts, newClusterHub())
}

func newReplicaWithHub(t testing.TB, url, node string, opts RedisOptions, hub *clusterHub) *clusterReplica {
	t.Helper()
	rp := &clusterReplica{node: node, hub: hub, metrics: metrics.NewSet(), logs: &redisOutput{w: &bytes.Buffer{}}}
	opts.Metrics = rp.metrics
	opts.Logger = redisTestLogger(rp.logs)
	b, err := NewRedisBroker(config.Cluster{NodeID: node, Redis: config.Redis{URL: url, Prefix: "t"}}, rp.hub, opts)
	if err != nil {
		t.Fatalf("NewRedisBroker(%s): %v", node, err)
	}
	rp.broker = b
	rp.hub.watch(b)
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close %s: %v", node, err)
		}
		if t.Failed() {
			t.Logf("logs of %s:\n%s", node, rp.logs.w.String())
		}
	})
	return rp
}

// id makes a connection id on this replica, shaped like the proxy's.
func (rp *clusterReplica) id(s string) string { return rp.node + "." + s }

// metric reads one series from the replica's metrics (0 when absent).
func (rp *clusterReplica) metric(t testing.TB, series string) float64 {
	t.Helper()
	var buf bytes.Buffer
	rp.metrics.WritePrometheus(&buf)
	for line := range strings.SplitSeq(buf.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", line, err)
			}
			return v
		}
	}
	return 0
}

func redisTestLogger(w *redisOutput) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// clusterWait polls cond until it holds or the deadline passes.
func clusterWait(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitSubscribers waits until Redis itself reports n subscribers of a
// topic.
func waitSubscribers(t testing.TB, rs *redisServer, topic string, n int64) {
	t.Helper()
	c := rs.client("")
	clusterWait(t, 10*time.Second, fmt.Sprintf("%d subscribers of %s", n, topic), func() bool { return redisNumSub(t, c, topic) == n })
}

func clusterPublish(t testing.TB, rp *clusterReplica, target Target, text string) PublishResult {
	t.Helper()
	res, err := rp.broker.Publish(context.Background(), &target, Message{Data: []byte(text)}, PublishOptions{})
	if err != nil {
		t.Fatalf("publish on %s: %v", rp.node, err)
	}
	return res
}

// settle publishes a marker on a broadcast and waits until every socket
// listed has it: everything published before the marker on the same
// replica has then arrived too (one ordered subscriber connection per
// replica), so the counts that follow are final, duplicates included.
func clusterSettle(t testing.TB, from *clusterReplica, sockets map[*clusterReplica][]string) {
	t.Helper()
	marker := fmt.Sprintf("marker-%d", time.Now().UnixNano())
	clusterPublish(t, from, Target{Broadcast: true}, marker)
	for rp, ids := range sockets {
		for _, id := range ids {
			clusterWait(t, 10*time.Second, id+" to see "+marker, func() bool { return slices.Contains(rp.hub.got(id), marker) })
		}
	}
}

// without drops markers from a socket's messages.
func withoutMarkers(msgs []string) []string {
	return slices.DeleteFunc(msgs, func(s string) bool { return strings.HasPrefix(s, "marker-") })
}

// threeReplicas starts a, b and c on one Redis with sockets:
//
//	a.1 user u1, room      b.1 user u1, room, news   c.1 user u2, room
//	a.2 user u2            b.2 user u1               c.2 user u1
func threeReplicas(t *testing.T) (*redisServer, *clusterReplica, *clusterReplica, *clusterReplica) {
	rs := startRedisServer(t)
	a := newReplica(t, rs.URL, "a", RedisOptions{})
	b := newReplica(t, rs.URL, "b", RedisOptions{})
	c := newReplica(t, rs.URL, "c", RedisOptions{})
	a.hub.add(a.id("1"), "u1", "room")
	a.hub.add(a.id("2"), "u2")
	b.hub.add(b.id("1"), "u1", "room", "news")
	b.hub.add(b.id("2"), "u1")
	c.hub.add(c.id("1"), "u2", "room")
	c.hub.add(c.id("2"), "u1")
	waitSubscribers(t, rs, "t:all", 3)
	waitSubscribers(t, rs, "t:ch:room", 3)
	waitSubscribers(t, rs, "t:ch:news", 1)
	return rs, a, b, c
}

func clusterSockets(a, b, c *clusterReplica) map[*clusterReplica][]string {
	return map[*clusterReplica][]string{
		a: {a.id("1"), a.id("2")}, b: {b.id("1"), b.id("2")}, c: {c.id("1"), c.id("2")},
	}
}

// The four kinds of target reach the right sockets on every replica, each
// socket exactly once, and the results say what happened where.
func TestRedisFanOut(t *testing.T) {
	_, a, b, c := threeReplicas(t)

	cases := []struct {
		name       string
		from       *clusterReplica
		target     Target
		want       map[string]bool // sockets that get it
		delivered  int
		remote     int
		binaryData bool
	}{
		{name: "channel", from: a, target: Target{Channels: []string{"room"}},
			want: map[string]bool{"a.1": true, "b.1": true, "c.1": true}, delivered: 1, remote: 2},
		{name: "user", from: b, target: Target{Users: []string{"u1"}},
			want: map[string]bool{"a.1": true, "b.1": true, "b.2": true, "c.2": true}, delivered: 2, remote: 2},
		{name: "connection on another replica", from: a, target: Target{Connections: []string{"c.2"}},
			want: map[string]bool{"c.2": true}, delivered: 0, remote: 1},
		{name: "connections on two replicas and here", from: a, target: Target{Connections: []string{"a.2", "b.2", "c.1"}},
			want: map[string]bool{"a.2": true, "b.2": true, "c.1": true}, delivered: 1, remote: 2},
		{name: "channel and user overlap", from: c, target: Target{Channels: []string{"room"}, Users: []string{"u1"}},
			want: map[string]bool{"a.1": true, "b.1": true, "b.2": true, "c.1": true, "c.2": true}, delivered: 2, remote: 2},
		{name: "two channels overlap", from: a, target: Target{Channels: []string{"room", "news"}},
			want: map[string]bool{"a.1": true, "b.1": true, "c.1": true}, delivered: 1, remote: 2},
		{name: "channel and remote connection overlap", from: a, target: Target{Channels: []string{"room"}, Connections: []string{"b.1", "b.2"}},
			want: map[string]bool{"a.1": true, "b.1": true, "b.2": true, "c.1": true}, delivered: 1, remote: 2},
		{name: "broadcast with exclude", from: b, target: Target{Broadcast: true, Exclude: []string{"a.1", "c.2"}},
			want: map[string]bool{"a.2": true, "b.1": true, "b.2": true, "c.1": true}, delivered: 2, remote: 2},
		{name: "channel with exclude on another replica", from: a, target: Target{Channels: []string{"room"}, Exclude: []string{"b.1"}},
			want: map[string]bool{"a.1": true, "c.1": true}, delivered: 1, remote: 2},
		{name: "binary to a channel only one replica listens to", from: c, target: Target{Channels: []string{"news"}},
			want: map[string]bool{"b.1": true}, delivered: 0, remote: 1, binaryData: true},
		{name: "connection on a node nobody runs", from: a, target: Target{Connections: []string{"zz.1"}},
			want: map[string]bool{}, delivered: 0, remote: 0},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			text := fmt.Sprintf("msg-%d", i)
			res, err := tc.from.broker.Publish(context.Background(), &tc.target, Message{Binary: tc.binaryData, Data: []byte(text)}, PublishOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if res.Delivered != tc.delivered || res.Remote != tc.remote || res.Failed != 0 || res.Dropped != 0 {
				t.Errorf("result = %+v, want delivered %d, remote %d", res, tc.delivered, tc.remote)
			}
			clusterSettle(t, tc.from, clusterSockets(a, b, c))
			want := text
			if tc.binaryData {
				want = "b:" + text
			}
			for _, rp := range []*clusterReplica{a, b, c} {
				for _, n := range []string{"1", "2"} {
					id := rp.id(n)
					got := 0
					for _, m := range rp.hub.got(id) {
						if m == want {
							got++
						}
					}
					if exp := map[bool]int{true: 1}[tc.want[id]]; got != exp {
						t.Errorf("%s received %q %d times, want %d (all: %q)", id, want, got, exp, withoutMarkers(rp.hub.got(id)))
					}
				}
			}
		})
	}
	if got := b.metric(t, "wsidecar_cluster_received_total"); got == 0 {
		t.Errorf("wsidecar_cluster_received_total on b = 0")
	}
	if got := a.metric(t, "wsidecar_cluster_redis_up"); got != 1 {
		t.Errorf("wsidecar_cluster_redis_up = %v, want 1", got)
	}
	if ok, detail := a.broker.Ready(); !ok || detail != "redis: up" {
		t.Errorf("Ready() = %v, %q", ok, detail)
	}
}

// LocalOnly pushes (SSE streams with scope "local") never leave the replica.
func TestRedisLocalOnly(t *testing.T) {
	_, a, b, c := threeReplicas(t)
	res, err := a.broker.Publish(context.Background(), &Target{Channels: []string{"room"}}, Message{Data: []byte("local")}, PublishOptions{LocalOnly: true})
	if err != nil || res != (PublishResult{Counts: Counts{Delivered: 1}}) {
		t.Fatalf("Publish = %+v, %v", res, err)
	}
	clusterSettle(t, a, clusterSockets(a, b, c))
	if got := withoutMarkers(b.hub.got(b.id("1"))); len(got) != 0 {
		t.Errorf("b.1 got %q from a local-only push", got)
	}
}

// Connection commands reach the replica holding the socket: disconnect,
// lookup, subscribe; list gathers every replica.
func TestRedisConnectionCommands(t *testing.T) {
	rs, a, b, c := threeReplicas(t)
	ctx := context.Background()

	st, ok, err := a.broker.Lookup(ctx, "c.1")
	if err != nil || !ok || st.ID != "c.1" || st.User != "u2" || !slices.Equal(st.Channels, []string{"room"}) {
		t.Errorf("Lookup(c.1) = %+v, %v, %v", st, ok, err)
	}
	for _, id := range []string{"c.nope", "zz.1"} {
		if _, ok, err := a.broker.Lookup(ctx, id); ok || err != nil {
			t.Errorf("Lookup(%s) = %v, %v; want not found", id, ok, err)
		}
	}

	list, err := b.broker.List(ctx, "u1", "")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range list {
		ids = append(ids, s.ID)
	}
	if want := []string{"a.1", "b.1", "b.2", "c.2"}; !slices.Equal(ids, want) {
		t.Errorf("List(user u1) = %q, want %q", ids, want)
	}
	list, _ = c.broker.List(ctx, "", "room")
	if len(list) != 3 {
		t.Errorf("List(channel room) has %d sockets, want 3", len(list))
	}

	// Subscribe a socket on c from a; c starts listening to the channel
	// and a push from a reaches it.
	res, err := a.broker.Subscribe(ctx, "c.2", "", []string{"sports"})
	if err != nil || res != (ChangeResult{Remote: 1}) {
		t.Fatalf("Subscribe(c.2) = %+v, %v", res, err)
	}
	waitSubscribers(t, rs, "t:ch:sports", 1)
	if r := clusterPublish(t, a, Target{Channels: []string{"sports"}}, "goal"); r.Remote != 1 {
		t.Errorf("push to sports: %+v, want remote 1", r)
	}
	clusterWait(t, 5*time.Second, "c.2 to get the sports push", func() bool { return slices.Contains(c.hub.got("c.2"), "goal") })

	// Subscribe every u1 socket everywhere, then unsubscribe them.
	res, err = b.broker.Subscribe(ctx, "", "u1", []string{"u1-news"})
	if err != nil || res.Changed != 2 || res.Remote != 2 {
		t.Fatalf("Subscribe(user u1) = %+v, %v", res, err)
	}
	waitSubscribers(t, rs, "t:ch:u1-news", 3)
	res, err = b.broker.Unsubscribe(ctx, "", "u1", []string{"u1-news"})
	if err != nil || res.Changed != 2 || res.Remote != 2 {
		t.Fatalf("Unsubscribe(user u1) = %+v, %v", res, err)
	}
	waitSubscribers(t, rs, "t:ch:u1-news", 0)

	// Disconnect a socket on c from a.
	ok, err = a.broker.Disconnect(ctx, "c.1", 4001, "kicked")
	if err != nil || !ok {
		t.Fatalf("Disconnect(c.1) = %v, %v", ok, err)
	}
	if code, closed := c.hub.closedWith("c.1"); !closed || code != 4001 {
		t.Errorf("c.1 closed = %v with %d, want 4001", closed, code)
	}
	for _, id := range []string{"c.1", "c.nope", "zz.1", "nodeless"} {
		if ok, err := a.broker.Disconnect(ctx, id, 1000, ""); ok || err != nil {
			t.Errorf("Disconnect(%s) = %v, %v; want false (gone)", id, ok, err)
		}
	}
	// c had the last room subscriber there: it stops listening.
	waitSubscribers(t, rs, "t:ch:room", 2)
	if ok, err := a.broker.Disconnect(ctx, "a.2", 1000, ""); !ok || err != nil {
		t.Errorf("local Disconnect(a.2) = %v, %v", ok, err)
	}
}

// 1,000 pushes to one channel from one publisher arrive in order on every
// replica.
func TestRedisChannelOrder(t *testing.T) {
	_, a, b, c := threeReplicas(t)
	const n = 1000
	want := make([]string, n)
	for i := range n {
		want[i] = strconv.Itoa(i)
		target := Target{Channels: []string{"room"}}
		if i%100 == 99 {
			// Now and then through P:all: order holds across topics too.
			target.Users = []string{"nobody"}
		}
		if r := clusterPublish(t, a, target, want[i]); r.Failed != 0 {
			t.Fatalf("push %d failed: %+v", i, r)
		}
	}
	for _, sock := range []struct {
		rp *clusterReplica
		id string
	}{{a, "a.1"}, {b, "b.1"}, {c, "c.1"}} {
		clusterWait(t, 20*time.Second, sock.id+" to get all pushes", func() bool { return len(sock.rp.hub.got(sock.id)) >= n })
		if got := sock.rp.hub.got(sock.id); !slices.Equal(got, want) {
			first := 0
			for first < min(len(got), n) && got[first] == want[first] {
				first++
			}
			t.Errorf("%s: %d messages, first difference at %d", sock.id, len(got), first)
		}
	}
}

// Several publishers at once (their PUBLISHes share pipelines): each one's
// messages still arrive in its order on every replica.
func TestRedisConcurrentPublishersKeepTheirOrder(t *testing.T) {
	_, a, b, c := threeReplicas(t)
	const publishers, n = 4, 300
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				target := Target{Channels: []string{"room"}}
				msg := Message{Data: []byte(fmt.Sprintf("p%d-%d", p, i))}
				if r, err := a.broker.Publish(context.Background(), &target, msg, PublishOptions{}); err != nil || r.Failed != 0 {
					t.Errorf("publisher %d, push %d: %+v, %v", p, i, r, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, sock := range []struct {
		rp *clusterReplica
		id string
	}{{a, "a.1"}, {b, "b.1"}, {c, "c.1"}} {
		clusterWait(t, 20*time.Second, sock.id+" to get all pushes", func() bool { return len(sock.rp.hub.got(sock.id)) >= publishers*n })
		next := make([]int, publishers)
		for _, m := range sock.rp.hub.got(sock.id) {
			var p, i int
			if _, err := fmt.Sscanf(m, "p%d-%d", &p, &i); err != nil || p >= publishers {
				t.Fatalf("%s got %q", sock.id, m)
			}
			if i != next[p] {
				t.Fatalf("%s: publisher %d's message %d arrived when %d was expected", sock.id, p, i, next[p])
			}
			next[p]++
		}
	}
}

// 5,000 sockets joining and leaving one channel (each one the channel's
// only local subscriber, so every join and leave is a 0→1 or 1→0
// transition) cost a handful of Redis SUBSCRIBE commands, as Redis itself
// counts them, and leave the replica subscribed exactly when a socket is.
func TestRedisSubscriptionChurnIsBatched(t *testing.T) {
	rs := startRedisServer(t)
	a := newReplica(t, rs.URL, "a", RedisOptions{})
	waitSubscribers(t, rs, "t:all", 1)
	rc := rs.client("")
	subs0, unsubs0 := redisCommandCalls(t, rc, "subscribe"), redisCommandCalls(t, rc, "unsubscribe")

	for i := range 5000 {
		id := a.id(strconv.Itoa(i))
		a.hub.add(id, "", "hot")
		if i < 4999 {
			a.hub.remove(id)
		}
	}
	waitSubscribers(t, rs, "t:ch:hot", 1)
	clusterWait(t, 5*time.Second, "the subscriptions gauge", func() bool { return a.metric(t, "wsidecar_cluster_subscriptions") == 1 })
	subs, unsubs := redisCommandCalls(t, rc, "subscribe")-subs0, redisCommandCalls(t, rc, "unsubscribe")-unsubs0
	t.Logf("10,000 transitions: %d SUBSCRIBE, %d UNSUBSCRIBE", subs, unsubs)
	if subs < 1 || subs > 4 || unsubs > 4 {
		t.Errorf("10,000 join/leave transitions caused %d SUBSCRIBE and %d UNSUBSCRIBE commands, want O(1)", subs, unsubs)
	}

	// The last one leaves: the replica stops listening.
	a.hub.remove(a.id("4999"))
	waitSubscribers(t, rs, "t:ch:hot", 0)

	// 5,000 sockets join one channel at once: one transition, one command.
	subs0 = redisCommandCalls(t, rc, "subscribe")
	for i := range 5000 {
		a.hub.add(a.id("x"+strconv.Itoa(i)), "", "crowd")
	}
	waitSubscribers(t, rs, "t:ch:crowd", 1)
	if subs := redisCommandCalls(t, rc, "subscribe") - subs0; subs != 1 {
		t.Errorf("5,000 sockets joining one channel caused %d SUBSCRIBE commands, want 1", subs)
	}
}

// Redis goes away for five seconds: local delivery goes on, failures are
// counted and reported, nothing piles up, and cross-replica delivery comes
// back by itself when a new Redis listens on the same address.
func TestRedisOutage(t *testing.T) {
	rs := startRedisServer(t)
	opts := RedisOptions{HealthInterval: time.Second}
	a := newReplica(t, rs.URL, "a", opts)
	b := newReplica(t, rs.URL, "b", opts)
	a.hub.add(a.id("1"), "", "room")
	b.hub.add(b.id("1"), "", "room")
	waitSubscribers(t, rs, "t:ch:room", 2)
	if r := clusterPublish(t, a, Target{Channels: []string{"room"}}, "before"); r.Remote != 1 {
		t.Fatalf("before the outage: %+v", r)
	}
	clusterWait(t, 5*time.Second, "b.1 to get the first push", func() bool { return slices.Contains(b.hub.got("b.1"), "before") })

	rs.kill()
	outage := time.Now()
	clusterWait(t, 5*time.Second, "a to notice the outage", func() bool { return a.metric(t, "wsidecar_cluster_redis_up") == 0 })
	if ok, detail := a.broker.Ready(); !ok || !strings.Contains(detail, "redis: down since") {
		t.Errorf("Ready() during the outage = %v, %q; want ready with a down detail", ok, detail)
	}

	// Pushes during the outage: local sockets get them at once, the
	// cluster part fails fast and is counted.
	start := time.Now()
	var failed int
	for i := range 50 {
		r := clusterPublish(t, a, Target{Channels: []string{"room"}}, fmt.Sprintf("during-%d", i))
		if r.Delivered != 1 {
			t.Fatalf("local delivery during the outage: %+v", r)
		}
		failed += r.Failed
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("50 pushes during the outage took %v; a push must not wait for Redis", took)
	}
	if failed != 50 {
		t.Errorf("Failed summed to %d over 50 pushes, want 50", failed)
	}
	// A subscription change during the outage is remembered for later.
	b.hub.add(b.id("2"), "", "late")

	// No goroutine or memory growth while Redis stays down.
	time.Sleep(time.Second)
	runtime.GC()
	g1 := runtime.NumGoroutine()
	var m1 runtime.MemStats
	runtime.ReadMemStats(&m1)
	for i := range 500 {
		clusterPublish(t, a, Target{Channels: []string{"room"}}, "x")
		a.hub.add(a.id("c"+strconv.Itoa(i)), "", "churn-"+strconv.Itoa(i%10))
		a.hub.remove(a.id("c" + strconv.Itoa(i)))
		_, _, _ = a.broker.Lookup(context.Background(), "b.1")
	}
	time.Sleep(max(0, 5*time.Second-time.Since(outage)))
	runtime.GC()
	g2 := runtime.NumGoroutine()
	var m2 runtime.MemStats
	runtime.ReadMemStats(&m2)
	if g2 > g1+3 {
		t.Errorf("goroutines grew from %d to %d during the outage", g1, g2)
	}
	if grow := int64(m2.HeapInuse) - int64(m1.HeapInuse); grow > 4<<20 {
		t.Errorf("heap in use grew by %d bytes during the outage", grow)
	}
	if got := a.metric(t, "wsidecar_cluster_publish_failures_total"); got < 550 {
		t.Errorf("wsidecar_cluster_publish_failures_total = %v, want at least 550", got)
	}
	if got := a.metric(t, "wsidecar_cluster_redis_disconnects_total"); got != 1 {
		t.Errorf("wsidecar_cluster_redis_disconnects_total = %v, want 1", got)
	}

	// A new Redis, same address: both replicas resubscribe by themselves.
	rs.restart()
	waitSubscribers(t, rs, "t:all", 2)
	waitSubscribers(t, rs, "t:ch:room", 2)
	waitSubscribers(t, rs, "t:ch:late", 1)
	clusterWait(t, 5*time.Second, "a to report the link up", func() bool { ok, d := a.broker.Ready(); return ok && d == "redis: up" })
	// go-redis probes a pool that failed to dial once a second, so the
	// first pushes after the restart may still fail fast.
	var last PublishResult
	clusterWait(t, 5*time.Second, "a push after the outage to reach b", func() bool {
		last = clusterPublish(t, a, Target{Channels: []string{"room"}}, "after")
		return last.Remote == 1 && last.Failed == 0
	})
	clusterWait(t, 5*time.Second, "b.1 to get a push after the outage", func() bool { return slices.Contains(b.hub.got("b.1"), "after") })
	clusterPublish(t, a, Target{Channels: []string{"late"}}, "late news")
	clusterWait(t, 5*time.Second, "b.2 to get a push on the channel it joined during the outage", func() bool {
		return slices.Contains(b.hub.got("b.2"), "late news")
	})
	for _, m := range b.hub.got("b.1") {
		if strings.HasPrefix(m, "during-") {
			t.Errorf("b.1 got %q, published while Redis was down (nothing is queued)", m)
		}
	}
}

// A link that goes silent without being closed (a dead node, a broken
// network path) is noticed by the health check and re-established once
// the path works again, with every topic resubscribed.
func TestRedisSilentLinkIsReplaced(t *testing.T) {
	rs := startRedisServer(t)
	relay := startFreezableRelay(t, rs.Addr)
	opts := RedisOptions{HealthInterval: 200 * time.Millisecond}
	a := newReplica(t, rs.URL, "a", opts)
	b := newReplica(t, "redis://"+relay.Addr+"/0", "b", opts)
	b.hub.add(b.id("1"), "", "room")
	waitSubscribers(t, rs, "t:ch:room", 1)

	relay.frozen.Store(true)
	clusterWait(t, 5*time.Second, "b to notice the silent link", func() bool {
		_, d := b.broker.Ready()
		return strings.HasPrefix(d, "redis: down since")
	})
	relay.frozen.Store(false)
	clusterWait(t, 10*time.Second, "b to be back", func() bool { _, d := b.broker.Ready(); return d == "redis: up" })
	waitSubscribers(t, rs, "t:ch:room", 1)
	clusterWait(t, 5*time.Second, "a push from a to reach b again", func() bool {
		clusterPublish(t, a, Target{Channels: []string{"room"}}, "again")
		return slices.Contains(b.hub.got("b.1"), "again")
	})
}

// The password and database travel in the URL; a wrong password shows in
// the readiness detail while local delivery still works.
func TestRedisPasswordURL(t *testing.T) {
	rs := startRedisServer(t, "--requirepass", "s3cret")
	url := "redis://:s3cret@" + rs.Addr + "/0"
	a := newReplica(t, url, "a", RedisOptions{})
	b := newReplica(t, url, "b", RedisOptions{})
	b.hub.add(b.id("1"), "", "room")
	c := rs.client("s3cret")
	clusterWait(t, 10*time.Second, "b to subscribe", func() bool { return redisNumSub(t, c, "t:ch:room") == 1 })
	if r := clusterPublish(t, a, Target{Channels: []string{"room"}}, "hi"); r.Remote != 1 {
		t.Errorf("push: %+v", r)
	}
	clusterWait(t, 5*time.Second, "b.1 to get the push", func() bool { return slices.Contains(b.hub.got("b.1"), "hi") })

	bad := newReplica(t, "redis://:wrong@"+rs.Addr+"/0", "bad", RedisOptions{})
	bad.hub.add(bad.id("1"), "", "room")
	r := clusterPublish(t, bad, Target{Channels: []string{"room"}}, "x")
	if r.Delivered != 1 || r.Failed != 1 {
		t.Errorf("push with a wrong password: %+v, want delivered 1, failed 1", r)
	}
	clusterWait(t, 5*time.Second, "the auth error in the readiness detail", func() bool {
		ok, d := bad.broker.Ready()
		return ok && strings.Contains(d, "WRONGPASS") && !strings.Contains(d, "wrong@")
	})
}

// Bad settings fail at construction, with the reason.
func TestNewRedisBrokerErrors(t *testing.T) {
	for _, tc := range []struct {
		name, node, url, want string
	}{
		{"empty url", "a", "", "url is empty"},
		{"http scheme", "a", "http://127.0.0.1:6379", "invalid URL scheme"},
		{"unix socket", "a", "unix:///tmp/redis.sock", "only redis://"},
		{"bad db", "a", "redis://127.0.0.1:6379/x", "invalid database"},
		{"empty node", "", "redis://127.0.0.1:6379", "node id"},
		{"node with a space", "a b", "redis://127.0.0.1:6379", "node id"},
		{"node with a colon", "a:b", "redis://127.0.0.1:6379", "node id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := NewRedisBroker(config.Cluster{NodeID: tc.node, Redis: config.Redis{URL: tc.url}}, newClusterHub(), RedisOptions{})
			if err == nil {
				b.Close()
				t.Fatalf("no error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
	if _, err := NewRedisBroker(config.Cluster{NodeID: "a", Redis: config.Redis{URL: "redis://x"}}, nil, RedisOptions{}); err == nil {
		t.Error("nil hub accepted")
	}
}

// rediss:// turns TLS on, with the host as server name; RedisOptions can
// supply a private CA.
func TestRedisTLSOptions(t *testing.T) {
	o, err := redisClientOptions(config.Cluster{NodeID: "a", Redis: config.Redis{URL: "rediss://user:pw@redis.example:6380/2"}}, RedisOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if o.TLSConfig == nil || o.TLSConfig.ServerName != "redis.example" || o.Username != "user" || o.Password != "pw" || o.DB != 2 {
		t.Errorf("options = tls %v, user %q, db %d", o.TLSConfig, o.Username, o.DB)
	}
	if o.MaxRetries != -1 || o.Protocol != 2 || o.DialTimeout != time.Second {
		t.Errorf("retries %d, protocol %d, dial timeout %v", o.MaxRetries, o.Protocol, o.DialTimeout)
	}
	o, err = redisClientOptions(config.Cluster{NodeID: "a", Redis: config.Redis{URL: "redis://127.0.0.1:6379/0?dial_timeout=3s"}}, RedisOptions{})
	if err != nil || o.TLSConfig != nil || o.DialTimeout != 3*time.Second {
		t.Errorf("plain URL: tls %v, dial timeout %v, %v", o.TLSConfig, o.DialTimeout, err)
	}
}

// A closed broker refuses work and says so in Ready.
func TestRedisBrokerClosed(t *testing.T) {
	rs := startRedisServer(t)
	a := newReplica(t, rs.URL, "a", RedisOptions{})
	if err := a.broker.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.broker.Publish(context.Background(), &Target{Broadcast: true}, Message{Data: []byte("x")}, PublishOptions{}); err != ErrBrokerClosed {
		t.Errorf("Publish after Close: %v", err)
	}
	if _, err := a.broker.Disconnect(context.Background(), "b.1", 1000, ""); err != ErrBrokerClosed {
		t.Errorf("Disconnect after Close: %v", err)
	}
	if ok, _ := a.broker.Ready(); ok {
		t.Error("Ready after Close")
	}
	a.broker.ChannelsChanged([]string{"x"}, nil) // must not block or panic
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b := newReplica(t, rs.URL, "b", RedisOptions{})
	if _, err := b.broker.Publish(ctx, &Target{Broadcast: true}, Message{}, PublishOptions{}); err != context.Canceled {
		t.Errorf("Publish with a cancelled context: %v", err)
	}
}

// BenchmarkRedisFanout measures cross-replica fan-out: pushes published on
// one broker and delivered by a second one's hub, through a real Redis.
func BenchmarkRedisFanout(bm *testing.B) {
	rs := startRedisServer(bm)
	a := newReplica(bm, rs.URL, "a", RedisOptions{})
	sink := newClusterHub()
	sink.discard = true
	b := newReplicaWithHub(bm, rs.URL, "b", RedisOptions{}, sink)
	b.hub.add(b.id("1"), "", "bench")
	waitSubscribers(bm, rs, "t:ch:bench", 1)
	payload := bytes.Repeat([]byte("x"), 128)
	bm.SetBytes(int64(len(payload)))
	// Pushes arrive concurrently (many admin requests, SSE streams); each
	// PUBLISH is a round trip, so throughput needs several in flight.
	bm.SetParallelism(8)
	bm.ResetTimer()
	start := time.Now()
	bm.RunParallel(func(pb *testing.PB) {
		target := Target{Channels: []string{"bench"}}
		for pb.Next() {
			if _, err := a.broker.Publish(context.Background(), &target, Message{Data: payload}, PublishOptions{}); err != nil {
				bm.Error(err)
				return
			}
		}
	})
	clusterWait(bm, 30*time.Second, "every push to arrive", func() bool { return sink.delivered.Load() >= int64(bm.N) })
	bm.ReportMetric(float64(bm.N)/time.Since(start).Seconds(), "msgs/s")
}
