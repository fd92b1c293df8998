package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// This file holds the syntax checks for values that are not plain numbers
// or durations (addresses, URLs, origins, route paths, header names,
// CIDRs) and the checks that relate two settings to each other.

func (c *converter) address(a *hcl.Attribute, def string) string {
	s, ok := c.text(a)
	if !ok {
		return def
	}
	host, port, err := net.SplitHostPort(s)
	if err == nil {
		_, err = strconv.ParseUint(port, 10, 16)
	}
	if err == nil && host != "" {
		if _, perr := netip.ParseAddr(host); perr != nil && !isHostname(host) {
			err = perr
		}
	}
	if err != nil {
		c.errAt(a, "Invalid address", fmt.Sprintf("%s = %q is not host:port; write \"0.0.0.0:8080\", \"127.0.0.1:9090\" or \"[::]:8080\".", a.Name, s))
		return def
	}
	return s
}

// isLoopback reports whether a listen address is reachable only from this
// host.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// secret reads a secret (usually from env()). An empty value means "not
// set", so `env("NAME", "")` turns a secret off when NAME is unset.
// Too-short secrets are rejected; the value never appears in a message.
func (c *converter) secret(a *hcl.Attribute, minLen int) string {
	s, ok := c.text(a)
	if ok && s != "" && len(s) < minLen {
		c.errAt(a, "Secret too short", fmt.Sprintf("%s must be at least %d bytes; generate one with: openssl rand -hex 32.", a.Name, minLen))
	}
	return s
}

// httpURL checks an http(s) URL. A trailing slash is removed so callers
// can append paths. secure demands https except on loopback, for URLs whose
// answers we trust (a JWKS). URL values are not echoed: they may hold
// credentials.
func (c *converter) httpURL(a *hcl.Attribute, secure bool) string {
	s, ok := c.text(a)
	if !ok {
		return ""
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		err = errors.New("it does not parse as a URL")
	case u.Scheme != "http" && u.Scheme != "https":
		err = errors.New("it must start with http:// or https://")
	case u.Host == "" || u.Hostname() == "":
		err = errors.New("it has no host")
	case u.RawQuery != "" || u.ForceQuery:
		err = errors.New("it must not have a query string")
	case u.Fragment != "":
		err = errors.New("it must not have a #fragment")
	case secure && u.Scheme == "http" && !isLoopback(net.JoinHostPort(u.Hostname(), "0")):
		err = errors.New("it must use https:// (http:// is allowed only for localhost): keys fetched in clear text can be replaced")
	}
	if err != nil {
		example := "http://127.0.0.1:3000"
		if secure {
			example = "https://idp.example.com/.well-known/jwks.json"
		}
		c.errAt(a, "Invalid URL", fmt.Sprintf("%s is not a valid URL: %s. Example: %q.", a.Name, err, example))
		return ""
	}
	return strings.TrimSuffix(s, "/")
}

func (c *converter) redisURL(a *hcl.Attribute) string {
	s, ok := c.text(a)
	if !ok {
		return ""
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		err = errors.New("it does not parse as a URL")
	case u.Scheme == "unix":
		if u.Path == "" {
			err = errors.New("a unix:// URL needs a socket path")
		}
	case u.Scheme != "redis" && u.Scheme != "rediss":
		err = errors.New("it must start with redis://, rediss:// or unix://")
	case u.Host == "":
		err = errors.New("it has no host")
	}
	if err != nil {
		c.errAt(a, "Invalid URL", fmt.Sprintf("%s is not a valid Redis URL: %s. Example: \"redis://:password@redis:6379/0\".", a.Name, err))
		return ""
	}
	return s
}

