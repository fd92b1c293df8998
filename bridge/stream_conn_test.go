package bridge

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/wsidecar/wsidecar/config"
)

// connBackend is an SSE backend serving one stream per user at
// /users/{user}/events: event n of a user is "id: n" with data "<user>-n".
// It replays from Last-Event-ID and sends events 1 and 2 at once, event 3
// once more is closed, then holds the stream. With cutFirst, each user's
// first stream is cut inside event 3 instead. It records every request and
// how many of the held streams ended (the sidecar went away).
type connBackend struct {
	*httptest.Server
	cutFirst bool
	more     chan struct{}
	mu       sync.Mutex
	reqs     []*http.Request
	ended    map[string]int
}

func newConnBackend(t *testing.T, cutFirst bool) *connBackend {
	b := &connBackend{cutFirst: cutFirst, ended: map[string]int{}, more: make(chan struct{})}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, ok := strings.CutPrefix(r.URL.EscapedPath(), "/users/")
		user, ok2 := strings.CutSuffix(user, "/events")
		if !ok || !ok2 {
			http.NotFound(w, r)
			return
		}
		b.mu.Lock()
		first := !slices.ContainsFunc(b.reqs, func(x *http.Request) bool { return x.URL.Path == r.URL.Path })
		b.reqs = append(b.reqs, r.Clone(context.Background()))
		b.mu.Unlock()
		from := 1
		if id := r.Header.Get("Last-Event-ID"); id != "" {
			n, _ := strconv.Atoi(id)
			from = n + 1
		}
		f := sseHeaders(w)
		for i := from; i <= 2; i++ {
			fmt.Fprintf(w, "id: %d\ndata: %s-%d\n\n", i, user, i)
		}
		if first && b.cutFirst {
			fmt.Fprintf(w, "id: 3\ndata: %s-3 (cut", user)
			f.Flush()
			if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
				conn.Close() // abrupt: no chunked terminator
			}
			return
		}
		f.Flush()
		select {
		case <-b.more:
			if from <= 3 {
				fmt.Fprintf(w, "id: 3\ndata: %s-3\n\n", user)
				f.Flush()
			}
			<-r.Context().Done()
		case <-r.Context().Done():
		}
		b.mu.Lock()
		b.ended[r.URL.Path]++
		b.mu.Unlock()
	}))
	t.Cleanup(b.Close)
	return b
}

// requests returns the recorded requests to path.
func (b *connBackend) requests(path string) []*http.Request {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []*http.Request
	for _, r := range b.reqs {
		if r.URL.Path == path {
			out = append(out, r)
		}
	}
	return out
}

func (b *connBackend) endedCount(path string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ended[path]
}

// connStreamsConfig parses stream blocks the way the sidecar would.
func connStreamsConfig(t *testing.T, streams string) []config.Stream {
	t.Helper()
	cfg, err := config.Parse([]byte(`
backend { url = "http://127.0.0.1:1" }
route "/ws" { auth = "none" }
`+streams), "sidecar.hcl")
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg.Streams
}

func scopeFn(sc config.Scope) func() config.Scope { return func() config.Scope { return sc } }

func claimsOf(sub string) func() config.Scope {
	return scopeFn(config.Scope{Claims: map[string]any{"sub": sub}})
}

// delivered returns the data delivered to one socket, in order.
func (h *recHub) delivered(id string) []string {
	var out []string
	for _, d := range h.got() {
		if d.Conn == id {
			if d.Msg.Binary {
				out = append(out, "BINARY:"+string(d.Msg.Data))
				continue
			}
			out = append(out, string(d.Msg.Data))
		}
	}
	return out
}

func metricText(set *metrics.Set) string {
	var sb strings.Builder
	set.WritePrometheus(&sb)
	return sb.String()
}

