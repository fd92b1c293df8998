package auth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/golang-jwt/jwt/v5"
	"github.com/wsidecar/wsidecar/config"
)

// maxTokenLen refuses absurd tokens before any decoding. Real JWTs are a few
// hundred bytes to a few KiB; a query parameter could otherwise carry more
// than the header limit would allow.
const maxTokenLen = 16 << 10

// Defaults for VerifierOptions and config fields left zero.
const (
	defaultUserClaim          = "sub"
	defaultJWKSRefresh        = time.Hour
	defaultUnknownKIDWait     = time.Second
	defaultUnknownKIDInterval = 30 * time.Second
	defaultJWKSTimeout        = 10 * time.Second
)

// Causes behind ReasonInvalid, for errors.Is and for Description.
var (
	errMalformed    = errors.New("token is malformed")
	errTooLong      = errors.New("token is too long")
	errAlg          = errors.New("token algorithm is not accepted")
	errCrit         = errors.New("token has critical header parameters")
	errNoKey        = errors.New("no configured key accepts the token's alg and kid")
	errUnknownKey   = errors.New("token kid is unknown")
	errClaimMissing = errors.New("token lacks a required claim")
	errUserClaim    = errors.New("token user claim is neither a string nor a number")
)

// descriptions maps causes to client-safe sentences, most specific first:
// a token that is expired and for the wrong audience is wrong, not stale.
var descriptions = []struct {
	err  error
	text string
}{
	{jwt.ErrTokenInvalidIssuer, "the token issuer is not accepted"},
	{jwt.ErrTokenInvalidAudience, "the token audience is not accepted"},
	{errClaimMissing, "the token lacks a required claim"},
	{jwt.ErrTokenRequiredClaimMissing, "the token lacks a required claim"},
	{errUserClaim, "the token user claim has the wrong type"},
	{jwt.ErrInvalidType, "the token has a claim of the wrong type"},
	{jwt.ErrTokenNotValidYet, "the token is not valid yet"},
	{jwt.ErrTokenExpired, "the token has expired"},
	{errAlg, "the token algorithm is not accepted"},
	{errCrit, "the token has unsupported critical header parameters"},
	{errUnknownKey, "the token key id is unknown"},
	{errNoKey, "no configured key accepts the token"},
	{jwt.ErrTokenSignatureInvalid, "the token signature is invalid"},
	{errTooLong, "the token is too long"},
	{errMalformed, "the token is malformed"},
	{jwt.ErrTokenMalformed, "the token is malformed"},
}

// VerifierOptions are a Verifier's collaborators. The zero value works.
type VerifierOptions struct {
	// Logger receives JWKS refresh failures. Nil discards.
	Logger *slog.Logger
	// Now is the clock for exp and nbf. Nil means time.Now.
	Now func() time.Time
	// HTTPClient fetches JWKS documents. Nil means a private client without
	// keep-alive: a fetch an hour needs none, and Close then leaves no idle
	// connection (and its two goroutines) behind.
	HTTPClient *http.Client
	// Metrics receives the wsidecar_jwt_* counters. Nil means a private set.
	// Counters are get-or-create, so a Verifier rebuilt on reload keeps
	// counting into the same series.
	Metrics *metrics.Set
	// UnknownKIDRefreshInterval is the least time between JWKS refreshes
	// caused by tokens with a kid the cache does not know. A token arriving
	// before the next refresh is allowed fails at once instead of waiting,
	// so forged kids cost neither latency nor load on the JWKS endpoint.
	// Zero means 30s.
	UnknownKIDRefreshInterval time.Duration
	// JWKSTimeout bounds each background JWKS fetch, including the first one
	// made by NewVerifier. Zero means 10s.
	JWKSTimeout time.Duration
}

// Verifier checks bearer tokens against the configured keys and claims.
// It is safe for concurrent use. On reload, build a new Verifier, swap it in
// (e.g. atomic.Pointer), then Close the old one: Verify calls still running
// on the old one finish with its cached keys.
type Verifier struct {
	sources   []string
	userClaim string
	required  []string
	// byKID holds keys pinned to a kid; noKID the others, tried for tokens
	// whose kid no pinned key claims (or that carry none).
	byKID map[string][]*verifyKey
	noKID []*verifyKey

	// life ends on Close and stops JWKS refresh goroutines.
	life context.Context
	stop context.CancelFunc

	log *slog.Logger

	okTotal      *metrics.Counter // tokens accepted
	invalidTotal *metrics.Counter // tokens refused as invalid
	expiredTotal *metrics.Counter // tokens refused as expired
	missingTotal *metrics.Counter // Verify called without a token
}

