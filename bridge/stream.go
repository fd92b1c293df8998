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
	"slices"
	"strconv"
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
	// (after the sidecar's own headers); an error counts as a failed
	// connection attempt.
	Prepare func(*http.Request) error
	// SigningSecret, when set, signs every request like a webhook call:
	// X-WS-Timestamp and X-WS-Signature over an empty body and the
	// connection id (empty for a shared stream). SetBackend changes it.
	SigningSecret string
	// Now is the clock for X-WS-Timestamp. nil: time.Now.
	Now func() time.Time
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

// Streams consumes the configured SSE streams from the backend. A shared
// stream (a fixed path) publishes every event to a channel through the
// broker; a per-connection stream (a path using the connection's identity,
// see stream_conn.go) sends its events to one socket. Each stream has one
// goroutine holding one GET; events of a stream are published in order.
type Streams struct {
	broker Broker
	opts   StreamOptions
	client *http.Client
	log    *slog.Logger
	set    *metrics.Set
	base   atomic.Pointer[string] // backend URL without trailing slash
	signer atomic.Pointer[signer] // nil: requests are not signed

	mu      sync.Mutex // guards the fields below
	cfg     []config.Stream
	ctx     context.Context // Run's context; nil before Run
	workers map[string]*streamWorker
	stats   map[string]*streamStat
	wg      sync.WaitGroup // every stream goroutine, shared or per connection

	conn connStreams // per-connection streams, under their own lock
}

// Stream states: the wsidecar_sse_stream_state gauge values, and the state
// label of wsidecar_sse_connection_streams.
const (
	stateConnecting int32 = iota
	stateOpen
	stateBackoff
	numStates
)

// streamStat outlives restarts of a stream so its metrics stay continuous.
// Its gauges depend on the kind of stream the name currently is: a state
// gauge for a shared stream, counts by state for a per-connection one.
type streamStat struct {
	name       string
	state      atomic.Int32            // shared stream: 0 connecting, 1 open, 2 backoff
	conns      [numStates]atomic.Int64 // per-connection streams in each state
	perConn    bool                    // which gauges are registered
	gauges     []string                // registered gauge names, to unregister
	events     *metrics.Counter
	reconnects *metrics.Counter
	discarded  *metrics.Counter
	publishErr *metrics.Counter
}

// streamWorker is one stream's loop: a shared stream's, or one socket's
// per-connection stream (ci set). One type serves both so that they
// reconnect, resume and parse alike.
type streamWorker struct {
	s      *Streams
	cfg    config.Stream
	path   string    // backend path (evaluated, for a per-connection stream)
	ci     *ConnInfo // the socket fed by a per-connection stream; nil: shared
	stat   *streamStat
	log    *slog.Logger // nil until needed (per-connection streams rarely log)
	cancel context.CancelFunc
	done   chan struct{} // closed when the goroutine ends; shared streams only
	parser *SSEParser
	target Target // reused per event: Publish does not retain it
	lastTy string // event type of the last channel built, to reuse chName
	chName string
	state  int32 // per-connection: this stream's state in stat.conns (worker goroutine)

	// attempt cancels the connection attempt in progress, so SetBackend
	// can move the stream; moved tells the loop that was deliberate.
	attempt atomic.Pointer[context.CancelFunc]
	moved   atomic.Bool
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
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Streams{
		broker:  b,
		opts:    opts,
		client:  client,
		log:     opts.Logger,
		set:     opts.Metrics,
		workers: make(map[string]*streamWorker),
		stats:   make(map[string]*streamStat),
	}
	s.conn.init()
	s.SetBackend(backendURL, opts.SigningSecret)
	s.Update(streams)
	return s
}

