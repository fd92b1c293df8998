package auth

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/golang-jwt/jwt/v5"
	"github.com/wsidecar/wsidecar/config"
)

// familyVerifier accepts every algorithm family, each pinned to its key.
func familyVerifier(t *testing.T, set *metrics.Set) (*Verifier, *keyring) {
	t.Helper()
	k := testKeys(t)
	cfg := baseJWT()
	cfg.Keys = []config.JWTKey{
		{Name: "hmac", Algorithms: []string{"HS256", "HS384", "HS512"}, Secret: secret64},
		{Name: "rsa", Algorithms: []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}, PEMFile: writePublicPEM(t, &k.rsa.PublicKey)},
		{Name: "ec256", Algorithms: []string{"ES256"}, PEMFile: writePublicPEM(t, &k.ec256.PublicKey)},
		{Name: "ec384-cert", Algorithms: []string{"ES384"}, PEMFile: writeCertPEM(t, k.ec384)},
		{Name: "ec521", Algorithms: []string{"ES512"}, PEMFile: writePublicPEM(t, &k.ec521.PublicKey)},
		{Name: "ed25519-cert", Algorithms: []string{"EdDSA"}, PEMFile: writeCertPEM(t, k.ed)},
		{Name: "pinned", Algorithms: []string{"HS256"}, KeyID: "k-pinned", Secret: secretPinned},
	}
	return newTestVerifier(t, cfg, VerifierOptions{Metrics: set}), k
}

func TestVerifyEveryAlgorithmFamily(t *testing.T) {
	set := metrics.NewSet()
	v, k := familyVerifier(t, set)
	cases := []struct {
		alg    string
		key    any
		header map[string]any
	}{
		{"HS256", []byte(secret64), nil},
		{"HS384", []byte(secret64), nil},
		{"HS512", []byte(secret64), nil},
		{"RS256", k.rsa, nil},
		{"RS384", k.rsa, nil},
		{"RS512", k.rsa, nil},
		{"PS256", k.rsa, nil},
		{"PS384", k.rsa, nil},
		{"PS512", k.rsa, nil},
		{"ES256", k.ec256, nil},
		{"ES384", k.ec384, nil},
		{"ES512", k.ec521, nil},
		{"EdDSA", k.ed, nil},
		{"HS256", []byte(secretPinned), map[string]any{"kid": "k-pinned"}},
		// A kid no key is pinned to falls back to the unpinned keys.
		{"ES256", k.ec256, map[string]any{"kid": "some-idp-kid"}},
	}
	for _, c := range cases {
		t.Run(c.alg, func(t *testing.T) {
			claims := goodClaims()
			claims["uid"] = json.Number("12345678901234567890") // beyond float64 precision
			tok := sign(t, c.alg, c.key, claims, c.header)
			id, err := v.Verify(context.Background(), tok)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if id.User != "user-1" {
				t.Errorf("User = %q, want user-1", id.User)
			}
			if id.Claims["tenant"] != "acme" {
				t.Errorf("Claims[tenant] = %v", id.Claims["tenant"])
			}
			if !id.ExpiresAt.Equal(testNow.Add(time.Hour)) {
				t.Errorf("ExpiresAt = %v, want %v", id.ExpiresAt, testNow.Add(time.Hour))
			}
			var back map[string]any
			if err := json.Unmarshal(id.ClaimsJSON, &back); err != nil {
				t.Fatalf("ClaimsJSON %s: %v", id.ClaimsJSON, err)
			}
			if back["sub"] != "user-1" || back["tenant"] != "acme" {
				t.Errorf("ClaimsJSON = %s", id.ClaimsJSON)
			}
			if !strings.Contains(string(id.ClaimsJSON), `"uid":12345678901234567890`) {
				t.Errorf("large integer claim lost precision: %s", id.ClaimsJSON)
			}
		})
	}
	if got := set.GetOrCreateCounter(`wsidecar_jwt_verifications_total{result="ok"}`).Get(); got != uint64(len(cases)) {
		t.Errorf("ok counter = %d, want %d", got, len(cases))
	}
}

