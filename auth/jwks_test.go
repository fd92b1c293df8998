package auth

import (
	"context"
	"crypto"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/VictoriaMetrics/metrics"
	"github.com/wsidecar/wsidecar/config"
)

// jwksServer is an identity provider's JWKS endpoint on loopback whose key
// set can be rotated and whose fetches can be made to hang.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	body    []byte
	fetches atomic.Int64
	// hang, when set, makes fetches block until the client gives up or
	// release is closed: an identity provider having a bad day.
	hang    atomic.Bool
	release chan struct{}
}

type jwk struct {
	kid string
	alg jwkset.ALG
	use jwkset.USE
	pub crypto.PublicKey
}

func newJWKSServer(t *testing.T, keys ...jwk) *jwksServer {
	t.Helper()
	s := &jwksServer{release: make(chan struct{})}
	s.set(t, keys...)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		if s.hang.Load() {
			select {
			case <-r.Context().Done():
			case <-s.release:
			}
			return
		}
		s.mu.Lock()
		body := s.body
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	t.Cleanup(func() {
		close(s.release)
		s.Close()
	})
	return s
}

// set replaces the published key set (rotation).
func (s *jwksServer) set(t *testing.T, keys ...jwk) {
	t.Helper()
	store := jwkset.NewMemoryStorage()
	for _, k := range keys {
		use := k.use
		if use == "" {
			use = jwkset.UseSig
		}
		j, err := jwkset.NewJWKFromKey(k.pub, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: k.kid, ALG: k.alg, USE: use}})
		if err != nil {
			t.Fatal(err)
		}
		if err := store.KeyWrite(context.Background(), j); err != nil {
			t.Fatal(err)
		}
	}
	body, err := store.JSONPublic(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.body = body
	s.mu.Unlock()
}

func jwksConfig(url string, refresh, wait time.Duration) config.JWT {
	cfg := baseJWT()
	cfg.Keys = []config.JWTKey{{
		Name:               "idp",
		Algorithms:         []string{"RS256", "ES256", "EdDSA"},
		JWKSURL:            url + "/.well-known/jwks.json",
		JWKSRefresh:        refresh,
		JWKSUnknownKIDWait: wait,
	}}
	return cfg
}

func TestJWKSRotation(t *testing.T) {
	k := testKeys(t)
	srv := newJWKSServer(t,
		jwk{kid: "rsa-1", alg: jwkset.AlgRS256, pub: &k.rsa.PublicKey},
		jwk{kid: "ec-1", alg: jwkset.AlgES256, pub: &k.ec256.PublicKey},
		jwk{kid: "ed-1", pub: k.ed.Public()}, // no "alg": the config's pinning is what counts
	)
	v := newTestVerifier(t, jwksConfig(srv.URL, time.Hour, 2*time.Second), VerifierOptions{})
	ctx := context.Background()

	for _, c := range []struct {
		alg, kid string
		key      crypto.Signer
	}{{"RS256", "rsa-1", k.rsa}, {"ES256", "ec-1", k.ec256}, {"EdDSA", "ed-1", k.ed}} {
		tok := sign(t, c.alg, c.key, goodClaims(), map[string]any{"kid": c.kid})
		if _, err := v.Verify(ctx, tok); err != nil {
			t.Fatalf("%s token from the key set: %v", c.alg, err)
		}
	}
	// A token without kid is tried against every key that fits its alg.
	if _, err := v.Verify(ctx, sign(t, "ES256", k.ec256, goodClaims(), nil)); err != nil {
		t.Fatalf("kid-less ES256 token: %v", err)
	}
	// The RSA key's kid on an ES256 token signed with the EC key: the key
	// found for the kid does not fit the algorithm.
	mixed := sign(t, "ES256", k.ec256, goodClaims(), map[string]any{"kid": "rsa-1"})
	_, err := v.Verify(ctx, mixed)
	asAuthError(t, err, ReasonInvalid, mixed)
	if n := srv.fetches.Load(); n != 1 {
		t.Fatalf("JWKS fetched %d times, want 1 (cached)", n)
	}

	// The provider rotates: rsa-2 replaces rsa-1.
	srv.set(t, jwk{kid: "rsa-2", alg: jwkset.AlgRS256, pub: &k.rsa2.PublicKey})
	newTok := sign(t, "RS256", k.rsa2, goodClaims(), map[string]any{"kid": "rsa-2"})
	if _, err := v.Verify(ctx, newTok); err != nil {
		t.Fatalf("token of the new key after rotation: %v", err)
	}
	if n := srv.fetches.Load(); n != 2 {
		t.Fatalf("JWKS fetched %d times, want 2 (one refresh for the new kid)", n)
	}
	oldTok := sign(t, "RS256", k.rsa, goodClaims(), map[string]any{"kid": "rsa-1"})
	start := time.Now()
	_, err = v.Verify(ctx, oldTok)
	ae := asAuthError(t, err, ReasonInvalid, oldTok)
	if !strings.Contains(ae.Description(), "key id is unknown") {
		t.Errorf("Description() = %q", ae.Description())
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("rejecting a removed kid took %v", d)
	}
}