// Run consumes every configured stream until ctx is done, then stops them
// (per-connection ones included) and returns when their goroutines have
// exited. Call it once.
func (s *Streams) Run(ctx context.Context) {
	s.mu.Lock()
	s.ctx = ctx
	s.apply(s.cfg)
	s.mu.Unlock()
	s.conn.run(s, ctx)

	<-ctx.Done()

	s.mu.Lock()
	for name, w := range s.workers {
		w.cancel()
		delete(s.workers, name)
	}
	s.mu.Unlock()
	s.conn.stop()
	s.wg.Wait()
	if t, ok := s.client.Transport.(interface{ CloseIdleConnections() }); ok && s.opts.Client == nil {
		t.CloseIdleConnections()
	}
}

// Update replaces the stream configuration (a reload): new shared streams
// start, removed ones stop, changed ones restart; unchanged ones keep their
// connection. Per-connection streams apply to sockets opened from now on;
// open sockets keep the streams they have, except that a stream removed
// from the configuration (or no longer per-connection) stops. Safe to call
// before, during or after Run.
func (s *Streams) Update(streams []config.Stream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg = append([]config.Stream(nil), streams...)
	s.conn.update(s, s.cfg)
	if s.ctx != nil && s.ctx.Err() == nil {
		s.apply(s.cfg)
	}
	s.prune(s.cfg)
}

// SetBackend moves every stream to the backend at backendURL (a reload):
// when the URL changed, each open stream, per-connection ones included, is
// cut and reconnects there with backoff, sending its Last-Event-ID.
// signingSecret replaces StreamOptions.SigningSecret for the requests that
// follow ("" stops signing). Safe to call before, during or after Run.
func (s *Streams) SetBackend(backendURL, signingSecret string) {
	if signingSecret == "" {
		s.signer.Store(nil)
	} else {
		s.signer.Store(newSigner(signingSecret))
	}
	base := strings.TrimRight(backendURL, "/")
	if old := s.base.Swap(&base); old == nil || *old == base {
		return
	}
	// A worker stores its attempt's cancel before reading the base, and
	// the base is stored before the cancels are read here, so each
	// attempt either sees the new URL or is cut.
	s.mu.Lock()
	for _, w := range s.workers {
		w.interrupt()
	}
	s.mu.Unlock()
	s.conn.each(func(w *streamWorker) { w.interrupt() })
}

// interrupt cuts the stream's connection attempt in progress, if any; the
// loop reconnects (to the current base URL).
func (w *streamWorker) interrupt() {
	if c := w.attempt.Load(); c != nil {
		w.moved.Store(true)
		(*c)()
	}
}

// State returns each running shared stream's state: "connecting", "open"
// or "backoff". Per-connection streams are counted by the
// wsidecar_sse_connection_streams gauges instead.
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

// apply makes the running shared-stream workers match want. Called with
// s.mu held.
func (s *Streams) apply(want []config.Stream) {
	keep := make(map[string]config.Stream, len(want))
	for _, c := range want {
		if c.PathTemplate == nil {
			keep[c.Name] = c
		}
	}
	for name, w := range s.workers {
		if c, ok := keep[name]; ok && c == w.cfg {
			continue
		}
		// Wait for the old worker so two never publish the same stream.
		w.cancel()
		<-w.done
		delete(s.workers, name)
	}
	for _, c := range want {
		if _, ok := s.workers[c.Name]; ok || c.PathTemplate != nil {
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
		path:   c.Path,
		stat:   s.stat(c.Name, false),
		log:    s.log.With("stream", c.Name),
		cancel: cancel,
		done:   make(chan struct{}),
		parser: NewSSEParser(nil, s.opts.Parser),
	}
	w.stat.state.Store(stateConnecting)
	s.workers[c.Name] = w
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(w.done)
		w.run(ctx)
	}()
}