// NewVerifier builds a Verifier from a jwt block: reads PEM files, checks
// that every key's pinned algorithms fit it, and starts a JWKS cache per
// jwks_url key (one fetch now, then every JWKSRefresh).
//
// A JWKS endpoint that is down at start is logged, not fatal: a sidecar that
// refuses to start while the identity provider has an outage takes the
// application's sockets down with it. Tokens fail until a refresh succeeds.
//
// ctx bounds the Verifier's background work along with Close.
func NewVerifier(ctx context.Context, cfg config.JWT, opts VerifierOptions) (*Verifier, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.NewSet()
	}
	if opts.UnknownKIDRefreshInterval <= 0 {
		opts.UnknownKIDRefreshInterval = defaultUnknownKIDInterval
	}
	if opts.JWKSTimeout <= 0 {
		opts.JWKSTimeout = defaultJWKSTimeout
	}
	if opts.HTTPClient == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.DisableKeepAlives = true
		opts.HTTPClient = &http.Client{Transport: tr}
	}

	sources := slices.Clone(cfg.Sources)
	if len(sources) == 0 {
		sources = slices.Clone(DefaultSources)
	}
	if err := ValidateSources(sources); err != nil {
		return nil, fmt.Errorf("jwt: %w", err)
	}
	if len(cfg.Keys) == 0 {
		return nil, errors.New("jwt: no keys configured")
	}
	if cfg.Leeway < 0 {
		return nil, errors.New("jwt: leeway must not be negative")
	}
	userClaim := cfg.UserClaim
	if userClaim == "" {
		userClaim = defaultUserClaim
	}

	life, stop := context.WithCancel(ctx)
	set := opts.Metrics
	v := &Verifier{
		sources:      sources,
		userClaim:    userClaim,
		required:     slices.Clone(cfg.RequiredClaims),
		byKID:        make(map[string][]*verifyKey),
		life:         life,
		stop:         stop,
		log:          opts.Logger,
		okTotal:      set.GetOrCreateCounter(`wsidecar_jwt_verifications_total{result="ok"}`),
		invalidTotal: set.GetOrCreateCounter(`wsidecar_jwt_verifications_total{result="token_invalid"}`),
		expiredTotal: set.GetOrCreateCounter(`wsidecar_jwt_verifications_total{result="token_expired"}`),
		missingTotal: set.GetOrCreateCounter(`wsidecar_jwt_verifications_total{result="token_missing"}`),
	}

	base := []jwt.ParserOption{
		jwt.WithJSONNumber(),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithTimeFunc(opts.Now),
	}
	if cfg.Issuer != "" {
		base = append(base, jwt.WithIssuer(cfg.Issuer))
	}
	if len(cfg.Audience) > 0 {
		base = append(base, jwt.WithAudience(cfg.Audience...))
	}
	if cfg.RequireExp {
		base = append(base, jwt.WithExpirationRequired())
	}

	var errs []error
	for i, kc := range cfg.Keys {
		k, err := v.newKey(i, kc, base, opts)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if k.kid != "" {
			v.byKID[k.kid] = append(v.byKID[k.kid], k)
		} else {
			v.noKID = append(v.noKID, k)
		}
	}
	if len(errs) > 0 {
		v.Close()
		return nil, fmt.Errorf("jwt: %w", errors.Join(errs...))
	}
	return v, nil
}

// Sources is the token lookup order (the config's, or DefaultSources).
func (v *Verifier) Sources() []string { return v.sources }

// Extract finds the token in r in the Verifier's source order.
func (v *Verifier) Extract(r Request) (token, source string) { return ExtractToken(v.sources, r) }

// Close stops JWKS refreshes. It is idempotent and safe to call while Verify
// runs; Verify keeps working with the keys already cached.
func (v *Verifier) Close() { v.stop() }

// Verify checks a token: shape, algorithm pinned by the key, signature,
// then iss, aud, exp (with leeway), nbf and the required claims. Every
// failure is an *Error; its Reason is token_missing (empty token),
// token_expired (signature good, only the expiry is wrong) or token_invalid.
func (v *Verifier) Verify(ctx context.Context, token string) (*Identity, error) {
	id, err := v.verify(ctx, token)
	if err != nil {
		switch err.Reason {
		case ReasonMissing:
			v.missingTotal.Inc()
		case ReasonExpired:
			v.expiredTotal.Inc()
		default:
			v.invalidTotal.Inc()
		}
		return nil, err
	}
	v.okTotal.Inc()
	return id, nil
}

// jwsHeader is the part of the JOSE header that selects a key.
type jwsHeader struct {
	Alg  string          `json:"alg"`
	Kid  string          `json:"kid"`
	Crit json.RawMessage `json:"crit"`
}

func invalid(err error) *Error { return &Error{Reason: ReasonInvalid, Err: err} }

