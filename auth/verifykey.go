package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/VictoriaMetrics/metrics"
	"github.com/golang-jwt/jwt/v5"
	"github.com/wsidecar/wsidecar/config"
	"golang.org/x/time/rate"
)

// verifyKey is one configured key with its algorithms pinned: its parser
// accepts only those algorithms (jwt.WithValidMethods), and the key material
// only fits them (algFitsKey), so an RS256 key never verifies an HS256 token
// and an HMAC secret never an RS256 one.
type verifyKey struct {
	name   string
	kid    string   // "" unless the key answers to one kid only
	algs   []string // pinned algorithms
	parser *jwt.Parser

	// Exactly one of static and jwks is set.
	static jwt.Keyfunc      // returns the secret or public key
	jwks   keyfunc.Keyfunc  // cached, refreshed key set
	wait   time.Duration    // bound on an unknown-kid lookup
	unkKID *metrics.Counter // lookups of a kid the key set did not have
}

func (v *Verifier) newKey(i int, kc config.JWTKey, base []jwt.ParserOption, opts VerifierOptions) (*verifyKey, error) {
	name := kc.Name
	if name == "" {
		name = fmt.Sprintf("#%d", i+1)
	}
	k := &verifyKey{name: name, kid: kc.KeyID}
	set := 0
	for _, s := range []string{kc.Secret, kc.PEMFile, kc.JWKSURL} {
		if s != "" {
			set++
		}
	}
	if set != 1 {
		return nil, fmt.Errorf("key %q: set exactly one of secret, pem_file and jwks_url", name)
	}
	for _, alg := range kc.Algorithms {
		if !supportedAlgs[alg] {
			return nil, fmt.Errorf("key %q: algorithm %q is not supported (want one of HS256/384/512, RS256/384/512, PS256/384/512, ES256/384/512, EdDSA)", name, alg)
		}
		if !slices.Contains(k.algs, alg) {
			k.algs = append(k.algs, alg)
		}
	}

	switch {
	case kc.Secret != "":
		secret := []byte(kc.Secret)
		if len(k.algs) == 0 {
			k.algs = defaultAlgs(secret)
		}
		for _, alg := range k.algs {
			if !isHMACAlg(alg) {
				return nil, fmt.Errorf("key %q: a secret verifies only HS256/HS384/HS512, not %s (that needs pem_file or jwks_url)", name, alg)
			}
			if len(secret) < hmacMinLen(alg) {
				return nil, fmt.Errorf("key %q: %s needs a secret of at least %d bytes (RFC 7518 §3.2), got %d", name, alg, hmacMinLen(alg), len(secret))
			}
		}
		k.static = func(*jwt.Token) (any, error) { return secret, nil }

	case kc.PEMFile != "":
		pub, err := loadPublicKeyPEM(kc.PEMFile)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", name, err)
		}
		if len(k.algs) == 0 {
			k.algs = defaultAlgs(pub)
		}
		for _, alg := range k.algs {
			if !algFitsKey(alg, pub) {
				return nil, fmt.Errorf("key %q: algorithm %s does not fit its %s key", name, alg, keyKind(pub))
			}
		}
		k.static = func(*jwt.Token) (any, error) { return pub, nil }

	default:
		if len(k.algs) == 0 {
			return nil, fmt.Errorf("key %q: algorithms are required for a jwks_url key", name)
		}
		for _, alg := range k.algs {
			if isHMACAlg(alg) {
				return nil, fmt.Errorf("key %q: %s cannot come from a JWKS: a published symmetric key is no secret", name, alg)
			}
		}
		if err := v.startJWKS(k, kc, opts); err != nil {
			return nil, fmt.Errorf("key %q: %w", name, err)
		}
	}
	k.parser = jwt.NewParser(append(slices.Clone(base), jwt.WithValidMethods(k.algs))...)
	return k, nil
}

func keyKind(key any) string {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", key)
}