// stat returns the metrics of the stream called name, registering the
// gauges of its kind (and dropping those of the other kind, after a reload
// turned a shared stream into a per-connection one or back). Called with
// s.mu held.
func (s *Streams) stat(name string, perConn bool) *streamStat {
	st, ok := s.stats[name]
	if !ok {
		l := `{stream=` + quoteLabel(name) + `}`
		st = &streamStat{
			name:       name,
			events:     s.set.GetOrCreateCounter("wsidecar_sse_events_total" + l),
			reconnects: s.set.GetOrCreateCounter("wsidecar_sse_reconnects_total" + l),
			discarded:  s.set.GetOrCreateCounter("wsidecar_sse_discarded_events_total" + l),
			publishErr: s.set.GetOrCreateCounter("wsidecar_sse_publish_errors_total" + l),
		}
		s.stats[name] = st
	} else if st.perConn == perConn && st.gauges != nil {
		return st
	}
	s.unregisterGauges(st)
	st.perConn = perConn
	if !perConn {
		g := "wsidecar_sse_stream_state{stream=" + quoteLabel(name) + "}"
		s.set.GetOrCreateGauge(g, func() float64 { return float64(st.state.Load()) })
		st.gauges = []string{g}
		return st
	}
	for i, state := range [numStates]string{StreamConnecting, StreamOpen, StreamBackoff} {
		g := "wsidecar_sse_connection_streams{stream=" + quoteLabel(name) + ",state=" + quoteLabel(state) + "}"
		n := &st.conns[i]
		s.set.GetOrCreateGauge(g, func() float64 { return float64(n.Load()) })
		st.gauges = append(st.gauges, g)
	}
	return st
}

func (s *Streams) unregisterGauges(st *streamStat) {
	for _, g := range st.gauges {
		s.set.UnregisterMetric(g)
	}
	st.gauges = nil
}

// prune drops the gauges of streams no longer configured (a stale "open"
// would lie); their counters stay, as counters do. Called with s.mu held.
func (s *Streams) prune(want []config.Stream) {
	for name, st := range s.stats {
		if !slices.ContainsFunc(want, func(c config.Stream) bool { return c.Name == name }) {
			s.unregisterGauges(st)
			delete(s.stats, name)
		}
	}
}

// errStreamEnded reports a clean end of the stream by the backend.
var errStreamEnded = errors.New("stream ended by the backend")

// errNoStream is a per-connection stream answered 204 No Content: the
// backend has no stream for this connection, so, as an EventSource would,
// the socket's stream ends instead of reconnecting.
var errNoStream = errors.New("backend has no stream for this connection (204)")

