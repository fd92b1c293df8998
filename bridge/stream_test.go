package bridge

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/wsidecar/wsidecar/config"
)

// sseRequests records what the SSE backend was asked.
type sseRequests struct {
	mu      sync.Mutex
	paths   []string
	lastIDs []string
	accepts []string
}

func (r *sseRequests) add(req *http.Request) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.paths = append(r.paths, req.URL.Path)
	r.lastIDs = append(r.lastIDs, req.Header.Get("Last-Event-ID"))
	r.accepts = append(r.accepts, req.Header.Get("Accept"))
	return len(r.paths) - 1
}

func (r *sseRequests) snapshot() (paths, lastIDs, accepts []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.paths), slices.Clone(r.lastIDs), slices.Clone(r.accepts)
}

func (r *sseRequests) count(path string) int {
	paths, _, _ := r.snapshot()
	n := 0
	for _, p := range paths {
		if p == path {
			n++
		}
	}
	return n
}

// startStreams runs s until the test ends, stopping it before the backend.
func startStreams(t *testing.T, s *Streams) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Streams.Run did not return after cancel")
		}
	})
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// hold keeps a stream open until the client goes away.
func hold(r *http.Request) { <-r.Context().Done() }

func sseHeaders(w http.ResponseWriter) http.Flusher {
	w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	f := w.(http.Flusher)
	f.Flush()
	return f
}

// TestStreamReplaysAfterCut is the user story of the SSE bridge: the
// backend's stream is cut mid-event, wsidecar reconnects with Last-Event-ID,
// the backend replays from there, and every event reaches the sockets
// exactly once and in order.
func TestStreamReplaysAfterCut(t *testing.T) {
	const total = 10
	event := func(i int) string {
		var b strings.Builder
		fmt.Fprintf(&b, "id: %d\n", i)
		if i%2 == 0 {
			b.WriteString("event: tick\n")
		}
		if i == 7 {
			fmt.Fprintf(&b, "data: event-%d\ndata: second line\n\n", i)
		} else {
			fmt.Fprintf(&b, "data: event-%d\n\n", i)
		}
		return b.String()
	}
	var reqs sseRequests
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := reqs.add(r)
		start := 1
		if id := r.Header.Get("Last-Event-ID"); id != "" {
			last, err := strconv.Atoi(id)
			if err != nil {
				http.Error(w, "bad id", 400)
				return
			}
			start = last + 1
		}
		f := sseHeaders(w)
		if n == 0 {
			fmt.Fprint(w, ": hello\n\nretry: 5\n\n")
			for i := start; i <= 4; i++ {
				fmt.Fprint(w, event(i))
			}
			fmt.Fprint(w, "id: 5\ndata: event-5 (cut") // the cut lands inside event 5
			f.Flush()
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close() // abrupt: no chunked terminator
			}
			return
		}
		for i := start; i <= total; i++ {
			fmt.Fprint(w, event(i))
			f.Flush()
		}
		hold(r)
	}))
	t.Cleanup(srv.Close)

	hub := newRecHub().add("c1", "", "sse:tick", "sse:message")
	set := metrics.NewSet()
	s := NewStreams(srv.URL+"/", []config.Stream{{
		Name: "feed", Path: "/events", Prefix: "sse:", Scope: "cluster",
		ReconnectMin: 5 * time.Millisecond, ReconnectMax: 50 * time.Millisecond,
	}}, NewMemoryBroker(hub), StreamOptions{Logger: testLogger(t), Metrics: set})
	startStreams(t, s)

	eventually(t, 10*time.Second, "all events", func() bool { return len(hub.got()) >= total })
	eventually(t, 5*time.Second, "state open", func() bool { return s.State()["feed"] == StreamOpen })

	var got []string
	for _, d := range hub.got() {
		if d.Msg.Binary {
			t.Fatalf("SSE event delivered as binary: %+v", d)
		}
		got = append(got, string(d.Msg.Data))
	}
	var want []string
	for i := 1; i <= total; i++ {
		w := fmt.Sprintf("event-%d", i)
		if i == 7 {
			w += "\nsecond line"
		}
		want = append(want, w)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("sockets got\n%q\nwant\n%q", got, want)
	}
	paths, lastIDs, accepts := reqs.snapshot()
	if !slices.Equal(lastIDs, []string{"", "4"}) || !slices.Equal(paths, []string{"/events", "/events"}) {
		t.Fatalf("requests %v with Last-Event-ID %q, want two to /events with \"\" then \"4\"", paths, lastIDs)
	}
	for _, a := range accepts {
		if a != "text/event-stream" {
			t.Fatalf("Accept %q", a)
		}
	}
	var sb strings.Builder
	set.WritePrometheus(&sb)
	for _, m := range []string{
		`wsidecar_sse_events_total{stream="feed"} 10`,
		`wsidecar_sse_reconnects_total{stream="feed"} 1`,
		`wsidecar_sse_stream_state{stream="feed"} 1`,
	} {
		if !strings.Contains(sb.String(), m+"\n") {
			t.Errorf("metrics lack %q:\n%s", m, sb.String())
		}
	}
}

