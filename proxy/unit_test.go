package proxy

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/VictoriaMetrics/metrics"

	"github.com/wsidecar/wsidecar/auth"
	"github.com/wsidecar/wsidecar/bridge"
	"github.com/wsidecar/wsidecar/config"
)

func TestConnectionIDs(t *testing.T) {
	g, err := newIDGen("pod-7.zone.a")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i := 0; i < 3*idBatch+5; i++ { // crosses several random batches
		id, err := g.next()
		if err != nil {
			t.Fatal(err)
		}
		if seen[id] {
			t.Fatalf("duplicate id %s", id)
		}
		seen[id] = true
		if bridge.NodeOf(id) != "pod-7.zone.a" {
			t.Fatalf("bridge.NodeOf(%s) = %q", id, bridge.NodeOf(id))
		}
		if rnd := id[len("pod-7.zone.a."):]; len(rnd) != 22 || strings.ContainsAny(rnd, ".+/=") {
			t.Fatalf("random part %q is not 22 base64url chars", rnd)
		}
	}
	for _, bad := range []string{"", "has space", "slash/", strings.Repeat("x", 65)} {
		if _, err := newIDGen(bad); err == nil {
			t.Errorf("node id %q accepted", bad)
		}
	}
	for id, want := range map[string]string{"": "", "abc": "", ".x": "", "n.x": "n", "a.b.c": "a.b"} {
		if got := bridge.NodeOf(id); got != want {
			t.Errorf("bridge.NodeOf(%q) = %q, want %q", id, got, want)
		}
	}
}

func TestRouteMatching(t *testing.T) {
	rt, err := compileRoutes([]config.Route{
		{Path: "/rooms/{room}"}, {Path: "/rooms/lobby"}, {Path: "/u/{id}/feed/{kind}"}, {Path: "/ws"},
	}, metrics.NewSet())
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path, route string
		params      map[string]string
	}{
		{"/ws", "/ws", nil},
		{"/ws/", "", nil},
		{"/rooms/lobby", "/rooms/lobby", nil}, // exact before param
		{"/rooms/42", "/rooms/{room}", map[string]string{"room": "42"}},
		{"/rooms/", "", nil},
		{"/rooms/42/x", "", nil},
		{"/u/7/feed/news", "/u/{id}/feed/{kind}", map[string]string{"id": "7", "kind": "news"}},
		{"/u/7/feeds/news", "", nil},
		{"", "", nil},
		{"rooms/1", "", nil},
	}
	for _, tc := range cases {
		r, params := rt.match(tc.path)
		got := ""
		if r != nil {
			got = r.cfg.Path
		}
		if got != tc.route || len(params) != len(tc.params) {
			t.Errorf("match(%q) = %q %v, want %q %v", tc.path, got, params, tc.route, tc.params)
			continue
		}
		for k, v := range tc.params {
			if params[k] != v {
				t.Errorf("match(%q) param %s = %q, want %q", tc.path, k, params[k], v)
			}
		}
	}
	for _, bad := range []string{"ws", "/a/{x", "/a/x}", "/a/{x}y", "/a/{x}/{x}", "/a/{}"} {
		if _, err := compileRoutes([]config.Route{{Path: bad}}, metrics.NewSet()); err == nil {
			t.Errorf("pattern %q accepted", bad)
		}
	}
	if _, err := compileRoutes([]config.Route{{Path: "/a"}, {Path: "/a"}}, metrics.NewSet()); err == nil {
		t.Error("duplicate route accepted")
	}
}

func TestNegotiateProtocol(t *testing.T) {
	allowed := map[string]struct{}{"v2": {}, "v1": {}}
	cases := []struct {
		header string
		want   string
	}{
		{"v1, v2", "v1"},
		{"v2,v1", "v2"},
		{" x ,  v1 ", "v1"},
		{"bearer, tok", ""},
		{"", ""},
		{",,,", ""},
	}
	for _, tc := range cases {
		if got := negotiateProtocol(auth.OfferedProtocols(tc.header), allowed); got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.header, got, tc.want)
		}
	}
	if got := negotiateProtocol([]string{"v1"}, nil); got != "" {
		t.Errorf("route without protocols negotiated %q", got)
	}
}

func TestTruncateReasonAndCodes(t *testing.T) {
	long := strings.Repeat("é", 100) // 200 bytes
	got := truncateReason(long)
	if len(got) > maxReason || !utf8.ValidString(got) || !strings.HasPrefix(long, got) {
		t.Fatalf("truncateReason gave %d bytes, valid=%v", len(got), utf8.ValidString(got))
	}
	for code, want := range map[int]int{1000: 1000, 1005: 1000, 1006: 1000, 1015: 1000, 999: 1000, 4001: 4001, 3000: 3000, 5000: 1000, 1011: 1011} {
		if got := sendableCode(code); got != want {
			t.Errorf("sendableCode(%d) = %d, want %d", code, got, want)
		}
	}
}

func TestRejectionReasonLabels(t *testing.T) {
	for in, want := range map[string]string{"ip_cap": "ip_cap", "": "other", `x"}`: "other", "UPPER": "other", strings.Repeat("a", 40): "other"} {
		if got := reasonLabel(in); got != want {
			t.Errorf("reasonLabel(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzRouteMatch(f *testing.F) {
	patterns := []string{"/ws", "/rooms/{room}", "/rooms/lobby", "/u/{id}/feed/{kind}", "/a/{x}/b"}
	var routes []config.Route
	for _, p := range patterns {
		routes = append(routes, config.Route{Path: p})
	}
	rt, err := compileRoutes(routes, metrics.NewSet())
	if err != nil {
		f.Fatal(err)
	}
	f.Add("/rooms/42")
	f.Fuzz(func(t *testing.T, path string) {
		r, params := rt.match(path)
		if r == nil {
			for _, p := range patterns {
				if p == path && !strings.Contains(p, "{") {
					t.Fatalf("exact route %q not matched", p)
				}
			}
			return
		}
		// Substituting the params back into the pattern gives the path.
		rebuilt := r.cfg.Path
		for k, v := range params {
			if v == "" || strings.Contains(v, "/") {
				t.Fatalf("param %s = %q", k, v)
			}
			rebuilt = strings.Replace(rebuilt, "{"+k+"}", v, 1)
		}
		if rebuilt != path {
			t.Fatalf("path %q matched %q with %v (rebuilt %q)", path, r.cfg.Path, params, rebuilt)
		}
	})
}

func FuzzTruncateReason(f *testing.F) {
	f.Add("going away")
	f.Fuzz(func(t *testing.T, s string) {
		got := truncateReason(s)
		if len(got) > maxReason || !strings.HasPrefix(s, got) {
			t.Fatalf("truncateReason(%q) = %q", s, got)
		}
		if utf8.ValidString(s) && !utf8.ValidString(got) {
			t.Fatalf("split a rune: %q", got)
		}
	})
}
