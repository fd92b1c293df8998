package config

import (
	"encoding/json"
	"fmt"
	"io"
	"testing"
	"time"
)

// FuzzParse: no input may panic Parse, Diagnostics.Write or the templates
// of a config Parse accepted. Seeds are in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add([]byte(referenceExample))
	f.Add([]byte("backend { url = \"http://a\" }\nroute \"/{a}\" {\n auth = \"none\"\n channels = [path.a, query.b]\n}\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		// Go's fuzzer does not report hangs; a parse this slow is a bug.
		tm := time.AfterFunc(10*time.Second, func() { panic(fmt.Sprintf("parse took over 10s on %q", src)) })
		defer tm.Stop()
		cfg, err := testLoader().parse(src, "fuzz.hcl")
		if err != nil {
			d, ok := err.(Diagnostics)
			if !ok {
				t.Fatalf("parse error is %T, want Diagnostics", err)
			}
			if len(d.Diags) == 0 || !d.Diags.HasErrors() {
				t.Fatal("failed without an error diagnostic")
			}
			if werr := d.Write(io.Discard, true); werr != nil {
				t.Fatal(werr)
			}
			return
		}
		if len(cfg.Routes) == 0 || cfg.Backend.URL == "" {
			t.Fatalf("accepted a config without routes or backend url: %+v", cfg)
		}
		scope := Scope{
			Claims: map[string]any{"sub": "u", "n": 1.5, "l": []any{"a", 2.0}},
			Path:   map[string]string{"a": "x"},
			Query:  map[string]string{"b": "y"},
			Header: map[string]string{"c": "z"},
		}
		for _, r := range cfg.Routes {
			_, _ = r.Channels.Eval(scope)
			_, _ = r.Channels.Eval(Scope{})
		}
		for _, s := range cfg.Streams {
			if s.PathTemplate != nil {
				_, _ = s.PathTemplate.EvalString(scope)
			}
		}
	})
}

// FuzzTemplateEval: claims, query and header values come from clients;
// evaluating a template over any of them must not panic.
func FuzzTemplateEval(f *testing.F) {
	f.Add([]byte(`{"sub":"u1","rooms":["a","b"],"org":{"id":7}}`), "news", "t1")
	f.Add([]byte(`{"sub":null,"rooms":[1,true,null]}`), "\xff", "")
	tpl := routeTemplate(f, "/rooms/{room}", `concat(["room:${path.room}", "t:${lookup(header, "x-tenant", "none")}", "q:${lookup(query, "topic", "")}"], [for r in lookup(claims, "rooms", []) : "r:${r}"])`)
	f.Fuzz(func(t *testing.T, claimsJSON []byte, topic, tenant string) {
		var claims map[string]any
		if json.Unmarshal(claimsJSON, &claims) != nil {
			claims = nil
		}
		_, _ = tpl.Eval(Scope{
			Claims: claims,
			Path:   map[string]string{"room": topic},
			Query:  map[string]string{"topic": topic},
			Header: map[string]string{"x-tenant": tenant},
		})
	})
}
