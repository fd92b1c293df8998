package bridge

// Per-connection streams: a stream whose path uses the connection's
// identity ("/users/${claims.sub}/events") is opened for every socket whose
// values are all present, feeds that socket only, and closes with it. The
// proxy reports sockets through Opened and Closed (its ConnObserver); the
// loop that holds, parses and resumes the stream is the shared streams'
// (streamWorker), so both kinds reconnect alike.

import (
	"context"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/wsidecar/wsidecar/config"
)

// maxConnStreamPath bounds an evaluated path: claims and headers are
// client-sized, and a backend answers a huge request line with 414 forever.
const maxConnStreamPath = 4 << 10

// connSpec is a per-connection stream new sockets get.
type connSpec struct {
	cfg  config.Stream
	stat *streamStat
}

// connStreams holds the per-connection streams of open sockets. It has its
// own lock so that sockets opening and closing never wait on a reload
// restarting the shared streams.
type connStreams struct {
	specs atomic.Pointer[[]connSpec] // nil or empty: Opened returns at once
	count atomic.Int64               // len(byConn): Closed skips the lock at 0

	mu     sync.Mutex
	ctx    context.Context // Run's context; nil before Run
	done   bool            // Run is stopping: no more goroutines
	byConn map[string][]*streamWorker
}

func (cs *connStreams) init() { cs.byConn = make(map[string][]*streamWorker) }

// Opened starts the per-connection streams of a socket that joined the hub:
// each per-connection stream whose path evaluates for this connection gets
// one goroutine holding one GET, events going to this socket only. scope
// is called at most once, during the call. A socket lacking a value the
// path needs (e.g. no claims on an anonymous route) gets no stream; that is
// logged at debug, without the values. Opened does not block on the
// network.
func (s *Streams) Opened(ci *ConnInfo, scope func() config.Scope) {
	specs := s.conn.specs.Load()
	if specs == nil || len(*specs) == 0 || ci == nil {
		return
	}
	sc := escapeScope(scope())
	var ws []*streamWorker
	for _, sp := range *specs {
		path, err := sp.cfg.PathTemplate.EvalString(sc)
		if err != nil {
			// The template's errors carry no claim or query values.
			s.log.Debug("no per-connection stream for this socket", "stream", sp.cfg.Name, "conn", ci.ID, "error", err)
			continue
		}
		if !usableConnPath(path) {
			s.log.Debug("no per-connection stream for this socket: the evaluated path is not a usable backend path",
				"stream", sp.cfg.Name, "conn", ci.ID, "path_template", sp.cfg.Path)
			continue
		}
		w := &streamWorker{
			s:      s,
			cfg:    sp.cfg,
			path:   path,
			ci:     ci,
			stat:   sp.stat,
			parser: NewSSEParser(nil, s.opts.Parser),
		}
		w.target.Connections = []string{ci.ID}
		ws = append(ws, w)
	}
	if len(ws) == 0 {
		return
	}
	cs := &s.conn
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.done {
		return
	}
	if old, dup := cs.byConn[ci.ID]; dup {
		// Ids are unique per socket; a second Opened replaces the first
		// rather than leaking it.
		for _, w := range old {
			if w.cancel != nil {
				w.cancel()
			}
		}
	} else {
		cs.count.Add(1)
	}
	cs.byConn[ci.ID] = ws
	if cs.ctx != nil {
		for _, w := range ws {
			s.goConn(w)
		}
	}
}

// Closed stops the per-connection streams of a socket that is gone: their
// requests are cancelled, so the backend sees each stream end now. It does
// not wait for the goroutines (Run does, when it stops).
func (s *Streams) Closed(id string) {
	cs := &s.conn
	if cs.count.Load() == 0 {
		return
	}
	cs.mu.Lock()
	ws, ok := cs.byConn[id]
	if ok {
		delete(cs.byConn, id)
		cs.count.Add(-1)
	}
	cs.mu.Unlock()
	for _, w := range ws {
		if w.cancel != nil {
			w.cancel()
		}
	}
}