// TestStreamBacksOffOnBadAnswers: errors and non-SSE answers are retried
// until the backend serves a stream.
func TestStreamBacksOffOnBadAnswers(t *testing.T) {
	var reqs sseRequests
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch reqs.add(r) {
		case 0:
			http.Error(w, "down", http.StatusInternalServerError)
		case 1:
			w.Header().Set("Content-Type", "text/html")
			fmt.Fprint(w, "data: not an event stream\n\n")
		case 2:
			w.WriteHeader(http.StatusNoContent)
		default:
			f := sseHeaders(w)
			fmt.Fprint(w, "data: finally\n\n")
			f.Flush()
			hold(r)
		}
	}))
	t.Cleanup(srv.Close)

	hub := newRecHub().add("c1", "", "message")
	set := metrics.NewSet()
	s := NewStreams(srv.URL, []config.Stream{{
		Name: "s", Path: "/e", ReconnectMin: 2 * time.Millisecond, ReconnectMax: 20 * time.Millisecond,
	}}, NewMemoryBroker(hub), StreamOptions{Logger: testLogger(t), Metrics: set})
	startStreams(t, s)

	eventually(t, 10*time.Second, "the event", func() bool { return len(hub.got()) == 1 })
	if d := hub.got()[0]; string(d.Msg.Data) != "finally" {
		t.Fatalf("got %q", d.Msg.Data)
	}
	if n := reqs.count("/e"); n != 4 {
		t.Fatalf("%d requests, want 4", n)
	}
	if got := set.GetOrCreateCounter(`wsidecar_sse_reconnects_total{stream="s"}`).Get(); got != 3 {
		t.Fatalf("reconnects %d, want 3", got)
	}
}

// recBroker records publishes (channel, data, scope).
type recBroker struct {
	*MemoryBroker
	mu   sync.Mutex
	pubs []recPub
}

type recPub struct {
	Channel string
	Data    string
	Local   bool
}

func (b *recBroker) Publish(_ context.Context, t *Target, m Message, o PublishOptions) (PublishResult, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range t.Channels {
		b.pubs = append(b.pubs, recPub{c, string(m.Data), o.LocalOnly})
	}
	return PublishResult{}, nil
}

func (b *recBroker) got() []recPub {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.pubs)
}

