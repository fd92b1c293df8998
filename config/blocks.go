package config

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

// This file converts each block of sidecar.hcl. The defaults written here
// are the ones documented in reference.go; reference_test.go checks that
// the two agree.

const (
	kib = 1 << 10
	mib = 1 << 20
	gib = 1 << 30
)

func (c *converter) config(raw *rawFile, body hcl.Body) *Config {
	cfg := &Config{Path: c.filename}
	cfg.Listener = c.listener(raw.Listener)
	cfg.Admin = c.admin(raw.Admin)
	if raw.Backend == nil {
		c.errRange(body.MissingItemRange(), "Missing backend block",
			`sidecar.hcl needs a backend block saying where the service is: backend { url = "http://127.0.0.1:3000" }.`)
	} else {
		cfg.Backend = c.backend(raw.Backend)
	}
	if raw.Origins != nil {
		cfg.Origins = c.origins(raw.Origins)
	}
	cfg.JWT = c.jwt(raw.JWT)
	cfg.Limits = c.limits(raw.Limits)
	cfg.Heartbeat = c.heartbeat(raw.Heartbeat)
	cfg.Drain = c.drain(raw.Drain)
	cfg.Log = c.log(raw.Log)
	cfg.Routes = c.routes(raw.Routes, cfg.JWT != nil, body)
	cfg.Streams = c.streams(raw.Streams)
	cfg.Cluster = c.cluster(raw.Cluster)
	c.crossChecks(raw, cfg)
	return cfg
}

func (c *converter) listener(r *rawListener) Listener {
	if r == nil {
		r = &rawListener{}
	}
	l := Listener{
		Address:          c.address(r.Address, "0.0.0.0:8080"),
		HandshakeTimeout: c.duration(r.HandshakeTimeout, 10*time.Second, positive),
		MaxHeaderBytes:   c.size(r.MaxHeaderSize, 8*kib, 1*kib, 1*mib),
		ReadBufferSize:   c.size(r.ReadBufferSize, 1*kib, 64, 1*mib),
		WriteBufferSize:  c.size(r.WriteBufferSize, 1*kib, 64, 1*mib),
		Compression:      c.boolean(r.Compression, false),
	}
	if t := r.TLS; t != nil {
		okCert := c.required(t.CertFile, t.DefRange, "The tls block", `cert_file = "/etc/wsidecar/tls.crt" (the certificate chain, PEM)`)
		okKey := c.required(t.KeyFile, t.DefRange, "The tls block", `key_file = "/etc/wsidecar/tls.key" (the private key, PEM)`)
		l.TLS = &TLS{}
		if okCert {
			l.TLS.CertFile = c.file(t.CertFile)
		}
		if okKey {
			l.TLS.KeyFile = c.file(t.KeyFile)
		}
	}
	return l
}

func (c *converter) admin(r *rawAdmin) Admin {
	if r == nil {
		r = &rawAdmin{}
	}
	a := Admin{
		Address: c.address(r.Address, "127.0.0.1:9090"),
		Token:   c.secret(r.Token, 16),
	}
	if r.Address != nil && a.Token == "" && !isLoopback(a.Address) {
		c.errAt(r.Address, "Admin API exposed without a token",
			fmt.Sprintf("admin.address %s is reachable from other hosts, and the push API can message every client. Set admin.token (e.g. token = env(\"WSIDECAR_ADMIN_TOKEN\")) or listen on 127.0.0.1.", a.Address))
	}
	return a
}

func (c *converter) backend(r *rawBackend) Backend {
	b := Backend{
		Timeout:            c.duration(r.Timeout, 10*time.Second, positive),
		MaxConns:           c.integer(r.MaxConns, 512, 1, 100000),
		SigningSecret:      c.secret(r.SigningSecret, 32),
		ForwardHeaders:     c.forwardHeaders(r.ForwardHeaders),
		DisconnectQueue:    c.integer(r.DisconnectQueue, 10000, 1, 10000000),
		DisconnectRetryMax: c.duration(r.DisconnectRetryMax, 30*time.Second, positive),
	}
	if c.required(r.URL, r.DefRange, "The backend block", `url = "http://127.0.0.1:3000" (where the service listens)`) {
		b.URL = c.httpURL(r.URL, false)
	}
	br := r.Breaker
	if br == nil {
		br = &rawBreaker{}
	}
	b.Breaker = Breaker{
		Enabled:          c.boolean(br.Enabled, true),
		Failures:         c.integer(br.Failures, 5, 1, 10000),
		OpenTimeout:      c.duration(br.OpenTimeout, 10*time.Second, positive),
		HalfOpenRequests: c.integer(br.HalfOpenRequests, 1, 1, 10000),
		Interval:         c.duration(br.Interval, 60*time.Second, 0),
	}
	return b
}