// startJWKS sets up the cached key set behind a jwks_url key.
func (v *Verifier) startJWKS(k *verifyKey, kc config.JWTKey, opts VerifierOptions) error {
	u, err := url.Parse(kc.JWKSURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("jwks_url must be an http(s) URL")
	}
	if u.Scheme == "http" && !isLoopbackHost(u.Hostname()) {
		v.log.Warn("jwks_url is plain http: anyone on the path can substitute keys", "key", k.name, "host", u.Host)
	}
	refresh := kc.JWKSRefresh
	if refresh <= 0 {
		refresh = defaultJWKSRefresh
	}
	k.wait = kc.JWKSUnknownKIDWait
	if k.wait <= 0 {
		k.wait = defaultUnknownKIDWait
	}
	label := metricLabel(k.name)
	refreshErrors := opts.Metrics.GetOrCreateCounter(`wsidecar_jwks_refresh_errors_total{key="` + label + `"}`)
	k.unkKID = opts.Metrics.GetOrCreateCounter(`wsidecar_jwt_unknown_kid_total{key="` + label + `"}`)
	// A query string may carry an API key: keep it out of logs, including
	// the URL that net/http errors quote.
	shown := *u
	shown.RawQuery, shown.User = "", nil
	if u.RawQuery != "" {
		shown.RawQuery = Redacted
	}
	onError := func(string) func(context.Context, error) {
		return func(_ context.Context, err error) {
			if v.life.Err() != nil {
				return // closing: the cancelled fetch is not news
			}
			refreshErrors.Inc()
			msg := strings.ReplaceAll(err.Error(), kc.JWKSURL, shown.String())
			v.log.Warn("jwks refresh failed", "key", k.name, "url", shown.String(), "err", msg)
		}
	}
	base, err := keyfunc.NewDefaultOverrideCtx(v.life, []string{kc.JWKSURL}, keyfunc.Override{
		Client:      opts.HTTPClient,
		HTTPTimeout: opts.JWKSTimeout,
		// An unknown kid may refresh the set at most once per interval
		// (burst 1). The limiter's wait is capped at the handshake's bound,
		// and rate.Limiter.Wait gives up at once when the next slot lies
		// past the deadline: forged kids fail fast instead of queueing.
		RefreshUnknownKID:       rate.NewLimiter(rate.Every(opts.UnknownKIDRefreshInterval), 1),
		RateLimitWaitMax:        k.wait,
		RefreshInterval:         refresh,
		RefreshErrorHandlerFunc: onError,
	})
	if err != nil {
		return fmt.Errorf("jwks: %w", err)
	}
	// Rebuild the keyfunc over the same storage to refuse JWKs marked for
	// encryption ("use": "enc"); keys without "use" stay usable.
	k.jwks, err = keyfunc.New(keyfunc.Options{
		Ctx:          v.life,
		Storage:      base.Storage(),
		UseWhitelist: []jwkset.USE{jwkset.UseSig, ""},
	})
	if err != nil {
		return fmt.Errorf("jwks: %w", err)
	}
	return nil
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// metricLabel keeps a key name usable as a Prometheus label value.
func metricLabel(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '"' || r == '\\' || r < 0x20 || r > 0x7e {
			return '_'
		}
		return r
	}, s)
}

// parse verifies token with this key and returns its claims, filled even
// when only claim validation failed (the signature had verified).
func (k *verifyKey) parse(ctx, life context.Context, token string) (jwt.MapClaims, error) {
	claims := jwt.MapClaims{}
	kf := k.static
	if k.jwks != nil {
		// Bound the lookup: a kid the cache lacks triggers a refresh, and
		// the handshake must not wait on the JWKS endpoint for longer than
		// JWKSUnknownKIDWait. Close cancels it too.
		lctx, cancel := context.WithTimeout(ctx, k.wait)
		defer cancel()
		stop := context.AfterFunc(life, cancel)
		defer stop()
		kf = k.jwksKeyfunc(lctx)
	}
	_, err := k.parser.ParseWithClaims(token, claims, kf)
	return claims, err
}

// jwksKeyfunc wraps keyfunc's lookup: it counts unknown kids, keeps the kid
// out of error text, and hands jwt only keys that fit the token's alg (a key
// set may mix RSA and EC keys, and a JWK without "alg" says nothing).
func (k *verifyKey) jwksKeyfunc(ctx context.Context) jwt.Keyfunc {
	inner := k.jwks.KeyfuncCtx(ctx)
	return func(t *jwt.Token) (any, error) {
		alg := t.Method.Alg()
		got, err := inner(t)
		if err != nil {
			k.unkKID.Inc()
			if errors.Is(err, jwkset.ErrKeyNotFound) {
				return nil, fmt.Errorf("%w: not in the key set of %q", errUnknownKey, k.name)
			}
			// Refresh skipped by the rate limiter, timed out, or the JWK's
			// alg/use did not match: all "this kid cannot be used now".
			return nil, fmt.Errorf("%w: key set %q could not supply it (refresh rate-limited or timed out, or JWK alg/use mismatch)", errUnknownKey, k.name)
		}
		if set, ok := got.(jwt.VerificationKeySet); ok {
			var fit jwt.VerificationKeySet
			for _, key := range set.Keys {
				if algFitsKey(alg, key) {
					fit.Keys = append(fit.Keys, key)
				}
			}
			if len(fit.Keys) == 0 {
				return nil, fmt.Errorf("%w: key set %q has no %s key", errNoKey, k.name, alg)
			}
			return fit, nil
		}
		if !algFitsKey(alg, got) {
			return nil, fmt.Errorf("%w: the JWK for this kid in %q is not a %s key", errNoKey, k.name, alg)
		}
		return got, nil
	}
}
