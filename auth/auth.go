// Package auth guards the door: it decides whether a browser Origin may open a
// socket, finds the bearer token in a handshake, and verifies it as a JWT
// (HMAC secrets, PEM public keys, JWKS endpoints) into an Identity.
//
// It knows nothing of HCL or connections: it takes the plain config structs
// and a tiny Request interface, so the proxy adapts its own request type.
package auth

import (
	"errors"
	"time"
)

// Reason is the typed cause of a rejected token. Each maps to one HTTP answer
// (401 with a WWW-Authenticate challenge) and is used as a metrics label.
type Reason string

// Reasons a token is refused.
const (
	ReasonMissing Reason = "token_missing"
	ReasonInvalid Reason = "token_invalid"
	ReasonExpired Reason = "token_expired"
)

// Error is a refused token. Err says why, for logs: it never contains the
// token itself. Use Description or WWWAuthenticate for what the client sees.
type Error struct {
	Reason Reason
	Err    error
}

// Error implements error.
func (e *Error) Error() string {
	if e.Err == nil {
		return "auth: " + string(e.Reason)
	}
	return "auth: " + string(e.Reason) + ": " + e.Err.Error()
}

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

// Description is a short, fixed, client-safe sentence for the cause. It is
// chosen from a closed set (never built from the token, its kid or a library
// message), so it is safe to send and needs no escaping.
func (e *Error) Description() string {
	if e.Reason == ReasonMissing {
		return "no token was presented"
	}
	for _, d := range descriptions {
		if e.Err != nil && errors.Is(e.Err, d.err) {
			return d.text
		}
	}
	if e.Reason == ReasonExpired {
		return "the token has expired"
	}
	return "the token is invalid"
}

// WWWAuthenticate is the RFC 6750 §3 challenge for a 401 answer. A missing
// token gets the bare challenge (§3.1: no error code when the request had no
// authentication); anything else is "invalid_token" with a description.
func (e *Error) WWWAuthenticate() string {
	if e.Reason == ReasonMissing {
		return `Bearer realm="wsidecar"`
	}
	return `Bearer error="invalid_token", error_description="` + e.Description() + `"`
}

// Identity is a verified token: who the client is and what it claims.
type Identity struct {
	// User is the value of the configured user claim (default "sub"); ""
	// when the token has none. Numeric claims are rendered as written.
	User string
	// Claims is the verified payload. Numbers are json.Number so that large
	// integer ids survive unchanged.
	Claims map[string]any
	// ClaimsJSON is Claims re-encoded: compact, and exactly what was
	// validated (with duplicate keys resolved the way we resolved them), so
	// the backend cannot be fed a different reading of the payload.
	ClaimsJSON []byte
	// ExpiresAt is the "exp" claim; zero when the token has none.
	ExpiresAt time.Time
}