func (c *converter) origins(r *rawOrigins) Origins {
	o := Origins{AllowMissing: c.boolean(r.AllowMissing, false)}
	for i, s := range c.strList(r.Allow, nil) {
		norm, err := checkOrigin(s)
		if err != nil {
			c.errElem(r.Allow, i, "Invalid origin", fmt.Sprintf("%q is not an origin: %s. Write \"https://app.example.com\" or \"https://*.example.com\".", s, err))
			continue
		}
		o.Allow = append(o.Allow, norm)
	}
	return o
}

// hmacAlgs gives each HMAC algorithm's minimum key size in bytes: RFC 7518
// §3.2 requires a key at least as long as the hash output.
var hmacAlgs = map[string]int{"HS256": 32, "HS384": 48, "HS512": 64}

// asymAlgs are the public-key algorithms, grouped by key type: one PEM
// holds one key, so algorithms from different groups cannot share it.
var asymAlgs = map[string]string{
	"RS256": "rsa", "RS384": "rsa", "RS512": "rsa",
	"PS256": "rsa", "PS384": "rsa", "PS512": "rsa",
	"ES256": "p256", "ES384": "p384", "ES512": "p521",
	"EdDSA": "ed25519",
}

const algList = "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512 or EdDSA"

func (c *converter) jwt(r *rawJWT) *JWT {
	if r == nil {
		return nil
	}
	j := &JWT{
		Sources:        c.jwtSources(r.Sources),
		Issuer:         c.str(r.Issuer, ""),
		Audience:       c.strList(r.Audience, nil),
		Leeway:         c.duration(r.Leeway, 0, 0),
		RequireExp:     c.boolean(r.RequireExp, true),
		RequiredClaims: c.strList(r.RequiredClaims, nil),
		UserClaim:      c.str(r.UserClaim, "sub"),
	}
	if r.Leeway != nil && j.Leeway > 5*time.Minute {
		c.errAt(r.Leeway, "Invalid duration", "leeway must be at most 5m: more would make expired tokens valid for long.")
	}
	if r.UserClaim != nil && j.UserClaim == "" {
		c.errAt(r.UserClaim, "Invalid value", "user_claim must name a claim, like \"sub\".")
	}
	if len(r.Keys) == 0 {
		c.errRange(r.DefRange, "Missing key block",
			`The jwt block needs at least one key, like: key "main" { algorithms = ["HS256"] secret = env("JWT_SECRET") }.`)
	}
	seen := map[string]hcl.Range{}
	for _, k := range r.Keys {
		if prev, dup := seen[k.Name]; dup {
			c.errRange(k.NameRange, "Duplicate key", fmt.Sprintf("key %q is already defined at %s.", k.Name, pos(prev)))
			continue
		}
		seen[k.Name] = k.NameRange
		j.Keys = append(j.Keys, c.jwtKey(k))
	}
	return j
}

func (c *converter) jwtSources(a *hcl.Attribute) []string {
	def := []string{"header", "protocol", "query:access_token"}
	list := c.strList(a, def)
	if a == nil {
		return list
	}
	if len(list) == 0 {
		c.errAt(a, "Invalid value", "sources must name at least one place to look for the token.")
		return def
	}
	for i, s := range list {
		kind, name, hasName := strings.Cut(s, ":")
		ok := false
		switch kind {
		case "header", "protocol":
			ok = !hasName
		case "cookie", "query":
			ok = hasName && isToken(name)
		}
		if !ok {
			c.errElem(a, i, "Invalid value", fmt.Sprintf("source %q is not allowed; use \"header\", \"protocol\", \"cookie:NAME\" or \"query:NAME\".", s))
		}
	}
	return list
}

