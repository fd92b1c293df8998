package auth

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Token sources, as written in the jwt block's "sources" list.
const (
	// SourceHeader is "Authorization: Bearer <token>" (RFC 6750 §2.1).
	SourceHeader = "header"
	// SourceProtocol is the Sec-WebSocket-Protocol convention for browsers,
	// which cannot set headers on a WebSocket:
	// new WebSocket(url, ["bearer", token, "chat.v1"]).
	SourceProtocol = "protocol"
	// SourceCookiePrefix starts "cookie:NAME".
	SourceCookiePrefix = "cookie:"
	// SourceQueryPrefix starts "query:NAME" (RFC 6750 §2.3; ends up in access
	// logs, hence RedactQuery).
	SourceQueryPrefix = "query:"
)

// BearerProtocol is the Sec-WebSocket-Protocol entry that marks the next
// entry as the token. Compared case-insensitively.
const BearerProtocol = "bearer"

// DefaultSources is the lookup order when the config gives none.
var DefaultSources = []string{SourceHeader, SourceProtocol, SourceQueryPrefix + "access_token"}

// Request is the read-only view of a handshake request that token
// extraction needs. The proxy adapts its own request type (for fasthttp,
// copy nothing: the strings are only used during the call).
type Request interface {
	// Header returns the named header's value, "" when absent. For a header
	// sent on several lines (Sec-WebSocket-Protocol may be), join the values
	// with ", " as RFC 9110 §5.3 allows.
	Header(name string) string
	// Cookie returns the named cookie's value, "" when absent.
	Cookie(name string) string
	// Query returns the named query parameter's decoded value, "" when absent.
	Query(name string) string
}

// ValidateSources checks a sources list: each entry is "header", "protocol",
// "cookie:NAME" or "query:NAME" with a non-empty NAME. ExtractToken ignores
// entries it does not understand, so the config should call this.
func ValidateSources(sources []string) error {
	var errs []error
	for _, s := range sources {
		switch {
		case s == SourceHeader, s == SourceProtocol:
		case strings.HasPrefix(s, SourceCookiePrefix) && len(s) > len(SourceCookiePrefix):
		case strings.HasPrefix(s, SourceQueryPrefix) && len(s) > len(SourceQueryPrefix):
		default:
			errs = append(errs, fmt.Errorf(`token source %q: want "header", "protocol", "cookie:NAME" or "query:NAME"`, s))
		}
	}
	return errors.Join(errs...)
}

// QueryNames returns the query parameter names that sources read tokens
// from, for RedactQuery.
func QueryNames(sources []string) []string {
	var names []string
	for _, s := range sources {
		if name, ok := strings.CutPrefix(s, SourceQueryPrefix); ok && name != "" {
			names = append(names, name)
		}
	}
	return names
}

// ExtractToken looks for a token in sources order and returns the first
// non-empty one with the source it came from ("header", "cookie:sid", …).
// It returns "", "" when there is none. It does not allocate.
func ExtractToken(sources []string, r Request) (token, source string) {
	for _, s := range sources {
		var t string
		switch {
		case s == SourceHeader:
			t = bearerFromAuthorization(r.Header("Authorization"))
		case s == SourceProtocol:
			t = bearerFromProtocols(r.Header("Sec-WebSocket-Protocol"))
		case strings.HasPrefix(s, SourceCookiePrefix):
			if name := s[len(SourceCookiePrefix):]; name != "" {
				t = strings.TrimSpace(r.Cookie(name))
			}
		case strings.HasPrefix(s, SourceQueryPrefix):
			if name := s[len(SourceQueryPrefix):]; name != "" {
				t = strings.TrimSpace(r.Query(name))
			}
		}
		if t != "" {
			return t, s
		}
	}
	return "", ""
}

// bearerFromAuthorization returns the credentials of a Bearer authorization
// ("Bearer <token>", scheme case-insensitive per RFC 9110 §11.1), or "".
func bearerFromAuthorization(v string) string {
	v = strings.TrimLeft(v, " \t")
	const scheme = "bearer"
	if len(v) <= len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) {
		return ""
	}
	if c := v[len(scheme)]; c != ' ' && c != '\t' {
		return "" // "Bearerx…" is another scheme
	}
	return strings.Trim(v[len(scheme):], " \t")
}