// TestConnStreamFeedsItsSocket is the user story of per-connection
// streams: two users' sockets each get their own backend stream and only
// their own events; an anonymous socket gets none; a cut stream resumes
// with Last-Event-ID; closing a socket ends its backend request at once.
func TestConnStreamFeedsItsSocket(t *testing.T) {
	be := newConnBackend(t, true)
	const secret = "stream-signing-secret"
	hub := newRecHub().add("n.alice", "alice").add("n.bob", "bob").add("n.anon", "")
	set := metrics.NewSet()
	s := NewStreams(be.URL, connStreamsConfig(t, `
stream "inbox" {
  path          = "/users/${claims.sub}/events"
  reconnect_min = "5ms"
  reconnect_max = "50ms"
}`), NewMemoryBroker(hub), StreamOptions{Logger: testLogger(t), Metrics: set, SigningSecret: secret})

	alice := &ConnInfo{ID: "n.alice", Route: "/ws", User: "alice", Claims: []byte(`{"sub":"alice"}`), ClientIP: "192.0.2.7",
		Headers: [][2]string{{"Cookie", "session=a"}, {"X-WS-User", "forged"}, {"Accept-Encoding", "gzip"}}}
	bob := &ConnInfo{ID: "n.bob", Route: "/ws", User: "bob", ClientIP: "192.0.2.8"}
	s.Opened(alice, claimsOf("alice")) // before Run: started by Run
	startStreams(t, s)
	s.Opened(bob, claimsOf("bob"))
	s.Opened(&ConnInfo{ID: "n.anon", Route: "/ws"}, scopeFn(config.Scope{}))

	eventually(t, 10*time.Second, "both sockets' first events", func() bool {
		return len(hub.delivered("n.alice")) >= 2 && len(hub.delivered("n.bob")) >= 2
	})
	close(be.more)
	eventually(t, 10*time.Second, "event 3 for both", func() bool {
		return len(hub.delivered("n.alice")) >= 3 && len(hub.delivered("n.bob")) >= 3
	})
	for user, want := range map[string][]string{
		"alice": {"alice-1", "alice-2", "alice-3"},
		"bob":   {"bob-1", "bob-2", "bob-3"},
	} {
		if got := hub.delivered("n." + user); !slices.Equal(got, want) {
			t.Errorf("%s's socket got %q, want %q (only its own events, once, in order)", user, got, want)
		}
	}
	if got := hub.delivered("n.anon"); len(got) != 0 {
		t.Errorf("the anonymous socket got %q", got)
	}
	if n := len(be.requests("/users//events")); n != 0 {
		t.Errorf("a stream was opened for the socket without claims (%d requests)", n)
	}

	// Alice's stream was cut inside event 3: one reconnect, resuming after 2.
	reqs := be.requests("/users/alice/events")
	if len(reqs) != 2 || reqs[0].Header.Get("Last-Event-ID") != "" || reqs[1].Header.Get("Last-Event-ID") != "2" {
		var ids []string
		for _, r := range reqs {
			ids = append(ids, r.Header.Get("Last-Event-ID"))
		}
		t.Fatalf("alice's stream requests carried Last-Event-ID %q, want [\"\" \"2\"]", ids)
	}
	r := reqs[1]
	for name, want := range map[string]string{
		"Accept":             "text/event-stream",
		"X-WS-Connection-Id": "n.alice",
		"X-WS-User":          "alice",
		"X-WS-Route":         "/ws",
		"X-WS-Claims":        `{"sub":"alice"}`,
		"X-Forwarded-For":    "192.0.2.7",
		"Cookie":             "session=a",
		"Accept-Encoding":    "",
	} {
		if got := r.Header.Get(name); got != want {
			t.Errorf("stream request %s = %q, want %q", name, got, want)
		}
	}
	if err := VerifySignature([]byte(secret), r.Header.Get("X-WS-Signature"), r.Header.Get("X-WS-Timestamp"),
		"n.alice", nil, time.Now(), time.Minute); err != nil {
		t.Errorf("stream request signature: %v", err)
	}
	// The signature binds the connection: it does not verify for Bob.
	if VerifySignature([]byte(secret), r.Header.Get("X-WS-Signature"), r.Header.Get("X-WS-Timestamp"),
		"n.bob", nil, time.Now(), time.Minute) == nil {
		t.Error("alice's stream signature verifies for another connection")
	}
	if got := be.requests("/users/bob/events")[0].Header.Get("X-WS-Connection-Id"); got != "n.bob" {
		t.Errorf("bob's stream carried connection id %q", got)
	}

	eventually(t, 5*time.Second, "two open per-connection streams", func() bool {
		return strings.Contains(metricText(set), `wsidecar_sse_connection_streams{stream="inbox",state="open"} 2`+"\n")
	})

	// Alice's socket closes: her backend request ends now, Bob's stays.
	s.Closed("n.alice")
	eventually(t, 5*time.Second, "alice's backend stream to end", func() bool {
		return be.endedCount("/users/alice/events") == 1
	})
	if n := be.endedCount("/users/bob/events"); n != 0 {
		t.Errorf("closing alice's socket ended %d of bob's streams", n)
	}
	eventually(t, 5*time.Second, "one open per-connection stream", func() bool {
		return strings.Contains(metricText(set), `wsidecar_sse_connection_streams{stream="inbox",state="open"} 1`+"\n")
	})
	m := metricText(set)
	for _, want := range []string{
		`wsidecar_sse_events_total{stream="inbox"} 6`,
		`wsidecar_sse_reconnects_total{stream="inbox"} 2`,
		`wsidecar_sse_connection_streams{stream="inbox",state="connecting"} 0`,
	} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("metrics lack %q:\n%s", want, m)
		}
	}
	if strings.Contains(m, `wsidecar_sse_stream_state{stream="inbox"}`) {
		t.Error("a per-connection stream exports the shared stream state gauge (it would alert on != 1)")
	}
	s.Closed("n.alice") // a second close is harmless
	s.Closed("n.unknown")
}