func (c *converter) jwtKey(r *rawJWTKey) JWTKey {
	k := JWTKey{Name: r.Name, KeyID: c.str(r.KID, "")}
	where := fmt.Sprintf("key %q", r.Name)
	if c.required(r.Algorithms, r.DefRange, "The "+where+" block", `algorithms = ["RS256"] (the algorithms this key may verify)`) {
		k.Algorithms = c.strList(r.Algorithms, nil)
		if len(k.Algorithms) == 0 {
			c.errAt(r.Algorithms, "Invalid value", "algorithms must list at least one of "+algList+".")
		}
		for i, alg := range k.Algorithms {
			if _, hs := hmacAlgs[alg]; !hs && asymAlgs[alg] == "" {
				c.errElem(r.Algorithms, i, "Invalid value", fmt.Sprintf("algorithm %q is not allowed; use %s (\"none\" never is).", alg, algList))
			}
		}
	}

	var given []string
	for _, a := range []*hcl.Attribute{r.Secret, r.PEMFile, r.JWKSURL} {
		if a != nil {
			given = append(given, a.Name)
		}
	}
	if len(given) != 1 {
		detail := fmt.Sprintf("%s needs exactly one of secret, pem_file or jwks_url", where)
		if len(given) > 1 {
			detail += fmt.Sprintf("; it has %s", strings.Join(given, " and "))
		}
		c.errRange(r.DefRange, "Invalid key", detail+".")
	}

	hasHS, families := false, map[string]bool{}
	for _, alg := range k.Algorithms {
		if _, hs := hmacAlgs[alg]; hs {
			hasHS = true
		} else if f := asymAlgs[alg]; f != "" {
			families[f] = true
		}
	}
	switch {
	case r.Secret != nil:
		secret, ok := c.text(r.Secret)
		k.Secret = secret
		if len(families) > 0 {
			c.errAt(r.Algorithms, "Invalid value", "a secret verifies only HS256, HS384 or HS512; use pem_file or jwks_url for public-key algorithms.")
		}
		need := 0
		for _, alg := range k.Algorithms {
			need = max(need, hmacAlgs[alg])
		}
		if ok && len(k.Secret) < need {
			c.errAt(r.Secret, "Secret too short", fmt.Sprintf("the secret must be at least %d bytes for %s (RFC 7518 §3.2: as long as the hash output).", need, strings.Join(k.Algorithms, ", ")))
		}
	case r.PEMFile != nil:
		k.PEMFile = c.file(r.PEMFile)
		if hasHS {
			c.errAt(r.Algorithms, "Invalid value", "HS* algorithms need a secret, not a public key: a PEM public key used as an HMAC secret is the classic algorithm-confusion attack.")
		} else if len(families) > 1 {
			c.errAt(r.Algorithms, "Invalid value", "one pem_file holds one key: RS* and PS* can share an RSA key, but each of ES256, ES384, ES512 and EdDSA needs its own key block.")
		}
	case r.JWKSURL != nil:
		k.JWKSURL = c.httpURL(r.JWKSURL, true)
		if hasHS {
			c.errAt(r.Algorithms, "Invalid value", "HS* algorithms need a secret; a JWKS serves public keys.")
		}
	}

	k.JWKSRefresh = c.duration(r.JWKSRefresh, time.Hour, time.Second)
	k.JWKSUnknownKIDWait = c.duration(r.JWKSUnknownKIDWait, time.Second, 0)
	if r.JWKSURL == nil {
		for _, a := range []*hcl.Attribute{r.JWKSRefresh, r.JWKSUnknownKIDWait} {
			if a != nil {
				c.errAt(a, "Invalid argument", fmt.Sprintf("%s applies only to keys with a jwks_url.", a.Name))
			}
		}
	}
	return k
}

func (c *converter) limits(r *rawLimits) Limits {
	if r == nil {
		r = &rawLimits{}
	}
	l := Limits{
		MaxConnections:     c.integer(r.MaxConnections, 100000, 1, 10000000),
		PerIPConnections:   c.integer(r.PerIPConnections, 100, 0, 10000000),
		PerUserConnections: c.integer(r.PerUserConnections, 0, 0, 10000000),
		HandshakeRate:      c.rate(r.HandshakeRate, Rate{N: 20, Per: time.Second}, false),
		MessageRate:        c.rate(r.MessageRate, Rate{N: 100, Per: time.Second}, false),
		ByteRate:           c.rate(r.ByteRate, Rate{N: mib, Per: time.Second}, true),
		RatePolicy:         c.enum(r.RatePolicy, "reply", "reply", "drop", "close"),
		MaxMessageSize:     c.size(r.MaxMessageSize, 64*kib, 1, 256*mib),
		MaxInflatedSize:    c.size(r.MaxInflatedSize, 1*mib, 1, 1*gib),
		TrustedProxies:     c.cidrs(r.TrustedProxies),
		IdleEvict:          c.duration(r.IdleEvict, 5*time.Minute, time.Second),
		SendQueue:          c.integer(r.SendQueue, 256, 1, 65536),
		SlowConsumer:       c.enum(r.SlowConsumer, "close", "drop", "close"),
	}
	l.HandshakeRate.Burst = c.integer(r.HandshakeBurst, 40, 1, 1000000)
	l.MessageRate.Burst = c.integer(r.MessageBurst, 100, 1, 1000000)
	l.ByteRate.Burst = int(c.size(r.ByteBurst, 1*mib, 1, math.MaxInt32))
	return l
}