// bearerFromProtocols returns the entry after the first "bearer" marker in a
// Sec-WebSocket-Protocol value, or "". Same splitting as OfferedProtocols.
func bearerFromProtocols(h string) string {
	marked := false
	for h != "" {
		var e string
		e, h, _ = strings.Cut(h, ",")
		e = strings.Trim(e, " \t")
		if e == "" {
			continue
		}
		if marked {
			return e
		}
		marked = strings.EqualFold(e, BearerProtocol)
	}
	return ""
}

// OfferedProtocols splits a Sec-WebSocket-Protocol header value into its
// entries, trimming whitespace and dropping empty elements (RFC 9110 §5.6.1).
func OfferedProtocols(header string) []string {
	var out []string
	for header != "" {
		var e string
		e, header, _ = strings.Cut(header, ",")
		if e = strings.Trim(e, " \t"); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// StripBearer removes every "bearer" marker and the entry after it, so the
// token can never be chosen and echoed back in Sec-WebSocket-Protocol (and so
// logs and backend headers built from the list never carry it). offered is
// not modified; it is returned as is when it has no marker.
func StripBearer(offered []string) []string {
	first := -1
	for i, p := range offered {
		if strings.EqualFold(p, BearerProtocol) {
			first = i
			break
		}
	}
	if first < 0 {
		return offered
	}
	out := make([]string, first, len(offered))
	copy(out, offered[:first])
	for i := first; i < len(offered); i++ {
		if strings.EqualFold(offered[i], BearerProtocol) {
			i++ // skip the token too
			continue
		}
		out = append(out, offered[i])
	}
	return out
}

// SelectSubprotocol picks the subprotocol to answer with: the client's first
// offered entry (bearer pair removed) that supported contains. When the
// client offered nothing but the bearer pair, it returns the client's marker
// ("bearer", as the client spelled it): browsers fail a handshake whose
// response names no protocol after they offered some (WHATWG Fetch,
// "establish a WebSocket connection"), and the marker is safe to echo — the
// token never is. "" means answer with no Sec-WebSocket-Protocol.
func SelectSubprotocol(offered, supported []string) string {
	stripped := StripBearer(offered)
	for _, p := range stripped {
		for _, s := range supported {
			if p == s {
				return p
			}
		}
	}
	if len(stripped) == 0 {
		for _, p := range offered {
			if strings.EqualFold(p, BearerProtocol) {
				return p
			}
		}
	}
	return ""
}

// Redacted replaces token values in logged query strings.
const Redacted = "REDACTED"

// RedactQuery returns rawQuery with the values of the named parameters
// replaced by "REDACTED", everything else unchanged, for log lines. Names
// match case-insensitively and after percent-decoding, and both '&' and ';'
// separate pairs: redacting too much in a log is harmless, too little leaks a
// credential. rawQuery is returned as is (no allocation) when nothing matches.
func RedactQuery(rawQuery string, names []string) string {
	if len(names) == 0 || rawQuery == "" {
		return rawQuery
	}
	var b strings.Builder
	last := 0 // rawQuery[:last] has been written to b (once b is in use)
	start := 0
	for start <= len(rawQuery) {
		end := strings.IndexAny(rawQuery[start:], "&;")
		if end < 0 {
			end = len(rawQuery)
		} else {
			end += start
		}
		pair := rawQuery[start:end]
		if eq := strings.IndexByte(pair, '='); eq >= 0 && eq+1 < len(pair) && pair[eq+1:] != Redacted && nameIn(pair[:eq], names) {
			if b.Len() == 0 {
				b.Grow(len(rawQuery))
			}
			b.WriteString(rawQuery[last : start+eq+1])
			b.WriteString(Redacted)
			last = end
		}
		start = end + 1
	}
	if last == 0 {
		return rawQuery
	}
	b.WriteString(rawQuery[last:])
	return b.String()
}

func nameIn(key string, names []string) bool {
	if strings.ContainsAny(key, "%+") {
		if k, err := url.QueryUnescape(key); err == nil {
			key = k
		}
	}
	for _, n := range names {
		if strings.EqualFold(key, n) {
			return true
		}
	}
	return false
}
