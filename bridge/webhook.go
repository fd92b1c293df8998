package bridge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/sony/gobreaker/v2"
	"github.com/valyala/fasthttp"

	"github.com/wsidecar/wsidecar/config"
)

// Defaults for zero config fields, matching the config package's defaults so
// a hand-built config.Backend (tests, embedding) behaves like a loaded one.
const (
	defaultWebhookTimeout  = 10 * time.Second
	defaultWebhookMaxConns = 512
	defaultBreakerFailures = 5
	defaultBreakerOpen     = 10 * time.Second
	defaultWebhookMaxReply = 4 << 20
	minBreakerRetryAfter   = time.Second
	webhookUserAgent       = "wsidecar"

	// webhookIdleConnTimeout is short on purpose: the pool never retries a POST,
	// so reusing a keep-alive connection the backend has just closed for
	// idleness turns the next webhook into a failure. Staying under common
	// server idle timeouts (Node's 5s) avoids that race.
	webhookIdleConnTimeout = 3 * time.Second

	hdrContentTypeText   = "text/plain; charset=utf-8"
	hdrContentTypeBinary = "application/octet-stream"
	hdrContentTypeJSON   = "application/json"
)

// hookKind names a webhook for metrics and errors.
type hookKind uint8

const (
	kindConnect hookKind = iota
	kindMsg
	kindDisconnect
	numHookKinds = 3
)

// Metric label indexes.
const (
	unavailableReasonOpen = 0
	unavailableReasonBusy = 1
	numUnavailableReasons = 2
	statusClassError      = 4
	numStatusClasses      = 5
)

var hookKindNames = [numHookKinds]string{"connect", "message", "disconnect"}

func (k hookKind) String() string { return hookKindNames[k] }

// statusClassNames are the status label values; "other" (1xx, 3xx) should
// not happen with a sane backend, "error" means no reply at all.
var statusClassNames = [numStatusClasses]string{"2xx", "other", "4xx", "5xx", "error"}

// statusClass maps a status to its metric label index.
func statusClass(status int) int {
	switch {
	case status >= 200 && status < 300:
		return 0
	case status >= 500:
		return 3
	case status >= 400:
		return 2
	default:
		return 1
	}
}

// errCounted and errNotCounted tell the breaker how to score a call and
// never leave the package; errBackendBusy is returned wrapped with
// ErrBackendUnavailable.
var (
	errCounted     = errors.New("backend failure")
	errNotCounted  = errors.New("not the backend's fault")
	errBackendBusy = errors.New("all backend connections busy")
)

// WebhookOptions are the dependencies of Webhooks.
type WebhookOptions struct {
	// Logger receives breaker transitions and dropped disconnects; nil
	// discards. Bodies, tokens and cookies are never logged.
	Logger *slog.Logger
	// Metrics is where wsidecar_webhook_* and related metrics are
	// registered; nil uses a private set. One Webhooks per set.
	Metrics *metrics.Set
	// Now is the clock for X-WS-Timestamp, Retry-After estimates and the
	// disconnect give-up age; nil uses time.Now. Network deadlines and the
	// breaker's own timers (gobreaker has no clock hook) use the real clock.
	Now func() time.Time
	// MaxReplySize caps a backend reply body; 0 means 4 MiB. A bigger reply
	// fails the call (it would become a frame no client expects).
	MaxReplySize int
}

// Webhooks calls the backend's connect, message and disconnect webhooks over
// a keep-alive pool, behind a circuit breaker and a cap on concurrent calls.
// It is safe for concurrent use.
type Webhooks struct {
	log          *slog.Logger
	now          func() time.Time
	maxReplySize int

	// settings is swapped whole by Update so a call sees one consistent
	// version without locking.
	settings atomic.Pointer[webhookSettings]
	updateMu sync.Mutex // serialises Update

	// sem caps concurrent backend calls at MaxConns (also the pool size).
	// Waiting for a slot is bounded by the call's deadline.
	sem chan struct{}

	breaker     *gobreaker.TwoStepCircuitBreaker[struct{}] // nil: disabled
	openTimeout time.Duration
	openedAt    atomic.Int64 // unix nanos (w.now) of the last trip

	latency     *latencyHistogram
	unavailable [numHookKinds][numUnavailableReasons]*metrics.Counter

	disc disconnects
}