func (c *converter) heartbeat(r *rawHeartbeat) Heartbeat {
	if r == nil {
		r = &rawHeartbeat{}
	}
	return Heartbeat{
		Interval: c.duration(r.Interval, 25*time.Second, time.Second),
		Timeout:  c.duration(r.Timeout, 10*time.Second, time.Second),
	}
}

func (c *converter) drain(r *rawDrain) Drain {
	if r == nil {
		r = &rawDrain{}
	}
	return Drain{
		Window:  c.duration(r.Window, 5*time.Second, 0),
		Timeout: c.duration(r.Timeout, 25*time.Second, positive),
	}
}

func (c *converter) log(r *rawLog) Log {
	if r == nil {
		r = &rawLog{}
	}
	return Log{
		Level:  c.enum(r.Level, "info", "debug", "info", "warn", "error"),
		Format: c.enum(r.Format, "text", "text", "json"),
	}
}

func (c *converter) routes(raws []*rawRoute, haveJWT bool, body hcl.Body) []Route {
	if len(raws) == 0 {
		c.errRange(body.MissingItemRange(), "Missing route block",
			`sidecar.hcl needs at least one route, like: route "/ws" { on_message = "/ws/message" }.`)
		return nil
	}
	var routes []Route
	seen := map[string]*rawRoute{}
	for _, r := range raws {
		params, err := parseRoutePath(r.Path)
		if err != nil {
			c.errRange(r.PathRange, "Invalid route path", fmt.Sprintf("route %q: %s.", r.Path, err))
		} else if prev := seen[routeShape(r.Path)]; prev != nil {
			c.errRange(r.PathRange, "Duplicate route",
				fmt.Sprintf("route %q matches the same paths as route %q at %s; each path may have one route.", r.Path, prev.Path, pos(prev.PathRange)))
		} else {
			seen[routeShape(r.Path)] = r
		}
		routes = append(routes, c.route(r, params, haveJWT))
	}
	return routes
}

func (c *converter) route(r *rawRoute, params []string, haveJWT bool) Route {
	rt := Route{
		Path:         r.Path,
		Params:       params,
		Auth:         c.enum(r.Auth, "jwt", "jwt", "none"),
		Subprotocols: c.subprotocols(r.Subprotocols),
		OnConnect:    c.backendPath(r.OnConnect),
		OnMessage:    c.backendPath(r.OnMessage),
		OnDisconnect: c.backendPath(r.OnDisconnect),
		OnError:      c.enum(r.OnError, "reply", "reply", "drop", "close"),
		MaxInFlight:  c.integer(r.MaxInFlight, 1, 1, 1024),
	}
	if rt.Auth == "jwt" && !haveJWT {
		rng := r.PathRange
		if r.Auth != nil {
			rng = r.Auth.Expr.Range()
		}
		c.errRange(rng, "Missing jwt block",
			fmt.Sprintf("route %s needs a jwt block or auth = \"none\": routes verify a JWT unless told otherwise.", r.Path))
	}
	if r.Origins != nil {
		o := c.origins(r.Origins)
		rt.Origins = &o
	}
	if r.Channels != nil {
		rt.Channels = c.template(r.Channels, templateSpec{
			attr:   "channels",
			where:  fmt.Sprintf("route %q", r.Path),
			vars:   []string{"claims", "path", "query", "header"},
			params: params,
			noAuth: rt.Auth == "none",
			want:   cty.List(cty.String),
			wantIs: `a list of strings, like ["room:${path.room}"]`,
		})
	}
	return rt
}