// checkOrigin validates an allow-list entry and returns it lower-cased
// (origins compare case-insensitively). A wildcard is allowed only as the
// whole leftmost label and needs two labels after it, so "https://*.com"
// cannot allow half the web.
func checkOrigin(s string) (string, error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok || scheme == "" {
		return "", errors.New("it needs a scheme, like https://")
	}
	for i, r := range scheme {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && (r >= '0' && r <= '9' || r == '+' || r == '-' || r == '.')) {
			return "", errors.New("the scheme is not valid")
		}
	}
	if rest == "" {
		return "", errors.New("it has no host")
	}
	if strings.ContainsAny(rest, "/?#@ ") {
		return "", errors.New("an origin is scheme://host[:port] with no path, query or trailing slash")
	}
	host, port := rest, ""
	if h, p, err := net.SplitHostPort(rest); err == nil {
		host, port = h, p
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return "", errors.New("the port is not a number")
		}
	}
	wild := strings.HasPrefix(host, "*.")
	name := strings.TrimPrefix(host, "*.")
	if strings.Contains(name, "*") {
		return "", errors.New("a wildcard may only be the whole leftmost label, as in https://*.example.com")
	}
	if wild && strings.Count(name, ".") < 1 {
		return "", errors.New("a wildcard needs at least two labels after it, as in https://*.example.com")
	}
	if _, err := netip.ParseAddr(strings.Trim(name, "[]")); err != nil && !isHostname(name) {
		return "", errors.New("the host is not valid")
	}
	return strings.ToLower(s), nil
}

// isHostname accepts DNS names of letters, digits, '-' and '.'.
func isHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// parseRoutePath checks a route label and returns its {param} names.
// Segments are literal (RFC 3986 pchar without percent-encoding) or a whole
// {name}; the proxy matches them segment by segment.
func parseRoutePath(p string) ([]string, error) {
	if !strings.HasPrefix(p, "/") {
		return nil, errors.New(`a route path starts with "/", like "/ws" or "/rooms/{room}"`)
	}
	if p == "/" {
		return nil, nil
	}
	var params []string
	for _, seg := range strings.Split(p[1:], "/") {
		switch {
		case seg == "":
			return nil, errors.New("it has an empty segment (\"//\" or a trailing \"/\")")
		case strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}"):
			name := seg[1 : len(seg)-1]
			if !isIdent(name) {
				return nil, fmt.Errorf("parameter {%s} must be a name of letters, digits and '_', starting with a letter", name)
			}
			if contains(params, name) {
				return nil, fmt.Errorf("parameter {%s} appears twice", name)
			}
			params = append(params, name)
		case strings.ContainsAny(seg, "{}"):
			return nil, fmt.Errorf("segment %q: a {param} must be a whole segment, like /rooms/{room}", seg)
		default:
			for _, r := range seg {
				if !isPchar(r) {
					return nil, fmt.Errorf("segment %q: %q is not allowed in a path (letters, digits and -._~!$&'()*+,;=:@)", seg, r)
				}
			}
		}
	}
	return params, nil
}

// routeShape maps paths that match the same requests to one key: the
// parameter names do not matter for matching.
func routeShape(p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		if strings.HasPrefix(s, "{") {
			segs[i] = "{}"
		}
	}
	return strings.Join(segs, "/")
}

func isPchar(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
		strings.ContainsRune("-._~!$&'()*+,;=:@", r)
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '_' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// isName is for stream names and node ids: they end up in metric labels
// and Redis topics.
func isName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// isToken reports whether s is an RFC 7230 token (header names,
// subprotocols, cookie names).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", r)) {
			return false
		}
	}
	return true
}

// reservedHeaders are set by wsidecar itself or shape the HTTP exchange;
// forwarding a client's copy would let it spoof identity (X-WS-User,
// X-Forwarded-For) or break the request.
var reservedHeaders = []string{"host", "content-length", "content-type", "transfer-encoding", "connection", "upgrade", "x-forwarded-for", "x-real-ip"}

func (c *converter) forwardHeaders(a *hcl.Attribute) []string {
	list := c.strList(a, nil)
	for i, h := range list {
		lower := strings.ToLower(h)
		switch {
		case !isToken(h):
			c.errElem(a, i, "Invalid header name", fmt.Sprintf("%q is not a header name.", h))
		case strings.HasPrefix(lower, "x-ws-") || contains(reservedHeaders, lower):
			c.errElem(a, i, "Header cannot be forwarded", fmt.Sprintf("%s is set by wsidecar itself; forwarding the client's copy would let it spoof it.", h))
		}
	}
	return list
}

func (c *converter) subprotocols(a *hcl.Attribute) []string {
	list := c.strList(a, nil)
	for i, p := range list {
		if !isToken(p) {
			c.errElem(a, i, "Invalid subprotocol", fmt.Sprintf("%q is not a valid subprotocol name (RFC 6455 §4.1: a token).", p))
		} else if contains(list[:i], p) {
			c.errElem(a, i, "Invalid subprotocol", fmt.Sprintf("%q is listed twice.", p))
		}
	}
	return list
}

