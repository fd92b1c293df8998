package proxy

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"

	"github.com/wsidecar/wsidecar/auth"
	"github.com/wsidecar/wsidecar/bridge"
	"github.com/wsidecar/wsidecar/config"
	"github.com/wsidecar/wsidecar/limits"
)

// pendingUpgrade carries a handshake that passed the door from the request
// handler to the hijacked connection.
type pendingUpgrade struct {
	key       net.Conn // fasthttp's conn, as ConnState sees it
	h         *Handshake
	ci        *bridge.ConnInfo
	rt        *route
	lim       *limitsSnap
	channels  []string
	actions   *bridge.Actions
	connected bool // the connect webhook accepted: a disconnect is owed
	// answerProto is the Sec-WebSocket-Protocol answer: the negotiated
	// protocol, or Handshake.AnswerProtocol when none was.
	answerProto string
}

// handle is the fasthttp handler: every request is a handshake attempt.
func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	h := &Handshake{Request: ctx, Now: s.now()}
	p, r := s.admit(ctx, h)
	if r != nil {
		s.refuse(ctx, h, r)
		return
	}
	s.upgrade(ctx, p)
}

// refuse answers a refused handshake, counts it, logs it (rate-limited)
// and gives back whatever the guards took.
func (s *Server) refuse(ctx *fasthttp.RequestCtx, h *Handshake, r *Rejection) {
	h.release()
	if r.Status == 0 {
		r.Status = fasthttp.StatusForbidden
	}
	ip := h.ClientIP
	if !ip.IsValid() {
		ip = peerAddr(ctx.RemoteAddr()).Addr().Unmap()
	}
	s.rejected(ctx, ip, r)
	writeRejection(ctx, r)
}

// rejected counts a refusal under its reason (unless a limits.Door call
// already did) and logs it once per reason per client address per
// RejectLogInterval. The log line carries the path and the query with
// credential parameters redacted, never a header: tokens and cookies stay
// out of logs.
func (s *Server) rejected(ctx *fasthttp.RequestCtx, ip netip.Addr, r *Rejection) {
	reason := reasonLabel(r.Reason)
	if !r.Counted {
		s.adm.Reject(reason)
	}
	if s.opts.OnReject != nil {
		s.opts.OnReject(reason)
	}
	if !s.logGate.Allow(reason, ip) {
		return
	}
	s.log.Info("handshake refused", "reason", reason, "status", r.Status, "client_ip", ip.String(),
		"path", string(ctx.Path()), "query", s.redactQuery(ctx.URI().QueryString()),
		"message", r.Message, "log_suppressed_total", s.logGate.Suppressed())
}

// redactQuery returns a handshake's query string fit for a log line: the
// parameter names stay (they say what the client tried), every value is
// replaced. Tokens hide under many names (?access_token=, ?ticket=, ?sig=),
// so no value is trusted to be harmless.
func (s *Server) redactQuery(q []byte) string {
	if len(q) == 0 {
		return ""
	}
	var args fasthttp.Args
	args.ParseBytes(q)
	names := make([]string, 0, args.Len())
	for k := range args.All() {
		names = append(names, string(k))
	}
	return auth.RedactQuery(string(q), names)
}

