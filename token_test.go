package main

// `wsidecar token` round trips: a token minted from a config verifies
// against that same config's jwt block, through auth.NewVerifier and
// through a running sidecar; and every mistake gets an answer that says
// what to do next.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsidecar/wsidecar/auth"
	"github.com/wsidecar/wsidecar/config"
)

const (
	tokIssuer = "https://idp.token.test/"
	tokAud    = "chat"
	tokSecret = "token-test-secret-0123456789abcdef-0123456789"
)

// tokKey is one way to sign: the jwt key block the sidecar gets and the
// private key PEM (empty for HMAC) that `wsidecar token -pem` gets.
type tokKey struct {
	name    string
	block   string // the key "…" { } block, with %DIR% for the key directory
	private []byte // PEM; nil for HMAC
}

// writePEM writes a PEM block to dir/name and returns its path.
func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// publicKeyFile writes the PKIX public key of signer to dir/name.
func publicKeyFile(t *testing.T, dir, name string, signer crypto.Signer) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, dir, name, "PUBLIC KEY", der)
}

// tokKeys returns an HMAC key and an RSA, ECDSA and Ed25519 key pair, the
// private keys in each PEM form LoadPrivateKeyPEM documents.
func tokKeys(t *testing.T, dir string) []tokKey {
	t.Helper()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8 := func(k any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	ecDER, err := x509.MarshalECPrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	keyBlock := func(name, algs, pub string) string {
		return fmt.Sprintf("key %q {\n    algorithms = %s\n    kid = %q\n    pem_file = %q\n  }", name, algs, name+"-1", pub)
	}
	return []tokKey{
		{"hmac", fmt.Sprintf("key \"hmac\" {\n    algorithms = [\"HS256\"]\n    secret = %q\n  }", tokSecret), nil},
		{"rsa-pkcs8", keyBlock("rsa-pkcs8", `["RS256"]`, publicKeyFile(t, dir, "rsa.pub", rsaKey)), pkcs8(rsaKey)},
		{"rsa-pkcs1", keyBlock("rsa-pkcs1", `["PS256"]`, publicKeyFile(t, dir, "rsa1.pub", rsaKey)),
			pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})},
		{"ec-pkcs8", keyBlock("ec-pkcs8", `["ES256"]`, publicKeyFile(t, dir, "ec.pub", ecKey)), pkcs8(ecKey)},
		{"ec-sec1", keyBlock("ec-sec1", `["ES256"]`, publicKeyFile(t, dir, "ec1.pub", ecKey)),
			pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})},
		{"ed25519", keyBlock("ed25519", `["EdDSA"]`, publicKeyFile(t, dir, "ed.pub", edKey)), pkcs8(edKey)},
	}
}

// tokConfig is a sidecar config whose only route takes tokens signed by key.
func tokConfig(key tokKey) string {
	return fmt.Sprintf(`
backend {
  url = "%%BACKEND%%"
}

origins {
  allow_missing = true
}

jwt {
  issuer          = %q
  audience        = [%q]
  required_claims = ["sub", "org"]
  %s
}

route "/ws" {
  on_connect = "/connect"
}
`, tokIssuer, tokAud, key.block)
}

// writeConfig writes src to dir/sidecar.hcl with the backend URL filled in.
func writeConfig(t *testing.T, dir, src, backendURL string) string {
	t.Helper()
	path := filepath.Join(dir, "sidecar.hcl")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(src, "%BACKEND%", backendURL)), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// tokPayload decodes a JWT's header and payload without verifying it, to
// check what the command put there.
func tokPayload(t *testing.T, tok string) (header, payload map[string]any) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q does not have three parts", tok)
	}
	for i, out := range []*map[string]any{&header, &payload} {
		raw, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatalf("token part %d: %v", i, err)
		}
		dec := json.NewDecoder(strings.NewReader(string(raw)))
		dec.UseNumber()
		if err := dec.Decode(out); err != nil {
			t.Fatalf("token part %d: %v", i, err)
		}
	}
	return header, payload
}

