package proxy

import (
	"encoding/json"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/wsidecar/wsidecar/config"
	"github.com/wsidecar/wsidecar/limits"
)

// Handshake is one upgrade request as the door sees it. The stages fill it
// in pipeline order; a Guard may read what earlier stages set and set the
// fields its stage owns (documented per field).
type Handshake struct {
	// Request is the raw request. It and every slice read from it are valid
	// only while the guard runs (fasthttp reuses them): copy what you keep.
	Request *fasthttp.RequestCtx
	// Now is when the request reached the door.
	Now time.Time
	// Peer is the TCP peer address.
	Peer netip.AddrPort
	// ClientIP is the client's address. Defaults to Peer's address; the
	// ClientIP guard replaces it (trusted proxies).
	ClientIP netip.Addr
	// Route is the route the path matches, or nil (read-only). It is looked
	// up before the first guard runs so that the Origin stage can apply a
	// per-route allowlist, but a miss is answered 404 only at the route
	// stage.
	Route *config.Route
	// Params holds the route's {param} values (nil when it has none).
	Params map[string]string
	// Protocols are the subprotocols the client offered, in its order. The
	// Auth guard removes token-carrying entries ("bearer", the token) before
	// negotiation picks the first one the route lists.
	Protocols []string
	// AnswerProtocol, when set, is the Sec-WebSocket-Protocol answer used
	// when negotiation picks none of Protocols. The Auth guard sets it to the
	// client's "bearer" marker when the bearer pair was all it offered:
	// browsers fail a handshake whose answer names no protocol after they
	// offered some (WHATWG Fetch, "establish a WebSocket connection"). It is
	// never the token and never reaches the backend as ConnInfo.Protocol.
	AnswerProtocol string
	// User is the authenticated user id (X-WS-User). Set by the Auth guard.
	User string
	// Claims are the verified token claims, visible to route templates as
	// claims.*. Set by the Auth guard; nil without a token.
	Claims map[string]any
	// ClaimsJSON are the same claims as JSON, forwarded as X-WS-Claims. Set
	// by the Auth guard; the socket keeps the slice, so never modify it.
	ClaimsJSON []byte
	// ExpiresAt, when set, is when the token expires: the socket is then
	// closed with 1008 unless an actions document extends it. Set by the
	// Auth guard.
	ExpiresAt time.Time

	releaseMu sync.Mutex
	releases  []func()
	released  bool
}

// OnRelease registers f to run exactly once when the handshake ends without
// a socket (refused by a later stage, upgrade failed) or, after an upgrade,
// when the socket has closed. Guards that count live connections (per-IP,
// per-user and global caps) take their slot in Admit and give it back here.
func (h *Handshake) OnRelease(f func()) {
	h.releaseMu.Lock()
	if h.released {
		h.releaseMu.Unlock()
		f()
		return
	}
	h.releases = append(h.releases, f)
	h.releaseMu.Unlock()
}

// release runs the registered release funcs once.
func (h *Handshake) release() { runReleases(h.detach()) }

// detach hands the registered release funcs to the caller, who must run
// them (runReleases); later OnRelease calls run at once.
func (h *Handshake) detach() []func() {
	h.releaseMu.Lock()
	defer h.releaseMu.Unlock()
	if h.released {
		return nil
	}
	h.released = true
	fs := h.releases
	h.releases = nil
	return fs
}

