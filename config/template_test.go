package config

import (
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// routeTemplate parses a file with one route holding channels = expr.
func routeTemplate(t testing.TB, path, expr string) *Template {
	t.Helper()
	cfg, err := testLoader().parse([]byte(`
backend { url = "http://127.0.0.1:3000" }
jwt {
  key "k" {
    algorithms = ["RS256"]
    jwks_url   = "https://idp.test/jwks"
  }
}
route "`+path+`" {
  channels = `+expr+`
}
`), "sidecar.hcl")
	if err != nil {
		t.Fatalf("parse: %s", diagText(err))
	}
	return cfg.Routes[0].Channels
}

func TestTemplateEval(t *testing.T) {
	var claims map[string]any
	if err := json.Unmarshal([]byte(`{
		"sub": "u42", "admin": true, "level": 7, "score": 2.5,
		"org": {"id": "acme", "teams": ["red", "blue"]},
		"rooms": ["a", "b"], "nothing": null
	}`), &claims); err != nil {
		t.Fatal(err)
	}
	scope := Scope{
		Claims: claims,
		Path:   map[string]string{"room": "lobby", "id": "9"},
		Query:  map[string]string{"topic": "news"},
		Header: map[string]string{"X-Tenant": "t1"}, // Eval lower-cases names
	}
	cases := []struct {
		name, path, expr string
		want             []string
	}{
		{"claims and path", "/rooms/{room}", `["user:${claims.sub}", "room:${path.room}"]`, []string{"user:u42", "room:lobby"}},
		{"nested claims", "/ws", `["org:${claims.org.id}", claims.org.teams[1]]`, []string{"org:acme", "blue"}},
		{"numbers and bools become strings", "/ws", `[claims.level, claims.score, claims.admin, 3]`, []string{"7", "2.5", "true", "3"}},
		{"a claim that is a list", "/ws", `claims.rooms`, []string{"a", "b"}},
		{"for expression", "/ws", `[for r in claims.rooms : "room:${r}"]`, []string{"room:a", "room:b"}},
		{"query and header", "/ws", `["topic:${query.topic}", "tenant:${header["x-tenant"]}"]`, []string{"topic:news", "tenant:t1"}},
		{"optional query parameter", "/ws", `[lookup(query, "missing", "general")]`, []string{"general"}},
		{"functions", "/ws", `concat([upper(claims.sub)], [coalesce(claims.nothing, "none")])`, []string{"U42", "none"}},
		{"two params", "/a/{room}/{id}", `["${path.room}/${path.id}"]`, []string{"lobby/9"}},
		{"empty list", "/ws", `[]`, []string{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tpl := routeTemplate(t, tc.path, tc.expr)
			got, err := tpl.Eval(scope)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Eval = %q, want %q", got, tc.want)
			}
			if tpl.Source() != tc.expr {
				t.Errorf("Source = %q, want %q", tpl.Source(), tc.expr)
			}
		})
	}
}

func TestTemplateEvalErrors(t *testing.T) {
	cases := []struct {
		name, expr string
		scope      Scope
		want       string
	}{
		{"missing claim", `["user:${claims.sub}"]`, Scope{Claims: map[string]any{"name": "secret-value"}}, `does not have an attribute named "sub"`},
		{"no token at all", `["user:${claims.sub}"]`, Scope{}, `does not have an attribute named "sub"`},
		{"missing query parameter", `[query.topic]`, Scope{Query: map[string]string{"other": "x"}}, `does not have an element with the key "topic"`},
		{"null element", `[claims.nothing]`, Scope{Claims: map[string]any{"nothing": nil}}, "element 0 is null"},
		{"claim is an object", `claims.org`, Scope{Claims: map[string]any{"org": map[string]any{"id": "x"}}}, "want a list of strings"},
		{"unsupported claim type", `[claims.sub]`, Scope{Claims: map[string]any{"sub": struct{}{}}}, "unsupported claim type"},
		{"NaN claim", `[claims.n]`, Scope{Claims: map[string]any{"n": math.NaN()}}, "not finite"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := routeTemplate(t, "/ws", tc.expr).Eval(tc.scope)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "config: evaluate "+tc.expr) {
				t.Errorf("error should name the expression: %v", err)
			}
			if strings.Contains(err.Error(), "secret-value") {
				t.Errorf("error leaks a claim value: %v", err)
			}
		})
	}
}

func TestTemplateDeepClaims(t *testing.T) {
	var deep any = "x"
	for range maxClaimDepth + 5 {
		deep = map[string]any{"a": deep}
	}
	_, err := routeTemplate(t, "/ws", `[claims.sub]`).Eval(Scope{Claims: map[string]any{"sub": "s", "deep": deep}})
	if err == nil || !strings.Contains(err.Error(), "nested too deeply") {
		t.Errorf("err = %v", err)
	}
}

func TestTemplateNil(t *testing.T) {
	var tpl *Template
	if got, err := tpl.Eval(Scope{}); got != nil || err != nil {
		t.Errorf("nil template: %v, %v", got, err)
	}
	if tpl.Source() != "" {
		t.Error("nil template has a source")
	}
}

func TestTemplateHostileInput(t *testing.T) {
	tpl := routeTemplate(t, "/ws", `[header["x-a"], query.q, claims.s]`)
	got, err := tpl.Eval(Scope{
		Claims: map[string]any{"s": "\xff\xfe", "\xff": "k"},
		Query:  map[string]string{"q": "\xc3\x28"},
		Header: map[string]string{"x-a": strings.Repeat("\x80", 3)},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range got {
		if !strings.Contains(s, "\uFFFD") {
			t.Errorf("invalid UTF-8 should be replaced: %q", s)
		}
	}
}

// TestTemplateConcurrent: one Template serves every connection at once.
func TestTemplateConcurrent(t *testing.T) {
	tpl := routeTemplate(t, "/rooms/{room}", `["room:${path.room}", "user:${claims.sub}"]`)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 50 {
				room := strings.Repeat("r", i+1)
				got, err := tpl.Eval(Scope{Claims: map[string]any{"sub": float64(j)}, Path: map[string]string{"room": room}})
				if err != nil || got[0] != "room:"+room {
					t.Errorf("got %q, %v", got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestStreamPathTemplate(t *testing.T) {
	cfg := mustParse(t, `
backend { url = "http://127.0.0.1:3000" }
route "/ws" { auth = "none" }
stream "inbox" {
  path = "/users/${claims.sub}/events?since=${lookup(query, "since", "0")}"
}
`)
	s := cfg.Streams[0]
	got, err := s.PathTemplate.EvalString(Scope{Claims: map[string]any{"sub": "u1"}})
	if err != nil || got != "/users/u1/events?since=0" {
		t.Errorf("EvalString = %q, %v", got, err)
	}
}

func BenchmarkTemplateEval(b *testing.B) {
	tpl := routeTemplate(b, "/rooms/{room}", `["room:${path.room}", "user:${claims.sub}"]`)
	scope := Scope{Claims: map[string]any{"sub": "u42", "iat": 1.7e9}, Path: map[string]string{"room": "lobby"}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tpl.Eval(scope); err != nil {
			b.Fatal(err)
		}
	}
}