func TestStreamChannelAndScope(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f := sseHeaders(w)
		fmt.Fprintf(w, "event: a\ndata: %s-1\n\ndata: %s-2\n\n", r.URL.Path, r.URL.Path)
		f.Flush()
		hold(r)
	}))
	t.Cleanup(srv.Close)
	b := &recBroker{MemoryBroker: NewMemoryBroker(newRecHub())}
	s := NewStreams(srv.URL, []config.Stream{
		{Name: "fixed", Path: "/fixed", Channel: "feed", Prefix: "p:", Scope: "local", ReconnectMin: time.Millisecond, ReconnectMax: time.Millisecond},
		{Name: "typed", Path: "/typed", ReconnectMin: time.Millisecond, ReconnectMax: time.Millisecond},
	}, b, StreamOptions{Logger: testLogger(t)})
	startStreams(t, s)
	eventually(t, 10*time.Second, "four publishes", func() bool { return len(b.got()) == 4 })

	var fixed, typed []recPub
	for _, p := range b.got() {
		if strings.HasPrefix(p.Data, "/fixed") {
			fixed = append(fixed, p)
		} else {
			typed = append(typed, p)
		}
	}
	if want := []recPub{{"p:feed", "/fixed-1", true}, {"p:feed", "/fixed-2", true}}; !slices.Equal(fixed, want) {
		t.Errorf("fixed channel, local scope: %+v, want %+v", fixed, want)
	}
	if want := []recPub{{"a", "/typed-1", false}, {"message", "/typed-2", false}}; !slices.Equal(typed, want) {
		t.Errorf("channel from event type, cluster scope: %+v, want %+v", typed, want)
	}
}

func TestStreamsUpdate(t *testing.T) {
	var reqs sseRequests
	closed := make(chan string, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqs.add(r)
		f := sseHeaders(w)
		fmt.Fprintf(w, "data: %s\n\n", r.URL.Path)
		f.Flush()
		hold(r)
		closed <- r.URL.Path
	}))
	t.Cleanup(srv.Close)

	b := &recBroker{MemoryBroker: NewMemoryBroker(newRecHub())}
	set := metrics.NewSet()
	mk := func(name, path string) config.Stream {
		return config.Stream{Name: name, Path: path, ReconnectMin: time.Millisecond, ReconnectMax: 10 * time.Millisecond}
	}
	s := NewStreams(srv.URL, []config.Stream{mk("A", "/a")}, b, StreamOptions{Logger: testLogger(t), Metrics: set})
	if st := s.State(); len(st) != 0 {
		t.Fatalf("State before Run: %v", st)
	}
	startStreams(t, s)
	published := func(data string) func() bool {
		return func() bool { return slices.ContainsFunc(b.got(), func(p recPub) bool { return p.Data == data }) }
	}
	eventually(t, 10*time.Second, "A's event", published("/a"))

	// Add B, keep A: A is not reconnected.
	s.Update([]config.Stream{mk("A", "/a"), mk("B", "/b")})
	eventually(t, 10*time.Second, "B's event", published("/b"))
	if n := reqs.count("/a"); n != 1 {
		t.Fatalf("unchanged stream reconnected: %d requests to /a", n)
	}

	// Change A: the old connection is closed, the new one opened.
	s.Update([]config.Stream{mk("A", "/a2"), mk("B", "/b")})
	eventually(t, 10*time.Second, "A's new event", published("/a2"))
	select {
	case p := <-closed:
		if p != "/a" {
			t.Fatalf("closed %s, want /a", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the changed stream's old connection stayed open")
	}

	// Remove A: it stops and leaves State and the state gauge.
	s.Update([]config.Stream{mk("B", "/b")})
	select {
	case p := <-closed:
		if p != "/a2" {
			t.Fatalf("closed %s, want /a2", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the removed stream stayed open")
	}
	eventually(t, 5*time.Second, "B open", func() bool { return s.State()["B"] == StreamOpen })
	if st := s.State(); len(st) != 1 {
		t.Fatalf("State after removing A: %v", st)
	}
	names := set.ListMetricNames()
	if slices.Contains(names, `wsidecar_sse_stream_state{stream="A"}`) || !slices.Contains(names, `wsidecar_sse_stream_state{stream="B"}`) {
		t.Fatalf("state gauges: %v", names)
	}
	if n := reqs.count("/b"); n != 1 {
		t.Fatalf("%d requests to /b, want 1", n)
	}
}

func TestStreamIdleTimeout(t *testing.T) {
	var reqs sseRequests
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqs.add(r)
		f := sseHeaders(w)
		fmt.Fprint(w, ": keep-alive\n\n")
		f.Flush()
		hold(r) // then silence
	}))
	t.Cleanup(srv.Close)
	s := NewStreams(srv.URL, []config.Stream{{Name: "quiet", Path: "/q", ReconnectMin: time.Millisecond, ReconnectMax: 5 * time.Millisecond}},
		NewMemoryBroker(newRecHub()), StreamOptions{Logger: testLogger(t), IdleTimeout: 30 * time.Millisecond})
	startStreams(t, s)
	eventually(t, 10*time.Second, "a reconnect after silence", func() bool { return reqs.count("/q") >= 2 })
}