// TestConnStreamValuesAreOneSegment: client-chosen values are
// percent-encoded, so they can neither add segments, a query or a
// fragment, nor climb with "..": such a socket gets no stream.
func TestConnStreamValuesAreOneSegment(t *testing.T) {
	var mu sync.Mutex
	var seen []string // escaped request URIs
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.RequestURI())
		mu.Unlock()
		f := sseHeaders(w)
		fmt.Fprint(w, "data: hi\n\n")
		f.Flush()
		hold(r)
	}))
	t.Cleanup(srv.Close)
	hub := newRecHub()
	s := NewStreams(srv.URL, connStreamsConfig(t, `
stream "q" {
  path = "/q/${query.user}/events?tag=${lookup(query, "tag", "none")}"
}`), NewMemoryBroker(hub), StreamOptions{Logger: testLogger(t)})
	startStreams(t, s)

	want := []string{
		"/q/u1/events?tag=none",
		"/q/a%2Fb/events?tag=none",
		"/q/u%3Fadmin%3D1%23x/events?tag=a%26b%3Dc",
		"/q/jos%C3%A9%20x/events?tag=none",
	}
	for id, q := range map[string]map[string]string{
		"plain":   {"user": "u1"},
		"slash":   {"user": "a/b"}, // one segment, encoded
		"query":   {"user": "u?admin=1#x", "tag": "a&b=c"},
		"unicode": {"user": "jos\u00e9 x"},
		// No stream: a climb once decoded, dot segments, an empty
		// segment, a missing value.
		"climb":   {"user": "../admin"},
		"dots":    {"user": ".."},
		"dot":     {"user": "."},
		"empty":   {"user": ""},
		"missing": {"tag": "x"},
	} {
		hub.add(id, "")
		s.Opened(&ConnInfo{ID: id, Route: "/ws"}, scopeFn(config.Scope{Query: q}))
	}
	eventually(t, 10*time.Second, "four streams", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) >= len(want)
	})
	mu.Lock()
	got := slices.Sorted(slices.Values(seen))
	mu.Unlock()
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("backend saw %q, want %q", got, want)
	}
	if n := s.conn.count.Load(); n != 4 {
		t.Errorf("%d sockets hold streams, want 4", n)
	}
}

