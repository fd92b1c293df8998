package bridge

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"
)

// startAdmin serves an Admin on a loopback listener and returns its base URL.
func startAdmin(t *testing.T, opts AdminOptions) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: NewAdmin(opts).Handler, MaxRequestBodySize: 4 << 20}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Shutdown()
		<-done
	})
	return "http://" + ln.Addr().String()
}

// answer is what a client sees.
type answer struct {
	Status int
	Header http.Header
	Body   string
}

// errCode returns the "error.code" of a JSON error body.
func (a answer) errCode() string {
	var e struct {
		Error apiError `json:"error"`
	}
	_ = json.Unmarshal([]byte(a.Body), &e)
	return e.Error.Code
}

func (a answer) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(a.Body), v); err != nil {
		t.Fatalf("answer %d %q is not JSON: %v", a.Status, a.Body, err)
	}
}

// call makes one request; headers come as name, value pairs.
func call(t *testing.T, method, url, body string, headers ...string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		// A path net/url refuses (e.g. a bad escape) is sent verbatim.
		scheme, rest, _ := strings.Cut(url, "://")
		host, path, _ := strings.Cut(rest, "/")
		req, err = http.NewRequest(method, scheme+"://"+host+"/", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.URL.Opaque = "/" + path
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{resp.StatusCode, resp.Header, string(b)}
}

// stubBroker wraps a MemoryBroker and lets a test fake what a clustered
// broker reports.
type stubBroker struct {
	*MemoryBroker
	mu     sync.Mutex
	extra  PublishResult // added to every publish result
	ready  bool
	detail string
}

func (s *stubBroker) set(extra PublishResult, ready bool, detail string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.extra, s.ready, s.detail = extra, ready, detail
}

func (s *stubBroker) Publish(ctx context.Context, t *Target, m Message, o PublishOptions) (PublishResult, error) {
	r, err := s.MemoryBroker.Publish(ctx, t, m, o)
	s.mu.Lock()
	defer s.mu.Unlock()
	r.Counts = r.Counts.Add(s.extra.Counts)
	r.Remote += s.extra.Remote
	r.Failed += s.extra.Failed
	return r, err
}

func (s *stubBroker) Ready() (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ready, s.detail
}

func TestAdminProbes(t *testing.T) {
	var reason atomic.Value
	reason.Store("")
	drained := make(chan struct{}, 4)
	sb := &stubBroker{MemoryBroker: NewMemoryBroker(newRecHub()), ready: true}
	base := startAdmin(t, AdminOptions{
		Broker: sb,
		Ready: func() (bool, string) {
			r := reason.Load().(string)
			return r == "", r
		},
		Drain: func() { drained <- struct{}{} },
	})

	if a := call(t, "GET", base+"/healthz", ""); a.Status != 200 || strings.TrimSpace(a.Body) != "ok" {
		t.Fatalf("healthz: %+v", a)
	}
	if a := call(t, "HEAD", base+"/healthz", ""); a.Status != 200 {
		t.Fatalf("HEAD healthz: %+v", a)
	}
	if a := call(t, "GET", base+"/readyz", ""); a.Status != 200 || !strings.Contains(a.Body, `"ready"`) {
		t.Fatalf("readyz: %+v", a)
	}

	// A degraded but working broker stays ready and says so.
	sb.set(PublishResult{}, true, "redis: reconnecting")
	a := call(t, "GET", base+"/readyz", "")
	if a.Status != 200 || !strings.Contains(a.Body, "redis: reconnecting") {
		t.Fatalf("readyz with degraded broker: %+v", a)
	}

	sb.set(PublishResult{}, false, "redis: connection refused")
	a = call(t, "GET", base+"/readyz", "")
	var nr struct {
		Error  apiError
		Detail struct{ Sidecar, Broker string }
	}
	a.decode(t, &nr)
	if a.Status != 503 || nr.Error.Code != "not_ready" || nr.Detail.Broker != "redis: connection refused" || nr.Detail.Sidecar != "" {
		t.Fatalf("readyz with broken broker: %+v", a)
	}
	sb.set(PublishResult{}, true, "")

	reason.Store("starting")
	a = call(t, "GET", base+"/readyz", "")
	a.decode(t, &nr)
	if a.Status != 503 || nr.Detail.Sidecar != "starting" || nr.Error.Message != "starting" {
		t.Fatalf("readyz while the sidecar is not ready: %+v", a)
	}
	reason.Store("")

	// Drain: 202, Drain runs once, readyz fails from then on.
	for i, want := range []string{"draining", "already draining"} {
		a = call(t, "POST", base+"/v1/drain", "")
		if a.Status != 202 || !strings.Contains(a.Body, `"`+want+`"`) {
			t.Fatalf("drain #%d: %+v", i, a)
		}
	}
	select {
	case <-drained:
	case <-time.After(5 * time.Second):
		t.Fatal("Drain was not called")
	}
	a = call(t, "GET", base+"/readyz", "")
	a.decode(t, &nr)
	if a.Status != 503 || nr.Detail.Sidecar != "draining" {
		t.Fatalf("readyz after drain: %+v", a)
	}
	if len(drained) != 0 {
		t.Fatal("Drain called more than once")
	}
}

func TestAdminAuth(t *testing.T) {
	h := newRecHub().add("c1", "u1", "room:1")
	base := startAdmin(t, AdminOptions{Token: "s3cret", Broker: NewMemoryBroker(h)})
	push := base + "/v1/push/channel/room:1"
	tests := []struct {
		name, method, url, auth string
		want                    int
	}{
		{"no token", "POST", push, "", 401},
		{"wrong token", "POST", push, "Bearer nope", 401},
		{"token prefix", "POST", push, "Bearer s3cre", 401},
		{"wrong scheme", "POST", push, "Basic s3cret", 401},
		{"right token", "POST", push, "Bearer s3cret", 200},
		{"scheme is case-insensitive", "POST", push, "bearer s3cret", 200},
		{"unknown /v1 path hides behind auth", "GET", base + "/v1/nope", "", 401},
		{"drain needs the token", "POST", base + "/v1/drain", "", 401},
		{"healthz open", "GET", base + "/healthz", "", 200},
		{"readyz open", "GET", base + "/readyz", "", 200},
		{"metrics open", "GET", base + "/metrics", "", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hdr []string
			if tt.auth != "" {
				hdr = []string{"Authorization", tt.auth}
			}
			a := call(t, tt.method, tt.url, "hello", append(hdr, "Content-Type", "text/plain")...)
			if a.Status != tt.want {
				t.Fatalf("status %d, want %d (%s)", a.Status, tt.want, a.Body)
			}
			if tt.want == 401 {
				if a.errCode() != "unauthorized" || !strings.HasPrefix(a.Header.Get("WWW-Authenticate"), "Bearer") {
					t.Fatalf("401 answer: %+v", a)
				}
			}
		})
	}
	if n := len(h.got()); n != 2 {
		t.Fatalf("%d deliveries, want 2 (only the authorized pushes)", n)
	}
}

