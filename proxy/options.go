package proxy

import (
	"context"
	"crypto/tls"
	"log/slog"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/wsidecar/wsidecar/bridge"
	"github.com/wsidecar/wsidecar/config"
)

// Backend is what the proxy needs from the backend; the bridge's Webhooks
// satisfies it. Errors wrapping bridge.ErrBackendUnavailable mean "try again
// later" (503 at the door, 1013 on a socket).
type Backend interface {
	// Connect runs the connect webhook. Called only for routes with
	// OnConnect set, before the upgrade.
	Connect(ctx context.Context, ci *bridge.ConnInfo) (*bridge.ConnectResult, error)
	// Message forwards one client message; seq is 1, 2, 3… per connection.
	// m.Data is owned by the callee once passed. Calls for one connection
	// arrive in seq order; at most the route's MaxInFlight are outstanding.
	Message(ctx context.Context, ci *bridge.ConnInfo, seq uint64, m bridge.Message) (*bridge.Actions, error)
	// Disconnect reports a closed socket. It must not block for long: the
	// bridge queues and retries it.
	Disconnect(ci *bridge.ConnInfo, d bridge.DisconnectInfo)
}

// ConnObserver follows the life of upgraded sockets. Calls run on the
// handshake and read goroutines, so they must return quickly (no network
// I/O). bridge.Streams satisfies it.
type ConnObserver interface {
	// Opened is called once per socket, once it joined the hub (pushes to
	// its id are queued from then on) and before its 101 is written. ci is
	// the socket's ConnInfo at that moment; it is never modified
	// afterwards. scope returns what route expressions see for this
	// handshake (claims, path, query, header); it builds the maps on each
	// call and may be called only during Opened, as it reads the request.
	Opened(ci *bridge.ConnInfo, scope func() config.Scope)
	// Closed is called exactly once for every socket Opened saw, after
	// its read loop ended (a client close, a server close, Drain, Close)
	// or when its upgrade never completed.
	Closed(id string)
}

// Options configures a Server. Config structs are taken as validated by the
// config package; zero values fall back to the documented defaults.
type Options struct {
	Listener  config.Listener
	Routes    []config.Route
	Limits    config.Limits
	Heartbeat config.Heartbeat
	Drain     config.Drain

	// Backend receives webhooks. nil: routes with hooks fail (connect → 502,
	// messages → the route's OnError policy).
	Backend Backend
	// Hub indexes this server's sockets. nil: a new hub with default options.
	Hub *Hub
	// Logger receives structured logs. nil: discarded.
	Logger *slog.Logger
	// Metrics receives the wsidecar_* series. nil: a private set.
	Metrics *metrics.Set
	// NodeID prefixes every connection id ("<node>.<random>"). Empty: a
	// random one (fine for a single replica; clusters must set it).
	NodeID string
	// ForwardHeaders lists handshake headers copied into ConnInfo.Headers.
	ForwardHeaders []string
	// TLSConfig, when set, serves wss:// (use CertReloader.TLSConfig).
	// nil: plain ws://.
	TLSConfig *tls.Config

	// Door holds the pluggable handshake stages; see Door for nil meanings.
	Door Door
	// OnReject, when set, is called with the reason of every refused
	// handshake (in addition to wsidecar_handshake_rejections_total).
	OnReject func(reason string)
	// ConnObserver, when set, is told when each upgraded socket opens and
	// closes (the SSE bridge opens per-connection streams with it). nil:
	// none, and no handshake Scope is built for it.
	ConnObserver ConnObserver

	// CallTimeout bounds each Connect and Message call. Default 10s.
	CallTimeout time.Duration
	// WriteTimeout bounds one frame write to a client, so a stuck peer frees
	// its writer. Default 10s.
	WriteTimeout time.Duration
	// CloseTimeout is how long a closing socket waits for the peer's close
	// frame before the TCP connection is cut. Default 2s.
	CloseTimeout time.Duration
	// RetryAfter is sent with 503 answers (draining, backend unavailable).
	// Default 5s. The global cap answers with limits.GlobalCapRetryAfter.
	RetryAfter time.Duration
	// RejectLogInterval is how often a refusal is logged per reason and
	// client address (limits.LogGate): a flood must not become a log flood.
	// Every refusal is counted regardless. Default 1m.
	RejectLogInterval time.Duration
	// Now is the wall clock for timestamps (ConnectedAt, durations, token
	// expiry). nil: time.Now. Socket timing (heartbeat) uses the monotonic
	// clock.
	Now func() time.Time

	// evalChannels evaluates a route's Channels template; tests set it while
	// config.Template.Eval is being written. nil: r.Channels.Eval.
	evalChannels func(r *config.Route, s config.Scope) ([]string, error)
	// inlineReadLoop runs the read loop on fasthttp's hijack goroutine
	// instead of handing over to a fresh one (memory experiments).
	inlineReadLoop bool
}

// Defaults applied by NewServer.
const (
	defaultCallTimeout       = 10 * time.Second
	defaultWriteTimeout      = 10 * time.Second
	defaultCloseTimeout      = 2 * time.Second
	defaultRetryAfter        = 5 * time.Second
	defaultHandshakeTimeout  = 10 * time.Second
	defaultMaxHeaderBytes    = 8 << 10
	defaultIOBufferSize      = 1 << 10
	defaultMaxMessageSize    = 64 << 10
	defaultMaxInflatedSize   = 1 << 20
	defaultSendQueue         = 256
	defaultInterval          = 25 * time.Second
	defaultTimeout           = 10 * time.Second
	defaultDrainWindow       = 5 * time.Second
	defaultDrainTimeout      = 25 * time.Second
	defaultRejectLogInterval = time.Minute
)

// limitsSnap is the part of config.Limits a socket keeps from the moment it
// opened: reloads change new sockets only.
type limitsSnap struct {
	maxMessage  int64
	maxInflated int64
	sendQueue   int
	slowClose   bool   // SlowConsumer == "close"
	ratePolicy  string // reply | drop | close
}

func snapLimits(l config.Limits) *limitsSnap {
	s := &limitsSnap{
		maxMessage:  l.MaxMessageSize,
		maxInflated: l.MaxInflatedSize,
		sendQueue:   l.SendQueue,
		slowClose:   l.SlowConsumer != "drop",
		ratePolicy:  l.RatePolicy,
	}
	if s.maxMessage <= 0 {
		s.maxMessage = defaultMaxMessageSize
	}
	if s.maxInflated <= 0 {
		s.maxInflated = defaultMaxInflatedSize
	}
	if s.sendQueue <= 0 {
		s.sendQueue = defaultSendQueue
	}
	switch s.ratePolicy {
	case "drop", "close":
	default:
		s.ratePolicy = "reply"
	}
	return s
}