// TestConnStream204EndsIt: a 204 answer means "no stream for this
// connection": the socket's stream ends instead of reconnecting.
func TestConnStream204EndsIt(t *testing.T) {
	var reqs sseRequests
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqs.add(r)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	set := metrics.NewSet()
	s := NewStreams(srv.URL, connStreamsConfig(t, `
stream "inbox" {
  path          = "/users/${claims.sub}/events"
  reconnect_min = "1ms"
  reconnect_max = "2ms"
}`), NewMemoryBroker(newRecHub()), StreamOptions{Logger: testLogger(t), Metrics: set})
	startStreams(t, s)
	s.Opened(&ConnInfo{ID: "n.c1"}, claimsOf("u1"))
	eventually(t, 10*time.Second, "the stream to end", func() bool { return s.conn.count.Load() == 0 && reqs.count("/users/u1/events") > 0 })
	// The stream's goroutine has returned (it forgot itself last), so no
	// request can follow.
	if n := reqs.count("/users/u1/events"); n != 1 {
		t.Fatalf("%d requests, want 1: a 204 must not be retried", n)
	}
	for _, st := range []string{"connecting", "open", "backoff"} {
		want := `wsidecar_sse_connection_streams{stream="inbox",state="` + st + `"} 0`
		eventually(t, 5*time.Second, want, func() bool { return strings.Contains(metricText(set), want+"\n") })
	}
}

// TestConnStreamReload: a reload that removes a per-connection stream
// stops it on open sockets; a new one applies to sockets opened afterwards;
// a new backend URL moves open streams there with their Last-Event-ID.
func TestConnStreamReload(t *testing.T) {
	one, two := newConnBackend(t, true), newConnBackend(t, false)
	close(one.more)
	close(two.more)
	mk := func(name string) string {
		return `
stream "` + name + `" {
  path          = "/users/${claims.sub}/events"
  reconnect_min = "5ms"
  reconnect_max = "20ms"
}`
	}
	hub := newRecHub().add("n.a", "a").add("n.b", "b")
	set := metrics.NewSet()
	s := NewStreams(one.URL, connStreamsConfig(t, mk("inbox")), NewMemoryBroker(hub), StreamOptions{Logger: testLogger(t), Metrics: set})
	startStreams(t, s)
	s.Opened(&ConnInfo{ID: "n.a"}, claimsOf("a"))
	eventually(t, 10*time.Second, "a's three events", func() bool { return len(hub.delivered("n.a")) == 3 })

	// A new backend URL: a's stream reconnects there, resuming after 3.
	s.SetBackend(two.URL, "")
	eventually(t, 10*time.Second, "a's stream on the new backend", func() bool { return len(two.requests("/users/a/events")) == 1 })
	if got := two.requests("/users/a/events")[0].Header.Get("Last-Event-ID"); got != "3" {
		t.Errorf("moved stream sent Last-Event-ID %q, want 3", got)
	}
	eventually(t, 5*time.Second, "the old backend's stream to end", func() bool { return one.endedCount("/users/a/events") == 1 })

	// The stream renamed: a's is stopped, b (opened after) gets the new one.
	s.Update(connStreamsConfig(t, mk("inbox2")))
	eventually(t, 5*time.Second, "a's stream stopped by the reload", func() bool { return two.endedCount("/users/a/events") == 1 })
	s.Opened(&ConnInfo{ID: "n.b"}, claimsOf("b"))
	eventually(t, 10*time.Second, "b's events", func() bool { return len(hub.delivered("n.b")) == 3 })
	if n := len(two.requests("/users/a/events")); n != 1 {
		t.Errorf("a's removed stream reconnected (%d requests)", n)
	}
	m := metricText(set)
	if strings.Contains(m, `wsidecar_sse_connection_streams{stream="inbox",`) {
		t.Errorf("the removed stream's gauges are still exported:\n%s", m)
	}
	if !strings.Contains(m, `wsidecar_sse_connection_streams{stream="inbox2",state="open"} 1`+"\n") {
		t.Errorf("no open inbox2 stream in the metrics:\n%s", m)
	}
}

// TestSharedStreamSigned: with a signing secret, a shared stream's GET is
// signed too, over an empty connection id.
func TestSharedStreamSigned(t *testing.T) {
	got := make(chan http.Header, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case got <- r.Header.Clone():
		default:
		}
		sseHeaders(w)
		hold(r)
	}))
	t.Cleanup(srv.Close)
	s := NewStreams(srv.URL, []config.Stream{{Name: "feed", Path: "/events", ReconnectMin: time.Millisecond, ReconnectMax: 5 * time.Millisecond}},
		NewMemoryBroker(newRecHub()), StreamOptions{Logger: testLogger(t), SigningSecret: "k1"})
	startStreams(t, s)
	select {
	case h := <-got:
		if err := VerifySignature([]byte("k1"), h.Get("X-WS-Signature"), h.Get("X-WS-Timestamp"), "", nil, time.Now(), time.Minute); err != nil {
			t.Fatalf("shared stream signature: %v (headers %v)", err, h)
		}
		if h.Get("X-WS-Connection-Id") != "" {
			t.Errorf("shared stream carries a connection id %q", h.Get("X-WS-Connection-Id"))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no stream request")
	}
}

