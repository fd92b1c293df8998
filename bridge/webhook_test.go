package bridge

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/wsidecar/wsidecar/config"
)

// recordedRequest is one request as the backend saw it.
type recordedRequest struct {
	Method string
	Path   string
	Header http.Header
	Body   []byte
}

// startWebhookBackend runs handler on a loopback httptest server, recording
// every request on the returned channel (buffered; never blocks the handler).
func startWebhookBackend(t *testing.T, handler http.HandlerFunc) (*httptest.Server, <-chan recordedRequest) {
	t.Helper()
	reqs := make(chan recordedRequest, 1000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		select {
		case reqs <- recordedRequest{Method: r.Method, Path: r.URL.RequestURI(), Header: r.Header.Clone(), Body: body}:
		default:
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		if handler != nil {
			handler(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, reqs
}

// newTestWebhooks builds a client for url with test-friendly defaults that
// mutate may change.
func newTestWebhooks(t *testing.T, url string, mutate func(*config.Backend)) (*Webhooks, *metrics.Set) {
	t.Helper()
	cfg := config.Backend{
		URL:                url,
		Timeout:            2 * time.Second,
		MaxConns:           16,
		ForwardHeaders:     []string{"Cookie", "X-Trace", "X-WS-User"},
		DisconnectQueue:    100,
		DisconnectRetryMax: 50 * time.Millisecond,
		Breaker:            config.Breaker{Enabled: false},
	}
	if mutate != nil {
		mutate(&cfg)
	}
	set := metrics.NewSet()
	w, err := NewWebhooks(cfg, WebhookOptions{Metrics: set})
	if err != nil {
		t.Fatalf("NewWebhooks: %v", err)
	}
	t.Cleanup(w.Close)
	return w, set
}

func webhookConn() *ConnInfo {
	return &ConnInfo{
		ID:       "c-1",
		Route:    "/ws/{room}",
		Path:     "/ws/lobby?x=1",
		User:     "42",
		Claims:   []byte(`{"sub":"42","role":"admin"}`),
		ClientIP: "203.0.113.7",
		Protocol: "chat.v1",
		Headers: [][2]string{
			{"Cookie", "session=abc"},
			{"X-Trace", "t1"},
			{"X-WS-User", "forged"},         // allow-listed but reserved
			{"Authorization", "Bearer tok"}, // not allow-listed
		},
		Hooks: RouteHooks{Connect: "/ws/connect", Message: "/ws/message", Disconnect: "/ws/disconnect"},
	}
}

// nextRequest returns the next recorded request or fails after a deadline.
func nextRequest(t *testing.T, reqs <-chan recordedRequest) recordedRequest {
	t.Helper()
	select {
	case r := <-reqs:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("backend received no request")
		return recordedRequest{}
	}
}

// openGateOnCleanup returns an idempotent func that closes gate, and also
// closes it at cleanup. Call it after startWebhookBackend so that this runs
// before the server's Close, which waits for handlers blocked on the gate.
func openGateOnCleanup(t *testing.T, gate chan struct{}) func() {
	var once sync.Once
	open := func() { once.Do(func() { close(gate) }) }
	t.Cleanup(open)
	return open
}

// webhookWaitFor polls cond until it holds or the deadline passes.
func webhookWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// webhookMetric reads one sample from the set's Prometheus output.
func webhookMetric(t *testing.T, set *metrics.Set, series string) float64 {
	t.Helper()
	var buf bytes.Buffer
	set.WritePrometheus(&buf)
	sc := bufio.NewScanner(&buf)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", series, err)
			}
			return f
		}
	}
	return 0
}

func TestWebhookMessageRequest(t *testing.T) {
	srv, reqs := startWebhookBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	wh, set := newTestWebhooks(t, srv.URL+"/api/", nil)
	ci := webhookConn()

	cases := []struct {
		name  string
		msg   Message
		ctype string
	}{
		{"text", Message{Data: []byte("héllo")}, "text/plain; charset=utf-8"},
		{"binary", Message{Binary: true, Data: []byte{0, 1, 0xff, '\r', '\n'}}, "application/octet-stream"},
		{"empty", Message{Data: []byte{}}, "text/plain; charset=utf-8"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, err := wh.Message(context.Background(), ci, uint64(i+7), tc.msg)
			if err != nil || a != nil {
				t.Fatalf("Message = %v, %v; want nil, nil", a, err)
			}
			r := nextRequest(t, reqs)
			want := map[string]string{
				"X-Ws-Connection-Id": "c-1",
				"X-Ws-Route":         "/ws/{room}",
				"X-Ws-User":          "42",
				"X-Ws-Claims":        `{"sub":"42","role":"admin"}`,
				"X-Forwarded-For":    "203.0.113.7",
				"X-Real-Ip":          "203.0.113.7",
				"X-Ws-Protocol":      "chat.v1",
				"X-Ws-Seq":           strconv.Itoa(i + 7),
				"Content-Type":       tc.ctype,
				"Cookie":             "session=abc",
				"X-Trace":            "t1",
				"Authorization":      "",
				"X-Ws-Signature":     "",
				"X-Ws-Path":          "",
			}
			for k, v := range want {
				if got := r.Header.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if got := r.Header.Values("X-Ws-User"); len(got) != 1 {
				t.Errorf("X-WS-User sent %d times (%q): a forwarded header must not add one", len(got), got)
			}
			if r.Method != http.MethodPost || r.Path != "/api/ws/message" {
				t.Errorf("request %s %s, want POST /api/ws/message", r.Method, r.Path)
			}
			if !bytes.Equal(r.Body, tc.msg.Data) {
				t.Errorf("body = %q, want %q", r.Body, tc.msg.Data)
			}
		})
	}
	if n := webhookMetric(t, set, `wsidecar_webhook_duration_seconds_count{kind="message",status="2xx"}`); n != 3 {
		t.Errorf("message 2xx latency count = %v, want 3", n)
	}
}

func TestWebhookAnonymousConnectRequest(t *testing.T) {
	srv, reqs := startWebhookBackend(t, nil)
	wh, _ := newTestWebhooks(t, srv.URL, nil)
	ci := &ConnInfo{ID: "c-2", Route: "/ws", Path: "/ws?room=a%20b", ClientIP: "::1",
		// Allow-listed by the test config, but a client must never be
		// able to claim an identity through a forwarded header.
		Headers: [][2]string{{"X-WS-User", "forged"}},
		Hooks:   RouteHooks{Connect: "/hooks/connect"}}

	res, err := wh.Connect(context.Background(), ci)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Accepted || res.Status != 200 || res.Actions != nil {
		t.Errorf("Connect = %+v, want accepted 200 without actions", res)
	}
	r := nextRequest(t, reqs)
	if r.Path != "/hooks/connect" || len(r.Body) != 0 {
		t.Errorf("request %s with %d body bytes, want /hooks/connect with none", r.Path, len(r.Body))
	}
	if got := r.Header.Get("X-Ws-Path"); got != "/ws?room=a%20b" {
		t.Errorf("X-WS-Path = %q", got)
	}
	for _, h := range []string{"X-Ws-User", "X-Ws-Claims", "X-Ws-Protocol", "X-Ws-Seq", "Cookie"} {
		if v, ok := r.Header[h]; ok {
			t.Errorf("%s sent (%q) for an anonymous connection", h, v)
		}
	}
	if got := r.Header.Get("X-Real-Ip"); got != "::1" {
		t.Errorf("X-Real-IP = %q", got)
	}
}

func TestWebhookWithoutHooks(t *testing.T) {
	srv, reqs := startWebhookBackend(t, nil)
	wh, _ := newTestWebhooks(t, srv.URL, nil)
	ci := webhookConn()
	ci.Hooks = RouteHooks{}
	res, err := wh.Connect(context.Background(), ci)
	if err != nil || !res.Accepted {
		t.Errorf("Connect without hook = %+v, %v; want accepted", res, err)
	}
	if a, err := wh.Message(context.Background(), ci, 1, Message{Data: []byte("x")}); a != nil || err != nil {
		t.Errorf("Message without hook = %+v, %v; want nil, nil", a, err)
	}
	select {
	case r := <-reqs:
		t.Errorf("backend called: %s", r.Path)
	default:
	}
}

func TestWebhookMessageReplies(t *testing.T) {
	type reply struct {
		status int
		ctype  string // "-" sends no Content-Type at all
		header map[string]string
		body   string
	}
	cases := []struct {
		name    string
		reply   reply
		want    *Actions
		wantErr error
	}{
		{name: "204", reply: reply{status: 204}},
		{name: "200 empty", reply: reply{status: 200, ctype: "text/plain"}},
		{name: "text", reply: reply{status: 200, ctype: "text/plain; charset=utf-8", body: "hi"},
			want: &Actions{Frames: []Message{{Data: []byte("hi")}}}},
		{name: "json", reply: reply{status: 200, ctype: "application/json", body: `{"ok":true}`},
			want: &Actions{Frames: []Message{{Data: []byte(`{"ok":true}`)}}}},
		{name: "+json", reply: reply{status: 201, ctype: "application/problem+json; charset=utf-8", body: `{}`},
			want: &Actions{Frames: []Message{{Data: []byte(`{}`)}}}},
		{name: "binary", reply: reply{status: 200, ctype: "application/octet-stream", body: "\x00\x01"},
			want: &Actions{Frames: []Message{{Binary: true, Data: []byte("\x00\x01")}}}},
		{name: "no content type", reply: reply{status: 200, ctype: "-", body: "raw"},
			want: &Actions{Frames: []Message{{Binary: true, Data: []byte("raw")}}}},
		{name: "text that is not UTF-8", reply: reply{status: 200, ctype: "text/plain", body: "\xff\xfe"},
			want: &Actions{Frames: []Message{{Binary: true, Data: []byte("\xff\xfe")}}}},
		{name: "actions document", reply: reply{status: 200, ctype: "application/vnd.wsidecar+json",
			body: `{"frames":[{"text":"a"},{"binary":"AAE="}],"subscribe":["room:1"],"user":"7","meta":{"t":"x"},"close":{"code":4001,"reason":"kicked"}}`},
			want: &Actions{Frames: []Message{{Data: []byte("a")}, {Binary: true, Data: []byte{0, 1}}},
				Subscribe: []string{"room:1"}, User: "7", Meta: map[string]string{"t": "x"},
				Close: &CloseAction{Code: 4001, Reason: "kicked"}}},
		{name: "document and headers merge", reply: reply{status: 200, ctype: "Application/Vnd.Wsidecar+JSON",
			header: map[string]string{"X-WS-Subscribe": "room:2"}, body: `{"subscribe":["room:1"]}`},
			want: &Actions{Subscribe: []string{"room:1", "room:2"}}},
		{name: "control headers on 204", reply: reply{status: 204, header: map[string]string{
			"X-WS-Subscribe": "a, b,,", "X-WS-Unsubscribe": "c", "X-WS-Close": "4001 kicked out"}},
			want: &Actions{Subscribe: []string{"a", "b"}, Unsubscribe: []string{"c"},
				Close: &CloseAction{Code: 4001, Reason: "kicked out"}}},
		{name: "frame and close header", reply: reply{status: 200, ctype: "text/plain", body: "bye",
			header: map[string]string{"X-WS-Close": "1000"}},
			want: &Actions{Frames: []Message{{Data: []byte("bye")}}, Close: &CloseAction{Code: 1000}}},
		{name: "empty document", reply: reply{status: 200, ctype: "application/vnd.wsidecar+json", body: `{}`}},
		{name: "malformed document", reply: reply{status: 200, ctype: "application/vnd.wsidecar+json", body: `{"frames":`},
			wantErr: ErrBadActions},
		{name: "bad close header", reply: reply{status: 204, header: map[string]string{"X-WS-Close": "1006 nope"}},
			wantErr: ErrBadActions},
	}
	var current atomic.Pointer[reply]
	srv, _ := startWebhookBackend(t, func(w http.ResponseWriter, r *http.Request) {
		rp := current.Load()
		for k, v := range rp.header {
			w.Header().Set(k, v)
		}
		switch rp.ctype {
		case "-":
			w.Header()["Content-Type"] = nil // stops net/http sniffing one
		case "":
		default:
			w.Header().Set("Content-Type", rp.ctype)
		}
		w.WriteHeader(rp.status)
		io.WriteString(w, rp.body)
	})
	wh, _ := newTestWebhooks(t, srv.URL, nil)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			current.Store(&tc.reply)
			got, err := wh.Message(context.Background(), webhookConn(), 1, Message{Data: []byte("x")})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("actions = %+v, want %+v", got, tc.want)
			}
		})
	}

	// Non-2xx replies are the caller's on_error business.
	for _, status := range []int{400, 409, 500, 503} {
		current.Store(&reply{status: status, ctype: "text/plain", body: "nope"})
		_, err := wh.Message(context.Background(), webhookConn(), 1, Message{Data: []byte("x")})
		var se *StatusError
		if !errors.As(err, &se) || se.Status != status || string(se.Body) != "nope" {
			t.Errorf("status %d: err = %v, want *StatusError with body", status, err)
		}
		if errors.Is(err, ErrBackendUnavailable) {
			t.Errorf("status %d reported as unavailable", status)
		}
	}
}

