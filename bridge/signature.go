package bridge

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Signature errors returned (wrapped) by VerifySignature.
var (
	// ErrSignatureMissing means the X-WS-Signature or X-WS-Timestamp header is absent.
	ErrSignatureMissing = errors.New("signature missing")
	// ErrSignatureMalformed means a header could not be parsed.
	ErrSignatureMalformed = errors.New("signature malformed")
	// ErrSignatureExpired means the timestamp is outside the allowed tolerance,
	// which is what stops a captured call from being replayed later.
	ErrSignatureExpired = errors.New("signature timestamp outside tolerance")
	// ErrSignatureMismatch means no signature in the header matches the body.
	ErrSignatureMismatch = errors.New("signature mismatch")
)

// signatureScheme prefixes the hex MAC so the algorithm can change later
// without breaking backends that check the prefix.
const signatureScheme = "v1="

// Sign returns the X-WS-Signature value for one backend call:
// "v1=" + hex(HMAC-SHA256(secret, ts + "." + connID + "." + body)), where ts
// is the decimal unix time sent in X-WS-Timestamp. Binding the timestamp and
// the connection id into the MAC stops a signed body from being replayed at
// another time or for another connection.
func Sign(secret []byte, ts int64, connID string, body []byte) string {
	m := &macState{h: hmac.New(sha256.New, secret)}
	return string(m.appendSignature(nil, ts, connID, body))
}

// VerifySignature checks a call signed by Sign. header is the X-WS-Signature
// value (several comma-separated "v1=…" entries are accepted so a backend can
// rotate secrets), tsHeader the X-WS-Timestamp value. The timestamp must be
// within tolerance of now (tolerance <= 0 skips the check, which allows
// replays: use it only in tests). The comparison is constant-time.
func VerifySignature(secret []byte, header, tsHeader, connID string, body []byte, now time.Time, tolerance time.Duration) error {
	if header == "" || tsHeader == "" {
		return fmt.Errorf("verify webhook signature: %w", ErrSignatureMissing)
	}
	ts, err := strconv.ParseInt(strings.TrimSpace(tsHeader), 10, 64)
	if err != nil {
		return fmt.Errorf("verify webhook signature: timestamp: %w", ErrSignatureMalformed)
	}
	if tolerance > 0 {
		skew := now.Unix() - ts
		if skew < 0 {
			skew = -skew
		}
		// Compare in seconds without converting skew to a Duration, which
		// could overflow for a hostile timestamp.
		if skew < 0 || skew > int64(tolerance/time.Second) {
			return fmt.Errorf("verify webhook signature: %w", ErrSignatureExpired)
		}
	}
	m := &macState{h: hmac.New(sha256.New, secret)}
	want := m.sum(ts, connID, body)

	seen := false
	for part := range strings.SplitSeq(header, ",") {
		part = strings.TrimSpace(part)
		hexMAC, ok := strings.CutPrefix(part, signatureScheme)
		if !ok {
			continue // another scheme; ignored so new schemes can be added
		}
		seen = true
		got, err := hex.DecodeString(hexMAC)
		if err != nil || len(got) != sha256.Size {
			continue
		}
		if hmac.Equal(got, want) {
			return nil
		}
	}
	if !seen {
		return fmt.Errorf("verify webhook signature: %w", ErrSignatureMalformed)
	}
	return fmt.Errorf("verify webhook signature: %w", ErrSignatureMismatch)
}

// macState is an HMAC with a scratch buffer, reused through signer's pool:
// hmac.New allocates two SHA-256 states, and every webhook is signed.
type macState struct {
	h   hash.Hash
	buf []byte
}

// sum returns the raw MAC of one call; it is valid until the next use of m.
func (m *macState) sum(ts int64, connID string, body []byte) []byte {
	m.h.Reset()
	b := strconv.AppendInt(m.buf[:0], ts, 10)
	b = append(b, '.')
	b = append(b, connID...)
	b = append(b, '.')
	m.h.Write(b)
	m.h.Write(body)
	m.buf = m.h.Sum(b[:0])
	return m.buf
}

// appendSignature appends "v1=<hex MAC>" to dst.
func (m *macState) appendSignature(dst []byte, ts int64, connID string, body []byte) []byte {
	dst = append(dst, signatureScheme...)
	return hex.AppendEncode(dst, m.sum(ts, connID, body))
}

// signer signs calls with one secret.
type signer struct {
	pool sync.Pool // of *macState keyed with the secret
}

func newSigner(secret string) *signer {
	key := []byte(secret)
	s := &signer{}
	s.pool.New = func() any { return &macState{h: hmac.New(sha256.New, key), buf: make([]byte, 0, 64)} }
	return s
}

// appendSign appends the X-WS-Signature value to dst.
func (s *signer) appendSign(dst []byte, ts int64, connID string, body []byte) []byte {
	m := s.pool.Get().(*macState)
	dst = m.appendSignature(dst, ts, connID, body)
	s.pool.Put(m)
	return dst
}