func TestAdminMetrics(t *testing.T) {
	h := newRecHub().add("c1", "u1", "room:1").add("c2", "u2", "room:1")
	h.setFull("c2")
	set := metrics.NewSet()
	base := startAdmin(t, AdminOptions{Broker: NewMemoryBroker(h), Metrics: set})

	call(t, "POST", base+"/v1/push/channel/room:1", "x")
	call(t, "POST", base+"/v1/push", `{"users":["u1"],"text":"y"}`)
	call(t, "POST", base+"/v1/push", `{"users":["u1"],"channels":["room:1"],"text":"y"}`)
	call(t, "POST", base+"/v1/push/broadcast", "z")

	a := call(t, "GET", base+"/metrics", "")
	if a.Status != 200 || !strings.HasPrefix(a.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("metrics: %+v", a)
	}
	for _, want := range []string{
		`wsidecar_push_requests_total{kind="channel"} 1`,
		`wsidecar_push_requests_total{kind="user"} 1`,
		`wsidecar_push_requests_total{kind="mixed"} 1`,
		`wsidecar_push_requests_total{kind="broadcast"} 1`,
		`wsidecar_push_requests_total{kind="connection"} 0`,
		`wsidecar_push_deliveries_total 4`,
		`wsidecar_push_dropped_total 3`,
	} {
		if !strings.Contains(a.Body, want+"\n") {
			t.Errorf("metrics lack %q:\n%s", want, a.Body)
		}
	}

	// A process-wide writer replaces the set.
	base = startAdmin(t, AdminOptions{Broker: NewMemoryBroker(h), WriteMetrics: func(w io.Writer) {
		fmt.Fprintln(w, "process_up 1")
	}})
	if a := call(t, "GET", base+"/metrics", ""); a.Body != "process_up 1\n" {
		t.Fatalf("custom metrics writer: %q", a.Body)
	}
}

