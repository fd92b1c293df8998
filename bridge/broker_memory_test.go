package bridge

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"
)

// recHub is an in-memory Hub that records every delivery, standing in for
// the proxy's hub (which lives in-process, so no network is faked).
type recHub struct {
	mu         sync.Mutex
	conns      map[string]*recConn
	deliveries []recDelivery
	closed     []recClose
}

type recConn struct {
	user     string
	channels []string
	full     bool // send queue full: deliveries are dropped
}

type recDelivery struct {
	Conn string
	Msg  Message
}

type recClose struct {
	ID     string
	Code   int
	Reason string
}

func newRecHub() *recHub { return &recHub{conns: make(map[string]*recConn)} }

// add registers a socket.
func (h *recHub) add(id, user string, channels ...string) *recHub {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.conns[id] = &recConn{user: user, channels: channels}
	return h
}

func (h *recHub) setFull(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.conns[id].full = true
}

func (h *recHub) Deliver(t *Target, m Message) Counts {
	h.mu.Lock()
	defer h.mu.Unlock()
	var c Counts
	for _, id := range slices.Sorted(maps.Keys(h.conns)) {
		rc := h.conns[id]
		match := t.Broadcast || slices.Contains(t.Connections, id) ||
			(rc.user != "" && slices.Contains(t.Users, rc.user))
		for _, ch := range rc.channels {
			match = match || slices.Contains(t.Channels, ch)
		}
		if !match || slices.Contains(t.Exclude, id) {
			continue
		}
		if rc.full {
			c.Dropped++
			continue
		}
		c.Delivered++
		h.deliveries = append(h.deliveries, recDelivery{id, Message{m.Binary, slices.Clone(m.Data)}})
	}
	return c
}

func (h *recHub) change(conn, user string, channels []string, add bool) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for id, rc := range h.conns {
		if (conn != "" && id != conn) || (conn == "" && rc.user != user) {
			continue
		}
		changed := false
		for _, ch := range channels {
			has := slices.Contains(rc.channels, ch)
			switch {
			case add && !has:
				rc.channels = append(rc.channels, ch)
				changed = true
			case !add && has:
				rc.channels = slices.DeleteFunc(rc.channels, func(x string) bool { return x == ch })
				changed = true
			}
		}
		if changed {
			n++
		}
	}
	return n
}

func (h *recHub) Subscribe(conn, user string, channels []string) int {
	return h.change(conn, user, channels, true)
}

func (h *recHub) Unsubscribe(conn, user string, channels []string) int {
	return h.change(conn, user, channels, false)
}

func (h *recHub) state(id string, rc *recConn) ConnState {
	return ConnState{
		ID: id, Route: "/ws", User: rc.user, ClientIP: "127.0.0.1",
		Channels:    slices.Clone(rc.channels),
		ConnectedAt: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
	}
}

func (h *recHub) Lookup(id string) (ConnState, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	rc, ok := h.conns[id]
	if !ok {
		return ConnState{}, false
	}
	return h.state(id, rc), true
}

func (h *recHub) List(user, channel string) []ConnState {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []ConnState
	for _, id := range slices.Sorted(maps.Keys(h.conns)) {
		rc := h.conns[id]
		if (user != "" && rc.user != user) || (channel != "" && !slices.Contains(rc.channels, channel)) {
			continue
		}
		out = append(out, h.state(id, rc))
	}
	return out
}

func (h *recHub) Disconnect(id string, code int, reason string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.conns[id]; !ok {
		return false
	}
	delete(h.conns, id)
	h.closed = append(h.closed, recClose{id, code, reason})
	return true
}

// got returns a copy of the deliveries so far.
func (h *recHub) got() []recDelivery {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.deliveries)
}

func (h *recHub) closes() []recClose {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.closed)
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestMemoryBrokerDeliversLocally(t *testing.T) {
	h := newRecHub().add("c1", "u1", "room:1").add("c2", "u2", "room:1").add("c3", "u1")
	h.setFull("c2")
	b := NewMemoryBroker(h)
	ctx := context.Background()

	res, err := b.Publish(ctx, &Target{Channels: []string{"room:1"}, Users: []string{"u1"}}, Message{Data: []byte("hi")}, PublishOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := PublishResult{Counts: Counts{Delivered: 2, Dropped: 1}}
	if res != want {
		t.Fatalf("Publish = %+v, want %+v", res, want)
	}
	if res, _ := b.Publish(ctx, &Target{}, Message{Data: []byte("x")}, PublishOptions{}); res != (PublishResult{}) {
		t.Fatalf("empty target delivered: %+v", res)
	}

	cr, err := b.Subscribe(ctx, "", "u1", []string{"room:2"})
	if err != nil || cr != (ChangeResult{Changed: 2}) {
		t.Fatalf("Subscribe = %+v, %v", cr, err)
	}
	cr, err = b.Unsubscribe(ctx, "c3", "", []string{"room:2"})
	if err != nil || cr != (ChangeResult{Changed: 1}) {
		t.Fatalf("Unsubscribe = %+v, %v", cr, err)
	}
	if st, ok, err := b.Lookup(ctx, "c1"); err != nil || !ok || st.ID != "c1" || !slices.Equal(st.Channels, []string{"room:1", "room:2"}) {
		t.Fatalf("Lookup = %+v %v %v", st, ok, err)
	}
	if l, err := b.List(ctx, "u1", ""); err != nil || len(l) != 2 {
		t.Fatalf("List = %+v %v", l, err)
	}
	if ok, err := b.Disconnect(ctx, "c1", 4001, "bye"); err != nil || !ok {
		t.Fatalf("Disconnect = %v %v", ok, err)
	}
	if ok, _ := b.Disconnect(ctx, "c1", 4001, "bye"); ok {
		t.Fatal("Disconnect of a gone connection reported true")
	}
	if ok, detail := b.Ready(); !ok || detail != "" {
		t.Fatalf("Ready = %v %q", ok, detail)
	}
	b.ChannelsChanged([]string{"a"}, []string{"b"}) // must not block or panic
}

func TestMemoryBrokerClosedAndCancelled(t *testing.T) {
	b := NewMemoryBroker(newRecHub().add("c1", ""))
	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.Publish(cctx, &Target{Broadcast: true}, Message{}, PublishOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish on a cancelled ctx: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := b.Publish(ctx, &Target{Broadcast: true}, Message{}, PublishOptions{}); !errors.Is(err, ErrBrokerClosed) {
		t.Fatalf("Publish after Close: %v", err)
	}
	if _, _, err := b.Lookup(ctx, "c1"); !errors.Is(err, ErrBrokerClosed) {
		t.Fatalf("Lookup after Close: %v", err)
	}
	if ok, _ := b.Ready(); ok {
		t.Fatal("closed broker reports ready")
	}
}