func (w *streamWorker) run(ctx context.Context) {
	attempt := 0
	for {
		w.setState(stateConnecting)
		healthy, err := w.consume(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errNoStream) {
			w.logger().Debug("per-connection sse stream ended", "reason", err)
			return
		}
		if healthy {
			attempt = 0
		}
		delay := w.delay(attempt)
		attempt++
		w.setState(stateBackoff)
		w.stat.reconnects.Inc()
		level, msg := slog.LevelWarn, "sse stream interrupted"
		switch {
		case w.moved.Swap(false):
			level, msg = slog.LevelInfo, "sse stream moving to the new backend url"
		case healthy && errors.Is(err, errStreamEnded):
			// Some backends end every stream on purpose and rely on the
			// reconnect: not worth a warning each time.
			level = slog.LevelDebug
		}
		w.logAt(ctx, level, msg, "error", err, "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// setState records the stream's state for its metrics.
func (w *streamWorker) setState(v int32) {
	if w.ci == nil {
		w.stat.state.Store(v)
		return
	}
	if v != w.state {
		w.stat.conns[w.state].Add(-1)
		w.stat.conns[v].Add(1)
		w.state = v
	}
}

// logger returns the worker's logger, made on first use: most
// per-connection streams never log, and a logger with attributes costs an
// allocation per socket.
func (w *streamWorker) logger() *slog.Logger {
	if w.log == nil {
		if w.ci != nil {
			w.log = w.s.log.With("stream", w.cfg.Name, "conn", w.ci.ID)
		} else {
			w.log = w.s.log.With("stream", w.cfg.Name)
		}
	}
	return w.log
}

// logAt logs at level, or at debug for a per-connection stream: a backend
// restart interrupts every socket's stream at once, and a line per socket
// would bury the log; the metrics carry the rate.
func (w *streamWorker) logAt(ctx context.Context, level slog.Level, msg string, args ...any) {
	if w.ci != nil {
		level = slog.LevelDebug
	}
	if !w.s.log.Enabled(ctx, level) {
		return
	}
	w.logger().Log(ctx, level, msg, args...)
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
	// Publish the cancel before reading the base URL (see SetBackend).
	w.attempt.Store(&cancel)
	defer w.attempt.Store(nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *w.s.base.Load()+w.path, nil)
	if err != nil {
		return false, fmt.Errorf("build request: %w", err)
	}
	w.header(ctx, req.Header)
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
	if resp.StatusCode == http.StatusNoContent && w.ci != nil {
		return false, errNoStream
	}
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
	w.setState(stateOpen)
	w.logAt(ctx, slog.LevelInfo, "sse stream open", "last_event_id_sent", req.Header.Get("Last-Event-ID") != "")
	opened := time.Now()
	w.parser.Reset(body)
	seen := w.parser.Discarded()
	events := 0
	for {
		ev, err := w.parser.Next()
		if d := w.parser.Discarded(); d != seen {
			w.stat.discarded.Add(int(d - seen))
			w.logAt(ctx, slog.LevelWarn, "sse event over the size limit discarded", "count", d-seen)
			seen = d
		}
		if err != nil {
			healthy = events > 0 || time.Since(opened) >= w.s.opts.HealthyAfter
			if errors.Is(err, io.EOF) {
				return healthy, errStreamEnded
			}
			if ctx.Err() != nil && w.s.opts.IdleTimeout > 0 && !w.moved.Load() {
				return healthy, fmt.Errorf("read: nothing received for %s: %w", w.s.opts.IdleTimeout, err)
			}
			return healthy, fmt.Errorf("read: %w", err)
		}
		events++
		w.stat.events.Inc()
		w.publish(ctx, ev)
	}
}

// header sets the request headers: the SSE ones, Last-Event-ID when
// resuming, a per-connection stream's identity (what every backend call
// carries, so the backend can check whose stream it serves) and the
// signature.
func (w *streamWorker) header(ctx context.Context, h http.Header) {
	connID := ""
	if ci := w.ci; ci != nil {
		connID = ci.ID
		setIdentity(h, ci)
	}
	h.Set("Accept", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	if id := w.parser.LastEventID(); id != "" {
		if validHeaderValue(id) {
			h.Set("Last-Event-ID", id)
		} else {
			w.logAt(ctx, slog.LevelWarn, "sse last event id not sendable as a header; resuming without it")
		}
	}
	if sg := w.s.signer.Load(); sg != nil {
		ts := w.s.opts.Now().Unix()
		h.Set("X-WS-Timestamp", strconv.FormatInt(ts, 10))
		h.Set("X-WS-Signature", string(sg.appendSign(nil, ts, connID, nil)))
	}
}

func (w *streamWorker) publish(ctx context.Context, ev Event) {
	opts := PublishOptions{LocalOnly: true}
	if w.ci == nil {
		ch := w.cfg.Channel
		if ch == "" {
			ch = ev.Type
		}
		if ch != w.lastTy || w.chName == "" {
			w.lastTy = ch
			w.chName = w.cfg.Prefix + ch
		}
		w.target.Channels = append(w.target.Channels[:0], w.chName)
		opts.LocalOnly = w.cfg.Scope == "local"
	}
	m := Message{Data: []byte(ev.Data)}
	_, err := w.s.broker.Publish(ctx, &w.target, m, opts)
	if err != nil && ctx.Err() == nil {
		w.stat.publishErr.Inc()
		w.logAt(ctx, slog.LevelWarn, "sse event not published", "channel", w.chName, "error", err)
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