// dialWithToken dials the sidecar with an Authorization header and returns
// the handshake status (101 when upgraded).
func dialWithToken(t *testing.T, url, token string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + token}}})
	if err != nil {
		if resp == nil {
			t.Fatalf("dial %s: %v", url, err)
		}
		return resp.StatusCode
	}
	c.Close(websocket.StatusNormalClosure, "")
	return http.StatusSwitchingProtocols
}

func TestTokenRoundTrip(t *testing.T) {
	keyDir := t.TempDir()
	for _, key := range tokKeys(t, keyDir) {
		t.Run(key.name, func(t *testing.T) {
			b := newBackend(t)
			dir := t.TempDir()
			path := writeConfig(t, dir, tokConfig(key), b.URL)
			args := []string{"token", "-config", path, "-sub", "user-42", "-claim", "org=acme",
				"-claim", `roles=["admin","ops"]`, "-claim", "account=12345678901234567890", "-ttl", "10m"}
			if key.private != nil {
				pemPath := filepath.Join(dir, "private.pem")
				if err := os.WriteFile(pemPath, key.private, 0o600); err != nil {
					t.Fatal(err)
				}
				args = append(args, "-pem", pemPath)
			}
			before := time.Now()
			code, stdout, stderr := runCLI(t, args...)
			if code != 0 || stderr != "" {
				t.Fatalf("wsidecar %s: exit %d, stderr %q", strings.Join(args, " "), code, stderr)
			}
			tok := strings.TrimSuffix(stdout, "\n")
			if strings.ContainsAny(tok, " \n") || strings.Count(tok, ".") != 2 {
				t.Fatalf("stdout = %q; want the token alone on one line", stdout)
			}

			// What the command put in it.
			hdr, pl := tokPayload(t, tok)
			if key.private != nil && hdr["kid"] != key.name+"-1" {
				t.Errorf("kid = %v; want the key block's kid %q", hdr["kid"], key.name+"-1")
			}
			exp, _ := pl["exp"].(json.Number).Int64()
			if want := before.Add(10 * time.Minute).Unix(); exp < want-2 || exp > want+5 {
				t.Errorf("exp = %d; want about now + 10m (%d)", exp, want)
			}

			// The config's own jwt settings accept it.
			cfg, err := config.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			v, err := auth.NewVerifier(context.Background(), *cfg.JWT, auth.VerifierOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			id, err := v.Verify(context.Background(), tok)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if id.User != "user-42" || id.Claims["org"] != "acme" || id.Claims["iss"] != tokIssuer ||
				fmt.Sprint(id.Claims["aud"]) != tokAud || fmt.Sprint(id.Claims["roles"]) != "[admin ops]" ||
				fmt.Sprint(id.Claims["account"]) != "12345678901234567890" {
				t.Errorf("identity = %q %v; want user-42 with org, iss, aud, roles and the exact account number", id.User, id.Claims)
			}

			// A running sidecar with that config lets it in, and the backend
			// learns who it is.
			sc := startSidecar(t, b.URL, tokConfig(key))
			if status := dialWithToken(t, sc.WS+"/ws", tok); status != http.StatusSwitchingProtocols {
				t.Fatalf("sidecar answered %d to the minted token; want 101", status)
			}
			h := b.waitCalls(t, "/connect", 1)[0]
			if got := h.Header.Get("X-WS-User"); got != "user-42" {
				t.Errorf("connect webhook X-WS-User = %q; want user-42", got)
			}
			var wc map[string]any
			if err := json.Unmarshal([]byte(h.Header.Get("X-WS-Claims")), &wc); err != nil || wc["org"] != "acme" {
				t.Errorf("connect webhook X-WS-Claims = %q; want the claims with org acme", h.Header.Get("X-WS-Claims"))
			}

			// And it is not a door that opens for anything: the same token
			// with its payload changed, or a token lacking a required claim,
			// is refused.
			parts := strings.Split(tok, ".")
			forged, _ := json.Marshal(map[string]any{"sub": "admin", "org": "acme", "iss": tokIssuer, "aud": tokAud, "exp": exp})
			tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString(forged) + "." + parts[2]
			if status := dialWithToken(t, sc.WS+"/ws", tampered); status != http.StatusUnauthorized {
				t.Errorf("tampered token: sidecar answered %d; want 401", status)
			}
			if _, err := v.Verify(context.Background(), tampered); err == nil {
				t.Error("Verify accepted a tampered token")
			}
			if len(b.calls("/connect")) != 1 {
				t.Errorf("backend saw %d connect webhooks; want only the good token's", len(b.calls("/connect")))
			}
		})
	}
}

// Every mistake gets exit code 2, nothing on stdout, and a message that
// says what to do next.
func TestTokenErrors(t *testing.T) {
	dir := t.TempDir()
	all := tokKeys(t, dir)
	hmac, rsaKey, ecKey := all[0], all[1], all[3]
	write := func(name, src string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(src, "%BACKEND%", "http://127.0.0.1:1")), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rsaPEM := filepath.Join(dir, "rsa-private.pem")
	os.WriteFile(rsaPEM, rsaKey.private, 0o600)
	ecPEM := filepath.Join(dir, "ec-private.pem")
	os.WriteFile(ecPEM, ecKey.private, 0o600)

	noJWT := write("nojwt.hcl", "backend { url = \"http://127.0.0.1:1\" }\nroute \"/ws\" { auth = \"none\" }\n")
	hmacCfg := write("hmac.hcl", tokConfig(hmac))
	rsaCfg := write("rsa.hcl", tokConfig(rsaKey))
	jwksCfg := write("jwks.hcl", tokConfig(tokKey{block: `key "idp" {
    algorithms = ["RS256"]
    jwks_url   = "https://idp.example.com/jwks.json"
  }`}))
	userClaimCfg := write("userclaim.hcl", strings.Replace(tokConfig(hmac), `required_claims = ["sub", "org"]`, `user_claim = "email"`, 1))
	noExpCfg := write("noexp.hcl", strings.Replace(tokConfig(hmac), `required_claims = ["sub", "org"]`, `require_exp = false`, 1))

	for _, c := range []struct {
		name string
		args []string
		want []string // all must appear in stderr
	}{
		{"missing config", []string{"-config", filepath.Join(dir, "missing.hcl")}, []string{"missing.hcl", "-config FILE"}},
		{"no jwt block", []string{"-config", noJWT}, []string{"has no jwt block", "docs/config.md", `secret     = env("JWT_SECRET")`}},
		{"unknown key", []string{"-config", rsaCfg, "-key", "nope", "-pem", rsaPEM}, []string{`no jwt key "nope"`, `"rsa-pkcs8"`}},
		{"public key without -pem", []string{"-config", rsaCfg, "-sub", "u", "-claim", "org=a"}, []string{`key "rsa-pkcs8" verifies with a public key`, "pem_file", "-pem FILE"}},
		{"jwks key without -pem", []string{"-config", jwksCfg, "-sub", "u", "-claim", "org=a"}, []string{"the JWKS at https://idp.example.com/jwks.json", "-pem FILE"}},
		{"hmac key with -pem", []string{"-config", hmacCfg, "-pem", rsaPEM, "-sub", "u", "-claim", "org=a"}, []string{"HMAC key", "drop -pem"}},
		{"-pem file missing", []string{"-config", rsaCfg, "-pem", filepath.Join(dir, "nope.pem"), "-sub", "u", "-claim", "org=a"}, []string{"-pem", "nope.pem"}},
		{"-pem of another key", []string{"-config", rsaCfg, "-pem", ecPEM, "-sub", "u", "-claim", "org=a"}, []string{"does not match its pem_file"}},
		{"bad claim", []string{"-config", hmacCfg, "-claim", "org"}, []string{"NAME=VALUE", "-claim role=admin"}},
		{"empty claim name", []string{"-config", hmacCfg, "-claim", "=x"}, []string{"NAME=VALUE"}},
		{"required claim missing", []string{"-config", hmacCfg, "-sub", "u"}, []string{`requires claim "org"`, "-claim org=VALUE"}},
		{"required sub missing", []string{"-config", hmacCfg, "-claim", "org=a"}, []string{`requires claim "sub"`, "-sub USER"}},
		{"no exp but required", []string{"-config", hmacCfg, "-sub", "u", "-claim", "org=a", "-ttl", "0"}, []string{"requires one", "-ttl"}},
		{"negative ttl", []string{"-config", hmacCfg, "-ttl", "-1h"}, []string{"negative"}},
		{"bad ttl", []string{"-config", hmacCfg, "-ttl", "soon"}, []string{`invalid value "soon" for flag -ttl`}},
		{"stray argument", []string{"-config", hmacCfg, "-sub", "u", "alice", "-claim", "org=a"}, []string{`unexpected argument "alice"`, "flags only"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, append([]string{"token"}, c.args...)...)
			if code != exitConfig || stdout != "" {
				t.Errorf("exit %d, stdout %q; want exit 2 and no token", code, stdout)
			}
			for _, w := range c.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
		})
	}

	// -h is help, on stdout, with every flag.
	code, help, _ := runCLI(t, "token", "-h")
	for _, f := range []string{"-config FILE", "-key NAME", "-pem FILE", "-sub USER", "-ttl DURATION", "-claim NAME=VALUE", "TOKEN=$(wsidecar token"} {
		if code != 0 || !strings.Contains(help, f) {
			t.Errorf("token -h: exit %d; stdout lacks %q", code, f)
		}
	}

	// Hints that are not errors: the token is minted, the hint is on stderr.
	code, stdout, stderr := runCLI(t, "token", "-config", userClaimCfg, "-sub", "u")
	if code != 0 || stdout == "" || !strings.Contains(stderr, `claim "email"`) || !strings.Contains(stderr, "-claim email=USER") {
		t.Errorf("user_claim hint: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	// Without require_exp, -ttl 0 mints a token without exp.
	code, stdout, _ = runCLI(t, "token", "-config", noExpCfg, "-sub", "u", "-ttl", "0")
	if code != 0 {
		t.Fatalf("-ttl 0 without require_exp: exit %d", code)
	}
	if _, pl := tokPayload(t, strings.TrimSpace(stdout)); pl["exp"] != nil {
		t.Errorf("-ttl 0: exp = %v; want none", pl["exp"])
	}
}

// -claim values are JSON when they parse (numbers exactly), else strings.
func TestClaimValues(t *testing.T) {
	for in, want := range map[string]string{
		`acme`:                 `"acme"`,
		`42`:                   `42`,
		`12345678901234567890`: `12345678901234567890`,
		`true`:                 `true`,
		`"42"`:                 `"42"`,
		`["a","b"]`:            `["a","b"]`,
		`{"id":7}`:             `{"id":7}`,
		``:                     `""`,
		`1 2`:                  `"1 2"`,
		`{} x`:                 `"{} x"`,
		`a=b`:                  `"a=b"`,
	} {
		c := claimFlags{}
		if err := c.Set("k=" + in); err != nil {
			t.Fatalf("Set(k=%s): %v", in, err)
		}
		got, _ := json.Marshal(c["k"])
		if string(got) != want {
			t.Errorf("-claim k=%s → %s; want %s", in, got, want)
		}
	}
}

// FuzzClaimFlag: -claim never panics, fails exactly when there is no
// NAME=, and always yields a value the token's JSON payload can carry.
func FuzzClaimFlag(f *testing.F) {
	for _, s := range []string{"org=acme", "n=12345678901234567890", `roles=["a","b"]`, "=x", "x", "k=", "k={} x", `k="\u00e9"`, "k=1e999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c := claimFlags{}
		err := c.Set(s)
		name, value, ok := strings.Cut(s, "=")
		if (err != nil) != (!ok || name == "") {
			t.Fatalf("Set(%q) = %v", s, err)
		}
		if err != nil {
			return
		}
		b, err := json.Marshal(c[name])
		if err != nil {
			t.Fatalf("Set(%q) gave %#v, which JSON cannot encode: %v", s, c[name], err)
		}
		if str, isString := c[name].(string); isString && str != value && !strings.HasPrefix(strings.TrimSpace(value), `"`) {
			t.Fatalf("Set(%q) = string %q; want the raw value %q", s, str, value)
		}
		_ = b
	})
}