// backendPath checks a path appended to backend.url. A query string is
// allowed: legacy backends route on it ("/index.php?action=message").
func (c *converter) backendPath(a *hcl.Attribute) string {
	s, ok := c.text(a)
	if !ok {
		return ""
	}
	u, err := url.Parse(s)
	if !strings.HasPrefix(s, "/") || strings.HasPrefix(s, "//") || err != nil || u.Fragment != "" {
		c.errAt(a, "Invalid backend path", fmt.Sprintf("%s = %q must be a path on the backend starting with \"/\", like \"/ws/message\".", a.Name, s))
		return ""
	}
	return s
}

// cidrs parses trusted_proxies. A bare address means just that host.
func (c *converter) cidrs(a *hcl.Attribute) []netip.Prefix {
	var out []netip.Prefix
	for i, s := range c.strList(a, nil) {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			addr, aerr := netip.ParseAddr(s)
			if aerr != nil {
				c.errElem(a, i, "Invalid CIDR", fmt.Sprintf("%q is not a CIDR or IP address; write \"10.0.0.0/8\", \"192.168.1.7\" or \"fd00::/8\".", s))
				continue
			}
			p = netip.PrefixFrom(addr, addr.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out
}

// crossChecks relate settings that are each valid alone. The diagnostic
// points at whichever of the two the file sets.
func (c *converter) crossChecks(raw *rawFile, cfg *Config) {
	if lr, ar := attrOf(raw.Listener, func(r *rawListener) *hcl.Attribute { return r.Address }),
		attrOf(raw.Admin, func(r *rawAdmin) *hcl.Attribute { return r.Address }); lr != nil || ar != nil {
		if sameSocket(cfg.Listener.Address, cfg.Admin.Address) {
			c.errAt(firstAttr(ar, lr), "Address conflict", fmt.Sprintf("admin.address %s and listener.address %s would bind the same port.", cfg.Admin.Address, cfg.Listener.Address))
		}
	}

	lim := cfg.Limits
	msg := attrOf(raw.Limits, func(r *rawLimits) *hcl.Attribute { return r.MaxMessageSize })
	if lim.MaxInflatedSize < lim.MaxMessageSize {
		infl := attrOf(raw.Limits, func(r *rawLimits) *hcl.Attribute { return r.MaxInflatedSize })
		c.errAt(firstAttr(infl, msg), "Invalid size", fmt.Sprintf("max_inflated_size (%s) must be at least max_message_size (%s): a message only grows when inflated.", formatSize(lim.MaxInflatedSize), formatSize(lim.MaxMessageSize)))
	}
	if !lim.ByteRate.Unlimited() && int64(lim.ByteRate.Burst) < lim.MaxMessageSize {
		burst := attrOf(raw.Limits, func(r *rawLimits) *hcl.Attribute { return r.ByteBurst })
		c.errAt(firstAttr(burst, msg), "Invalid size", fmt.Sprintf("byte_burst (%s) must be at least max_message_size (%s), or a largest message could never pass the byte rate.", formatSize(int64(lim.ByteRate.Burst)), formatSize(lim.MaxMessageSize)))
	}

	if cfg.Drain.Window > cfg.Drain.Timeout {
		a := firstAttr(attrOf(raw.Drain, func(r *rawDrain) *hcl.Attribute { return r.Window }),
			attrOf(raw.Drain, func(r *rawDrain) *hcl.Attribute { return r.Timeout }))
		c.errAt(a, "Invalid duration", fmt.Sprintf("drain.window (%s) must not exceed drain.timeout (%s): closes spread over the window would be cut off.", cfg.Drain.Window, cfg.Drain.Timeout))
	}
}

// attrOf reads one attribute of an optional block.
func attrOf[T any](block *T, get func(*T) *hcl.Attribute) *hcl.Attribute {
	if block == nil {
		return nil
	}
	return get(block)
}

// firstAttr returns the first non-nil attribute. One of them is always
// set when a cross check fails, because the defaults pass every check.
func firstAttr(attrs ...*hcl.Attribute) *hcl.Attribute {
	for _, a := range attrs {
		if a != nil {
			return a
		}
	}
	return nil
}

// sameSocket reports whether two listen addresses would collide: the same
// port on the same or a wildcard host.
func sameSocket(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb || pa == "0" {
		return false
	}
	wild := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	return ha == hb || wild(ha) || wild(hb)
}
