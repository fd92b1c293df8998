package auth

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"
	"github.com/wsidecar/wsidecar/config"
)

// FuzzOrigin: Allowed never panics, and a wildcard never lets in a host that
// does not end in "."+suffix (checked against net/url as an independent
// parser), nor a scheme or port other than the pattern's.
func FuzzOrigin(f *testing.F) {
	f.Add("example.com", "https://a.example.com")
	f.Add("example.com", "https://example.com.evil.io")
	f.Add("example.com", "https://x.example.com@evil.io")
	f.Add("Example.COM", "HTTPS://A.EXAMPLE.COM:443")
	f.Add("ports.test", "http://app.test:8080")
	f.Fuzz(func(t *testing.T, suffix, origin string) {
		if strings.ContainsAny(suffix, ": \t\r\n\v\f") {
			t.Skip() // ports and trimming are covered by the fixed patterns
		}
		const exactOrigin = "http://app.test:8080"
		const portWildcard = ".port.test" // https://*.port.test:8443
		allow := []string{exactOrigin, "https://*" + portWildcard + ":8443"}
		p, err := NewOriginPolicy(config.Origins{Allow: append([]string{"https://*." + suffix}, allow...)})
		if err != nil {
			suffix = ""
			if p, err = NewOriginPolicy(config.Origins{Allow: allow}); err != nil {
				t.Fatal(err)
			}
		}
		if !p.Allowed(origin, true) {
			return
		}
		u, err := url.Parse(origin)
		if err != nil {
			t.Fatalf("allowed %q, which net/url cannot parse: %v", origin, err)
		}
		if u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" || u.ForceQuery {
			t.Fatalf("allowed %q with more than scheme://host:port: %#v", origin, u)
		}
		host, port, scheme := strings.ToLower(u.Hostname()), u.Port(), strings.ToLower(u.Scheme)
		for _, r := range origin {
			if r >= 0x80 {
				t.Fatalf("allowed non-ASCII origin %q", origin)
			}
		}
		switch {
		case scheme == "http" && host == "app.test" && port == "8080":
		case scheme == "https" && port == "8443" && strings.HasSuffix(host, portWildcard) && len(host) > len(portWildcard):
		case suffix != "" && scheme == "https" && (port == "" || port == "443"):
			want := "." + strings.ToLower(suffix)
			if !strings.HasSuffix(host, want) || len(host) <= len(want) || strings.Contains(host, "..") || strings.HasPrefix(host, ".") {
				t.Fatalf("wildcard *.%s allowed %q (host %q)", suffix, origin, host)
			}
		default:
			t.Fatalf("allowed %q matching no pattern (suffix %q)", origin, suffix)
		}
	})
}

// FuzzExtractToken: extraction, protocol stripping and query redaction never
// panic, and keep their promises on hostile input.
func FuzzExtractToken(f *testing.F) {
	f.Add("Bearer abc", "bearer, tok, chat.v1", "sid-token", "access_token=x&room=1", "header,protocol,cookie:sid,query:access_token")
	f.Add("", "BEARER,,tok", "", "a=1;access_token=t", "protocol")
	f.Add("bearer\t", "bearer", "", "access%5Ftoken=x", "query:access_token,header")
	f.Fuzz(func(t *testing.T, authz, proto, cookie, query, sources string) {
		q, _ := url.ParseQuery(query)
		r := fuzzRequest{authz: authz, proto: proto, cookie: cookie, query: q}
		srcs := strings.Split(sources, ",")
		tok, src := ExtractToken(srcs, r)
		if (tok == "") != (src == "") {
			t.Fatalf("token %q from source %q", tok, src)
		}
		if tok != "" && tok != strings.Trim(tok, " \t") {
			t.Fatalf("token %q not trimmed", tok)
		}

		offered := OfferedProtocols(proto)
		for _, p := range offered {
			if p == "" || strings.Contains(p, ",") {
				t.Fatalf("OfferedProtocols(%q) has entry %q", proto, p)
			}
		}
		stripped := StripBearer(offered)
		for _, p := range stripped {
			if strings.EqualFold(p, BearerProtocol) {
				t.Fatalf("StripBearer(%q) kept a marker: %q", offered, stripped)
			}
		}
		if src == SourceProtocol {
			if len(stripped) > len(offered)-2 {
				t.Fatalf("StripBearer(%q) = %q did not drop the token %q", offered, stripped, tok)
			}
			sel := SelectSubprotocol(offered, append(stripped, tok))
			if sel != "" && !strings.EqualFold(sel, BearerProtocol) && !contains(stripped, sel) {
				t.Fatalf("SelectSubprotocol chose %q, not an offered protocol", sel)
			}
		}

		names := QueryNames(srcs)
		red := RedactQuery(query, names)
		for pair := range strings.FieldsFuncSeq(red, func(r rune) bool { return r == '&' || r == ';' }) {
			k, v, ok := strings.Cut(pair, "=")
			if !ok || v == "" || !nameIn(k, names) {
				continue
			}
			if v != Redacted {
				t.Fatalf("RedactQuery(%q, %q) = %q left %q", query, names, red, pair)
			}
		}
	})
}

// FuzzVerify: no token, however mangled, panics the verifier, gets in, or
// has its text echoed in the error.
func FuzzVerify(f *testing.F) {
	cfg := baseJWT()
	cfg.Keys = []config.JWTKey{{Name: "h", Algorithms: []string{"HS256"}, Secret: secret64}}
	v := newTestVerifier(f, cfg, VerifierOptions{})
	good := sign(f, "HS256", []byte(secret64), goodClaims(), nil)
	f.Add(good)
	f.Add(good[:len(good)-1] + "A")
	f.Add(b64(map[string]any{"alg": "none"}) + "." + b64(goodClaims()) + ".")
	f.Fuzz(func(t *testing.T, token string) {
		id, err := v.Verify(context.Background(), token)
		if err == nil {
			if token != good {
				// Only a token signed with the secret may pass; the fuzzer
				// cannot forge one, but a re-encoding of good could.
				if _, perr := jwt.Parse(token, func(*jwt.Token) (any, error) { return []byte(secret64), nil },
					jwt.WithValidMethods([]string{"HS256"}), jwt.WithTimeFunc(fixedNow)); perr != nil {
					t.Fatalf("accepted %q (%+v), which jwt itself refuses: %v", token, id, perr)
				}
			}
			return
		}
		if token == "" {
			asAuthError(t, err, ReasonMissing, "")
			return
		}
		// Short or dot-less tokens can coincide with our own fixed wording
		// ("the token"); real tokens are long and dotted.
		if len(token) < 24 || !strings.Contains(token, ".") {
			token = ""
		}
		asAuthError(t, err, ReasonInvalid, token)
	})
}

type fuzzRequest struct {
	authz, proto, cookie string
	query                url.Values
}

func (r fuzzRequest) Header(name string) string {
	switch name {
	case "Authorization":
		return r.authz
	case "Sec-WebSocket-Protocol":
		return r.proto
	}
	return ""
}
func (r fuzzRequest) Cookie(string) string     { return r.cookie }
func (r fuzzRequest) Query(name string) string { return r.query.Get(name) }

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}
