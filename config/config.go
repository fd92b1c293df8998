// Package config owns sidecar.hcl: the HCL schema, defaults, validation and the
// env() function. It produces plain structs (time.Duration, int64 byte sizes,
// Rate) that the other packages take in their constructors; nothing outside
// this package sees an HCL type.
//
// Load and Parse return a Config with every default filled in, or a
// Diagnostics error listing every problem at its file:line:col. File paths
// in the result (TLS, PEM keys) are resolved against the config file's
// directory. docs/config.md, generated from reference.go, documents every
// attribute.
package config

import (
	"net/netip"
	"time"
)

// Config is one fully validated sidecar.hcl with every default filled in.
type Config struct {
	// Path is the file the config was loaded from (for reloads and messages).
	Path string

	Listener  Listener
	Admin     Admin
	Backend   Backend
	Origins   Origins
	JWT       *JWT // nil when there is no jwt block
	Limits    Limits
	Heartbeat Heartbeat
	Drain     Drain
	Log       Log
	Routes    []Route  // in file order; matched in that order
	Streams   []Stream // in file order
	Cluster   *Cluster // nil when there is no cluster block (in-memory broker)
}

// Listener is the client-facing WebSocket listener.
type Listener struct {
	Address string // default "0.0.0.0:8080"
	TLS     *TLS   // nil: plain ws://

	// HandshakeTimeout bounds how long a client may take to send its
	// handshake request headers (slowloris). Default 10s.
	HandshakeTimeout time.Duration
	// MaxHeaderBytes caps the handshake request size. Default 8KiB.
	MaxHeaderBytes int64
	// ReadBufferSize and WriteBufferSize size the per-connection I/O buffers.
	// Defaults 1KiB each: small buffers are what keep idle sockets cheap.
	ReadBufferSize  int64
	WriteBufferSize int64
	// Compression enables permessage-deflate negotiation. Default false.
	Compression bool
}

// TLS holds the certificate pair for wss://. Parse checks that both files
// are readable; it does not parse them.
type TLS struct {
	CertFile string
	KeyFile  string
}

// Admin is the pod-local listener serving the push API, metrics and probes.
type Admin struct {
	Address string // default "127.0.0.1:9090"
	// Token, when set, is required as "Authorization: Bearer <token>" on the
	// push API (/v1/*). Probes and /metrics stay open.
	Token string
}

// Backend is the legacy HTTP service wsidecar calls.
type Backend struct {
	URL      string        // required, http:// or https://, no trailing slash
	Timeout  time.Duration // per call; default 10s
	MaxConns int           // keep-alive pool size and concurrent request cap; default 512
	// SigningSecret, when set, adds X-WS-Signature to every call.
	SigningSecret string
	// ForwardHeaders lists handshake request headers copied to every call
	// (e.g. "Cookie"). Default none.
	ForwardHeaders []string
	Breaker        Breaker
	// DisconnectQueue bounds disconnect webhooks waiting for retry. Default 10000.
	DisconnectQueue int
	// DisconnectRetryMax is the longest backoff between disconnect retries. Default 30s.
	DisconnectRetryMax time.Duration
}

// Breaker configures the circuit breaker around backend calls.
type Breaker struct {
	Enabled bool // default true
	// Failures is the number of consecutive failures that opens it. Default 5.
	Failures int
	// OpenTimeout is how long it stays open before half-open probes. Default 10s.
	OpenTimeout time.Duration
	// HalfOpenRequests is how many probes pass while half-open. Default 1.
	HalfOpenRequests int
	// Interval clears failure counts while closed; 0 never clears. Default 60s.
	Interval time.Duration
}

// Origins is an Origin allowlist.
type Origins struct {
	// Allow holds exact origins ("https://app.example.com") and wildcard
	// subdomain patterns ("https://*.example.com"). Empty means no browser
	// origin is allowed.
	Allow []string
	// AllowMissing lets clients without an Origin header in (non-browser). Default false.
	AllowMissing bool
}

// JWT configures token verification.
type JWT struct {
	// Sources is the order in which the token is looked for: "header"
	// (Authorization: Bearer), "cookie:NAME", "query:NAME", "protocol"
	// (Sec-WebSocket-Protocol "bearer, <token>"). Default
	// ["header", "protocol", "query:access_token"].
	Sources        []string
	Issuer         string        // required "iss" when set
	Audience       []string      // token must carry one of these in "aud" when set
	Leeway         time.Duration // clock skew allowed on exp/nbf/iat; default 0, at most 5m
	RequireExp     bool          // default true
	RequiredClaims []string      // claims that must be present
	// UserClaim names the claim that becomes X-WS-User. Default "sub".
	UserClaim string
	Keys      []JWTKey // at least one
}