func TestJWKSPeriodicRefreshDropsRemovedKeys(t *testing.T) {
	k := testKeys(t)
	srv := newJWKSServer(t,
		jwk{kid: "rsa-1", alg: jwkset.AlgRS256, pub: &k.rsa.PublicKey},
		jwk{kid: "ec-1", alg: jwkset.AlgES256, pub: &k.ec256.PublicKey},
	)
	v := newTestVerifier(t, jwksConfig(srv.URL, 50*time.Millisecond, time.Second), VerifierOptions{UnknownKIDRefreshInterval: time.Hour})
	ctx := context.Background()
	rsaTok := sign(t, "RS256", k.rsa, goodClaims(), map[string]any{"kid": "rsa-1"})
	if _, err := v.Verify(ctx, rsaTok); err != nil {
		t.Fatal(err)
	}
	// Revoke rsa-1. No unknown-kid refresh can help (it is allowed once an
	// hour and rsa-1 is still cached); only the periodic refresh drops it.
	srv.set(t, jwk{kid: "ec-1", alg: jwkset.AlgES256, pub: &k.ec256.PublicKey})
	eventually(t, 5*time.Second, "the revoked key to be refused", func() bool {
		_, err := v.Verify(ctx, rsaTok)
		return err != nil
	})
	if _, err := v.Verify(ctx, sign(t, "ES256", k.ec256, goodClaims(), map[string]any{"kid": "ec-1"})); err != nil {
		t.Fatalf("remaining key after refresh: %v", err)
	}
}

// Forged kids must neither stall handshakes nor hammer the JWKS endpoint:
// the first unknown kid may refresh (bounded by JWKSUnknownKIDWait), the
// rest fail at once until the rate limiter allows another refresh.
func TestJWKSForgedKIDsAreBounded(t *testing.T) {
	k := testKeys(t)
	srv := newJWKSServer(t, jwk{kid: "rsa-1", alg: jwkset.AlgRS256, pub: &k.rsa.PublicKey})
	const wait = 250 * time.Millisecond
	set := metrics.NewSet()
	v := newTestVerifier(t, jwksConfig(srv.URL, time.Hour, wait), VerifierOptions{Metrics: set})
	ctx := context.Background()
	good := sign(t, "RS256", k.rsa, goodClaims(), map[string]any{"kid": "rsa-1"})
	if _, err := v.Verify(ctx, good); err != nil {
		t.Fatal(err)
	}
	srv.hang.Store(true) // the worst case: every refresh would hang

	const n = 50
	forged := make([]string, n)
	for i := range forged {
		forged[i] = sign(t, "RS256", k.rsa2, goodClaims(), map[string]any{"kid": "forged-" + strings.Repeat("x", i)})
	}
	start := time.Now()
	var slowest time.Duration
	for _, tok := range forged {
		t0 := time.Now()
		_, err := v.Verify(ctx, tok)
		asAuthError(t, err, ReasonInvalid, tok)
		slowest = max(slowest, time.Since(t0))
	}
	total := time.Since(start)
	t.Logf("%d forged kids: total %v, slowest %v", n, total, slowest)
	if slowest > wait+time.Second {
		t.Errorf("one forged-kid handshake waited %v, bound is %v", slowest, wait)
	}
	if total > 4*wait+time.Second {
		t.Errorf("%d forged kids took %v: they queue instead of failing fast (n×wait = %v)", n, total, n*wait)
	}
	if f := srv.fetches.Load(); f > 2 {
		t.Errorf("forged kids caused %d JWKS fetches, want at most 2", f)
	}
	if got := set.GetOrCreateCounter(`wsidecar_jwt_unknown_kid_total{key="idp"}`).Get(); got != n {
		t.Errorf("unknown kid counter = %d, want %d", got, n)
	}

	// The same storm in parallel: every handshake still ends within the bound.
	start = time.Now()
	var wg sync.WaitGroup
	for _, tok := range forged {
		wg.Go(func() { _, _ = v.Verify(ctx, tok) })
	}
	wg.Wait()
	if d := time.Since(start); d > wait+2*time.Second {
		t.Errorf("%d concurrent forged kids took %v", n, d)
	}

	// Genuine tokens with a cached kid are unaffected.
	t0 := time.Now()
	if _, err := v.Verify(ctx, good); err != nil {
		t.Fatalf("genuine token after the storm: %v", err)
	}
	if d := time.Since(t0); d > 100*time.Millisecond {
		t.Errorf("genuine token took %v", d)
	}
}

