package bridge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"mime"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/wsidecar/wsidecar/config"
)

// Stream states reported by Streams.State and, as numbers, by the
// wsidecar_sse_stream_state gauge (alert on != 1).
const (
	StreamConnecting = "connecting" // gauge 0
	StreamOpen       = "open"       // gauge 1
	StreamBackoff    = "backoff"    // gauge 2
)

// StreamOptions configure the SSE consumer. The zero value is usable.
type StreamOptions struct {
	// Client makes the stream requests. nil: a client for long-lived
	// streams (no overall timeout, 5s dial, 30s to the response headers,
	// no compression, no environment proxy).
	Client *http.Client
	// Prepare, when set, is called on every request before it is sent
	// (e.g. to sign it); an error counts as a failed connection attempt.
	Prepare func(*http.Request) error
	// Logger receives connection state changes. nil: discard.
	Logger *slog.Logger
	// Metrics receives the wsidecar_sse_* metrics. nil: a private set.
	Metrics *metrics.Set
	// Parser bounds event and line sizes.
	Parser SSEOptions
	// HealthyAfter is how long a stream that delivered no event must stay
	// open to count as healthy (which resets the backoff); a stream that
	// delivered an event is healthy at once. Default 10s.
	HealthyAfter time.Duration
	// IdleTimeout, when set, drops a stream on which nothing (not even a
	// comment) arrived for that long; use it when the backend sends
	// keep-alive comments. Default 0: rely on TCP keep-alive.
	IdleTimeout time.Duration
	// Rand returns a number in [0,1) for the backoff jitter. nil: math/rand/v2.
	Rand func() float64
}

// Streams consumes the configured SSE streams from the backend and
// publishes every event to a channel through the broker. Each stream has
// one goroutine holding one GET; events of a stream are published in order.
type Streams struct {
	base   string
	broker Broker
	opts   StreamOptions
	client *http.Client
	log    *slog.Logger
	set    *metrics.Set

	mu      sync.Mutex
	cfg     []config.Stream
	ctx     context.Context // Run's context; nil before Run
	workers map[string]*streamWorker
	stats   map[string]*streamStat
	wg      sync.WaitGroup
}

// streamStat outlives restarts of a stream so its metrics stay continuous.
type streamStat struct {
	state      atomic.Int32 // 0 connecting, 1 open, 2 backoff
	gaugeName  string
	events     *metrics.Counter
	reconnects *metrics.Counter
	discarded  *metrics.Counter
	publishErr *metrics.Counter
}

type streamWorker struct {
	s      *Streams
	cfg    config.Stream
	url    string
	stat   *streamStat
	log    *slog.Logger
	cancel context.CancelFunc
	done   chan struct{}
	parser *SSEParser
	target Target // reused per event: Publish does not retain it
	lastTy string // event type of the last channel built, to reuse chName
	chName string
}

// NewStreams returns a consumer for streams on the backend at backendURL.
// Nothing is fetched until Run.
func NewStreams(backendURL string, streams []config.Stream, b Broker, opts StreamOptions) *Streams {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.NewSet()
	}
	if opts.HealthyAfter <= 0 {
		opts.HealthyAfter = 10 * time.Second
	}
	if opts.Rand == nil {
		opts.Rand = rand.Float64
	}
	client := opts.Client
	if client == nil {
		client = &http.Client{Transport: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: 30 * time.Second,
			// A compressed event stream is buffered by gzip writers on the
			// way; events must arrive when they are sent.
			DisableCompression:  true,
			MaxIdleConnsPerHost: 4,
		}}
	}
	return &Streams{
		base:    strings.TrimRight(backendURL, "/"),
		broker:  b,
		opts:    opts,
		client:  client,
		log:     opts.Logger,
		set:     opts.Metrics,
		cfg:     append([]config.Stream(nil), streams...),
		workers: make(map[string]*streamWorker),
		stats:   make(map[string]*streamStat),
	}
}

// Run consumes every configured stream until ctx is done, then stops them
// and returns when their goroutines have exited. Call it once.
func (s *Streams) Run(ctx context.Context) {
	s.mu.Lock()
	s.ctx = ctx
	s.apply(s.cfg)
	s.mu.Unlock()

	<-ctx.Done()

	s.mu.Lock()
	for name, w := range s.workers {
		w.cancel()
		delete(s.workers, name)
	}
	s.mu.Unlock()
	s.wg.Wait()
	if t, ok := s.client.Transport.(interface{ CloseIdleConnections() }); ok && s.opts.Client == nil {
		t.CloseIdleConnections()
	}
}

