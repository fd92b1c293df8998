package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	cws "github.com/coder/websocket"

	"github.com/wsidecar/wsidecar/bridge"
	"github.com/wsidecar/wsidecar/config"
)

// fakeBackend is an in-test Backend: it records every call and answers with
// the funcs set on it (default: accept connects, echo messages).
type fakeBackend struct {
	connect func(ci *bridge.ConnInfo) (*bridge.ConnectResult, error)
	message func(ci *bridge.ConnInfo, seq uint64, m bridge.Message) (*bridge.Actions, error)

	mu       sync.Mutex
	connects []bridge.ConnInfo
	msgs     []recMsg
	discs    []recDisc
	discCh   chan recDisc
}

type recMsg struct {
	conn string
	seq  uint64
	m    bridge.Message
}

type recDisc struct {
	ci bridge.ConnInfo
	d  bridge.DisconnectInfo
}

func newFakeBackend() *fakeBackend { return &fakeBackend{discCh: make(chan recDisc, 4096)} }

func (b *fakeBackend) Connect(ctx context.Context, ci *bridge.ConnInfo) (*bridge.ConnectResult, error) {
	b.mu.Lock()
	b.connects = append(b.connects, *ci)
	f := b.connect
	b.mu.Unlock()
	if f != nil {
		return f(ci)
	}
	return &bridge.ConnectResult{Accepted: true, Status: 204}, nil
}

func (b *fakeBackend) Message(ctx context.Context, ci *bridge.ConnInfo, seq uint64, m bridge.Message) (*bridge.Actions, error) {
	b.mu.Lock()
	b.msgs = append(b.msgs, recMsg{conn: ci.ID, seq: seq, m: m})
	f := b.message
	b.mu.Unlock()
	if f != nil {
		return f(ci, seq, m)
	}
	return &bridge.Actions{Frames: []bridge.Message{m}}, nil
}

func (b *fakeBackend) Disconnect(ci *bridge.ConnInfo, d bridge.DisconnectInfo) {
	r := recDisc{ci: *ci, d: d}
	b.mu.Lock()
	b.discs = append(b.discs, r)
	b.mu.Unlock()
	b.discCh <- r
}

func (b *fakeBackend) messages() []recMsg {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]recMsg(nil), b.msgs...)
}

func (b *fakeBackend) disconnects() []recDisc {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]recDisc(nil), b.discs...)
}

// waitDisconnect returns the next disconnect webhook.
func (b *fakeBackend) waitDisconnect(t *testing.T) recDisc {
	t.Helper()
	select {
	case d := <-b.discCh:
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("no disconnect webhook within 10s")
		return recDisc{}
	}
}

// openRoute is a route anyone may open, with every webhook set.
func openRoute(path string) config.Route {
	return config.Route{Path: path, Auth: "none", OnConnect: "/connect", OnMessage: "/message", OnDisconnect: "/disconnect", OnError: "reply", MaxInFlight: 1}
}

// testServer is a Server on 127.0.0.1 with its URL.
type testServer struct {
	*Server
	url string
	set *metrics.Set
}

// startServer serves opts on a loopback port and closes it at test end.
func startServer(t *testing.T, opts Options) *testServer {
	t.Helper()
	if opts.Metrics == nil {
		opts.Metrics = metrics.NewSet()
	}
	if opts.NodeID == "" {
		opts.NodeID = "test-node"
	}
	if opts.CloseTimeout == 0 {
		opts.CloseTimeout = 500 * time.Millisecond
	}
	s, err := NewServer(opts)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &testServer{Server: s, url: "ws://" + ln.Addr().String(), set: opts.Metrics}
}

// dial opens a coder/websocket client and closes it at test end.
func wsDial(t *testing.T, url string, opts *cws.DialOptions) *cws.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := cws.Dial(ctx, url, opts)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", url, err, status)
	}
	c.SetReadLimit(1 << 22)
	t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

// dialFail performs a handshake expected to be refused and returns the
// answer's status, headers and body.
func wsDialFail(t *testing.T, url string, opts *cws.DialOptions) (int, http.Header, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := cws.Dial(ctx, url, opts)
	if err == nil {
		_ = c.CloseNow()
		t.Fatalf("dial %s: upgraded, want refusal", url)
	}
	if resp == nil {
		t.Fatalf("dial %s: %v, no response", url, err)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(body)
}

// read reads one message with a deadline.
func wsRead(t *testing.T, c *cws.Conn) (cws.MessageType, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	typ, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return typ, string(b)
}

func wsWrite(t *testing.T, c *cws.Conn, typ cws.MessageType, s string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Write(ctx, typ, []byte(s)); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// readClose reads until the server closes and returns the close status.
func wsReadClose(t *testing.T, c *cws.Conn, within time.Duration) (cws.StatusCode, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for {
		_, _, err := c.Read(ctx)
		if err == nil {
			continue
		}
		var ce cws.CloseError
		if errors.As(err, &ce) {
			return ce.Code, ce.Reason
		}
		if ctx.Err() != nil {
			t.Fatalf("no close within %v: %v", within, err)
		}
		return -1, err.Error()
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// metricValue returns the value of one series in the set's text output.
func metricValue(set *metrics.Set, series string) string {
	var buf bytes.Buffer
	set.WritePrometheus(&buf)
	for _, line := range strings.Split(buf.String(), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

// connIDs returns the ids of the hub's sockets on a route.
func connIDs(h *Hub, route string) []string {
	var ids []string
	for _, st := range h.List("", "") {
		if st.Route == route {
			ids = append(ids, st.ID)
		}
	}
	return ids
}