func TestVerifyRejects(t *testing.T) {
	set := metrics.NewSet()
	v, k := familyVerifier(t, set)
	good := sign(t, "RS256", k.rsa, goodClaims(), nil)
	parts := strings.Split(good, ".")

	with := func(mod func(jwt.MapClaims)) jwt.MapClaims {
		c := goodClaims()
		mod(c)
		return c
	}
	rsaPubPEM := publicPEM(t, &k.rsa.PublicKey)

	cases := []struct {
		name   string
		token  string
		reason Reason
		desc   string // substring of Description
	}{
		{"no token", "", ReasonMissing, "no token"},
		{"garbage", "not-a-jwt", ReasonInvalid, "malformed"},
		{"four segments", good + ".x", ReasonInvalid, "malformed"},
		{"header not base64", "!!!." + parts[1] + "." + parts[2], ReasonInvalid, "malformed"},
		{"header not JSON", b64("x")[:2] + "." + parts[1] + "." + parts[2], ReasonInvalid, "malformed"},
		{"kid not a string", b64(map[string]any{"alg": "RS256", "kid": 7}) + "." + parts[1] + "." + parts[2], ReasonInvalid, "malformed"},
		{"alg none", b64(map[string]any{"alg": "none", "typ": "JWT"}) + "." + b64(goodClaims()) + ".", ReasonInvalid, "algorithm"},
		{"alg None", b64(map[string]any{"alg": "None"}) + "." + b64(goodClaims()) + ".", ReasonInvalid, "algorithm"},
		{"alg missing", b64(map[string]any{"typ": "JWT"}) + "." + b64(goodClaims()) + ".", ReasonInvalid, "algorithm"},
		{"alg unknown", b64(map[string]any{"alg": "HS1"}) + "." + b64(goodClaims()) + ".", ReasonInvalid, "algorithm"},
		{"RS256 re-signed as HS256 with the public key PEM as secret", sign(t, "HS256", rsaPubPEM, goodClaims(), nil), ReasonInvalid, "signature"},
		{"RS256 token relabelled HS256", b64(map[string]any{"alg": "HS256", "typ": "JWT"}) + "." + parts[1] + "." + parts[2], ReasonInvalid, "signature"},
		{"alg swapped RS256 to RS384", b64(map[string]any{"alg": "RS384", "typ": "JWT"}) + "." + parts[1] + "." + parts[2], ReasonInvalid, "signature"},
		{"tampered payload", parts[0] + "." + b64(with(func(c jwt.MapClaims) { c["sub"] = "admin" })) + "." + parts[2], ReasonInvalid, "signature"},
		{"signature stripped", parts[0] + "." + parts[1] + ".", ReasonInvalid, "signature"},
		{"someone else's RSA key", sign(t, "RS256", k.rsa2, goodClaims(), nil), ReasonInvalid, "signature"},
		{"someone else's Ed25519 key", sign(t, "EdDSA", k.ed2, goodClaims(), nil), ReasonInvalid, "signature"},
		{"someone else's P-256 key", sign(t, "ES256", k.ec2, goodClaims(), nil), ReasonInvalid, "signature"},
		{"HMAC secret of another service", sign(t, "HS256", []byte(secretForeign), goodClaims(), nil), ReasonInvalid, "signature"},
		{"pinned kid, other key's secret", sign(t, "HS256", []byte(secret64), goodClaims(), map[string]any{"kid": "k-pinned"}), ReasonInvalid, "signature"},
		{"pinned kid, algorithm it is not pinned to", sign(t, "HS512", []byte(secretPinned+secretPinned), goodClaims(), map[string]any{"kid": "k-pinned"}), ReasonInvalid, "no configured key"},
		{"crit header", sign(t, "RS256", k.rsa, goodClaims(), map[string]any{"crit": []string{"b64"}, "b64": false}), ReasonInvalid, "critical"},
		{"expired", sign(t, "RS256", k.rsa, with(func(c jwt.MapClaims) { c["exp"] = testNow.Add(-time.Hour).Unix() }), nil), ReasonExpired, "expired"},
		{"exp zero", sign(t, "RS256", k.rsa, with(func(c jwt.MapClaims) { c["exp"] = 0 }), nil), ReasonExpired, "expired"},
		{"expired and wrong issuer", sign(t, "RS256", k.rsa, with(func(c jwt.MapClaims) {
			c["exp"] = testNow.Add(-time.Hour).Unix()
			c["iss"] = "https://evil.test"
		}), nil), ReasonInvalid, "issuer"},
		{"expired and missing required claim", sign(t, "RS256", k.rsa, with(func(c jwt.MapClaims) {
			c["exp"] = testNow.Add(-time.Hour).Unix()
			delete(c, "tenant")
		}), nil), ReasonInvalid, "required claim"},
		{"no exp", sign(t, "RS256", k.rsa, with(func(c jwt.MapClaims) { delete(c, "exp") }), nil), ReasonInvalid, "required claim"},
		{"exp a string", sign(t, "RS256", k.rsa, with(func(c jwt.MapClaims) { c["exp"] = "tomorrow" }), nil), ReasonInvalid, "wrong type"},
		{"not yet valid", sign(t, "RS256", k.rsa, with(func(c jwt.MapClaims) { c["nbf"] = testNow.Add(time.Hour).Unix() }), nil), ReasonInvalid, "not valid yet"},
		{"wrong issuer", sign(t, "RS256", k.rsa, with(func(c jwt.MapClaims) { c["iss"] = "https://issuer.test.evil.io" }), nil), ReasonInvalid, "issuer"},
		{"no issuer", sign(t, "RS256", k.rsa, with(func(c jwt.MapClaims) { delete(c, "iss") }), nil), ReasonInvalid, "required claim"},
		{"wrong audience", sign(t, "RS256", k.rsa, with(func(c jwt.MapClaims) { c["aud"] = []string{"billing"} }), nil), ReasonInvalid, "audience"},
		{"no audience", sign(t, "RS256", k.rsa, with(func(c jwt.MapClaims) { delete(c, "aud") }), nil), ReasonInvalid, "required claim"},
		{"missing required claim", sign(t, "RS256", k.rsa, with(func(c jwt.MapClaims) { delete(c, "tenant") }), nil), ReasonInvalid, "required claim"},
		{"null required claim", sign(t, "RS256", k.rsa, with(func(c jwt.MapClaims) { c["tenant"] = nil }), nil), ReasonInvalid, "required claim"},
		{"user claim an object", sign(t, "RS256", k.rsa, with(func(c jwt.MapClaims) { c["sub"] = map[string]any{"id": 1} }), nil), ReasonInvalid, "user claim"},
		{"too long", strings.Repeat("a", maxTokenLen+1), ReasonInvalid, "too long"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id, err := v.Verify(context.Background(), c.token)
			if err == nil {
				t.Fatalf("accepted: %+v", id)
			}
			ae := asAuthError(t, err, c.reason, c.token)
			if !strings.Contains(ae.Description(), c.desc) {
				t.Errorf("Description() = %q, want it to mention %q (err: %v)", ae.Description(), c.desc, err)
			}
			ch := ae.WWWAuthenticate()
			if c.reason == ReasonMissing {
				if ch != `Bearer realm="wsidecar"` {
					t.Errorf("WWWAuthenticate() = %q", ch)
				}
				return
			}
			want := `Bearer error="invalid_token", error_description="` + ae.Description() + `"`
			if ch != want {
				t.Errorf("WWWAuthenticate() = %q, want %q", ch, want)
			}
			// RFC 6750 §3: error_description is %x20-21 / %x23-5B / %x5D-7E.
			for _, r := range ae.Description() {
				if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
					t.Errorf("description has %q, not allowed by RFC 6750", r)
				}
			}
		})
	}
	if got := set.GetOrCreateCounter(`wsidecar_jwt_verifications_total{result="token_expired"}`).Get(); got != 2 {
		t.Errorf("expired counter = %d, want 2", got)
	}
}