// goConn starts a per-connection stream's goroutine (cs.mu held, cs.ctx set).
func (s *Streams) goConn(w *streamWorker) {
	ctx, cancel := context.WithCancel(s.conn.ctx)
	w.cancel = cancel
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer cancel()
		w.stat.conns[stateConnecting].Add(1)
		w.run(ctx)
		w.stat.conns[w.state].Add(-1)
		if ctx.Err() == nil {
			// The backend ended it (204): forget it now rather than when
			// the socket closes, so its parser is not held meanwhile.
			s.conn.forget(w)
		}
	}()
}

// forget removes one ended stream of a socket.
func (cs *connStreams) forget(w *streamWorker) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	ws := cs.byConn[w.ci.ID]
	i := -1
	for j, x := range ws {
		if x == w {
			i = j
		}
	}
	if i < 0 {
		return
	}
	if len(ws) == 1 {
		delete(cs.byConn, w.ci.ID)
		cs.count.Add(-1)
		return
	}
	cs.byConn[w.ci.ID] = append(ws[:i:i], ws[i+1:]...)
}

// run starts the streams of sockets that opened before Run.
func (cs *connStreams) run(s *Streams, ctx context.Context) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.ctx = ctx
	for _, ws := range cs.byConn {
		for _, w := range ws {
			s.goConn(w)
		}
	}
}

// stop cancels every per-connection stream; none starts afterwards.
func (cs *connStreams) stop() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.done = true
	for id, ws := range cs.byConn {
		for _, w := range ws {
			if w.cancel != nil {
				w.cancel()
			}
		}
		delete(cs.byConn, id)
	}
	cs.count.Store(0)
}

// update installs the per-connection streams of a new configuration (s.mu
// held). Open sockets keep theirs (their scope is not kept, so a changed
// path cannot be re-evaluated), except streams whose name is no longer a
// per-connection stream: those stop.
func (cs *connStreams) update(s *Streams, want []config.Stream) {
	var specs []connSpec
	for _, c := range want {
		if c.PathTemplate != nil {
			specs = append(specs, connSpec{cfg: c, stat: s.stat(c.Name, true)})
		}
	}
	cs.specs.Store(&specs)
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for id, ws := range cs.byConn {
		kept := ws[:0]
		for _, w := range ws {
			if slices.ContainsFunc(specs, func(sp connSpec) bool { return sp.cfg.Name == w.cfg.Name }) {
				kept = append(kept, w)
			} else if w.cancel != nil {
				w.cancel()
			}
		}
		if len(kept) == 0 {
			delete(cs.byConn, id)
			cs.count.Add(-1)
		} else {
			cs.byConn[id] = kept
		}
	}
}

// each calls f for every per-connection stream, with cs.mu held.
func (cs *connStreams) each(f func(*streamWorker)) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for _, ws := range cs.byConn {
		for _, w := range ws {
			f(w)
		}
	}
}

// setIdentity sets what every backend call carries about its connection
// (see Webhooks.buildRequest), forwarded handshake headers first so the
// sidecar's own values win. Values net/http would refuse (control
// characters, e.g. in pretty-printed claims) are made sendable.
func setIdentity(h http.Header, ci *ConnInfo) {
	for _, kv := range ci.Headers {
		if !reservedHeader(kv[0]) && !streamHeader(kv[0]) {
			h.Add(kv[0], headerValue(kv[1]))
		}
	}
	h.Set("X-WS-Connection-Id", ci.ID)
	h.Set("X-WS-Route", headerValue(ci.Route))
	if ci.User != "" {
		h.Set("X-WS-User", headerValue(ci.User))
	}
	if len(ci.Claims) > 0 {
		h.Set("X-WS-Claims", headerValue(string(ci.Claims)))
	}
	if ci.ClientIP != "" {
		h.Set("X-Forwarded-For", ci.ClientIP)
		h.Set("X-Real-IP", ci.ClientIP)
	}
	if ci.Protocol != "" {
		h.Set("X-WS-Protocol", headerValue(ci.Protocol))
	}
}

// streamHeader reports headers the stream request sets itself, which a
// forwarded handshake header must not replace (a forwarded Accept-Encoding
// would get a compressed stream the parser cannot read).
func streamHeader(name string) bool {
	for _, n := range [...]string{"Accept", "Accept-Encoding", "Cache-Control", "Last-Event-ID"} {
		if strings.EqualFold(name, n) {
			return true
		}
	}
	return false
}

