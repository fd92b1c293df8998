package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/wsidecar/wsidecar/auth"
	"github.com/wsidecar/wsidecar/config"
	"github.com/wsidecar/wsidecar/limits"
)

// Gate builds the door's guards from the auth and limits packages: the
// global, per-IP and per-user caps and the handshake rate (limits.Door),
// client-IP resolution (limits.Resolver), the Origin allowlist
// (auth.OriginPolicy, global or per route) and token verification
// (auth.Verifier). Everything that changes on reload sits behind one atomic
// pointer, so a SIGHUP swaps origins, trusted proxies and keys for new
// handshakes without a lock on the handshake path; handshakes already past
// a stage keep what they saw.
type Gate struct {
	adm *limits.Door
	ctx context.Context
	log *slog.Logger

	mu     sync.Mutex // serialises Set and Close
	closed bool
	state  atomic.Pointer[gateState]
}

// GatePolicy is the reloadable part of the config a Gate enforces.
type GatePolicy struct {
	// Origins is the global allowlist. Its zero value admits nobody: no
	// browser origin and no client without an Origin header (secure by
	// default; config.Origins documents the same).
	Origins config.Origins
	// Routes supply the per-route Origins overrides (Route.Origins non-nil
	// replaces the global allowlist for that route). Routes the proxy
	// serves but that are not listed here are compiled on first use.
	Routes []config.Route
	// TrustedProxies are the peers whose X-Forwarded-For/X-Real-IP are
	// believed. Empty: the TCP peer is the client.
	TrustedProxies []netip.Prefix
	// Verifier checks tokens for routes whose Auth is not "none". The Gate
	// owns it from here on: it is closed when a later Set replaces it and on
	// Close. nil (no jwt block): such routes are refused 401.
	Verifier *auth.Verifier
}

// GateOptions are a Gate's collaborators.
type GateOptions struct {
	// Limits is the admission state the caps and the handshake rate use.
	// Required; pass the same Door as proxy.Door.Limits (Gate.Door does).
	Limits *limits.Door
	// Context bounds token verification (a JWKS refresh for an unknown
	// kid waits at most the key's JWKSUnknownKIDWait anyway). nil:
	// context.Background().
	Context context.Context
	// Logger receives policy warnings. nil: discarded.
	Logger *slog.Logger
}

// gateState is one compiled GatePolicy; immutable except for the lazily
// filled route cache.
type gateState struct {
	global   *auth.OriginPolicy
	routes   sync.Map // *config.Origins → *auth.OriginPolicy
	resolver *limits.Resolver
	verifier *auth.Verifier
}

// NewGate compiles p. It fails, naming the bad entry, when an Origin
// pattern does not compile; p.Verifier is then not taken over (the caller
// closes it).
func NewGate(p GatePolicy, opts GateOptions) (*Gate, error) {
	if opts.Limits == nil {
		return nil, errors.New("proxy: NewGate needs a limits.Door")
	}
	g := &Gate{adm: opts.Limits, ctx: opts.Context, log: opts.Logger}
	if g.ctx == nil {
		g.ctx = context.Background()
	}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	st, err := compileGate(p)
	if err != nil {
		return nil, err
	}
	g.state.Store(st)
	return g, nil
}

func compileGate(p GatePolicy) (*gateState, error) {
	st := &gateState{resolver: limits.NewResolver(p.TrustedProxies), verifier: p.Verifier}
	var errs []error
	var err error
	if st.global, err = auth.NewOriginPolicy(p.Origins); err != nil {
		errs = append(errs, fmt.Errorf("origins: %w", err))
	}
	for i := range p.Routes {
		o := p.Routes[i].Origins
		if o == nil {
			continue
		}
		pol, err := auth.NewOriginPolicy(*o)
		if err != nil {
			errs = append(errs, fmt.Errorf("route %s origins: %w", p.Routes[i].Path, err))
			continue
		}
		st.routes.Store(o, pol)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return st, nil
}

// Set compiles p and swaps it in for new handshakes, then closes the
// Verifier it replaced (Verify calls still running on it finish with its
// cached keys). On error nothing changes and p.Verifier is not taken over.
// Limits are not part of the policy: update the limits.Door itself.
func (g *Gate) Set(p GatePolicy) error {
	st, err := compileGate(p)
	if err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		if p.Verifier != nil {
			p.Verifier.Close()
		}
		return errors.New("proxy: gate closed")
	}
	old := g.state.Swap(st)
	if old.verifier != nil && old.verifier != p.Verifier {
		old.verifier.Close()
	}
	return nil
}