func TestUsableConnPath(t *testing.T) {
	for p, want := range map[string]bool{
		"/users/u1/events":      true,
		"/users/u1/events?x=..": true,
		"/users/a..b/events":    true,
		"/users/a%2Fb/events":   true,
		"/users/u1/":            true,
		"/users/../events":      false,
		"/users/./events":       false,
		"/users/..":             false,
		"/users/..%2Fadmin":     false,
		"/users/%2E%2E/admin":   false,
		"/users/..%5Cadmin":     false,
		"/users//events":        false,
		"users/u1":              false,
		"//evil.example/x":      false,
		"/a b":                  false,
		"/a#frag":               false,
		"/a\x00":                false,
		"/a%zz":                 false,
		"/" + strings.Repeat("a", maxConnStreamPath): false,
	} {
		if got := usableConnPath(p); got != want {
			t.Errorf("usableConnPath(%q) = %v, want %v", p, got, want)
		}
	}
}

func TestEscapeScopeSharesUnchanged(t *testing.T) {
	claims := map[string]any{"sub": "u1", "n": 42.0, "org": map[string]any{"id": "a/b"}, "roles": []any{"x", "y z"}}
	sc := escapeScope(config.Scope{Claims: claims, Query: map[string]string{"a": "1"}})
	if claims["org"].(map[string]any)["id"] != "a/b" || claims["roles"].([]any)[1] != "y z" {
		t.Fatal("escaping wrote into the caller's claims")
	}
	if got := sc.Claims["org"].(map[string]any)["id"]; got != "a%2Fb" {
		t.Errorf("nested claim escaped to %q", got)
	}
	if got := sc.Claims["roles"].([]any)[1]; got != "y%20z" {
		t.Errorf("list claim escaped to %q", got)
	}
	if sc.Claims["n"] != 42.0 || sc.Claims["sub"] != "u1" {
		t.Errorf("plain values changed: %v", sc.Claims)
	}
	q := map[string]string{"a": "1"}
	if got := escapeStrings(q); reflect.ValueOf(got).UnsafePointer() != reflect.ValueOf(q).UnsafePointer() {
		t.Error("escapeStrings copied a map with nothing to encode")
	}
	if got := escapeStrings(map[string]string{"a": "1", "b": "x/y"}); got["a"] != "1" || got["b"] != "x%2Fy" {
		t.Errorf("escapeStrings: %v", got)
	}
}

// FuzzConnStreamPath: whatever a client puts in a value, the path it
// yields is either refused or, once decoded the way a backend router
// would, already clean (no climbing, no empty or dot segments), and a
// value without slashes or dots-only is never refused.
func FuzzConnStreamPath(f *testing.F) {
	for _, s := range []string{"u1", "../admin", "..", ".", "", "a/b", `a\..\b`, "%2e%2e", "josé x", "?x=1#f", "\x00\r\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		e := escapeValue(v)
		for i := 0; i < len(e); i++ {
			if c := e[i]; !unreserved(c) && c != '%' {
				t.Fatalf("escapeValue(%q) = %q keeps %q", v, e, c)
			}
		}
		if dec, err := url.PathUnescape(e); err != nil || dec != v {
			t.Fatalf("escapeValue(%q) = %q decodes to %q, %v", v, e, dec, err)
		}
		p := "/users/" + e + "/events"
		if !usableConnPath(p) {
			if len(p) <= maxConnStreamPath && v != "" && v != "." && v != ".." && !strings.ContainsAny(v, `/\`) {
				t.Fatalf("value %q refused", v)
			}
			return
		}
		dec, _ := url.PathUnescape(p)
		dec = strings.ReplaceAll(dec, `\`, "/")
		if path.Clean(dec) != dec || !strings.HasPrefix(dec, "/users/") || !strings.HasSuffix(dec, "/events") {
			t.Fatalf("value %q gives usable path %q, decoded %q, not clean", v, p, dec)
		}
	})
}