// headerValue replaces the bytes net/http refuses in a header value (CR,
// LF and other controls) with spaces, as fasthttp does for the webhooks.
func headerValue(s string) string {
	if validHeaderValue(s) {
		return s
	}
	b := []byte(s)
	for i, c := range b {
		if (c < 0x20 && c != '\t') || c == 0x7f {
			b[i] = ' '
		}
	}
	return string(b)
}

// usableConnPath reports whether an evaluated per-connection path can be
// requested as is: a rooted path, no fragment, nothing net/http would
// refuse, and, once percent-decoded, no dot segment and no empty segment
// (except a trailing one). Decoded, because many backends decode before
// they clean the path: "/users/..%2Fadmin/events" would reach /admin/events
// there (Go's ServeMux redirects to it). Values are percent-encoded before
// evaluation, so a value can add neither segments nor a query, but it may
// still be "..", hold an encoded "/", or be empty.
func usableConnPath(p string) bool {
	if len(p) > maxConnStreamPath || !strings.HasPrefix(p, "/") {
		return false
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= ' ' || c == 0x7f || c == '#' {
			return false
		}
	}
	path, _, _ := strings.Cut(p, "?")
	dec, err := url.PathUnescape(path)
	if err != nil {
		return false
	}
	// Some servers take a backslash for a slash too.
	segs := strings.Split(strings.ReplaceAll(dec, `\`, "/"), "/")[1:]
	for i, seg := range segs {
		if seg == "." || seg == ".." || (seg == "" && i < len(segs)-1) {
			return false
		}
	}
	_, err = url.ParseRequestURI(p)
	return err == nil
}

// escapeScope percent-encodes every string value of a scope (not the
// keys), so that an interpolated claim, query parameter or header is always
// one path segment or query value: it cannot add segments, a query or a
// fragment. Maps without a value to encode are shared, not copied.
func escapeScope(sc config.Scope) config.Scope {
	out := sc
	if v, changed := escapeAny(sc.Claims, 0); changed {
		out.Claims = v.(map[string]any)
	}
	out.Path = escapeStrings(sc.Path)
	out.Query = escapeStrings(sc.Query)
	out.Header = escapeStrings(sc.Header)
	return out
}

func escapeStrings(m map[string]string) map[string]string {
	var out map[string]string
	for k, v := range m {
		if e := escapeValue(v); e != v {
			if out == nil {
				out = maps.Clone(m)
			}
			out[k] = e
		}
	}
	if out == nil {
		return m
	}
	return out
}

// maxEscapeDepth matches the depth the template evaluator accepts; deeper
// values are left for it to refuse.
const maxEscapeDepth = 32

// escapeAny returns v with every string percent-encoded, and whether
// anything changed; containers are copied only then (claims are shared
// with the proxy and never written).
func escapeAny(v any, depth int) (any, bool) {
	if depth > maxEscapeDepth {
		return v, false
	}
	switch x := v.(type) {
	case string:
		e := escapeValue(x)
		return e, e != x
	case []string:
		var out []string
		for i, s := range x {
			if e := escapeValue(s); e != s {
				if out == nil {
					out = slices.Clone(x)
				}
				out[i] = e
			}
		}
		return orig(out, x)
	case []any:
		var out []any
		for i, e := range x {
			if ee, changed := escapeAny(e, depth+1); changed {
				if out == nil {
					out = slices.Clone(x)
				}
				out[i] = ee
			}
		}
		return orig(out, x)
	case map[string]any:
		var out map[string]any
		for k, e := range x {
			if ee, changed := escapeAny(e, depth+1); changed {
				if out == nil {
					out = maps.Clone(x)
				}
				out[k] = ee
			}
		}
		if out == nil {
			return x, false
		}
		return out, true
	}
	return v, false // numbers, bools, nil
}

// orig returns the copy when one was made, else the original.
func orig[T any](out, x []T) (any, bool) {
	if out == nil {
		return x, false
	}
	return out, true
}

// escapeValue percent-encodes every byte outside RFC 3986's unreserved set
// (ALPHA / DIGIT / "-" / "." / "_" / "~"), which is safe in a path segment
// and in a query value alike. Strings needing nothing are returned as is.
func escapeValue(s string) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if !unreserved(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	const hex = "0123456789ABCDEF"
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if unreserved(c) {
			b = append(b, c)
		} else {
			b = append(b, '%', hex[c>>4], hex[c&15])
		}
	}
	return string(b)
}

func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}