// admit runs the handshake pipeline up to (not including) the upgrade, in
// the documented order.
func (s *Server) admit(ctx *fasthttp.RequestCtx, h *Handshake) (*pendingUpgrade, *Rejection) {
	// 1. Drain.
	if s.draining.Load() {
		return nil, &Rejection{Status: fasthttp.StatusServiceUnavailable, Reason: "draining",
			Message: "server is shutting down, reconnect", RetryAfter: s.retryAfter}
	}
	// The route is looked up now (a map hit or a short scan) so the Origin
	// stage can use a per-route allowlist; a miss is answered at stage 7.
	path := string(ctx.Path())
	rt, params := s.routes.Load().match(path)
	if rt != nil {
		h.Route, h.Params = &rt.cfg, params
	}
	lim := s.limits.Load()
	h.Peer = peerAddr(ctx.RemoteAddr())
	h.ClientIP = h.Peer.Addr().Unmap()

	// 2. Global cap.
	if r := s.runGuard(s.opts.Door.GlobalCap, h, s.globalCap); r != nil {
		return nil, r
	}
	// 3. Client IP.
	if r := s.runGuard(s.opts.Door.ClientIP, h, nil); r != nil {
		return nil, r
	}
	// 4-5. Handshake rate, per-IP cap.
	if r := s.runGuard(s.opts.Door.HandshakeRate, h, nil); r != nil {
		return nil, r
	}
	if r := s.runGuard(s.opts.Door.IPCap, h, nil); r != nil {
		return nil, r
	}
	// 6. Origin.
	if r := s.runGuard(s.opts.Door.Origin, h, sameOrigin); r != nil {
		return nil, r
	}
	// 7. Route match and WebSocket handshake shape: answered before any
	// token work or backend call.
	if r := checkUpgrade(ctx, rt); r != nil {
		return nil, r
	}
	for _, v := range ctx.Request.Header.PeekAll("Sec-WebSocket-Protocol") {
		h.Protocols = append(h.Protocols, auth.OfferedProtocols(string(v))...)
	}
	// 8. Auth.
	if rt.cfg.Auth != "none" {
		if s.opts.Door.Auth == nil {
			return nil, &Rejection{Status: fasthttp.StatusUnauthorized, Reason: "auth",
				Message: "authentication required", Header: [][2]string{{"WWW-Authenticate", `Bearer error="invalid_request"`}}}
		}
		if r := s.opts.Door.Auth.Admit(h); r != nil {
			return nil, r
		}
	}
	// 9. Per-user cap.
	if r := s.runGuard(s.opts.Door.UserCap, h, nil); r != nil {
		return nil, r
	}

	id, err := s.ids.next()
	if err != nil {
		s.log.Error("making connection id", "err", err)
		return nil, &Rejection{Status: fasthttp.StatusInternalServerError, Reason: "internal", Message: "internal error"}
	}
	p := &pendingUpgrade{key: ctx.Conn(), h: h, rt: rt, lim: lim}
	p.ci = &bridge.ConnInfo{
		ID:       id,
		Route:    rt.cfg.Path,
		Path:     string(ctx.RequestURI()),
		User:     h.User,
		Claims:   h.ClaimsJSON,
		ClientIP: h.ClientIP.String(),
		Protocol: negotiateProtocol(h.Protocols, rt.protos),
		Headers:  s.forwardHeaders(ctx),
		Hooks:    rt.hooks,
	}
	p.answerProto = p.ci.Protocol
	if p.answerProto == "" {
		p.answerProto = h.AnswerProtocol
	}
	if rt.cfg.Channels != nil || s.opts.evalChannels != nil {
		chans, err := s.evalChannels(&rt.cfg, scopeOf(ctx, h))
		if err != nil {
			s.log.Warn("evaluating route channels", "route", rt.cfg.Path, "err", err)
			return nil, &Rejection{Status: fasthttp.StatusInternalServerError, Reason: "channels", Message: "route channels could not be evaluated"}
		}
		p.channels = chans
	}

	// 10. Connect webhook.
	if rt.cfg.OnConnect != "" {
		if r := s.connect(p); r != nil {
			return nil, r
		}
	}
	return p, nil
}

// runGuard runs a Door guard, or def when the guard is nil (def nil: pass).
func (s *Server) runGuard(g Guard, h *Handshake, def func(*Handshake) *Rejection) *Rejection {
	if g != nil {
		return g.Admit(h)
	}
	if def != nil {
		return def(h)
	}
	return nil
}

// globalCap is the default global cap: a slot of the admission state's
// MaxConnections per open or upgrading socket, given back when the socket
// closes.
func (s *Server) globalCap(h *Handshake) *Rejection {
	release, ok := s.adm.AcquireGlobal()
	if !ok {
		return &Rejection{Status: fasthttp.StatusServiceUnavailable, Reason: string(limits.ReasonGlobalCap),
			Message: "server is at capacity", RetryAfter: limits.GlobalCapRetryAfter, Counted: true}
	}
	h.OnRelease(release)
	return nil
}

// sameOrigin is the Origin stage without an allowlist: browsers may connect
// only from the page's own host; non-browser clients send no Origin.
func sameOrigin(h *Handshake) *Rejection {
	origin := h.Request.Request.Header.Peek("Origin")
	if len(origin) == 0 {
		return nil
	}
	u, err := url.Parse(string(origin))
	if err == nil && u.Host != "" && strings.EqualFold(u.Host, string(h.Request.Host())) {
		return nil
	}
	return &Rejection{Status: fasthttp.StatusForbidden, Reason: "origin", Message: "origin not allowed"}
}