// Update replaces the stream configuration (a reload): new streams start,
// removed ones stop, changed ones restart. Unchanged streams keep their
// connection. Safe to call before, during or after Run.
func (s *Streams) Update(streams []config.Stream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg = append([]config.Stream(nil), streams...)
	if s.ctx == nil || s.ctx.Err() != nil {
		return
	}
	s.apply(s.cfg)
}

// State returns each running stream's state: "connecting", "open" or "backoff".
func (s *Streams) State() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.workers))
	for name, w := range s.workers {
		out[name] = stateName(w.stat.state.Load())
	}
	return out
}

func stateName(v int32) string {
	switch v {
	case 1:
		return StreamOpen
	case 2:
		return StreamBackoff
	}
	return StreamConnecting
}

// apply makes the running workers match want. Called with s.mu held.
func (s *Streams) apply(want []config.Stream) {
	keep := make(map[string]config.Stream, len(want))
	for _, c := range want {
		keep[c.Name] = c
	}
	for name, w := range s.workers {
		c, ok := keep[name]
		if ok && c == w.cfg {
			continue
		}
		// Wait for the old worker so two never publish the same stream.
		w.cancel()
		<-w.done
		delete(s.workers, name)
		if !ok {
			s.dropStat(name)
		}
	}
	for _, c := range want {
		if _, ok := s.workers[c.Name]; ok {
			continue
		}
		s.start(c)
	}
}

func (s *Streams) start(c config.Stream) {
	ctx, cancel := context.WithCancel(s.ctx)
	w := &streamWorker{
		s:      s,
		cfg:    c,
		url:    s.base + c.Path,
		stat:   s.stat(c.Name),
		log:    s.log.With("stream", c.Name),
		cancel: cancel,
		done:   make(chan struct{}),
		parser: NewSSEParser(nil, s.opts.Parser),
	}
	w.stat.state.Store(0)
	s.workers[c.Name] = w
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(w.done)
		w.run(ctx)
	}()
}

func (s *Streams) stat(name string) *streamStat {
	if st, ok := s.stats[name]; ok {
		return st
	}
	l := `{stream=` + quoteLabel(name) + `}`
	st := &streamStat{
		gaugeName:  "wsidecar_sse_stream_state" + l,
		events:     s.set.GetOrCreateCounter("wsidecar_sse_events_total" + l),
		reconnects: s.set.GetOrCreateCounter("wsidecar_sse_reconnects_total" + l),
		discarded:  s.set.GetOrCreateCounter("wsidecar_sse_discarded_events_total" + l),
		publishErr: s.set.GetOrCreateCounter("wsidecar_sse_publish_errors_total" + l),
	}
	s.set.GetOrCreateGauge(st.gaugeName, func() float64 { return float64(st.state.Load()) })
	s.stats[name] = st
	return st
}

// dropStat removes a deleted stream's gauge (a stale "open" would lie);
// its counters stay, as counters do.
func (s *Streams) dropStat(name string) {
	if st, ok := s.stats[name]; ok {
		s.set.UnregisterMetric(st.gaugeName)
		delete(s.stats, name)
	}
}

// errStreamEnded reports a clean end of the stream by the backend.
var errStreamEnded = errors.New("stream ended by the backend")