func (c *converter) streams(raws []*rawStream) []Stream {
	var streams []Stream
	seen := map[string]hcl.Range{}
	for _, r := range raws {
		if !isName(r.Name) {
			c.errRange(r.NameRange, "Invalid stream name", fmt.Sprintf("stream %q: names use letters, digits, '-', '_' and '.'.", r.Name))
		} else if prev, dup := seen[r.Name]; dup {
			c.errRange(r.NameRange, "Duplicate stream", fmt.Sprintf("stream %q is already defined at %s.", r.Name, pos(prev)))
		} else {
			seen[r.Name] = r.NameRange
		}
		s := Stream{
			Name:         r.Name,
			Channel:      c.str(r.Channel, ""),
			Prefix:       c.str(r.Prefix, ""),
			Scope:        c.enum(r.Scope, "cluster", "cluster", "local"),
			ReconnectMin: c.duration(r.ReconnectMin, 500*time.Millisecond, positive),
			ReconnectMax: c.duration(r.ReconnectMax, 30*time.Second, positive),
		}
		if r.ReconnectMax != nil && s.ReconnectMax < s.ReconnectMin {
			c.errAt(r.ReconnectMax, "Invalid duration", fmt.Sprintf("reconnect_max (%s) must not be below reconnect_min (%s).", s.ReconnectMax, s.ReconnectMin))
		}
		if c.required(r.Path, r.NameRange, fmt.Sprintf("stream %q", r.Name), `path = "/events" (the backend's SSE endpoint)`) {
			if len(r.Path.Expr.Variables()) > 0 {
				s.PathTemplate = c.template(r.Path, templateSpec{
					attr:   "path",
					where:  fmt.Sprintf("stream %q", r.Name),
					vars:   []string{"claims", "query", "header"},
					want:   cty.String,
					wantIs: `a string, like "/users/${claims.sub}/events"`,
				})
				s.Path = s.PathTemplate.Source()
				c.perConnStream(r)
			} else {
				s.Path = c.backendPath(r.Path)
			}
		}
		streams = append(streams, s)
	}
	return streams
}

// perConnStream refuses on a per-connection stream what only a shared
// stream can use: its events go straight to its own socket, so a channel,
// prefix or scope would be silently ignored. Its path must start with "/"
// like a fixed one; the values interpolated into it are percent-encoded at
// run time, so that "/" must be literal.
func (c *converter) perConnStream(r *rawStream) {
	for _, a := range []*hcl.Attribute{r.Channel, r.Prefix, r.Scope} {
		if a != nil {
			c.errAt(a, "Not for a per-connection stream", fmt.Sprintf(
				"%s does not apply to stream %q: its path uses the connection's identity, so each socket gets its own stream and its events go only to that socket, never to a channel. Remove %s, or use a fixed path.",
				a.Name, r.Name, a.Name))
		}
	}
	// Other expressions (a function call, a conditional) are left to the
	// run-time check, which gives such a socket no stream.
	var start string
	switch e := r.Path.Expr.(type) {
	case *hclsyntax.TemplateWrapExpr: // "${claims.path}": no literal start
	case *hclsyntax.TemplateExpr:
		if len(e.Parts) > 0 {
			if lit, ok := e.Parts[0].(*hclsyntax.LiteralValueExpr); ok && lit.Val.Type() == cty.String && lit.Val.IsKnown() && !lit.Val.IsNull() {
				start = lit.Val.AsString()
			}
		}
	default:
		return
	}
	if !strings.HasPrefix(start, "/") || strings.HasPrefix(start, "//") {
		c.errAt(r.Path, "Invalid backend path", fmt.Sprintf(
			"path of stream %q must start with a literal \"/\", like \"/users/${claims.sub}/events\": interpolated values are percent-encoded, so they cannot supply the leading \"/\".", r.Name))
	}
}

func (c *converter) cluster(r *rawCluster) *Cluster {
	if r == nil {
		return nil
	}
	cl := &Cluster{NodeID: c.str(r.NodeID, "")}
	// An empty node_id (e.g. env("POD_NAME", "") outside Kubernetes) means
	// the default, like an absent one.
	if r.NodeID != nil && cl.NodeID != "" && !isName(cl.NodeID) {
		c.errAt(r.NodeID, "Invalid value", "node_id uses letters, digits, '-', '_' and '.' (at most 64).")
	}
	if cl.NodeID == "" {
		cl.NodeID = c.nodeID()
	}
	if r.Redis == nil {
		c.errRange(r.DefRange, "Missing redis block", `The cluster block needs redis { url = env("REDIS_URL") }.`)
		return cl
	}
	if c.required(r.Redis.URL, r.Redis.DefRange, "The redis block", `url = env("REDIS_URL") (redis://, rediss:// or unix://)`) {
		cl.Redis.URL = c.redisURL(r.Redis.URL)
	}
	cl.Redis.Prefix = c.str(r.Redis.Prefix, "wsidecar")
	if cl.Redis.Prefix == "" {
		c.errAt(r.Redis.Prefix, "Invalid value", "prefix must not be empty: it keeps wsidecar's topics apart from other Redis users.")
	}
	return cl
}