func TestBackoffDelay(t *testing.T) {
	const lo, hi = 500 * time.Millisecond, 30 * time.Second
	prevCeil := time.Duration(0)
	for n := 0; n < 40; n++ {
		floor := backoffDelay(n, lo, hi, 0)
		ceil := backoffDelay(n, lo, hi, 0.999999)
		if floor < lo || ceil > hi || floor > ceil {
			t.Fatalf("attempt %d: [%s, %s] outside [%s, %s]", n, floor, ceil, lo, hi)
		}
		if ceil < prevCeil {
			t.Fatalf("attempt %d: ceiling shrank from %s to %s", n, prevCeil, ceil)
		}
		prevCeil = ceil
	}
	if d := backoffDelay(0, lo, hi, 0); d != lo {
		t.Fatalf("first retry after a healthy stream waits %s, want %s", d, lo)
	}
	if d := backoffDelay(0, lo, hi, 0.5); d <= lo {
		t.Fatalf("no jitter: %s", d)
	}
	if d := backoffDelay(100, lo, hi, 0); d < hi/2 {
		t.Fatalf("saturated backoff %s, want at least %s", d, hi/2)
	}
	if d := backoffDelay(3, time.Second, time.Millisecond, 0.5); d != time.Second {
		t.Fatalf("max below min: %s", d)
	}
}

// TestStreamRetryOverridesMinimum: the server's retry field sets the base
// delay, bounded so a hostile value can neither stall nor spin the stream.
func TestStreamRetryOverridesMinimum(t *testing.T) {
	for _, tt := range []struct {
		retry string
		want  time.Duration
	}{
		{"", 500 * time.Millisecond},
		{"retry: 2000\n", 2 * time.Second},
		{"retry: 999999999\n", 30 * time.Second},
		{"retry: 1\n", 100 * time.Millisecond},
	} {
		p := NewSSEParser(strings.NewReader(tt.retry), SSEOptions{})
		_, _ = p.Next()
		w := &streamWorker{
			s:      &Streams{opts: StreamOptions{Rand: func() float64 { return 0 }}},
			cfg:    config.Stream{ReconnectMin: 500 * time.Millisecond, ReconnectMax: 30 * time.Second},
			parser: p,
		}
		if d := w.delay(0); d != tt.want {
			t.Errorf("%q: delay %s, want %s", tt.retry, d, tt.want)
		}
	}
}

func TestValidHeaderValueAndLabels(t *testing.T) {
	for s, want := range map[string]bool{"42": true, "a b\tc": true, "é": true, "a\x01": false, "a\x7f": false, "": true} {
		if validHeaderValue(s) != want {
			t.Errorf("validHeaderValue(%q) != %v", s, want)
		}
	}
	if got := quoteLabel("a\"b\\c\nd"); got != `"a\"b\\c\nd"` {
		t.Fatalf("quoteLabel: %s", got)
	}
	// The metrics library accepts the quoted label.
	metrics.NewSet().GetOrCreateCounter("wsidecar_x_total{stream=" + quoteLabel("we\"ird\\") + "}")
}
