package bridge

import (
	"errors"
	"testing"
	"time"
)

func TestSignKnownVectors(t *testing.T) {
	// Expected values computed independently (Python hmac module).
	cases := []struct {
		secret, id, body string
		ts               int64
		want             string
	}{
		{"s3cret", "c-1", "hello", 1700000000, "v1=589596bc8d454362e2c4401e0cf7a2eeefe983f113ad2fe2da9196d64b935a88"},
		{"k", "", "", 0, "v1=cf0868f8aa1aef0564c3bd7cad57adc1b4caa11497a587afe52f21e8d6ed5101"},
	}
	for _, tc := range cases {
		if got := Sign([]byte(tc.secret), tc.ts, tc.id, []byte(tc.body)); got != tc.want {
			t.Errorf("Sign(%q, %d, %q, %q) = %s, want %s", tc.secret, tc.ts, tc.id, tc.body, got, tc.want)
		}
		// The pooled signer used on the hot path must agree, also when reused.
		s := newSigner(tc.secret)
		for range 3 {
			if got := string(s.appendSign(nil, tc.ts, tc.id, []byte(tc.body))); got != tc.want {
				t.Errorf("signer.appendSign = %s, want %s", got, tc.want)
			}
		}
	}
}

func TestVerifySignature(t *testing.T) {
	secret := []byte("s3cret")
	now := time.Unix(1700000000, 0)
	body := []byte(`{"code":1000}`)
	good := Sign(secret, now.Unix(), "c-1", body)
	other := Sign([]byte("old-secret"), now.Unix(), "c-1", body)

	cases := []struct {
		name      string
		sig, ts   string
		id        string
		body      []byte
		tolerance time.Duration
		want      error // nil: verifies
	}{
		{"valid", good, "1700000000", "c-1", body, time.Minute, nil},
		{"valid within tolerance", Sign(secret, now.Unix()-299, "c-1", body), "1699999701", "c-1", body, 5 * time.Minute, nil},
		{"rotation list", other + ", " + good, "1700000000", "c-1", body, time.Minute, nil},
		{"unknown scheme beside v1", "v2=abcd," + good, "1700000000", "c-1", body, time.Minute, nil},
		{"no tolerance check", Sign(secret, 5, "c-1", body), "5", "c-1", body, 0, nil},
		{"wrong secret", other, "1700000000", "c-1", body, time.Minute, ErrSignatureMismatch},
		{"tampered body", good, "1700000000", "c-1", []byte(`{"code":1001}`), time.Minute, ErrSignatureMismatch},
		{"other connection", good, "1700000000", "c-2", body, time.Minute, ErrSignatureMismatch},
		{"other timestamp", good, "1700000001", "c-1", body, time.Minute, ErrSignatureMismatch},
		{"bad hex", "v1=zz", "1700000000", "c-1", body, time.Minute, ErrSignatureMismatch},
		{"short mac", "v1=abcd", "1700000000", "c-1", body, time.Minute, ErrSignatureMismatch},
		{"too old", Sign(secret, now.Unix()-61, "c-1", body), "1699999939", "c-1", body, time.Minute, ErrSignatureExpired},
		{"from the future", Sign(secret, now.Unix()+61, "c-1", body), "1700000061", "c-1", body, time.Minute, ErrSignatureExpired},
		{"huge timestamp", good, "9223372036854775807", "c-1", body, time.Minute, ErrSignatureExpired},
		{"min timestamp", good, "-9223372036854775808", "c-1", body, time.Minute, ErrSignatureExpired},
		{"timestamp not a number", good, "yesterday", "c-1", body, time.Minute, ErrSignatureMalformed},
		{"no v1 entry", "sha256=abcd", "1700000000", "c-1", body, time.Minute, ErrSignatureMalformed},
		{"missing signature", "", "1700000000", "c-1", body, time.Minute, ErrSignatureMissing},
		{"missing timestamp", good, "", "c-1", body, time.Minute, ErrSignatureMissing},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := VerifySignature(secret, tc.sig, tc.ts, tc.id, tc.body, now, tc.tolerance)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("VerifySignature: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("VerifySignature = %v, want %v", err, tc.want)
			}
		})
	}
}

func BenchmarkSign(b *testing.B) {
	s := newSigner("secret")
	body := make([]byte, 256)
	buf := make([]byte, 0, 80)
	b.ReportAllocs()
	for b.Loop() {
		buf = s.appendSign(buf[:0], 1700000000, "c-123456", body)
	}
}