func TestWebhookConnectReplies(t *testing.T) {
	cases := []struct {
		name    string
		handler http.HandlerFunc
		want    ConnectResult
	}{
		{"401 relayed", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("X-Internal", "secret")
			w.WriteHeader(401)
			io.WriteString(w, `{"error":"who are you"}`)
		}, ConnectResult{Status: 401, Body: []byte(`{"error":"who are you"}`), Header: [][2]string{
			{"Content-Type", "application/json"}, {"WWW-Authenticate", `Bearer error="invalid_token"`}}}},
		{"429 relayed", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "30")
			w.Header()["Content-Type"] = nil
			w.WriteHeader(429)
		}, ConnectResult{Status: 429, Header: [][2]string{{"Retry-After", "30"}}}},
		{"500 relayed", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(500)
			io.WriteString(w, "boom")
		}, ConnectResult{Status: 500, Body: []byte("boom"), Header: [][2]string{{"Content-Type", "text/plain"}}}},
		{"plain 200 body ignored", func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "OK")
		}, ConnectResult{Accepted: true, Status: 200}},
		{"accept with actions", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", ActionsContentType)
			w.Header().Set("X-WS-Subscribe", "news")
			io.WriteString(w, `{"user":"u9","frames":[{"text":"welcome"}],"expires_at":1893456000}`)
		}, ConnectResult{Accepted: true, Status: 200, Actions: &Actions{
			User: "u9", Frames: []Message{{Data: []byte("welcome")}}, Subscribe: []string{"news"},
			ExpiresAt: time.Unix(1893456000, 0).UTC()}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := startWebhookBackend(t, tc.handler)
			wh, _ := newTestWebhooks(t, srv.URL, nil)
			got, err := wh.Connect(context.Background(), webhookConn())
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("Connect = %+v\nwant      %+v", *got, tc.want)
			}
		})
	}

	t.Run("malformed actions", func(t *testing.T) {
		srv, _ := startWebhookBackend(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", ActionsContentType)
			io.WriteString(w, `{"close":{"code":1011}}`)
		})
		wh, _ := newTestWebhooks(t, srv.URL, nil)
		if _, err := wh.Connect(context.Background(), webhookConn()); !errors.Is(err, ErrBadActions) {
			t.Fatalf("err = %v, want ErrBadActions", err)
		}
	})
}

