package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// verifySignature checks wsidecar's webhook signature:
//
//	X-WS-Timestamp: <unix seconds>
//	X-WS-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + connection id + "." + body)>
//
// Several comma-separated v1= values are accepted so the secret can be
// rotated. The timestamp must be within maxAge of now: a captured call
// cannot be replayed later, nor for another connection.
func verifySignature(secret []byte, header, timestamp, connID string, body []byte, now time.Time, maxAge time.Duration) error {
	if header == "" || timestamp == "" {
		return errors.New("signature headers missing")
	}
	ts, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return errors.New("timestamp malformed")
	}
	if age := now.Unix() - ts; age > int64(maxAge/time.Second) || age < -int64(maxAge/time.Second) {
		return errors.New("timestamp outside the allowed window")
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(timestamp + "." + connID + "."))
	mac.Write(body)
	want := mac.Sum(nil)
	for v := range strings.SplitSeq(header, ",") {
		hexMAC, ok := strings.CutPrefix(strings.TrimSpace(v), "v1=")
		if !ok {
			continue
		}
		if got, err := hex.DecodeString(hexMAC); err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return errors.New("signature mismatch")
}