// JWTKey is one verification key (or key set), with its algorithms pinned.
// Exactly one of Secret, PEMFile and JWKSURL is set; HS* algorithms go only
// with Secret (at least as long as the hash output, RFC 7518 §3.2).
type JWTKey struct {
	Name       string   // block label
	Algorithms []string // e.g. ["HS256"], ["RS256","PS256"], ["EdDSA"]
	KeyID      string   // optional kid this key answers to
	Secret     string   // HMAC secret (from env())
	PEMFile    string   // public key PEM (RSA, ECDSA, Ed25519), path resolved
	JWKSURL    string   // JWKS endpoint; https except on loopback
	// JWKSRefresh is how often the JWKS is refreshed. Default 1h.
	JWKSRefresh time.Duration
	// JWKSUnknownKIDWait bounds how long a handshake waits on a refresh
	// caused by an unknown kid. Default 1s.
	JWKSUnknownKIDWait time.Duration
}

// Limits are the door's caps and rates.
type Limits struct {
	MaxConnections     int  // global cap; default 100000
	PerIPConnections   int  // default 100 (0 disables)
	PerUserConnections int  // default 0 (disabled)
	HandshakeRate      Rate // per client IP; default 20/s burst 40
	MessageRate        Rate // per connection; default 100/s burst 100
	ByteRate           Rate // bytes per connection; default 1MiB/s burst 1MiB (N and Burst in bytes)
	// RatePolicy is what happens when a connection exceeds MessageRate or
	// ByteRate: "reply" (error frame), "drop" or "close" (1008). Default "reply".
	RatePolicy     string
	MaxMessageSize int64 // default 64KiB; bigger frames close with 1009
	// MaxInflatedSize caps a decompressed message when compression is on. Default 1MiB.
	MaxInflatedSize int64
	// TrustedProxies are CIDRs whose X-Forwarded-For/X-Real-IP are believed
	// (masked; a bare address becomes a /32 or /128). Default none.
	TrustedProxies []netip.Prefix
	// IdleEvict is how long limiter state for a quiet IP is kept. Default 5m.
	IdleEvict time.Duration
	// SendQueue is the per-connection outbound queue length. Default 256.
	SendQueue int
	// SlowConsumer is what happens when a socket's send queue is full:
	// "drop" (drop the message, count it) or "close" (close with 1013). Default "close".
	SlowConsumer string
}

// Rate is N events per Per, with a Burst. The zero Rate means unlimited
// (written "unlimited" in sidecar.hcl).
type Rate struct {
	N     float64
	Per   time.Duration
	Burst int
}

// Unlimited reports whether the rate imposes no limit.
func (r Rate) Unlimited() bool { return r.N <= 0 || r.Per <= 0 }

// PerSecond returns the rate in events per second.
func (r Rate) PerSecond() float64 {
	if r.Unlimited() {
		return 0
	}
	return r.N / r.Per.Seconds()
}

// Heartbeat configures pings.
type Heartbeat struct {
	Interval time.Duration // between pings; default 25s
	Timeout  time.Duration // for the pong; default 10s
}

// Drain configures graceful shutdown.
type Drain struct {
	Window  time.Duration // 1001 closes are spread over this; default 5s
	Timeout time.Duration // hard deadline; default 25s
}

// Log configures log/slog.
type Log struct {
	Level  string // debug|info|warn|error; default info
	Format string // text|json; default text
}

// Route is one WebSocket endpoint.
type Route struct {
	Path string // label, may hold {param} segments: "/ws/{room}"
	// Params are the names of Path's {param} segments, in order.
	Params []string
	// Auth is "jwt" (default) or "none". "jwt" needs a jwt block.
	Auth         string
	Subprotocols []string
	Origins      *Origins // per-route override; nil uses the global allowlist
	OnConnect    string   // backend path; empty: no connect webhook
	OnMessage    string   // backend path; empty: messages are dropped
	OnDisconnect string   // backend path; empty: no disconnect webhook
	// OnError is the policy for failed message webhooks: "reply" (default),
	// "drop" or "close" (1011).
	OnError string
	// MaxInFlight is how many message webhooks a connection may have
	// outstanding (order is kept regardless). Default 1.
	MaxInFlight int
	// Channels are evaluated per connection and subscribed at connect.
	Channels *Template
}

// Stream is one SSE feed consumed from the backend.
type Stream struct {
	Name string // label
	// Path is the backend path, e.g. "/events". When PathTemplate is set,
	// Path holds the expression's source text, for logs only.
	Path string
	// PathTemplate is non-nil when path uses claims, query or header (e.g.
	// "/users/${claims.sub}/events"): one stream per connection, path from
	// PathTemplate.EvalString, closed with the connection.
	PathTemplate *Template
	// Channel fixes the target channel; empty means the event's "event"
	// field (or "message" when absent).
	Channel string
	Prefix  string // prepended to the channel name
	// Scope is "cluster" (default; published to every replica) or "local".
	Scope        string
	ReconnectMin time.Duration // default 500ms
	ReconnectMax time.Duration // default 30s
}

// Cluster enables Redis pub/sub fan-out between replicas.
type Cluster struct {
	NodeID string // default: hostname + "-" + 8 random hex digits, made by Parse
	Redis  Redis
}

// Redis is the Redis connection for clustering.
type Redis struct {
	URL    string // redis:// or rediss://, password in the URL
	Prefix string // topic prefix; default "wsidecar"
}