// The classic algorithm confusion attack against a server that only has
// an RSA key: there is no HMAC key to confuse it with, and the RSA key is
// pinned to RS256.
func TestVerifyAlgorithmConfusionRSAOnly(t *testing.T) {
	k := testKeys(t)
	pemPath := writePublicPEM(t, &k.rsa.PublicKey)
	cfg := baseJWT()
	cfg.Keys = []config.JWTKey{{Name: "idp", Algorithms: []string{"RS256"}, PEMFile: pemPath}}
	v := newTestVerifier(t, cfg, VerifierOptions{})

	if _, err := v.Verify(context.Background(), sign(t, "RS256", k.rsa, goodClaims(), nil)); err != nil {
		t.Fatalf("genuine token refused: %v", err)
	}
	for _, secret := range [][]byte{publicPEM(t, &k.rsa.PublicKey), x509.MarshalPKCS1PublicKey(&k.rsa.PublicKey)} {
		forged := sign(t, "HS256", secret, goodClaims(), nil)
		_, err := v.Verify(context.Background(), forged)
		asAuthError(t, err, ReasonInvalid, forged)
	}

	// A config that pins HS256 to a public key is refused outright.
	cfg.Keys[0].Algorithms = []string{"RS256", "HS256"}
	if _, err := NewVerifier(context.Background(), cfg, VerifierOptions{}); err == nil || !strings.Contains(err.Error(), "does not fit") {
		t.Fatalf("NewVerifier with HS256 on an RSA key: err = %v", err)
	}
}