// webhookSettings is the reloadable part of the configuration. It is immutable once
// published.
type webhookSettings struct {
	client  *fasthttp.HostClient
	origin  string // scheme://host:port; a change needs a new client
	base    string // URL without trailing slash; hook paths are appended
	timeout time.Duration
	signer  *signer  // nil: calls are not signed
	forward []string // handshake headers that may be forwarded
}

// NewWebhooks builds the client for cfg. MaxConns, DisconnectQueue and the
// breaker settings are fixed for the life of the value; Update changes the
// rest.
func NewWebhooks(cfg config.Backend, opts WebhookOptions) (*Webhooks, error) {
	w := &Webhooks{
		log:          opts.Logger,
		now:          opts.Now,
		maxReplySize: opts.MaxReplySize,
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	if w.now == nil {
		w.now = time.Now
	}
	if w.maxReplySize <= 0 {
		w.maxReplySize = defaultWebhookMaxReply
	}
	maxConns := cfg.MaxConns
	if maxConns <= 0 {
		maxConns = defaultWebhookMaxConns
	}
	w.sem = make(chan struct{}, maxConns)

	s, err := w.newSettings(cfg, nil)
	if err != nil {
		return nil, err
	}
	w.settings.Store(s)

	if cfg.Breaker.Enabled {
		w.breaker = w.newBreaker(cfg.Breaker)
	}
	set := opts.Metrics
	if set == nil {
		set = metrics.NewSet()
	}
	w.registerMetrics(set)
	w.startDisconnects(cfg, set)
	return w, nil
}

// Update applies a reloaded backend config: timeout, signing secret,
// forwarded headers and URL. A URL on another scheme or host gets a fresh
// connection pool; calls in flight finish on the old one. MaxConns, the
// breaker and the disconnect queue settings keep their NewWebhooks values.
// On error nothing changes.
func (w *Webhooks) Update(cfg config.Backend) error {
	w.updateMu.Lock()
	defer w.updateMu.Unlock()
	old := w.settings.Load()
	s, err := w.newSettings(cfg, old)
	if err != nil {
		return err
	}
	w.settings.Store(s)
	if s.client != old.client {
		old.client.CloseIdleConnections()
	}
	return nil
}

// newSettings validates cfg and builds settings, reusing prev's client when
// the backend origin is unchanged.
func (w *Webhooks) newSettings(cfg config.Backend, prev *webhookSettings) (*webhookSettings, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("backend url: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("backend url %q: scheme must be http or https", cfg.URL)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("backend url %q: want scheme://host[:port][/prefix] without credentials, query or fragment", cfg.URL)
	}
	isTLS := u.Scheme == "https"
	addr := fasthttp.AddMissingPort(u.Host, isTLS)
	s := &webhookSettings{
		origin:  u.Scheme + "://" + addr,
		base:    u.Scheme + "://" + u.Host + strings.TrimRight(u.EscapedPath(), "/"),
		timeout: cfg.Timeout,
		forward: append([]string(nil), cfg.ForwardHeaders...),
	}
	if s.timeout <= 0 {
		s.timeout = defaultWebhookTimeout
	}
	if cfg.SigningSecret != "" {
		s.signer = newSigner(cfg.SigningSecret)
	}
	if prev != nil && prev.origin == s.origin {
		s.client = prev.client
		return s, nil
	}
	s.client = &fasthttp.HostClient{
		Addr:     addr,
		Name:     webhookUserAgent,
		IsTLS:    isTLS,
		MaxConns: cap(w.sem),
		// Our semaphore already caps calls at MaxConns; this only guards
		// the moment after a URL change when two pools coexist.
		MaxConnWaitTimeout:  s.timeout,
		MaxIdleConnDuration: webhookIdleConnTimeout,
		MaxResponseBodySize: w.maxReplySize,
		// Hook paths are sent exactly as configured.
		DisablePathNormalizing: true,
		// POSTs are never retried by the pool: a message webhook must reach
		// the backend at most once and in order.
		RetryIfErr: func(*fasthttp.Request, int, error) (bool, bool) { return false, false },
	}
	return s, nil
}

func (w *Webhooks) newBreaker(b config.Breaker) *gobreaker.TwoStepCircuitBreaker[struct{}] {
	failures := b.Failures
	if failures <= 0 {
		failures = defaultBreakerFailures
	}
	w.openTimeout = b.OpenTimeout
	if w.openTimeout <= 0 {
		w.openTimeout = defaultBreakerOpen
	}
	probes := b.HalfOpenRequests
	if probes <= 0 {
		probes = 1
	}
	return gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        "backend",
		MaxRequests: uint32(min(probes, math.MaxUint32)),
		Interval:    b.Interval,
		Timeout:     w.openTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= uint32(min(failures, math.MaxUint32))
		},
		IsExcluded: func(err error) bool { return errors.Is(err, errNotCounted) },
		// Runs under the breaker's lock: keep it short.
		OnStateChange: func(_ string, from, to gobreaker.State) {
			if to == gobreaker.StateOpen {
				w.openedAt.Store(w.now().UnixNano())
				w.log.Warn("backend circuit breaker opened", "from", from.String(), "open_for", w.openTimeout)
				return
			}
			w.log.Info("backend circuit breaker state changed", "from", from.String(), "to", to.String())
		},
	})
}

