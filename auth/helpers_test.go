package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/wsidecar/wsidecar/config"
)

// testNow is the fixed clock of every verification test.
var testNow = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func fixedNow() time.Time { return testNow }

// keyring holds test keys, generated once per test binary: RSA generation
// is slow under -race, and no test depends on fresh keys.
type keyring struct {
	rsa, rsa2                *rsa.PrivateKey
	ec256, ec384, ec521, ec2 *ecdsa.PrivateKey
	ed, ed2                  ed25519.PrivateKey
}

var (
	keysOnce sync.Once
	keys     keyring
)

func testKeys(t testing.TB) *keyring {
	t.Helper()
	keysOnce.Do(func() {
		must := func(err error) {
			if err != nil {
				panic(err)
			}
		}
		var err error
		keys.rsa, err = rsa.GenerateKey(rand.Reader, 2048)
		must(err)
		keys.rsa2, err = rsa.GenerateKey(rand.Reader, 2048)
		must(err)
		keys.ec256, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(err)
		keys.ec384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		must(err)
		keys.ec521, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
		must(err)
		keys.ec2, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(err)
		_, keys.ed, err = ed25519.GenerateKey(rand.Reader)
		must(err)
		_, keys.ed2, err = ed25519.GenerateKey(rand.Reader)
		must(err)
	})
	return &keys
}

// Secrets long enough for every HMAC algorithm (RFC 7518 §3.2).
var (
	secret64      = strings.Repeat("s3cr3t-", 10)[:64]
	secretPinned  = strings.Repeat("p1nned-", 10)[:32]
	secretForeign = strings.Repeat("f0reign", 10)[:64]
)

func writeFile(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func publicPEM(t testing.TB, pub crypto.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func writePublicPEM(t testing.TB, pub crypto.PublicKey) string {
	return writeFile(t, "pub.pem", publicPEM(t, pub))
}

// writeCertPEM writes a self-signed certificate for priv, as an identity
// provider might publish its signing key.
func writeCertPEM(t testing.TB, priv crypto.Signer) string {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "issuer.test"},
		NotBefore:    testNow.Add(-time.Hour),
		NotAfter:     testNow.Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, "cert.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// goodClaims are claims the base config accepts at testNow.
func goodClaims() jwt.MapClaims {
	return jwt.MapClaims{
		"iss":    "https://issuer.test",
		"aud":    "wsidecar",
		"sub":    "user-1",
		"tenant": "acme",
		"iat":    testNow.Add(-time.Minute).Unix(),
		"exp":    testNow.Add(time.Hour).Unix(),
	}
}

// sign makes a token with alg and key; header adds to (or overrides) the
// JOSE header.
func sign(t testing.TB, alg string, key any, claims jwt.MapClaims, header map[string]any) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(alg), claims)
	for k, v := range header {
		tok.Header[k] = v
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("sign %s: %v", alg, err)
	}
	return s
}

func b64(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// baseJWT is the jwt block most tests use, without keys.
func baseJWT() config.JWT {
	return config.JWT{
		Issuer:         "https://issuer.test",
		Audience:       []string{"wsidecar", "other-service"},
		RequireExp:     true,
		RequiredClaims: []string{"tenant"},
	}
}

func newTestVerifier(t testing.TB, cfg config.JWT, opts VerifierOptions) *Verifier {
	t.Helper()
	if opts.Now == nil {
		opts.Now = fixedNow
	}
	v, err := NewVerifier(context.Background(), cfg, opts)
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	t.Cleanup(v.Close)
	return v
}

// asAuthError asserts err is an *Error with reason and that neither its
// text nor its challenge leaks the token.
func asAuthError(t testing.TB, err error, reason Reason, token string) *Error {
	t.Helper()
	var ae *Error
	if !errors.As(err, &ae) {
		t.Fatalf("error %v (%T) is not an *auth.Error", err, err)
	}
	if ae.Reason != reason {
		t.Fatalf("reason = %q, want %q (err: %v)", ae.Reason, reason, err)
	}
	if token != "" {
		for _, s := range []string{ae.Error(), ae.WWWAuthenticate(), ae.Description()} {
			if strings.Contains(s, token) {
				t.Fatalf("error text leaks the token: %q", s)
			}
			if parts := strings.Split(token, "."); len(parts) == 3 && len(parts[2]) > 8 && strings.Contains(s, parts[2]) {
				t.Fatalf("error text leaks the token signature: %q", s)
			}
		}
	}
	return ae
}

// logBuffer is a concurrency-safe slog sink for asserting on log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// mapRequest is a Request over plain maps.
type mapRequest struct {
	headers, cookies, query map[string]string
}

func (r mapRequest) Header(name string) string { return r.headers[name] }
func (r mapRequest) Cookie(name string) string { return r.cookies[name] }
func (r mapRequest) Query(name string) string  { return r.query[name] }