func TestVerifyLeeway(t *testing.T) {
	k := testKeys(t)
	pemPath := writePublicPEM(t, &k.ec256.PublicKey)
	mk := func(leeway time.Duration) *Verifier {
		cfg := baseJWT()
		cfg.Leeway = leeway
		cfg.Keys = []config.JWTKey{{Name: "ec", Algorithms: []string{"ES256"}, PEMFile: pemPath}}
		return newTestVerifier(t, cfg, VerifierOptions{})
	}
	lenient, strict := mk(30*time.Second), mk(5*time.Second)

	expiredBy10s := goodClaims()
	expiredBy10s["exp"] = testNow.Add(-10 * time.Second).Unix()
	early10s := goodClaims()
	early10s["nbf"] = testNow.Add(10 * time.Second).Unix()

	for _, c := range []struct {
		name   string
		claims jwt.MapClaims
		strict Reason
	}{
		{"exp 10s ago", expiredBy10s, ReasonExpired},
		{"nbf in 10s", early10s, ReasonInvalid},
	} {
		tok := sign(t, "ES256", k.ec256, c.claims, nil)
		if _, err := lenient.Verify(context.Background(), tok); err != nil {
			t.Errorf("%s with 30s leeway: %v", c.name, err)
		}
		_, err := strict.Verify(context.Background(), tok)
		asAuthError(t, err, c.strict, tok)
	}
}