// checkUpgrade answers requests that match no route or are not a valid
// WebSocket upgrade (RFC 6455 §4.2.1), so the upgrader never has to.
func checkUpgrade(ctx *fasthttp.RequestCtx, rt *route) *Rejection {
	if rt == nil {
		return &Rejection{Status: fasthttp.StatusNotFound, Reason: "not_found", Message: "no WebSocket route for this path"}
	}
	if !ctx.IsGet() {
		return &Rejection{Status: fasthttp.StatusMethodNotAllowed, Reason: "method",
			Message: "WebSocket handshakes use GET", Header: [][2]string{{"Allow", "GET"}}}
	}
	if !websocket.FastHTTPIsWebSocketUpgrade(ctx) {
		return &Rejection{Status: fasthttp.StatusBadRequest, Reason: "not_websocket",
			Message: "this path only accepts WebSocket upgrades", Header: [][2]string{{"Upgrade", "websocket"}}}
	}
	if !headerHasToken(ctx.Request.Header.Peek("Sec-WebSocket-Version"), "13") {
		return &Rejection{Status: fasthttp.StatusUpgradeRequired, Reason: "version",
			Message: "unsupported WebSocket version", Header: [][2]string{{"Sec-WebSocket-Version", "13"}}}
	}
	if len(bytes.TrimSpace(ctx.Request.Header.Peek("Sec-WebSocket-Key"))) == 0 {
		return &Rejection{Status: fasthttp.StatusBadRequest, Reason: "bad_handshake", Message: "missing Sec-WebSocket-Key"}
	}
	return nil
}

func headerHasToken(v []byte, token string) bool {
	for len(v) > 0 {
		var t []byte
		t, v, _ = bytes.Cut(v, []byte{','})
		if string(bytes.TrimSpace(t)) == token {
			return true
		}
	}
	return false
}

func peerAddr(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case nil:
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// forwardHeaders copies the allow-listed handshake headers (Peek results die
// with the request).
func (s *Server) forwardHeaders(ctx *fasthttp.RequestCtx) [][2]string {
	var out [][2]string
	for _, name := range s.forward {
		if v := ctx.Request.Header.Peek(name); len(v) > 0 {
			out = append(out, [2]string{name, string(v)})
		}
	}
	return out
}

// scopeOf builds what a route's channel template sees. Query values may hold
// tokens: they go to the template only, never to logs.
func scopeOf(ctx *fasthttp.RequestCtx, h *Handshake) config.Scope {
	sc := config.Scope{Claims: h.Claims, Path: h.Params, Query: map[string]string{}, Header: map[string]string{}}
	if sc.Path == nil {
		sc.Path = map[string]string{}
	}
	for k, v := range ctx.QueryArgs().All() {
		if _, ok := sc.Query[string(k)]; !ok {
			sc.Query[string(k)] = string(v)
		}
	}
	for k, v := range ctx.Request.Header.All() {
		name := strings.ToLower(string(k))
		if _, ok := sc.Header[name]; !ok {
			sc.Header[name] = string(v)
		}
	}
	return sc
}

func (s *Server) evalChannels(r *config.Route, sc config.Scope) ([]string, error) {
	if s.opts.evalChannels != nil {
		return s.opts.evalChannels(r, sc)
	}
	return r.Channels.Eval(sc)
}

// connect runs the connect webhook; nil means accepted.
func (s *Server) connect(p *pendingUpgrade) *Rejection {
	if s.backend == nil {
		return &Rejection{Status: fasthttp.StatusBadGateway, Reason: "backend_error", Message: "no backend configured"}
	}
	ctx, cancel := context.WithTimeout(s.base, time.Duration(s.callTimeout.Load()))
	res, err := s.backend.Connect(ctx, p.ci)
	cancel()
	switch {
	case errors.Is(err, bridge.ErrBackendUnavailable):
		retry := s.retryAfter
		if b, ok := s.backend.(interface{ RetryAfter() time.Duration }); ok {
			// The breaker knows when it will let a probe through.
			retry = b.RetryAfter()
		}
		return &Rejection{Status: fasthttp.StatusServiceUnavailable, Reason: "backend_unavailable",
			Message: "backend unavailable, try again later", RetryAfter: retry}
	case err != nil || res == nil:
		s.log.Warn("connect webhook failed", "route", p.rt.cfg.Path, "err", err)
		return &Rejection{Status: fasthttp.StatusBadGateway, Reason: "backend_error", Message: "backend error"}
	case !res.Accepted:
		status := res.Status
		if status < 300 || status > 599 {
			status = fasthttp.StatusBadGateway
		}
		body := res.Body
		if body == nil {
			body = []byte{}
		}
		return &Rejection{Status: status, Reason: "connect_rejected", Header: res.Header, Body: body}
	}
	p.connected = true
	p.actions = res.Actions
	return nil
}

// upgrade registers the socket, answers 101 and hands the connection to
// hijacked. The socket joins the hub (id, user, channels) before the 101 is
// written, so a push the backend sends right after accepting the connect
// webhook is queued rather than lost; frames wait in the queue until the
// hijack attaches the connection. Until then the socket is parked in
// s.pending so that connState can settle it if fasthttp never hijacks (the
// client vanished before the 101 was written).
func (s *Server) upgrade(ctx *fasthttp.RequestCtx, p *pendingUpgrade) {
	h := p.h
	c := newConn(s, p.ci.ID, p.rt, p.lim, h.detach())
	c.connectedAt, c.user, c.connected = h.Now.UnixNano(), p.ci.User, p.connected
	c.info.Store(p.ci)
	if !h.ExpiresAt.IsZero() {
		c.expires.Store(h.ExpiresAt.UnixNano())
	}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		runReleases(c.releases)
		s.abandon(p, "server closed")
		s.refuse(ctx, h, &Rejection{Status: fasthttp.StatusServiceUnavailable, Reason: "draining",
			Message: "server is shutting down, reconnect", RetryAfter: s.retryAfter})
		return
	}
	s.track.add()
	s.hub.add(c)
	s.mu.RUnlock()
	p.rt.open.Inc()
	if len(p.channels) > 0 {
		_, changed := s.hub.subscribeConn(c, p.channels, nil)
		s.hub.notify(changed)
	}
	c.apply(p.actions)
	if o := s.opts.ConnObserver; o != nil {
		o.Opened(p.ci, func() config.Scope { return scopeOf(ctx, h) })
	}
	if s.draining.Load() {
		// Drain started while this handshake was in flight: the client
		// still gets a proper close and the backend its disconnect.
		c.close(websocket.CloseGoingAway, "going away", true)
	}
	if p.answerProto != "" {
		ctx.Response.Header.Set("Sec-WebSocket-Protocol", p.answerProto)
	}
	key := p.key
	s.pending.Store(key, c)
	if err := s.upgrader.Upgrade(ctx, func(ws *websocket.Conn) { s.hijacked(c, key, ws) }); err != nil {
		if _, ok := s.pending.LoadAndDelete(p.key); ok {
			c.unstarted("upgrade failed")
		}
		s.rejected(ctx, h.ClientIP, &Rejection{Status: fasthttp.StatusBadRequest, Reason: "bad_handshake", Message: "WebSocket upgrade failed"})
	}
}