func TestAdminRouting(t *testing.T) {
	h := newRecHub().add("c1", "u1", "room:1")
	base := startAdmin(t, AdminOptions{Broker: NewMemoryBroker(h)})
	tests := []struct {
		method, path string
		want         int
		code, allow  string
	}{
		{"GET", "/nope", 404, "not_found", ""},
		{"GET", "/v1/nope", 404, "not_found", ""},
		{"GET", "/v1/push/nope/x", 404, "not_found", ""},
		{"GET", "/v1/push/channel/a/b", 404, "not_found", ""},
		{"GET", "/v1/push", 405, "method_not_allowed", "POST"},
		{"PUT", "/v1/push/channel/room:1", 405, "method_not_allowed", "POST"},
		{"GET", "/v1/push/broadcast", 405, "method_not_allowed", "POST"},
		{"GET", "/v1/subscribe", 405, "method_not_allowed", "POST"},
		{"DELETE", "/v1/unsubscribe", 405, "method_not_allowed", "POST"},
		{"POST", "/v1/connections", 405, "method_not_allowed", "GET, HEAD"},
		{"PUT", "/v1/connections/c1", 405, "method_not_allowed", "GET, HEAD, DELETE"},
		{"GET", "/v1/drain", 405, "method_not_allowed", "POST"},
		{"POST", "/healthz", 405, "method_not_allowed", "GET, HEAD"},
		{"DELETE", "/readyz", 405, "method_not_allowed", "GET, HEAD"},
		{"POST", "/metrics", 405, "method_not_allowed", "GET, HEAD"},
		{"POST", "/v1/push/channel/%zz", 400, "invalid_path", ""},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			a := call(t, tt.method, base+tt.path, "")
			if a.Status != tt.want || a.errCode() != tt.code || a.Header.Get("Allow") != tt.allow {
				t.Fatalf("got %d %q Allow %q, want %d %q Allow %q", a.Status, a.Body, a.Header.Get("Allow"), tt.want, tt.code, tt.allow)
			}
			if ct := a.Header.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("error Content-Type %q", ct)
			}
		})
	}
}

func TestAdminWithoutBroker(t *testing.T) {
	base := startAdmin(t, AdminOptions{})
	if a := call(t, "POST", base+"/v1/push/broadcast", "x"); a.Status != 503 || a.errCode() != "unavailable" {
		t.Fatalf("push without broker: %+v", a)
	}
	if a := call(t, "POST", base+"/v1/drain", ""); a.Status != 202 {
		t.Fatalf("drain without broker or Drain hook: %+v", a)
	}
	if a := call(t, "GET", base+"/readyz", ""); a.Status != 503 {
		t.Fatalf("readyz after drain: %+v", a)
	}
}

// BenchmarkAdminPushRaw measures the handler alone (no network) for a raw
// channel push, the hot path of a backend fanning out through the API.
func BenchmarkAdminPushRaw(b *testing.B) {
	a := NewAdmin(AdminOptions{Broker: NewMemoryBroker(nopHub{})})
	var ctx fasthttp.RequestCtx
	body := []byte(`{"kind":"update","n":42}`)
	b.ReportAllocs()
	for b.Loop() {
		ctx.Request.Reset()
		ctx.Response.Reset()
		ctx.Request.Header.SetMethod("POST")
		ctx.Request.SetRequestURI("/v1/push/channel/room:1")
		ctx.Request.Header.SetContentType("application/json")
		ctx.Request.SetBody(body)
		a.Handler(&ctx)
		if ctx.Response.StatusCode() != 200 {
			b.Fatalf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body())
		}
	}
}

// nopHub delivers to one imaginary socket.
type nopHub struct{}

func (nopHub) Deliver(*Target, Message) Counts          { return Counts{Delivered: 1} }
func (nopHub) Subscribe(string, string, []string) int   { return 0 }
func (nopHub) Unsubscribe(string, string, []string) int { return 0 }
func (nopHub) Lookup(string) (ConnState, bool)          { return ConnState{}, false }
func (nopHub) List(string, string) []ConnState          { return nil }
func (nopHub) Disconnect(string, int, string) bool      { return false }