// Close closes the current Verifier (stopping JWKS refreshes). The guards
// keep answering with the keys already cached.
func (g *Gate) Close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	g.closed = true
	if v := g.state.Load().verifier; v != nil {
		v.Close()
	}
}

// AdmitsNobody lists the paths of the routes whose Origin policy (their
// own, or the global one) admits no client at all: no allowed origin and
// allow_missing false. Such a config is legal (secure by
// default) but almost always a mistake worth a startup warning.
func AdmitsNobody(p GatePolicy) []string {
	var out []string
	empty := func(o config.Origins) bool { return len(o.Allow) == 0 && !o.AllowMissing }
	for _, r := range p.Routes {
		if r.Origins != nil {
			if empty(*r.Origins) {
				out = append(out, r.Path)
			}
		} else if empty(p.Origins) {
			out = append(out, r.Path)
		}
	}
	return out
}

// Door returns the guards, for Options.Door.
func (g *Gate) Door() Door {
	return Door{
		Limits:        g.adm,
		GlobalCap:     GuardFunc(g.globalCap),
		ClientIP:      GuardFunc(g.clientIP),
		HandshakeRate: GuardFunc(g.handshakeRate),
		IPCap:         GuardFunc(g.ipCap),
		Origin:        GuardFunc(g.origin),
		Auth:          GuardFunc(g.auth),
		UserCap:       GuardFunc(g.userCap),
	}
}

// capRejection answers a refusal the limits.Door made (and counted).
func capRejection(r limits.Reason, retry time.Duration, msg string) *Rejection {
	return &Rejection{Status: r.HTTPStatus(), Reason: string(r), Message: msg, RetryAfter: retry, Counted: true}
}

func (g *Gate) globalCap(h *Handshake) *Rejection {
	release, ok := g.adm.AcquireGlobal()
	if !ok {
		return capRejection(limits.ReasonGlobalCap, limits.GlobalCapRetryAfter, "server is at capacity")
	}
	h.OnRelease(release)
	return nil
}

// clientIP believes X-Forwarded-For / X-Real-IP only from trusted peers;
// for everyone else it reads no header at all.
func (g *Gate) clientIP(h *Handshake) *Rejection {
	res := g.state.Load().resolver
	peer := h.Peer.Addr()
	if !res.Trusted(peer) {
		h.ClientIP = peer.Unmap().WithZone("")
		return nil
	}
	hdr := &h.Request.Request.Header
	xff := joinHeader(hdr.PeekAll("X-Forwarded-For"))
	h.ClientIP = res.ClientIP(peer, xff, string(hdr.Peek("X-Real-IP")))
	return nil
}

func (g *Gate) handshakeRate(h *Handshake) *Rejection {
	if wait, ok := g.adm.AllowHandshake(h.ClientIP); !ok {
		return capRejection(limits.ReasonHandshakeRate, wait, "too many handshakes from this address, slow down")
	}
	return nil
}

func (g *Gate) ipCap(h *Handshake) *Rejection {
	release, ok := g.adm.AcquireIP(h.ClientIP)
	if !ok {
		return capRejection(limits.ReasonIPCap, limits.CapRetryAfter, "too many connections from this address")
	}
	h.OnRelease(release)
	return nil
}

func (g *Gate) userCap(h *Handshake) *Rejection {
	release, ok := g.adm.AcquireUser(h.User)
	if !ok {
		return capRejection(limits.ReasonUserCap, limits.CapRetryAfter, "too many connections for this user")
	}
	h.OnRelease(release)
	return nil
}