// connState settles sockets whose hijack will never run.
func (s *Server) connState(nc net.Conn, st fasthttp.ConnState) {
	if st != fasthttp.StateClosed {
		return
	}
	if v, ok := s.pending.LoadAndDelete(nc); ok {
		v.(*conn).unstarted("client left before the upgrade")
	}
}

// abandon gives back the door's slots of a handshake that got no socket,
// and owes the backend its disconnect if the connect webhook accepted.
func (s *Server) abandon(p *pendingUpgrade, reason string) {
	p.h.release()
	if p.connected && p.rt.cfg.OnDisconnect != "" && s.backend != nil {
		s.backend.Disconnect(p.ci, bridge.DisconnectInfo{Code: websocket.CloseAbnormalClosure, Reason: reason})
	}
}

// hijacked runs on fasthttp's hijack goroutine with the upgraded socket.
func (s *Server) hijacked(c *conn, key net.Conn, ws *websocket.Conn) {
	if _, ok := s.pending.LoadAndDelete(key); !ok {
		_ = ws.NetConn().Close()
		return
	}
	now := s.mono()
	c.lastSeen.Store(now)
	c.lastPing.Store(now)
	ws.SetReadLimit(c.lim.maxMessage)
	ws.SetPingHandler(func(data string) error {
		c.touch()
		c.enqueueControl(websocket.PongMessage, []byte(data))
		return nil
	})
	ws.SetPongHandler(func(string) error {
		c.touch()
		return nil
	})
	ws.SetCloseHandler(c.onPeerClose)
	c.route.total.Inc()
	s.connLog(c).Debug("connection opened", "route", c.route.cfg.Path, "client_ip", c.info.Load().ClientIP)

	c.attach(ws)
	if s.opts.inlineReadLoop {
		c.readLoop()
		return
	}
	// Hand over to a fresh goroutine so this one returns and fasthttp
	// recycles the request context: an open socket then holds no
	// handshake-sized state.
	go c.readLoop()
}

// handleError answers requests fasthttp could not read: oversized headers
// (MaxHeaderBytes) get 431, a client too slow to send its headers
// (HandshakeTimeout: slowloris) gets 408 and the connection is closed,
// anything else 400.
func (s *Server) handleError(ctx *fasthttp.RequestCtx, err error) {
	r := &Rejection{Status: fasthttp.StatusBadRequest, Reason: "bad_request", Message: "malformed request"}
	var small *fasthttp.ErrSmallBuffer
	var ne net.Error
	if errors.As(err, &small) {
		r = &Rejection{Status: fasthttp.StatusRequestHeaderFieldsTooLarge, Reason: "headers_too_large", Message: "request headers too large"}
	} else if errors.As(err, &ne) && ne.Timeout() {
		r = &Rejection{Status: fasthttp.StatusRequestTimeout, Reason: "handshake_timeout", Message: "handshake took too long"}
	}
	s.rejected(ctx, peerAddr(ctx.RemoteAddr()).Addr().Unmap(), r)
	writeRejection(ctx, r)
}