func TestVerifyOptionalClaimsAndUserClaim(t *testing.T) {
	cfg := config.JWT{ // no iss/aud/exp requirements
		UserClaim: "uid",
		Keys:      []config.JWTKey{{Name: "h", Secret: secretPinned}}, // algorithms default to HS256
	}
	v := newTestVerifier(t, cfg, VerifierOptions{})
	tok := sign(t, "HS256", []byte(secretPinned), jwt.MapClaims{"uid": 42}, nil)
	id, err := v.Verify(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if id.User != "42" || !id.ExpiresAt.IsZero() {
		t.Errorf("User = %q, ExpiresAt = %v", id.User, id.ExpiresAt)
	}
	if _, ok := id.Claims["uid"].(json.Number); !ok {
		t.Errorf("numeric claim is %T, want json.Number", id.Claims["uid"])
	}
	// HS384 is not among the defaulted algorithms.
	tok = sign(t, "HS384", []byte(secretPinned+secretPinned), jwt.MapClaims{"uid": "x"}, nil)
	_, err = v.Verify(context.Background(), tok)
	asAuthError(t, err, ReasonInvalid, tok)
}

func TestNewVerifierRefusesBadKeys(t *testing.T) {
	k := testKeys(t)
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(k.ec256)
	if err != nil {
		t.Fatal(err)
	}
	privPath := writeFile(t, "priv.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}))
	ecPath := writePublicPEM(t, &k.ec256.PublicKey)

	cases := []struct {
		name string
		mod  func(*config.JWT)
		want string
	}{
		{"no keys", func(c *config.JWT) { c.Keys = nil }, "no keys"},
		{"two sources", func(c *config.JWT) {
			c.Keys = []config.JWTKey{{Name: "x", Secret: secret64, PEMFile: ecPath}}
		}, "exactly one"},
		{"no source", func(c *config.JWT) { c.Keys = []config.JWTKey{{Name: "x", Algorithms: []string{"HS256"}}} }, "exactly one"},
		{"alg none", func(c *config.JWT) {
			c.Keys = []config.JWTKey{{Name: "x", Algorithms: []string{"none"}, Secret: secret64}}
		}, "not supported"},
		{"RS256 on a secret", func(c *config.JWT) {
			c.Keys = []config.JWTKey{{Name: "x", Algorithms: []string{"RS256"}, Secret: secret64}}
		}, "a secret verifies only"},
		{"short secret", func(c *config.JWT) {
			c.Keys = []config.JWTKey{{Name: "x", Algorithms: []string{"HS256"}, Secret: "secret"}}
		}, "at least 32 bytes"},
		{"secret short for HS512", func(c *config.JWT) {
			c.Keys = []config.JWTKey{{Name: "x", Algorithms: []string{"HS512"}, Secret: secretPinned}}
		}, "at least 64 bytes"},
		{"ES384 on a P-256 key", func(c *config.JWT) {
			c.Keys = []config.JWTKey{{Name: "x", Algorithms: []string{"ES384"}, PEMFile: ecPath}}
		}, "does not fit"},
		{"private key as pem_file", func(c *config.JWT) {
			c.Keys = []config.JWTKey{{Name: "x", Algorithms: []string{"ES256"}, PEMFile: privPath}}
		}, "must not hold the signing key"},
		{"RSA-1024", func(c *config.JWT) {
			c.Keys = []config.JWTKey{{Name: "x", Algorithms: []string{"RS256"}, PEMFile: writePublicPEM(t, &small.PublicKey)}}
		}, "too small"},
		{"missing pem file", func(c *config.JWT) {
			c.Keys = []config.JWTKey{{Name: "x", Algorithms: []string{"RS256"}, PEMFile: "/nonexistent/key.pem"}}
		}, "no such file"},
		{"HMAC from a JWKS", func(c *config.JWT) {
			c.Keys = []config.JWTKey{{Name: "x", Algorithms: []string{"HS256"}, JWKSURL: "https://idp.test/jwks"}}
		}, "no secret"},
		{"JWKS without algorithms", func(c *config.JWT) {
			c.Keys = []config.JWTKey{{Name: "x", JWKSURL: "https://idp.test/jwks"}}
		}, "algorithms are required"},
		{"JWKS not http", func(c *config.JWT) {
			c.Keys = []config.JWTKey{{Name: "x", Algorithms: []string{"RS256"}, JWKSURL: "file:///etc/jwks.json"}}
		}, "http(s) URL"},
		{"bad source", func(c *config.JWT) {
			c.Sources = []string{"header", "cookie:"}
			c.Keys = []config.JWTKey{{Name: "x", Secret: secret64}}
		}, "token source"},
		{"negative leeway", func(c *config.JWT) {
			c.Leeway = -time.Second
			c.Keys = []config.JWTKey{{Name: "x", Secret: secret64}}
		}, "leeway"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := baseJWT()
			c.mod(&cfg)
			v, err := NewVerifier(context.Background(), cfg, VerifierOptions{})
			if err == nil {
				v.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
		})
	}
}

func TestErrorText(t *testing.T) {
	e := &Error{Reason: ReasonExpired, Err: jwt.ErrTokenExpired}
	if got := e.Error(); got != "auth: token_expired: token is expired" {
		t.Errorf("Error() = %q", got)
	}
	if !errors.Is(e, jwt.ErrTokenExpired) {
		t.Error("Unwrap does not reach the cause")
	}
	if got := e.WWWAuthenticate(); got != `Bearer error="invalid_token", error_description="the token has expired"` {
		t.Errorf("WWWAuthenticate() = %q", got)
	}
	if got := (&Error{Reason: ReasonInvalid}).WWWAuthenticate(); got != `Bearer error="invalid_token", error_description="the token is invalid"` {
		t.Errorf("WWWAuthenticate() = %q", got)
	}
}

func BenchmarkVerifyHS256(b *testing.B) {
	cfg := baseJWT()
	cfg.Keys = []config.JWTKey{{Name: "h", Algorithms: []string{"HS256"}, Secret: secret64}}
	v := newTestVerifier(b, cfg, VerifierOptions{})
	tok := sign(b, "HS256", []byte(secret64), goodClaims(), nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(context.Background(), tok); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyES256(b *testing.B) {
	k := testKeys(b)
	cfg := baseJWT()
	cfg.Keys = []config.JWTKey{{Name: "e", Algorithms: []string{"ES256"}, PEMFile: writePublicPEM(b, &k.ec256.PublicKey)}}
	v := newTestVerifier(b, cfg, VerifierOptions{})
	tok := sign(b, "ES256", k.ec256, goodClaims(), nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(context.Background(), tok); err != nil {
			b.Fatal(err)
		}
	}
}