// origin applies the route's allowlist, or the global one. A request with
// several Origin lines is refused: a browser sends exactly one.
func (g *Gate) origin(h *Handshake) *Rejection {
	st := g.state.Load()
	pol := st.global
	if h.Route != nil && h.Route.Origins != nil {
		pol = st.routePolicy(h.Route.Origins)
	}
	vals := h.Request.Request.Header.PeekAll("Origin")
	present := len(vals) > 0
	var origin string
	if len(vals) == 1 {
		origin = string(vals[0])
	}
	if pol != nil && len(vals) <= 1 && pol.Allowed(origin, present) {
		return nil
	}
	msg := "origin not allowed"
	if !present {
		msg = "an Origin header is required"
	}
	return &Rejection{Status: fasthttp.StatusForbidden, Reason: "origin", Message: msg}
}

// routePolicy returns the compiled override, compiling it on first use for
// a route the last Set did not list (a route table swapped in after the
// gate's). A pattern that does not compile admits nobody.
func (st *gateState) routePolicy(o *config.Origins) *auth.OriginPolicy {
	if v, ok := st.routes.Load(o); ok {
		return v.(*auth.OriginPolicy)
	}
	pol, err := auth.NewOriginPolicy(*o)
	if err != nil {
		pol, _ = auth.NewOriginPolicy(config.Origins{})
	}
	v, _ := st.routes.LoadOrStore(o, pol)
	return v.(*auth.OriginPolicy)
}

// auth verifies the token from the configured sources and fills in the
// identity. A refusal is 401 with the RFC 6750 challenge; its reason is
// token_missing, token_invalid or token_expired.
func (g *Gate) auth(h *Handshake) *Rejection {
	v := g.state.Load().verifier
	if v == nil {
		return &Rejection{Status: fasthttp.StatusUnauthorized, Reason: "auth", Message: "authentication required",
			Header: [][2]string{{"WWW-Authenticate", `Bearer error="invalid_request"`}}}
	}
	token, _ := v.Extract(requestView{h.Request})
	id, err := v.Verify(g.ctx, token)
	if err != nil {
		var ae *auth.Error
		if !errors.As(err, &ae) {
			ae = &auth.Error{Reason: auth.ReasonInvalid, Err: err}
		}
		return &Rejection{Status: fasthttp.StatusUnauthorized, Reason: string(ae.Reason), Message: ae.Description(),
			Header: [][2]string{{"WWW-Authenticate", ae.WWWAuthenticate()}}}
	}
	h.User, h.Claims, h.ClaimsJSON, h.ExpiresAt = id.User, id.Claims, id.ClaimsJSON, id.ExpiresAt
	// The token must never be chosen as the subprotocol, nor reach the
	// backend or a log in the protocol list.
	offered := h.Protocols
	h.Protocols = auth.StripBearer(offered)
	if len(h.Protocols) == 0 && len(offered) > 0 {
		h.AnswerProtocol = auth.SelectSubprotocol(offered, nil)
	}
	return nil
}

// requestView adapts a fasthttp request to auth.Request. It returns
// copies: fasthttp reuses the request's memory once the handler returns.
type requestView struct{ ctx *fasthttp.RequestCtx }

var _ auth.Request = requestView{}

// Header returns the header's value; several lines are joined with ", "
// (RFC 9110 §5.3), which is how Sec-WebSocket-Protocol may arrive.
func (r requestView) Header(name string) string {
	return joinHeader(r.ctx.Request.Header.PeekAll(name))
}

// Cookie returns the named cookie's value.
func (r requestView) Cookie(name string) string {
	return string(r.ctx.Request.Header.Cookie(name))
}

// Query returns the decoded query parameter.
func (r requestView) Query(name string) string {
	return string(r.ctx.QueryArgs().Peek(name))
}

// joinHeader joins header lines with ", "; one line is copied as is.
func joinHeader(vals [][]byte) string {
	switch len(vals) {
	case 0:
		return ""
	case 1:
		return string(vals[0])
	}
	var b strings.Builder
	for i, v := range vals {
		if i > 0 {
			b.WriteString(", ")
		}
		b.Write(v)
	}
	return b.String()
}