// runReleases runs release funcs last registered first, like defer.
func runReleases(fs []func()) {
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

// Rejection refuses a handshake. It maps to one HTTP answer; Reason is a
// short fixed token (it becomes a metric label), Message is shown to the
// client.
type Rejection struct {
	Status     int           // HTTP status, e.g. 429
	Reason     string        // e.g. "origin", "ip_cap"; [a-z0-9_], bounded set
	Message    string        // human-readable, sent in the JSON body
	RetryAfter time.Duration // > 0 adds Retry-After (whole seconds, rounded up)
	Header     [][2]string   // extra headers, e.g. WWW-Authenticate
	// Body, when non-nil, is sent as is instead of the JSON error document
	// (a relayed connect-webhook answer); set its Content-Type in Header.
	Body []byte
	// Counted says the guard already counted this refusal in
	// wsidecar_handshake_rejections_total (limits.Door methods count their
	// own), so the server must not count it again.
	Counted bool
}

// Guard is one stage of the door. Admit returns nil to let the handshake on
// to the next stage, or the Rejection to answer with.
type Guard interface {
	Admit(h *Handshake) *Rejection
}

// GuardFunc adapts a function to Guard.
type GuardFunc func(h *Handshake) *Rejection

// Admit calls f.
func (f GuardFunc) Admit(h *Handshake) *Rejection { return f(h) }

// Door holds the pluggable stages of the handshake pipeline. The server runs
// them in this order, interleaved with its own stages:
//
//	drain → GlobalCap → ClientIP → HandshakeRate → IPCap → Origin →
//	route match → Auth → UserCap → connect webhook → upgrade
//
// Guards are called concurrently from many handshakes; a guard that must
// change at runtime (SIGHUP) swaps its own state atomically.
type Door struct {
	// Limits is the admission state the guards below share with the server:
	// the server counts every refusal through Limits.Reject (one
	// wsidecar_handshake_rejections_total family) and rate-limits each
	// socket's messages with a limits.ConnLimiter on it. Whoever built it
	// updates it on reload (Server.UpdateLimits does not). nil: the server
	// builds a private one from Options.Limits and updates it in
	// UpdateLimits.
	Limits *limits.Door
	// GlobalCap caps connections process-wide. nil: the server's own cap,
	// Limits.AcquireGlobal (Options.Limits.MaxConnections open-or-upgrading
	// sockets, 0 = no cap), 503 + Retry-After.
	GlobalCap Guard
	// ClientIP resolves Handshake.ClientIP (trusted proxies). nil: the TCP
	// peer is the client.
	ClientIP Guard
	// HandshakeRate rate-limits handshakes per client IP. nil: no limit.
	HandshakeRate Guard
	// IPCap caps open connections per client IP. nil: no cap.
	IPCap Guard
	// Origin checks the Origin header (Handshake.Route is already set, for
	// per-route allowlists). nil: same-origin only — a request carrying an
	// Origin header is refused 403 unless its host equals the Host header;
	// requests without Origin (non-browser clients) pass.
	Origin Guard
	// Auth verifies the token and sets User, Claims, ClaimsJSON, ExpiresAt
	// and strips token entries from Protocols. It is called only for routes
	// whose Auth is not "none". nil: such routes are refused 401 (fail
	// closed: a route that asks for auth never opens without it).
	Auth Guard
	// UserCap caps open connections per user. nil: no cap.
	UserCap Guard
}

// writeRejection answers a refused handshake. The connection is closed after
// the answer: a refused client has no business keeping it.
func writeRejection(ctx *fasthttp.RequestCtx, r *Rejection) {
	ctx.Response.Reset()
	ctx.SetStatusCode(r.Status)
	ctx.SetConnectionClose()
	if r.RetryAfter > 0 {
		secs := int64((r.RetryAfter + time.Second - 1) / time.Second)
		ctx.Response.Header.Set("Retry-After", strconv.FormatInt(secs, 10))
	}
	for _, kv := range r.Header {
		// Relayed backend headers must not split the response.
		if strings.ContainsAny(kv[0], "\r\n: ") || strings.ContainsAny(kv[1], "\r\n") {
			continue
		}
		ctx.Response.Header.Add(kv[0], kv[1])
	}
	if r.Body != nil {
		ctx.SetBody(r.Body)
		return
	}
	ctx.SetContentType("application/json")
	var doc struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	doc.Error.Code, doc.Error.Message = r.Reason, r.Message
	b, _ := json.Marshal(&doc) // cannot fail: two strings
	ctx.SetBody(append(b, '\n'))
}

// reasonLabel keeps a rejection reason usable as a bounded metric label.
func reasonLabel(s string) string {
	if s == "" || len(s) > 32 {
		return "other"
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if !(b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '_') {
			return "other"
		}
	}
	return s
}
