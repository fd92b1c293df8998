package auth

import (
	"errors"
	"fmt"
	"strings"

	"github.com/wsidecar/wsidecar/config"
)

// maxOriginLen bounds an Origin header we bother to parse. A hostname is at
// most 253 bytes (RFC 1035); with a scheme and a port this leaves ample room.
// The canonical form is built in a stack buffer of this size.
const maxOriginLen = 384

// OriginPolicy is a compiled Origin allowlist. Browsers send Origin on every
// WebSocket handshake and do not apply CORS to it, so this check is what
// stops another site's page from opening sockets with the user's cookies
// (cross-site WebSocket hijacking).
//
// Matching is exact on scheme, host and port after normalisation: scheme and
// host are compared case-insensitively (ASCII only), and a default port
// (80 for http/ws, 443 for https/wss) equals no port. Anything that is not
// scheme://host[:port] — userinfo, paths, "null", non-ASCII — never matches.
// An OriginPolicy is immutable and safe for concurrent use.
type OriginPolicy struct {
	// exact holds canonical "scheme://host[:port]" strings (lower case,
	// default port dropped) for a map lookup without allocation.
	exact map[string]struct{}
	// wildcards holds "scheme://*.suffix[:port]" patterns.
	wildcards    []wildcardOrigin
	allowMissing bool
}

// wildcardOrigin matches one or more labels in front of suffix.
type wildcardOrigin struct {
	scheme string // lower case
	suffix string // lower case, with its leading dot: ".example.com"
	port   string // canonical: "" when the scheme's default
}

// NewOriginPolicy compiles an allowlist. Every malformed pattern is reported
// (joined), so a config with several mistakes shows them all at once.
func NewOriginPolicy(o config.Origins) (*OriginPolicy, error) {
	p := &OriginPolicy{
		exact:        make(map[string]struct{}, len(o.Allow)),
		allowMissing: o.AllowMissing,
	}
	var errs []error
	for _, raw := range o.Allow {
		if err := p.add(raw); err != nil {
			errs = append(errs, fmt.Errorf("origin %q: %w", raw, err))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

func (p *OriginPolicy) add(raw string) error {
	s := strings.TrimSpace(raw)
	switch {
	case s == "":
		return errors.New("empty origin")
	case s == "*":
		return errors.New(`"*" is not supported: list the origins (wildcards like "https://*.example.com" are allowed)`)
	case strings.EqualFold(s, "null"):
		return errors.New(`"null" is the origin of sandboxed and file: pages and cannot be trusted`)
	}
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return errors.New("non-ASCII host: write it in punycode (xn--…), as browsers send it")
		}
	}
	s = strings.ToLower(s)
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok || !validScheme(scheme) {
		return errors.New(`want scheme://host[:port], e.g. "https://app.example.com"`)
	}
	if strings.ContainsAny(rest, "/?#") {
		return errors.New("an origin has no path, query or fragment (remove any trailing slash)")
	}
	if strings.Contains(rest, "@") {
		return errors.New("an origin has no userinfo")
	}
	wild := strings.HasPrefix(rest, "*.")
	if wild {
		rest = rest[2:]
	}
	if strings.Contains(rest, "*") {
		return errors.New(`a wildcard may only be the first label: "https://*.example.com"`)
	}
	host, port, ok := splitHostPort(rest)
	if !ok {
		return errors.New("malformed host or port")
	}
	port = canonicalPort(scheme, port)
	if !wild {
		p.exact[joinOrigin(scheme, host, port)] = struct{}{}
		return nil
	}
	if host[0] == '[' {
		return errors.New("a wildcard cannot prefix an IP address")
	}
	last := host[strings.LastIndexByte(host, '.')+1:]
	if allDigits(last) {
		return errors.New("a wildcard cannot prefix an IP address")
	}
	if !strings.Contains(host, ".") && host != "localhost" {
		return fmt.Errorf("wildcard %q would match every host under a top-level domain", "*."+host)
	}
	p.wildcards = append(p.wildcards, wildcardOrigin{scheme: scheme, suffix: "." + host, port: port})
	return nil
}

func joinOrigin(scheme, host, port string) string {
	if port == "" {
		return scheme + "://" + host
	}
	return scheme + "://" + host + ":" + port
}

// Allowed reports whether a handshake with this Origin header may proceed.
// present says whether the header was sent at all: only an absent header
// (non-browser clients) is governed by AllowMissing; an empty or "null"
// value is a browser telling us the origin is opaque and is refused.
//
// It does not allocate.
func (p *OriginPolicy) Allowed(origin string, present bool) bool {
	if !present {
		return p.allowMissing
	}
	if len(origin) == 0 || len(origin) > maxOriginLen {
		return false
	}
	scheme, rest, ok := strings.Cut(origin, "://")
	if !ok || !validScheme(scheme) {
		return false
	}
	host, port, ok := splitHostPort(rest)
	if !ok {
		return false
	}
	// Build the canonical form in a stack buffer: lower case, default port
	// dropped. Go does not allocate for m[string(b)] lookups or string(b)
	// comparisons, so this stays allocation-free.
	var buf [maxOriginLen]byte
	n := lowerInto(buf[:], 0, scheme)
	schemeEnd := n
	n += copy(buf[n:], "://")
	hostStart := n
	n = lowerInto(buf[:], n, host)
	hostEnd := n
	lscheme := buf[:schemeEnd]
	if port != "" && port != defaultPortOf(lscheme) {
		buf[n] = ':'
		n++
		n += copy(buf[n:], port)
	}
	if _, ok := p.exact[string(buf[:n])]; ok {
		return true
	}
	if len(p.wildcards) == 0 || buf[hostStart] == '[' {
		return false
	}
	lhost := buf[hostStart:hostEnd]
	var cport []byte
	if hostEnd < n {
		cport = buf[hostEnd+1 : n]
	}
	for i := range p.wildcards {
		w := &p.wildcards[i]
		// len(host) > len(suffix) and the suffix starts with '.', so at
		// least one label precedes it; splitHostPort has already refused
		// empty labels, so "x..example.com" cannot sneak in.
		if len(lhost) > len(w.suffix) &&
			string(lhost[len(lhost)-len(w.suffix):]) == w.suffix &&
			string(lscheme) == w.scheme &&
			string(cport) == w.port {
			return true
		}
	}
	return false
}

// lowerInto copies s into b at n, ASCII-lower-cased, and returns the new end.
// Callers have validated s as ASCII, so no Unicode folding (e.g. the Kelvin
// sign folding to "k") can make a look-alike match.
func lowerInto(b []byte, n int, s string) int {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[n] = c
		n++
	}
	return n
}