func (v *Verifier) verify(ctx context.Context, token string) (*Identity, *Error) {
	if token == "" {
		return nil, &Error{Reason: ReasonMissing}
	}
	if len(token) > maxTokenLen {
		return nil, invalid(errTooLong)
	}
	h, err := parseJWSHeader(token)
	if err != nil {
		return nil, invalid(err)
	}
	// supportedAlgs has no "none" and no HS1/RS1-style relics: an unsigned
	// or unknown-algorithm token never reaches a key.
	if !supportedAlgs[h.Alg] {
		return nil, invalid(errAlg)
	}
	// RFC 7515 §4.1.11: extensions listed in "crit" must be understood or
	// the JWS rejected. We understand none (e.g. "b64": false would change
	// what the signature covers).
	if h.Crit != nil {
		return nil, invalid(errCrit)
	}

	candidates := v.noKID
	if h.Kid != "" {
		if pinned, ok := v.byKID[h.Kid]; ok {
			candidates = pinned
		}
	}
	var firstErr error
	for _, k := range candidates {
		if !slices.Contains(k.algs, h.Alg) {
			continue
		}
		claims, err := k.parse(ctx, v.life, token)
		if err == nil {
			return v.identity(claims)
		}
		if errors.Is(err, jwt.ErrTokenInvalidClaims) {
			// The signature verified with this key; the claims are the
			// verdict, no other key can change it.
			return nil, v.claimsError(claims, err)
		}
		// Prefer the most telling failure: a signature that did not verify
		// over a kid that was not found in some other key set.
		if firstErr == nil || (errors.Is(firstErr, errUnknownKey) && !errors.Is(err, errUnknownKey)) {
			firstErr = err
		}
	}
	if firstErr == nil {
		return nil, invalid(errNoKey)
	}
	return nil, invalid(firstErr)
}

// parseJWSHeader decodes the protected header only, to pick keys before any
// signature work. Same decoding as the jwt parser (unpadded base64url,
// encoding/json), so both read the same alg and kid.
func parseJWSHeader(token string) (jwsHeader, error) {
	var h jwsHeader
	seg, rest, ok := strings.Cut(token, ".")
	if !ok || strings.Count(rest, ".") != 1 {
		return h, fmt.Errorf("%w: want three dot-separated segments", errMalformed)
	}
	raw, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return h, fmt.Errorf("%w: header is not base64url", errMalformed)
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return h, fmt.Errorf("%w: header is not a JSON object with string alg and kid", errMalformed)
	}
	return h, nil
}

func (v *Verifier) missingClaim(claims jwt.MapClaims) error {
	for _, name := range v.required {
		if val, ok := claims[name]; !ok || val == nil {
			return fmt.Errorf("%w: %q", errClaimMissing, name)
		}
	}
	return nil
}

// claimsError classifies a token whose signature verified but whose claims
// failed. It is "expired" only when expiry is the sole problem: a token that
// would stay wrong after a refresh (issuer, audience, missing claim) must not
// send the client off to refresh it.
func (v *Verifier) claimsError(claims jwt.MapClaims, err error) *Error {
	if merr := v.missingClaim(claims); merr != nil {
		return invalid(errors.Join(merr, err))
	}
	for _, other := range []error{
		jwt.ErrTokenInvalidIssuer, jwt.ErrTokenInvalidAudience, jwt.ErrTokenRequiredClaimMissing,
		jwt.ErrInvalidType, jwt.ErrTokenNotValidYet, jwt.ErrTokenUsedBeforeIssued,
	} {
		if errors.Is(err, other) {
			return invalid(err)
		}
	}
	if errors.Is(err, jwt.ErrTokenExpired) {
		return &Error{Reason: ReasonExpired, Err: err}
	}
	return invalid(err)
}

func (v *Verifier) identity(claims jwt.MapClaims) (*Identity, *Error) {
	if err := v.missingClaim(claims); err != nil {
		return nil, invalid(err)
	}
	id := &Identity{Claims: map[string]any(claims)}
	switch u := claims[v.userClaim].(type) {
	case nil:
	case string:
		id.User = u
	case json.Number:
		id.User = u.String()
	default:
		return nil, invalid(fmt.Errorf("%w: %q", errUserClaim, v.userClaim))
	}
	b, err := json.Marshal(id.Claims)
	if err != nil {
		// Unreachable for claims that came out of encoding/json, but the
		// backend must never get a partial claims header.
		return nil, invalid(fmt.Errorf("%w: re-encode claims: %w", errMalformed, err))
	}
	id.ClaimsJSON = b
	if exp, err := claims.GetExpirationTime(); err == nil && exp != nil {
		id.ExpiresAt = exp.Time
	}
	return id, nil
}
