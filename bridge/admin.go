package bridge

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"
)

// AdminOptions configure the admin listener's handler. Only Broker is
// required.
type AdminOptions struct {
	// Token, when set, is required as "Authorization: Bearer <token>" on
	// every /v1/* endpoint. Probes and /metrics stay open: the listener is
	// pod-local by default.
	Token string
	// Broker carries pushes and connection commands to the sockets.
	Broker Broker
	// Ready reports whether the sidecar takes traffic (false with a reason
	// while draining). nil: always ready until /v1/drain.
	Ready func() (bool, string)
	// Drain starts a graceful drain. It is called at most once, on its own
	// goroutine, so it may block until the drain is done. nil: /v1/drain
	// only fails /readyz.
	Drain func()
	// WriteMetrics writes every metric of the process in Prometheus text
	// format for GET /metrics. nil: the Metrics set alone is written.
	WriteMetrics func(w io.Writer)
	// Metrics receives the wsidecar_push_* metrics. nil: a private set.
	Metrics *metrics.Set
	// Logger receives request failures. nil: discard.
	Logger *slog.Logger
	// MaxBody caps request bodies in bytes (413 above it). Default 1 MiB.
	// The fasthttp server's MaxRequestBodySize must be at least this.
	MaxBody int
	// Timeout bounds each broker call (a clustered broker may wait on
	// another replica). Default 5s.
	Timeout time.Duration
}

// Admin serves the push API, the connection endpoints, /metrics and the
// probes on the admin listener.
type Admin struct {
	opts     AdminOptions
	log      *slog.Logger
	tokenSum [sha256.Size]byte

	draining  atomic.Bool
	drainOnce sync.Once

	// Push metrics by target kind: connection, user, channel, broadcast, mixed.
	pushRequests map[string]*metrics.Counter
	deliveries   *metrics.Counter // sockets a push was queued to on this replica
	dropped      *metrics.Counter // matched sockets whose send queue was full
	remote       *metrics.Counter // replicas pushes were handed to
	failed       *metrics.Counter // cluster publishes that could not be sent
}

const defaultAdminMaxBody = 1 << 20

// NewAdmin returns the admin handler.
func NewAdmin(opts AdminOptions) *Admin {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.NewSet()
	}
	if opts.MaxBody <= 0 {
		opts.MaxBody = defaultAdminMaxBody
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	a := &Admin{
		opts:         opts,
		log:          opts.Logger,
		pushRequests: make(map[string]*metrics.Counter),
		deliveries:   opts.Metrics.GetOrCreateCounter("wsidecar_push_deliveries_total"),
		dropped:      opts.Metrics.GetOrCreateCounter("wsidecar_push_dropped_total"),
		remote:       opts.Metrics.GetOrCreateCounter("wsidecar_push_remote_replicas_total"),
		failed:       opts.Metrics.GetOrCreateCounter("wsidecar_push_cluster_failures_total"),
	}
	for _, k := range []string{"connection", "user", "channel", "broadcast", "mixed"} {
		a.pushRequests[k] = opts.Metrics.GetOrCreateCounter(`wsidecar_push_requests_total{kind="` + k + `"}`)
	}
	if opts.Token != "" {
		// Comparing fixed-size digests keeps the comparison constant-time
		// even in the token's length.
		a.tokenSum = sha256.Sum256([]byte(opts.Token))
	}
	return a
}

