package main

// Test harness: a real sidecar started in-process on loopback ports, a real
// backend (httptest) that records every webhook, and real WebSocket clients
// (coder/websocket, independent of the server's library).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsidecar/wsidecar/config"
)

// hook is one webhook call as the backend saw it.
type hook struct {
	Path   string
	Header http.Header
	Body   []byte
}

// backend is a recording legacy service. Reply decides each answer; nil
// replies 204.
type backend struct {
	*httptest.Server
	mu    sync.Mutex
	hooks []hook
	Reply func(w http.ResponseWriter, h hook)
	seen  chan hook
}

func newBackend(t *testing.T) *backend {
	t.Helper()
	b := &backend{seen: make(chan hook, 100000)}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h := hook{Path: r.URL.Path, Header: r.Header.Clone(), Body: body}
		b.mu.Lock()
		b.hooks = append(b.hooks, h)
		reply := b.Reply
		b.mu.Unlock()
		b.seen <- h
		if reply != nil {
			reply(w, h)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *backend) setReply(f func(w http.ResponseWriter, h hook)) {
	b.mu.Lock()
	b.Reply = f
	b.mu.Unlock()
}

// calls returns the recorded calls to one path.
func (b *backend) calls(path string) []hook {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []hook
	for _, h := range b.hooks {
		if h.Path == path {
			out = append(out, h)
		}
	}
	return out
}

// waitCalls waits until n calls to path have arrived.
func (b *backend) waitCalls(t *testing.T, path string, n int) []hook {
	t.Helper()
	var got []hook
	eventually(t, 10*time.Second, func() bool {
		got = b.calls(path)
		return len(got) >= n
	}, "backend never saw %d calls to %s", n, path)
	return got
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf(format, args...)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sidecar is a running wsidecar with its addresses.
type sidecar struct {
	app   *app
	WS    string // ws://host:port
	Admin string // http://host:port
	sigs  chan os.Signal
	done  chan int
	logs  *syncBuffer
}

// syncBuffer collects log output for assertions.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startSidecar writes hcl (with %BACKEND% replaced by the backend URL) to
// a temp file and starts the sidecar on free loopback ports.
func startSidecar(t *testing.T, backendURL, hcl string) *sidecar {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "sidecar.hcl")
	src := strings.ReplaceAll(hcl, "%BACKEND%", backendURL)
	if !strings.Contains(src, "listener") {
		src = "listener { address = \"127.0.0.1:0\" }\n" + src
	}
	if !strings.Contains(src, "admin") {
		src = "admin { address = \"127.0.0.1:0\" }\n" + src
	}
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		var b strings.Builder
		printConfigError(&b, err)
		t.Fatalf("config: %s", b.String())
	}
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, err := start(context.Background(), cfg, logger)
	if err != nil {
		t.Fatalf("start: %v\n%s", err, logs.String())
	}
	s := &sidecar{app: a, WS: "ws://" + a.wsAddr, Admin: "http://" + a.adminAddr,
		sigs: make(chan os.Signal, 2), done: make(chan int, 1), logs: logs}
	go func() { s.done <- a.wait(s.sigs) }()
	t.Cleanup(func() {
		a.requestDrain()
		select {
		case <-s.done:
		case <-time.After(30 * time.Second):
			t.Errorf("sidecar did not stop")
		}
		if t.Failed() {
			t.Logf("sidecar logs:\n%s", logs.String())
		}
	})
	return s
}

// client is a WebSocket client whose reads run in the background, so a
// test can wait for "no message" without cancelling a read (coder/websocket
// closes the connection when a read's context ends).
type client struct {
	*websocket.Conn
	in chan inbound
}

// inbound is one message or the error that ended reading.
type inbound struct {
	typ  websocket.MessageType
	data []byte
	err  error
}

// dial opens a WebSocket to the sidecar.
func dial(t *testing.T, url string, opts *websocket.DialOptions) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, opts)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", url, err, status)
	}
	t.Cleanup(func() { c.CloseNow() })
	return newClient(c)
}

func newClient(c *websocket.Conn) *client {
	c.SetReadLimit(1 << 20)
	cl := &client{Conn: c, in: make(chan inbound, 4096)}
	go func() {
		for {
			typ, data, err := c.Read(context.Background())
			cl.in <- inbound{typ, data, err}
			if err != nil {
				return
			}
		}
	}()
	return cl
}

// read reads one message with a timeout.
func read(t *testing.T, c *client) (websocket.MessageType, []byte) {
	t.Helper()
	select {
	case m := <-c.in:
		if m.err != nil {
			t.Fatalf("read: %v", m.err)
		}
		return m.typ, m.data
	case <-time.After(10 * time.Second):
		t.Fatal("read: no message within 10s")
	}
	return 0, nil
}

// readText reads one message and requires it to be text.
func readText(t *testing.T, c *client) string {
	t.Helper()
	typ, data := read(t, c)
	if typ != websocket.MessageText {
		t.Fatalf("got %v frame %q, want text", typ, data)
	}
	return string(data)
}

// noMessage asserts that nothing arrives within d.
func noMessage(t *testing.T, c *client, d time.Duration) {
	t.Helper()
	select {
	case m := <-c.in:
		if m.err == nil {
			t.Fatalf("unexpected %v message %q", m.typ, m.data)
		}
		c.in <- m // keep the ending for closeStatus
	case <-time.After(d):
	}
}

func write(t *testing.T, c *client, typ websocket.MessageType, data []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Write(ctx, typ, data); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// closeStatus waits until the connection closes and returns its close code
// and reason (-1 when it ended without a close frame). Messages before the
// close are skipped.
func closeStatus(t *testing.T, c *client, within time.Duration) (websocket.StatusCode, string) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case m := <-c.in:
			if m.err == nil {
				continue
			}
			var ce websocket.CloseError
			if errors.As(m.err, &ce) {
				return ce.Code, ce.Reason
			}
			return -1, m.err.Error()
		case <-deadline:
			t.Fatalf("connection not closed within %v", within)
			return 0, ""
		}
	}
}

// httpDo sends a request to the admin API and decodes a JSON reply into out
// (when non-nil). It returns the status and raw body.
func httpDo(t *testing.T, method, url, contentType string, body []byte, out any) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: status %d, body %q is not JSON: %v", method, url, resp.StatusCode, raw, err)
		}
	}
	return resp.StatusCode, raw
}

// pushResult is the push API's reply.
type pushResult struct {
	Delivered int `json:"delivered"`
	Dropped   int `json:"dropped"`
}

// apiError is the push API's error document.
type apiError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func jsonBody(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("marshal: %v", err))
	}
	return b
}

// actions replies with an actions document.
func actions(w http.ResponseWriter, doc any) {
	w.Header().Set("Content-Type", "application/vnd.wsidecar+json")
	_ = json.NewEncoder(w).Encode(doc)
}

// newHTTPServer serves h on loopback and returns its URL.
func newHTTPServer(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}