func TestJWKSDownAtStartIsNotFatal(t *testing.T) {
	k := testKeys(t)
	dead := httptest.NewServer(http.NotFoundHandler())
	url := dead.URL
	dead.Close()
	var logs logBuffer
	set := metrics.NewSet()
	cfg := jwksConfig(url, time.Hour, 200*time.Millisecond)
	cfg.Keys[0].JWKSURL += "?api_key=sekrit"
	v := newTestVerifier(t, cfg, VerifierOptions{Logger: logs.logger(), Metrics: set})

	tok := sign(t, "RS256", k.rsa, goodClaims(), map[string]any{"kid": "rsa-1"})
	_, err := v.Verify(context.Background(), tok)
	asAuthError(t, err, ReasonInvalid, tok)
	if !strings.Contains(logs.String(), "jwks refresh failed") {
		t.Errorf("no log line about the failed fetch:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), tok) || strings.Contains(logs.String(), "sekrit") {
		t.Errorf("log leaks the token or the JWKS URL's query:\n%s", logs.String())
	}
	if got := set.GetOrCreateCounter(`wsidecar_jwks_refresh_errors_total{key="idp"}`).Get(); got == 0 {
		t.Error("refresh error counter not incremented")
	}
}

func TestJWKSRefusesEncryptionKeys(t *testing.T) {
	k := testKeys(t)
	srv := newJWKSServer(t, jwk{kid: "enc-1", alg: jwkset.AlgRS256, use: jwkset.UseEnc, pub: &k.rsa.PublicKey})
	cfg := jwksConfig(srv.URL, time.Hour, time.Second)
	cfg.Keys[0].Name = `idp "main" \ ü` // must not break the metric label
	v := newTestVerifier(t, cfg, VerifierOptions{})
	tok := sign(t, "RS256", k.rsa, goodClaims(), map[string]any{"kid": "enc-1"})
	_, err := v.Verify(context.Background(), tok)
	asAuthError(t, err, ReasonInvalid, tok)
}

// A Verifier replaced on reload must not leave its refresh goroutines (or
// keep-alive connections) behind.
func TestVerifierCloseStopsJWKSRefresh(t *testing.T) {
	k := testKeys(t)
	srv := newJWKSServer(t, jwk{kid: "rsa-1", alg: jwkset.AlgRS256, pub: &k.rsa.PublicKey})
	tok := sign(t, "RS256", k.rsa, goodClaims(), map[string]any{"kid": "rsa-1"})
	before := settledGoroutines(t)

	var vs []*Verifier
	for range 3 {
		v, err := NewVerifier(context.Background(), jwksConfig(srv.URL, 20*time.Millisecond, time.Second), VerifierOptions{Now: fixedNow})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(context.Background(), tok); err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
	}
	if during := runtime.NumGoroutine(); during < before+3 {
		t.Fatalf("goroutines %d → %d: no refresh goroutines to check for", before, during)
	}
	f0 := srv.fetches.Load()
	eventually(t, 5*time.Second, "periodic refreshes", func() bool { return srv.fetches.Load() > f0+3 })

	for _, v := range vs {
		v.Close()
		v.Close() // idempotent
	}
	eventually(t, 5*time.Second, "refresh goroutines to exit", func() bool {
		return runtime.NumGoroutine() <= before
	})
	f1 := srv.fetches.Load()
	time.Sleep(100 * time.Millisecond) // five refresh intervals: none may happen
	if f2 := srv.fetches.Load(); f2 != f1 {
		t.Errorf("JWKS fetched %d more times after Close", f2-f1)
	}
	// Handshakes still in flight on a closed Verifier finish with its cache.
	if _, err := vs[0].Verify(context.Background(), tok); err != nil {
		t.Errorf("Verify after Close: %v", err)
	}
}

// settledGoroutines waits for goroutines left by earlier tests (server
// connections winding down) to finish, so the count is a stable baseline.
func settledGoroutines(t *testing.T) int {
	t.Helper()
	n := runtime.NumGoroutine()
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m == n {
			return n
		}
		n = m
	}
	return n
}