func (w *Webhooks) registerMetrics(set *metrics.Set) {
	w.latency = &latencyHistogram{}
	set.RegisterMetricsWriter(w.latency.write)
	for k := range numHookKinds {
		kind := hookKindNames[k]
		w.unavailable[k][unavailableReasonOpen] = set.GetOrCreateCounter(
			`wsidecar_webhook_unavailable_total{kind="` + kind + `",reason="breaker_open"}`)
		w.unavailable[k][unavailableReasonBusy] = set.GetOrCreateCounter(
			`wsidecar_webhook_unavailable_total{kind="` + kind + `",reason="busy"}`)
	}
	set.GetOrCreateGauge(`wsidecar_webhook_in_flight`, func() float64 {
		return float64(len(w.sem))
	})
	set.GetOrCreateGauge(`wsidecar_breaker_state`, func() float64 {
		if w.breaker == nil {
			return 0
		}
		// gobreaker's states are numbered closed 0, half-open 1, open 2.
		return float64(w.breaker.State())
	})
}

// BreakerState reports the circuit breaker: "closed", "open" or "half-open"
// ("closed" when the breaker is disabled).
func (w *Webhooks) BreakerState() string {
	if w.breaker == nil {
		return gobreaker.StateClosed.String()
	}
	return w.breaker.State().String()
}

// RetryAfter is how long a client should wait before retrying while the
// backend is unavailable: the time until the breaker lets a probe through,
// rounded up to whole seconds, and at least one second.
func (w *Webhooks) RetryAfter() time.Duration {
	if w.breaker == nil || w.breaker.State() != gobreaker.StateOpen {
		return minBreakerRetryAfter
	}
	left := time.Unix(0, w.openedAt.Load()).Add(w.openTimeout).Sub(w.now())
	if left <= minBreakerRetryAfter {
		return minBreakerRetryAfter
	}
	return (left + time.Second - 1).Truncate(time.Second)
}