// validScheme reports whether s is an RFC 3986 scheme: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
func validScheme(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isLetter(c) || (i > 0 && (('0' <= c && c <= '9') || c == '+' || c == '-' || c == '.')) {
			continue
		}
		return false
	}
	return true
}

func isLetter(c byte) bool { return ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') }

// splitHostPort splits "host[:port]" or "[v6]:port" and validates both
// strictly: hostname labels of [A-Za-z0-9_-] (1–63 bytes, no empty label, so
// no leading, trailing or doubled dots), bracketed IPv6 of hex digits, ':'
// and '.', and a decimal port 1–65535. Anything else — '@', '/', spaces,
// percent-encoding, non-ASCII — fails.
func splitHostPort(s string) (host, port string, ok bool) {
	if s == "" {
		return "", "", false
	}
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 2 {
			return "", "", false
		}
		for i := 1; i < end; i++ {
			c := s[i]
			if !(isHex(c) || c == ':' || c == '.') {
				return "", "", false
			}
		}
		host, s = s[:end+1], s[end+1:]
		if s == "" {
			return host, "", true
		}
		if s[0] != ':' {
			return "", "", false
		}
		port = s[1:]
		return host, port, validPort(port)
	}
	host = s
	if i := strings.IndexByte(s, ':'); i >= 0 {
		host, port = s[:i], s[i+1:]
		if !validPort(port) {
			return "", "", false
		}
	}
	return host, port, validHostname(host)
}

func validHostname(h string) bool {
	if len(h) == 0 || len(h) > 253 {
		return false
	}
	label := 0
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
			continue
		case isLetter(c), '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return false
		}
		label++
		if label > 63 {
			return false
		}
	}
	return label > 0
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

func validPort(p string) bool {
	if len(p) == 0 || len(p) > 5 {
		return false
	}
	v := 0
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return false
		}
		v = v*10 + int(p[i]-'0')
	}
	return v >= 1 && v <= 65535
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// defaultPort is the port a scheme implies (RFC 6454 §4 normalises it away).
func defaultPort(scheme string) string {
	switch scheme {
	case "http", "ws":
		return "80"
	case "https", "wss":
		return "443"
	}
	return ""
}

// defaultPortOf is defaultPort for a lower-cased scheme in a buffer; the
// string(b) comparisons do not allocate.
func defaultPortOf(b []byte) string {
	switch {
	case string(b) == "http", string(b) == "ws":
		return "80"
	case string(b) == "https", string(b) == "wss":
		return "443"
	}
	return ""
}

// canonicalPort drops the scheme's default port and leading zeros, for
// patterns only (an Origin header with "0443" is not what a browser sends,
// and is compared verbatim).
func canonicalPort(scheme, port string) string {
	port = strings.TrimLeft(port, "0")
	if port == defaultPort(scheme) {
		return ""
	}
	return port
}