func TestWebhookUnavailable(t *testing.T) {
	// A port nobody listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + ln.Addr().String()
	ln.Close()

	release := make(chan struct{})
	slow, _ := startWebhookBackend(t, func(w http.ResponseWriter, r *http.Request) {
		<-release
	})
	openGateOnCleanup(t, release)

	t.Run("connection refused", func(t *testing.T) {
		wh, set := newTestWebhooks(t, deadURL, nil)
		_, err := wh.Connect(context.Background(), webhookConn())
		if !errors.Is(err, ErrBackendUnavailable) {
			t.Fatalf("Connect err = %v, want ErrBackendUnavailable", err)
		}
		_, err = wh.Message(context.Background(), webhookConn(), 1, Message{Data: []byte("x")})
		if !errors.Is(err, ErrBackendUnavailable) {
			t.Fatalf("Message err = %v, want ErrBackendUnavailable", err)
		}
		if n := webhookMetric(t, set, `wsidecar_webhook_duration_seconds_count{kind="connect",status="error"}`); n != 1 {
			t.Errorf("connect error latency count = %v, want 1", n)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		wh, _ := newTestWebhooks(t, slow.URL, func(c *config.Backend) { c.Timeout = 100 * time.Millisecond })
		start := time.Now()
		_, err := wh.Message(context.Background(), webhookConn(), 1, Message{Data: []byte("x")})
		if !errors.Is(err, ErrBackendUnavailable) {
			t.Fatalf("err = %v, want ErrBackendUnavailable", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("timed out after %v, want about 100ms", d)
		}
	})
	t.Run("context deadline sooner", func(t *testing.T) {
		wh, _ := newTestWebhooks(t, slow.URL, func(c *config.Backend) { c.Timeout = time.Minute })
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := wh.Connect(ctx, webhookConn())
		if !errors.Is(err, ErrBackendUnavailable) {
			t.Fatalf("err = %v, want ErrBackendUnavailable", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("returned after %v, want about 100ms", d)
		}
	})
	t.Run("cancelled context", func(t *testing.T) {
		wh, _ := newTestWebhooks(t, slow.URL, nil)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := wh.Message(ctx, webhookConn(), 1, Message{})
		if !errors.Is(err, context.Canceled) || errors.Is(err, ErrBackendUnavailable) {
			t.Fatalf("err = %v, want context.Canceled only", err)
		}
	})
}

func TestWebhookSignature(t *testing.T) {
	type seen struct{ sig, ts, id string }
	var mu sync.Mutex
	var got []seen
	srv, reqs := startWebhookBackend(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, seen{r.Header.Get("X-Ws-Signature"), r.Header.Get("X-Ws-Timestamp"), r.Header.Get("X-Ws-Connection-Id")})
		mu.Unlock()
		w.WriteHeader(204)
	})
	now := time.Unix(1_800_000_000, 0)
	cfg := config.Backend{URL: srv.URL, SigningSecret: "s3cret", DisconnectRetryMax: time.Second}
	wh, err := NewWebhooks(cfg, WebhookOptions{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer wh.Close()
	ci := webhookConn()

	verify := func(secret string) {
		t.Helper()
		r := nextRequest(t, reqs)
		err := VerifySignature([]byte(secret), r.Header.Get("X-Ws-Signature"), r.Header.Get("X-Ws-Timestamp"),
			r.Header.Get("X-Ws-Connection-Id"), r.Body, now, time.Minute)
		if err != nil {
			t.Errorf("%s: backend could not verify: %v", r.Path, err)
		}
		if ts := r.Header.Get("X-Ws-Timestamp"); ts != "1800000000" {
			t.Errorf("X-WS-Timestamp = %q, want the injected clock", ts)
		}
	}
	if _, err := wh.Message(context.Background(), ci, 1, Message{Data: []byte("payload")}); err != nil {
		t.Fatal(err)
	}
	verify("s3cret")
	if _, err := wh.Connect(context.Background(), ci); err != nil {
		t.Fatal(err)
	}
	verify("s3cret") // empty body

	// A reload rotates the secret for the next call.
	cfg.SigningSecret = "rotated"
	if err := wh.Update(cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := wh.Message(context.Background(), ci, 2, Message{Binary: true, Data: []byte{0, 1, 2}}); err != nil {
		t.Fatal(err)
	}
	verify("rotated")

	cfg.SigningSecret = ""
	if err := wh.Update(cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := wh.Message(context.Background(), ci, 3, Message{Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if r := nextRequest(t, reqs); r.Header.Get("X-Ws-Signature") != "" || r.Header.Get("X-Ws-Timestamp") != "" {
		t.Errorf("signed after the secret was removed")
	}
}

func TestWebhookUpdate(t *testing.T) {
	a, reqsA := startWebhookBackend(t, nil)
	b, reqsB := startWebhookBackend(t, nil)
	cfg := config.Backend{URL: a.URL, ForwardHeaders: []string{"Cookie"}, DisconnectRetryMax: time.Second}
	wh, err := NewWebhooks(cfg, WebhookOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer wh.Close()
	ci := webhookConn()

	if _, err := wh.Message(context.Background(), ci, 1, Message{}); err != nil {
		t.Fatal(err)
	}
	if r := nextRequest(t, reqsA); r.Header.Get("Cookie") != "session=abc" || r.Header.Get("X-Trace") != "" {
		t.Errorf("forwarded headers before reload: Cookie=%q X-Trace=%q", r.Header.Get("Cookie"), r.Header.Get("X-Trace"))
	}

	cfg.URL = b.URL + "/v2"
	cfg.ForwardHeaders = []string{"x-trace"}
	if err := wh.Update(cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := wh.Message(context.Background(), ci, 2, Message{}); err != nil {
		t.Fatal(err)
	}
	r := nextRequest(t, reqsB)
	if r.Path != "/v2/ws/message" || r.Header.Get("Cookie") != "" || r.Header.Get("X-Trace") != "t1" {
		t.Errorf("after reload: path %s Cookie=%q X-Trace=%q", r.Path, r.Header.Get("Cookie"), r.Header.Get("X-Trace"))
	}
	select {
	case r := <-reqsA:
		t.Errorf("old backend still called: %s", r.Path)
	default:
	}

	for _, bad := range []string{"", "ftp://x", "http://", "http://u:p@host", "http://h/?q=1", "::"} {
		cfg.URL = bad
		if err := wh.Update(cfg); err == nil {
			t.Errorf("Update(%q) accepted", bad)
		}
		if _, err := NewWebhooks(cfg, WebhookOptions{}); err == nil {
			t.Errorf("NewWebhooks(%q) accepted", bad)
		}
	}
}

func TestWebhookBreakerOpens(t *testing.T) {
	var calls atomic.Int64
	var status atomic.Int64
	status.Store(500)
	srv, _ := startWebhookBackend(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(int(status.Load()))
	})
	wh, set := newTestWebhooks(t, srv.URL, func(c *config.Backend) {
		c.Breaker = config.Breaker{Enabled: true, Failures: 3, OpenTimeout: time.Minute, HalfOpenRequests: 1}
	})
	msg := func() error {
		_, err := wh.Message(context.Background(), webhookConn(), 1, Message{Data: []byte("x")})
		return err
	}

	// 4xx is a healthy backend saying no: it never trips the breaker.
	status.Store(403)
	for range 5 {
		if err := msg(); errors.Is(err, ErrBackendUnavailable) {
			t.Fatalf("4xx reported as unavailable: %v", err)
		}
	}
	if s := wh.BreakerState(); s != "closed" {
		t.Fatalf("state after 4xx = %s, want closed", s)
	}

	status.Store(500)
	for i := range 3 {
		var se *StatusError
		if err := msg(); !errors.As(err, &se) {
			t.Fatalf("call %d: err = %v, want *StatusError", i, err)
		}
	}
	if s := wh.BreakerState(); s != "open" {
		t.Fatalf("state after 3 failures = %s, want open", s)
	}
	before := calls.Load()
	for range 3 {
		if err := msg(); !errors.Is(err, ErrBackendUnavailable) {
			t.Fatalf("err while open = %v, want ErrBackendUnavailable", err)
		}
	}
	if _, err := wh.Connect(context.Background(), webhookConn()); !errors.Is(err, ErrBackendUnavailable) {
		t.Fatalf("Connect while open = %v, want ErrBackendUnavailable", err)
	}
	if n := calls.Load() - before; n != 0 {
		t.Errorf("backend saw %d calls while the breaker was open", n)
	}
	if ra := wh.RetryAfter(); ra < 59*time.Second || ra > time.Minute {
		t.Errorf("RetryAfter = %v, want about 60s", ra)
	}
	if v := webhookMetric(t, set, "wsidecar_breaker_state"); v != 2 {
		t.Errorf("wsidecar_breaker_state = %v, want 2", v)
	}
	if v := webhookMetric(t, set, `wsidecar_webhook_unavailable_total{kind="message",reason="breaker_open"}`); v != 3 {
		t.Errorf("breaker_open rejections = %v, want 3", v)
	}
}

func TestWebhookBreakerHalfOpen(t *testing.T) {
	var status atomic.Int64
	status.Store(502)
	probeIn := make(chan struct{}, 10)
	var hold atomic.Pointer[chan struct{}]
	srv, _ := startWebhookBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if h := hold.Load(); h != nil {
			probeIn <- struct{}{}
			<-*h
		}
		w.WriteHeader(int(status.Load()))
	})
	wh, set := newTestWebhooks(t, srv.URL, func(c *config.Backend) {
		c.Breaker = config.Breaker{Enabled: true, Failures: 2, OpenTimeout: 150 * time.Millisecond, HalfOpenRequests: 1}
	})
	msg := func() error {
		_, err := wh.Message(context.Background(), webhookConn(), 1, Message{Data: []byte("x")})
		return err
	}
	trip := func() {
		t.Helper()
		for wh.BreakerState() == "closed" {
			msg()
		}
		if s := wh.BreakerState(); s != "open" {
			t.Fatalf("state = %s, want open", s)
		}
	}

	trip()
	webhookWaitFor(t, "half-open", func() bool { return wh.BreakerState() == "half-open" })
	if v := webhookMetric(t, set, "wsidecar_breaker_state"); v != 1 {
		t.Errorf("wsidecar_breaker_state = %v, want 1", v)
	}
	// A failed probe opens it again.
	if err := msg(); errors.Is(err, ErrBackendUnavailable) {
		t.Fatalf("probe refused: %v", err)
	}
	if s := wh.BreakerState(); s != "open" {
		t.Fatalf("state after failed probe = %s, want open", s)
	}

	// Recovery: one probe at a time passes; its success closes the breaker.
	status.Store(200)
	webhookWaitFor(t, "half-open again", func() bool { return wh.BreakerState() == "half-open" })
	release := make(chan struct{})
	unblock := openGateOnCleanup(t, release)
	hold.Store(&release)
	probeErr := make(chan error, 1)
	go func() { probeErr <- msg() }()
	<-probeIn
	if err := msg(); !errors.Is(err, ErrBackendUnavailable) {
		t.Errorf("second call during the probe: err = %v, want ErrBackendUnavailable", err)
	}
	hold.Store(nil)
	unblock()
	if err := <-probeErr; err != nil {
		t.Fatalf("probe: %v", err)
	}
	if s := wh.BreakerState(); s != "closed" {
		t.Fatalf("state after good probe = %s, want closed", s)
	}
	if err := msg(); err != nil {
		t.Fatalf("call after recovery: %v", err)
	}
	if ra := wh.RetryAfter(); ra != time.Second {
		t.Errorf("RetryAfter when closed = %v, want 1s", ra)
	}
}

func TestWebhookConcurrencyCap(t *testing.T) {
	var cur, peak atomic.Int64
	release := make(chan struct{})
	srv, _ := startWebhookBackend(t, func(w http.ResponseWriter, r *http.Request) {
		n := cur.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-release
		cur.Add(-1)
		w.WriteHeader(204)
	})
	unblock := openGateOnCleanup(t, release)
	wh, _ := newTestWebhooks(t, srv.URL, func(c *config.Backend) {
		c.MaxConns = 3
		c.Timeout = 5 * time.Second
		c.Breaker = config.Breaker{Enabled: true, Failures: 1, OpenTimeout: time.Minute}
	})

	const calls = 10
	errs := make(chan error, calls)
	for i := range calls {
		go func() {
			_, err := wh.Message(context.Background(), webhookConn(), uint64(i), Message{Data: []byte("x")})
			errs <- err
		}()
	}
	webhookWaitFor(t, "3 calls in flight", func() bool { return cur.Load() == 3 })

	// With every slot busy, a call with a short deadline gives up as
	// unavailable without reaching the backend or tripping the breaker.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err := wh.Message(ctx, webhookConn(), 99, Message{})
	cancel()
	if !errors.Is(err, ErrBackendUnavailable) {
		t.Errorf("call while saturated: err = %v, want ErrBackendUnavailable", err)
	}
	if s := wh.BreakerState(); s != "closed" {
		t.Errorf("breaker %s after a wait for a slot; waiting is not a backend failure", s)
	}

	unblock()
	for range calls {
		if err := <-errs; err != nil {
			t.Errorf("call: %v", err)
		}
	}
	if p := peak.Load(); p != 3 {
		t.Errorf("backend saw %d concurrent calls, want the cap of 3", p)
	}
}

func TestWebhookReplyTooLarge(t *testing.T) {
	srv, _ := startWebhookBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(bytes.Repeat([]byte("a"), 2048))
	})
	cfg := config.Backend{URL: srv.URL, Breaker: config.Breaker{Enabled: true, Failures: 1}, DisconnectRetryMax: time.Second}
	wh, err := NewWebhooks(cfg, WebhookOptions{MaxReplySize: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer wh.Close()
	_, err = wh.Message(context.Background(), webhookConn(), 1, Message{})
	if err == nil || errors.Is(err, ErrBackendUnavailable) {
		t.Fatalf("err = %v, want a reply-size error", err)
	}
	if s := wh.BreakerState(); s != "closed" {
		t.Errorf("breaker %s: an oversized reply is not an outage", s)
	}
}

func BenchmarkWebhookMessage(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(204)
	}))
	defer srv.Close()
	wh, err := NewWebhooks(config.Backend{URL: srv.URL, SigningSecret: "k", ForwardHeaders: []string{"Cookie"}},
		WebhookOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer wh.Close()
	ci := webhookConn()
	m := Message{Data: []byte(`{"type":"chat","text":"hello"}`)}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := wh.Message(context.Background(), ci, uint64(i), m); err != nil {
			b.Fatal(err)
		}
	}
}