// Connect calls the route's connect webhook (POST, empty body, X-WS-Path).
// A 2xx accepts; its actions come from an actions document and/or X-WS-*
// control headers (a plain body is ignored: legacy backends answer "OK").
// Any other status rejects, and the result carries the status, body and the
// Content-Type, Retry-After and WWW-Authenticate headers to relay. When the
// backend cannot be reached in time or the breaker is open, the error wraps
// ErrBackendUnavailable; a malformed actions document wraps ErrBadActions.
// A route without a connect hook is accepted without a call.
func (w *Webhooks) Connect(ctx context.Context, ci *ConnInfo) (*ConnectResult, error) {
	if ci.Hooks.Connect == "" {
		// No connect hook: the route accepts without asking the backend.
		return &ConnectResult{Accepted: true, Status: fasthttp.StatusOK}, nil
	}
	resp, err := w.do(ctx, kindConnect, ci, ci.Hooks.Connect, nil, "", 0)
	if err != nil {
		return nil, err
	}
	defer fasthttp.ReleaseResponse(resp)

	status := resp.StatusCode()
	res := &ConnectResult{Status: status}
	if status < 200 || status >= 300 {
		res.Body = append([]byte(nil), resp.Body()...)
		resp.Header.SetNoDefaultContentType(true) // relay only what was sent
		for _, name := range [...]string{"Content-Type", "Retry-After", "WWW-Authenticate"} {
			if v := resp.Header.Peek(name); len(v) > 0 {
				res.Header = append(res.Header, [2]string{name, string(v)})
			}
		}
		return res, nil
	}
	res.Accepted = true
	a, err := replyActions(resp, false)
	if err != nil {
		return nil, fmt.Errorf("connect webhook: %w", err)
	}
	res.Actions = a
	return res, nil
}

// Message calls the route's message webhook with one client message as the
// body. It never retries and never reorders: the proxy calls it in the
// connection's order. The reply becomes actions: nil for 204 or an empty
// body, the parsed document for application/vnd.wsidecar+json, otherwise one
// frame (text for text/* and JSON replies that are valid UTF-8, else binary);
// X-WS-Subscribe, X-WS-Unsubscribe and X-WS-Close are merged in. A non-2xx
// reply returns a *StatusError; an unreachable backend an error wrapping
// ErrBackendUnavailable; a malformed document one wrapping ErrBadActions.
// A route without a message hook drops messages: nil, nil without a call.
// ctx bounds the wait for a connection slot and the deadline; fasthttp cannot
// abort a request already sent, so cancelling ctx does not cut it short.
func (w *Webhooks) Message(ctx context.Context, ci *ConnInfo, seq uint64, m Message) (*Actions, error) {
	if ci.Hooks.Message == "" {
		return nil, nil // no message hook: messages are dropped (config.Route.OnMessage)
	}
	ctype := hdrContentTypeText
	if m.Binary {
		ctype = hdrContentTypeBinary
	}
	resp, err := w.do(ctx, kindMsg, ci, ci.Hooks.Message, m.Data, ctype, seq)
	if err != nil {
		return nil, err
	}
	defer fasthttp.ReleaseResponse(resp)

	status := resp.StatusCode()
	if status < 200 || status >= 300 {
		return nil, &StatusError{Status: status, Body: append([]byte(nil), resp.Body()...)}
	}
	a, err := replyActions(resp, true)
	if err != nil {
		return nil, fmt.Errorf("message webhook: %w", err)
	}
	return a, nil
}

// do sends one webhook and returns the response, which the caller must
// release. Errors are final and carry the webhook kind; a returned response
// may have any status. It scores the breaker: transport errors, timeouts
// and 5xx count as failures; 4xx and a full connection pool do not.
func (w *Webhooks) do(ctx context.Context, kind hookKind, ci *ConnInfo, hook string, body []byte, ctype string, seq uint64) (*fasthttp.Response, error) {
	s := w.settings.Load()
	if err := ctx.Err(); err != nil {
		return nil, w.ctxError(kind, err)
	}
	deadline := time.Now().Add(s.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}

	done := func(error) {}
	if w.breaker != nil {
		var err error
		if done, err = w.breaker.Allow(); err != nil {
			w.unavailable[kind][unavailableReasonOpen].Inc()
			return nil, fmt.Errorf("%s webhook: %w: circuit breaker %s", kind, ErrBackendUnavailable, w.breaker.State())
		}
	}
	if err := w.acquire(ctx, deadline); err != nil {
		done(errNotCounted)
		if errors.Is(err, errBackendBusy) {
			w.unavailable[kind][unavailableReasonBusy].Inc()
			return nil, fmt.Errorf("%s webhook: %w: %w", kind, ErrBackendUnavailable, err)
		}
		return nil, w.ctxError(kind, err)
	}
	defer w.release()

	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	w.buildRequest(req, s, kind, ci, hook, body, ctype, seq)

	resp := fasthttp.AcquireResponse()
	start := time.Now()
	err := s.client.DoDeadline(req, resp, deadline)
	elapsed := time.Since(start).Seconds()
	if err != nil {
		fasthttp.ReleaseResponse(resp)
		w.latency.observe(kind, statusClassError, elapsed)
		if errors.Is(err, fasthttp.ErrBodyTooLarge) {
			// The backend answered; an oversized reply is its bug, not an
			// outage, so the breaker stays out of it.
			done(nil)
			return nil, fmt.Errorf("%s webhook: reply larger than %d bytes: %w", kind, w.maxReplySize, err)
		}
		done(errCounted)
		return nil, fmt.Errorf("%s webhook: %w: %w", kind, ErrBackendUnavailable, err)
	}
	status := resp.StatusCode()
	w.latency.observe(kind, statusClass(status), elapsed)
	if status >= 500 {
		done(errCounted)
	} else {
		// A 4xx is the backend working as intended (rejecting a client).
		done(nil)
	}
	return resp, nil
}