// Handler is the fasthttp request handler for the admin listener.
func (a *Admin) Handler(ctx *fasthttp.RequestCtx) {
	path := ctx.URI().PathOriginal()
	switch string(path) {
	case "/healthz":
		if a.method(ctx, "GET", "HEAD") {
			ctx.SetContentType("text/plain; charset=utf-8")
			ctx.SetBodyString("ok\n")
		}
		return
	case "/readyz":
		if a.method(ctx, "GET", "HEAD") {
			a.readyz(ctx)
		}
		return
	case "/metrics":
		if a.method(ctx, "GET", "HEAD") {
			a.metrics(ctx)
		}
		return
	}
	rest, ok := bytes.CutPrefix(path, []byte("/v1/"))
	if !ok {
		writeError(ctx, fasthttp.StatusNotFound, "not_found", "no such endpoint")
		return
	}
	if !a.authorized(ctx) {
		ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="wsidecar"`)
		writeError(ctx, fasthttp.StatusUnauthorized, "unauthorized", "missing or invalid bearer token")
		return
	}
	segs, err := splitPath(rest)
	if err != nil {
		writeError(ctx, fasthttp.StatusBadRequest, "invalid_path", err.Error())
		return
	}
	a.route(ctx, segs)
}

// route dispatches /v1/* by its decoded path segments.
func (a *Admin) route(ctx *fasthttp.RequestCtx, segs []string) {
	if a.opts.Broker == nil && !(len(segs) == 1 && segs[0] == "drain") {
		writeError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", "no broker configured")
		return
	}
	switch {
	case len(segs) == 1 && segs[0] == "push":
		if a.method(ctx, "POST") {
			a.pushJSON(ctx)
		}
	case len(segs) == 2 && segs[0] == "push" && segs[1] == "broadcast":
		if a.method(ctx, "POST") {
			a.pushRaw(ctx, "broadcast", "")
		}
	case len(segs) == 3 && segs[0] == "push" && (segs[1] == "channel" || segs[1] == "user" || segs[1] == "connection"):
		if a.method(ctx, "POST") {
			a.pushRaw(ctx, segs[1], segs[2])
		}
	case len(segs) == 1 && (segs[0] == "subscribe" || segs[0] == "unsubscribe"):
		if a.method(ctx, "POST") {
			a.subscribe(ctx, segs[0] == "subscribe")
		}
	case len(segs) == 1 && segs[0] == "connections":
		if a.method(ctx, "GET", "HEAD") {
			a.listConnections(ctx)
		}
	case len(segs) == 2 && segs[0] == "connections":
		if a.method(ctx, "GET", "HEAD", "DELETE") {
			if ctx.IsDelete() {
				a.deleteConnection(ctx, segs[1])
			} else {
				a.getConnection(ctx, segs[1])
			}
		}
	case len(segs) == 1 && segs[0] == "drain":
		if a.method(ctx, "POST") {
			a.drain(ctx)
		}
	default:
		writeError(ctx, fasthttp.StatusNotFound, "not_found", "no such endpoint")
	}
}

// method answers 405 with Allow unless the request uses one of allowed.
func (a *Admin) method(ctx *fasthttp.RequestCtx, allowed ...string) bool {
	m := ctx.Method()
	for _, x := range allowed {
		if string(m) == x {
			return true
		}
	}
	ctx.Response.Header.Set("Allow", strings.Join(allowed, ", "))
	writeError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", "use "+strings.Join(allowed, " or "))
	return false
}

func (a *Admin) authorized(ctx *fasthttp.RequestCtx) bool {
	if a.opts.Token == "" {
		return true
	}
	h := ctx.Request.Header.Peek("Authorization")
	const scheme = "bearer "
	if len(h) < len(scheme) || !strings.EqualFold(string(h[:len(scheme)]), scheme) {
		return false
	}
	sum := sha256.Sum256(bytes.TrimSpace(h[len(scheme):]))
	return subtle.ConstantTimeCompare(sum[:], a.tokenSum[:]) == 1
}

// readyz answers 200 when both the sidecar and the broker are ready, else
// 503; the JSON detail names what is wrong.
func (a *Admin) readyz(ctx *fasthttp.RequestCtx) {
	type detail struct {
		Sidecar string `json:"sidecar,omitempty"`
		Broker  string `json:"broker,omitempty"`
	}
	var d detail
	ready := true
	switch {
	case a.draining.Load():
		ready, d.Sidecar = false, "draining"
	case a.opts.Ready != nil:
		ok, why := a.opts.Ready()
		if !ok {
			ready, d.Sidecar = false, orDefault(why, "not ready")
		}
	}
	if a.opts.Broker != nil {
		ok, why := a.opts.Broker.Ready()
		if !ok {
			ready, d.Broker = false, orDefault(why, "not ready")
		} else {
			d.Broker = why // a working broker may still report a degraded link
		}
	}
	if ready {
		writeJSON(ctx, fasthttp.StatusOK, struct {
			Status string  `json:"status"`
			Detail *detail `json:"detail,omitempty"`
		}{"ready", nonZero(d)})
		return
	}
	msg := d.Sidecar
	if d.Broker != "" {
		msg = strings.TrimPrefix(msg+"; broker: "+d.Broker, "; ")
	}
	writeJSON(ctx, fasthttp.StatusServiceUnavailable, struct {
		Error  apiError `json:"error"`
		Detail detail   `json:"detail"`
	}{apiError{"not_ready", msg}, d})
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func nonZero[T comparable](v T) *T {
	var zero T
	if v == zero {
		return nil
	}
	return &v
}

func (a *Admin) metrics(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("text/plain; version=0.0.4; charset=utf-8")
	if a.opts.WriteMetrics != nil {
		a.opts.WriteMetrics(ctx)
		return
	}
	a.opts.Metrics.WritePrometheus(ctx)
}

// drain starts the drain once; /readyz fails from now on either way.
func (a *Admin) drain(ctx *fasthttp.RequestCtx) {
	first := false
	a.drainOnce.Do(func() {
		first = true
		a.draining.Store(true)
		a.log.Info("drain requested through the admin API")
		if a.opts.Drain != nil {
			go a.opts.Drain()
		}
	})
	status := "draining"
	if !first {
		status = "already draining"
	}
	writeJSON(ctx, fasthttp.StatusAccepted, map[string]string{"status": status})
}

// brokerCtx bounds one broker call. The RequestCtx itself is not used as
// the parent: it is recycled when the handler returns, and a broker may
// keep a context alive longer than that.
func (a *Admin) brokerCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), a.opts.Timeout)
}

// apiError is the body of every error answer.
type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func writeError(ctx *fasthttp.RequestCtx, status int, code, msg string) {
	writeJSON(ctx, status, struct {
		Error apiError `json:"error"`
	}{apiError{code, msg}})
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = fasthttp.StatusInternalServerError
		b = []byte(`{"error":{"code":"internal","message":"cannot encode the answer"}}`)
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(append(b, '\n'))
}

// splitPath splits a raw path (after "/v1/") into URL-decoded segments, so
// "push/channel/room%3A1" names the channel "room:1" and an encoded "/" stays
// inside its segment.
func splitPath(raw []byte) ([]string, error) {
	parts := strings.Split(string(raw), "/")
	for i, p := range parts {
		if strings.IndexByte(p, '%') < 0 {
			continue
		}
		d, err := url.PathUnescape(p)
		if err != nil {
			return nil, err
		}
		parts[i] = d
	}
	return parts, nil
}