func (w *streamWorker) run(ctx context.Context) {
	attempt := 0
	for {
		w.stat.state.Store(0)
		healthy, err := w.consume(ctx)
		if ctx.Err() != nil {
			return
		}
		if healthy {
			attempt = 0
		}
		delay := w.delay(attempt)
		attempt++
		w.stat.state.Store(2)
		w.stat.reconnects.Inc()
		level := slog.LevelWarn
		if healthy && errors.Is(err, errStreamEnded) {
			// Some backends end every stream on purpose and rely on the
			// reconnect: not worth a warning each time.
			level = slog.LevelDebug
		}
		w.log.Log(ctx, level, "sse stream interrupted", "error", err, "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// delay is the wait before reconnect attempt n (0 after a healthy stream).
func (w *streamWorker) delay(n int) time.Duration {
	lo, hi := w.cfg.ReconnectMin, w.cfg.ReconnectMax
	if r := w.parser.Retry(); r > 0 {
		// The server's retry overrides the minimum, but a hostile value
		// may neither stall the stream nor make it spin.
		lo = max(r, min(lo, 100*time.Millisecond))
		if hi > 0 {
			lo = min(lo, hi)
		}
	}
	return backoffDelay(n, lo, hi, w.s.opts.Rand())
}

// backoffDelay returns a wait in [lo, hi]: "equal jitter" over an
// exponentially growing ceiling, so replicas cut at the same moment do not
// reconnect in lockstep.
func backoffDelay(n int, lo, hi time.Duration, rnd float64) time.Duration {
	if lo <= 0 {
		lo = 500 * time.Millisecond
	}
	if hi < lo {
		hi = lo
	}
	ceil := lo
	for i := 0; i <= n && ceil < hi; i++ {
		ceil *= 2
	}
	ceil = min(ceil, hi)
	floor := max(lo, ceil/2)
	return floor + time.Duration(rnd*float64(ceil-floor))
}

// consume holds one connection and publishes its events until it ends.
// healthy reports whether the stream worked well enough to reset the backoff.
func (w *streamWorker) consume(ctx context.Context) (healthy bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.url, nil)
	if err != nil {
		return false, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	if id := w.parser.LastEventID(); id != "" {
		if validHeaderValue(id) {
			req.Header.Set("Last-Event-ID", id)
		} else {
			w.log.Warn("sse last event id not sendable as a header; resuming without it")
		}
	}
	if w.s.opts.Prepare != nil {
		if err := w.s.opts.Prepare(req); err != nil {
			return false, fmt.Errorf("prepare request: %w", err)
		}
	}
	resp, err := w.s.client.Do(req)
	if err != nil {
		return false, fmt.Errorf("connect: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// Drain a little so the connection can be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		return false, fmt.Errorf("backend answered %d", resp.StatusCode)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "text/event-stream" {
		return false, fmt.Errorf("backend answered Content-Type %q, want text/event-stream", resp.Header.Get("Content-Type"))
	}

	var body io.Reader = resp.Body
	if d := w.s.opts.IdleTimeout; d > 0 {
		t := time.AfterFunc(d, cancel)
		defer t.Stop()
		body = &idleReader{r: resp.Body, t: t, d: d}
	}
	w.stat.state.Store(1)
	w.log.Info("sse stream open", "last_event_id_sent", req.Header.Get("Last-Event-ID") != "")
	opened := time.Now()
	w.parser.Reset(body)
	seen := w.parser.Discarded()
	events := 0
	for {
		ev, err := w.parser.Next()
		if d := w.parser.Discarded(); d != seen {
			w.stat.discarded.Add(int(d - seen))
			w.log.Warn("sse event over the size limit discarded", "count", d-seen)
			seen = d
		}
		if err != nil {
			healthy = events > 0 || time.Since(opened) >= w.s.opts.HealthyAfter
			if errors.Is(err, io.EOF) {
				return healthy, errStreamEnded
			}
			if ctx.Err() != nil && w.s.opts.IdleTimeout > 0 {
				return healthy, fmt.Errorf("read: nothing received for %s: %w", w.s.opts.IdleTimeout, err)
			}
			return healthy, fmt.Errorf("read: %w", err)
		}
		events++
		w.stat.events.Inc()
		w.publish(ctx, ev)
	}
}

func (w *streamWorker) publish(ctx context.Context, ev Event) {
	ch := w.cfg.Channel
	if ch == "" {
		ch = ev.Type
	}
	if ch != w.lastTy || w.chName == "" {
		w.lastTy = ch
		w.chName = w.cfg.Prefix + ch
	}
	w.target.Channels = append(w.target.Channels[:0], w.chName)
	m := Message{Data: []byte(ev.Data)}
	_, err := w.s.broker.Publish(ctx, &w.target, m, PublishOptions{LocalOnly: w.cfg.Scope == "local"})
	if err != nil && ctx.Err() == nil {
		w.stat.publishErr.Inc()
		w.log.Warn("sse event not published", "channel", w.chName, "error", err)
	}
}

// idleReader pushes the idle deadline back on every read.
type idleReader struct {
	r io.Reader
	t *time.Timer
	d time.Duration
}

func (r *idleReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.t.Reset(r.d)
	return n, err
}

// validHeaderValue reports whether s can be sent as an HTTP header value
// (no control characters besides tab), as net/http would otherwise refuse
// the whole request and the stream would never reconnect.
func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// quoteLabel quotes a Prometheus label value.
func quoteLabel(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			b.WriteString(`\\`)
		case '"':
			b.WriteString(`\"`)
		case '\n':
			b.WriteString(`\n`)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}