// ctxError wraps a context error. A deadline that the caller set is a
// timeout like any other and so also means "backend unavailable"; a
// cancellation (the client left) is only reported as such.
func (w *Webhooks) ctxError(kind hookKind, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s webhook: %w: %w", kind, ErrBackendUnavailable, err)
	}
	return fmt.Errorf("%s webhook: %w", kind, err)
}

// acquire takes a slot in the concurrent call cap, waiting until deadline.
func (w *Webhooks) acquire(ctx context.Context, deadline time.Time) error {
	select {
	case w.sem <- struct{}{}:
		return nil
	default:
	}
	wait := time.Until(deadline)
	if wait <= 0 {
		return errBackendBusy
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case w.sem <- struct{}{}:
		return nil
	case <-t.C:
		return errBackendBusy
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *Webhooks) release() { <-w.sem }

// reservedHeader reports whether a forwarded handshake header would clash
// with what the sidecar itself sets, or with HTTP framing. Such headers are
// never forwarded, whatever the allow-list says, so a client cannot forge
// X-WS-User or smuggle a Content-Length.
func reservedHeader(name string) bool {
	if len(name) >= 5 && strings.EqualFold(name[:5], "x-ws-") {
		return true
	}
	for _, r := range reservedHeaders {
		if strings.EqualFold(name, r) {
			return true
		}
	}
	return false
}

var reservedHeaders = [...]string{
	"X-Forwarded-For", "X-Real-IP", "Host", "Content-Type", "Content-Length",
	"Transfer-Encoding", "Connection", "Keep-Alive", "Upgrade", "TE", "Trailer",
	"Proxy-Connection", "Expect",
}

func (s *webhookSettings) forwards(name string) bool {
	for _, f := range s.forward {
		if strings.EqualFold(f, name) {
			return true
		}
	}
	return false
}

// buildRequest fills req. Values are copied by fasthttp, so ci may change
// afterwards; body is referenced until the call returns.
func (w *Webhooks) buildRequest(req *fasthttp.Request, s *webhookSettings, kind hookKind, ci *ConnInfo, hook string, body []byte, ctype string, seq uint64) {
	var uri [256]byte
	u := append(uri[:0], s.base...)
	if hook != "" && hook[0] != '/' {
		u = append(u, '/')
	}
	u = append(u, hook...)
	req.SetRequestURIBytes(u)
	req.Header.SetMethod(fasthttp.MethodPost)

	h := &req.Header
	// Forwarded headers first, so the sidecar's own values below win.
	for _, kv := range ci.Headers {
		if s.forwards(kv[0]) && !reservedHeader(kv[0]) {
			h.Add(kv[0], kv[1])
		}
	}
	h.Set("X-WS-Connection-Id", ci.ID)
	h.Set("X-WS-Route", ci.Route)
	if ci.User != "" {
		h.Set("X-WS-User", ci.User)
	}
	if len(ci.Claims) > 0 {
		// fasthttp turns CR/LF into spaces, which keeps pretty-printed
		// JSON valid and the header unsplittable.
		h.SetBytesV("X-WS-Claims", ci.Claims)
	}
	if ci.ClientIP != "" {
		h.Set("X-Forwarded-For", ci.ClientIP)
		h.Set("X-Real-IP", ci.ClientIP)
	}
	if ci.Protocol != "" {
		h.Set("X-WS-Protocol", ci.Protocol)
	}
	var num [24]byte
	switch kind {
	case kindConnect:
		h.Set("X-WS-Path", ci.Path)
	case kindMsg:
		h.SetBytesV("X-WS-Seq", strconv.AppendUint(num[:0], seq, 10))
	}
	if ctype != "" {
		h.SetContentType(ctype)
	}
	req.SetBodyRaw(body)
	if s.signer != nil {
		ts := w.now().Unix()
		h.SetBytesV("X-WS-Timestamp", strconv.AppendInt(num[:0], ts, 10))
		var sig [80]byte
		h.SetBytesV("X-WS-Signature", s.signer.appendSign(sig[:0], ts, ci.ID, body))
	}
}

// latencyBuckets are the upper bounds (seconds) of the webhook latency
// histogram: a loopback backend answers in well under a millisecond, a
// struggling one hits the timeout (10s by default).
var latencyBuckets = [...]float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// latencyHistogram is wsidecar_webhook_duration_seconds{kind,status}, a
// Prometheus classic histogram with cumulative `le` buckets. The
// VictoriaMetrics Histogram is not used on purpose: its `vmrange` buckets
// do not work with Prometheus' histogram_quantile, and it writes each
// series' _bucket, _sum and _count lines together, which splits the
// untyped _bucket family across the exposition.
type latencyHistogram struct {
	series [numHookKinds][numStatusClasses]latencySeries
}

// latencySeries is one kind/status pair. Its lock is held for a few adds, so
// a scrape sees buckets, sum and count from the same instant.
type latencySeries struct {
	mu     sync.Mutex
	counts [len(latencyBuckets)]uint64 // per bucket, not cumulative
	n      uint64
	sum    float64
}

func (h *latencyHistogram) observe(kind hookKind, class int, secs float64) {
	s := &h.series[kind][class]
	i := 0
	for i < len(latencyBuckets) && secs > latencyBuckets[i] {
		i++
	}
	s.mu.Lock()
	if i < len(latencyBuckets) {
		s.counts[i]++
	}
	s.n++
	s.sum += secs
	s.mu.Unlock()
}

// write appends the histogram in the Prometheus text format; series that
// saw no call are left out.
func (h *latencyHistogram) write(w io.Writer) {
	var b []byte
	for k := range numHookKinds {
		for c := range numStatusClasses {
			s := &h.series[k][c]
			s.mu.Lock()
			counts, n, sum := s.counts, s.n, s.sum
			s.mu.Unlock()
			if n == 0 {
				continue
			}
			if b == nil {
				b = append(b, "# HELP wsidecar_webhook_duration_seconds Backend webhook latency by kind and status class.\n"+
					"# TYPE wsidecar_webhook_duration_seconds histogram\n"...)
			}
			labels := `kind="` + hookKindNames[k] + `",status="` + statusClassNames[c] + `"`
			var cum uint64
			for i, le := range latencyBuckets {
				cum += counts[i]
				b = fmt.Appendf(b, "wsidecar_webhook_duration_seconds_bucket{%s,le=\"%s\"} %d\n", labels, strconv.FormatFloat(le, 'g', -1, 64), cum)
			}
			b = fmt.Appendf(b, "wsidecar_webhook_duration_seconds_bucket{%s,le=\"+Inf\"} %d\n", labels, n)
			b = fmt.Appendf(b, "wsidecar_webhook_duration_seconds_sum{%s} %s\n", labels, strconv.FormatFloat(sum, 'g', -1, 64))
			b = fmt.Appendf(b, "wsidecar_webhook_duration_seconds_count{%s} %d\n", labels, n)
		}
	}
	_, _ = w.Write(b)
}
