package proxy

import (
	"fmt"
	"strings"

	"github.com/VictoriaMetrics/metrics"

	"github.com/wsidecar/wsidecar/bridge"
	"github.com/wsidecar/wsidecar/config"
)

// route is a config.Route compiled for matching, with its metrics resolved
// once so the connection path never formats a metric name.
type route struct {
	cfg      config.Route
	segs     []segment // nil for an exact route
	params   int       // number of {param} segments
	hooks    bridge.RouteHooks
	protos   map[string]struct{}
	inFlight int

	open  *metrics.Gauge   // wsidecar_connections_open{route}
	total *metrics.Counter // wsidecar_connections_total{route}
}

// segment is one path segment of a param route: a literal or a {param}.
type segment struct {
	lit   string
	param string // non-empty for {param}
}

// routeTable matches request paths: exact routes first (a map lookup), then
// param routes in file order. It is immutable once built and swapped whole
// on reload.
type routeTable struct {
	exact map[string]*route
	param []*route
}

func compileRoutes(routes []config.Route, set *metrics.Set) (*routeTable, error) {
	t := &routeTable{exact: make(map[string]*route, len(routes))}
	seen := make(map[string]bool, len(routes))
	for i := range routes {
		r, err := compileRoute(routes[i], set)
		if err != nil {
			return nil, err
		}
		if seen[r.cfg.Path] {
			return nil, fmt.Errorf("proxy: route %q is declared twice", r.cfg.Path)
		}
		seen[r.cfg.Path] = true
		if r.segs == nil {
			t.exact[r.cfg.Path] = r
		} else {
			t.param = append(t.param, r)
		}
	}
	return t, nil
}

func compileRoute(c config.Route, set *metrics.Set) (*route, error) {
	if !strings.HasPrefix(c.Path, "/") {
		return nil, fmt.Errorf("proxy: route %q must start with /", c.Path)
	}
	r := &route{
		cfg:      c,
		hooks:    bridge.RouteHooks{Connect: c.OnConnect, Message: c.OnMessage, Disconnect: c.OnDisconnect},
		inFlight: max(c.MaxInFlight, 1),
	}
	if len(c.Subprotocols) > 0 {
		r.protos = make(map[string]struct{}, len(c.Subprotocols))
		for _, p := range c.Subprotocols {
			r.protos[p] = struct{}{}
		}
	}
	if strings.Contains(c.Path, "{") || strings.Contains(c.Path, "}") {
		names := map[string]bool{}
		for _, s := range strings.Split(c.Path[1:], "/") {
			if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") && len(s) > 2 {
				name := s[1 : len(s)-1]
				if strings.ContainsAny(name, "{}") {
					return nil, fmt.Errorf("proxy: route %q: bad parameter segment %q", c.Path, s)
				}
				if names[name] {
					return nil, fmt.Errorf("proxy: route %q: parameter %q used twice", c.Path, name)
				}
				names[name] = true
				r.segs = append(r.segs, segment{param: name})
				r.params++
				continue
			}
			if strings.ContainsAny(s, "{}") {
				return nil, fmt.Errorf("proxy: route %q: a parameter must be a whole segment, got %q", c.Path, s)
			}
			r.segs = append(r.segs, segment{lit: s})
		}
	}
	label := `{route="` + escapeLabel(c.Path) + `"}`
	r.open = set.GetOrCreateGauge("wsidecar_connections_open"+label, nil)
	r.total = set.GetOrCreateCounter("wsidecar_connections_total" + label)
	return r, nil
}

// match finds the route for a request path. params is nil for exact routes
// and for routes without parameters.
func (t *routeTable) match(path string) (*route, map[string]string) {
	if r, ok := t.exact[path]; ok {
		return r, nil
	}
	for _, r := range t.param {
		if params, ok := r.matchParams(path); ok {
			return r, params
		}
	}
	return nil, nil
}

func (r *route) matchParams(path string) (map[string]string, bool) {
	if len(path) == 0 || path[0] != '/' {
		return nil, false
	}
	rest := path[1:]
	// First pass without allocating: most requests that reach a param route
	// either match or fail on a literal.
	for i, s := range r.segs {
		seg, tail, more := strings.Cut(rest, "/")
		if more && i == len(r.segs)-1 || !more && i < len(r.segs)-1 {
			return nil, false
		}
		if s.param == "" && seg != s.lit || s.param != "" && seg == "" {
			return nil, false
		}
		rest = tail
	}
	params := make(map[string]string, r.params)
	rest = path[1:]
	for _, s := range r.segs {
		seg, tail, _ := strings.Cut(rest, "/")
		if s.param != "" {
			params[s.param] = strings.Clone(seg)
		}
		rest = tail
	}
	return params, true
}

// negotiateProtocol returns the first of the client's offered subprotocols,
// in the client's order, that the route lists; "" when none matches. The
// auth stage strips token-carrying entries ("bearer", the token) from offered
// before this runs.
func negotiateProtocol(offered []string, allowed map[string]struct{}) string {
	if len(allowed) == 0 {
		return ""
	}
	for _, p := range offered {
		if _, ok := allowed[p]; ok {
			return p
		}
	}
	return ""
}

// escapeLabel escapes a Prometheus label value.
func escapeLabel(s string) string {
	if !strings.ContainsAny(s, "\"\\\n") {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return r.Replace(s)
}
