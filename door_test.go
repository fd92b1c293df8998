package main

// End-to-end stories of the door: every hostile or unlucky client gets
// exactly the answer of DESIGN.md, and the backend never hears of it.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
)

const (
	testIssuer   = "https://issuer.test"
	testAudience = "wsidecar"
	testSecret   = "a-test-secret-that-is-long-enough-32b"
	goodOrigin   = "https://app.example.com"
)

// keys are the test's signing keys; the sidecar knows the HMAC secret and the
// RSA public key (as a PEM file).
type keys struct {
	rsa    *rsa.PrivateKey
	pubPEM []byte
	dir    string
}

func newKeys(t *testing.T) *keys {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	pub := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rsa.pub"), pub, 0o600); err != nil {
		t.Fatal(err)
	}
	return &keys{rsa: k, pubPEM: pub, dir: dir}
}

func (k *keys) jwtBlock() string {
	return fmt.Sprintf(`
jwt {
  issuer   = %q
  audience = [%q]
  sources  = ["header", "protocol", "query:access_token"]
  key "hmac" {
    algorithms = ["HS256"]
    kid        = "h1"
    secret     = %q
  }
  key "rsa" {
    algorithms = ["RS256"]
    kid        = "r1"
    pem_file   = %q
  }
}
`, testIssuer, testAudience, testSecret, filepath.Join(k.dir, "rsa.pub"))
}

// claims returns valid claims for sub, modified by f.
func claims(sub string, f func(jwt.MapClaims)) jwt.MapClaims {
	c := jwt.MapClaims{"sub": sub, "iss": testIssuer, "aud": testAudience,
		"exp": time.Now().Add(time.Hour).Unix(), "iat": time.Now().Unix()}
	if f != nil {
		f(c)
	}
	return c
}

func (k *keys) rs256(t *testing.T, c jwt.MapClaims) string {
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, c)
	tok.Header["kid"] = "r1"
	s, err := tok.SignedString(k.rsa)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func hs256(t *testing.T, kid string, secret []byte, c jwt.MapClaims) string {
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, c)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(secret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// wsResult is what a client observed: an HTTP refusal or a close code.
type wsResult struct {
	status int
	header http.Header
	close  websocket.StatusCode
}

// tryDial dials and returns the refusal status (0 when upgraded).
func tryDial(url string, h http.Header, opts *websocket.DialOptions) (*client, wsResult) {
	if opts == nil {
		opts = &websocket.DialOptions{}
	}
	opts.HTTPHeader = h
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, opts)
	if err != nil {
		if resp != nil {
			return nil, wsResult{status: resp.StatusCode, header: resp.Header}
		}
		return nil, wsResult{status: -1}
	}
	return newClient(c), wsResult{}
}

func header(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

func bearer(tok string) http.Header {
	return header("Origin", goodOrigin, "Authorization", "Bearer "+tok)
}

// The handshake negative-case table: each gets the status of DESIGN.md, and
// the backend sees no call at all.
func TestDoorRejectsHandshakes(t *testing.T) {
	k := newKeys(t)
	be := newBackend(t)
	sc := startSidecar(t, be.URL, `
backend { url = "%BACKEND%" }
origins { allow = ["https://app.example.com", "https://*.example.com"] }
limits {
  per_ip_connections = 10
  handshake_rate     = "1000/s"
  handshake_burst    = 1000
}
route "/ws" {
  on_connect = "/connect"
  on_message = "/message"
}
`+k.jwtBlock())
	ws := sc.WS + "/ws"

	noneTok := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." +
		base64.RawURLEncoding.EncodeToString(jsonBody(claims("u1", nil))) + "."
	confused := hs256(t, "r1", k.pubPEM, claims("u1", nil)) // RS256 key's PEM used as an HMAC secret
	good := k.rs256(t, claims("u1", nil))
	parts := strings.Split(good, ".")
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString(jsonBody(claims("admin", nil))) + "." + parts[2]
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	unknownKid := jwt.NewWithClaims(jwt.SigningMethodES256, claims("u1", nil))
	unknownKid.Header["kid"] = "nobody-knows-me"
	unknownKidTok, _ := unknownKid.SignedString(otherKey)

	cases := []struct {
		name   string
		url    string
		header http.Header
		status int
		auth   string // expected WWW-Authenticate fragment
	}{
		{"missing origin", ws, header("Authorization", "Bearer "+good), 403, ""},
		{"wrong origin", ws, header("Origin", "https://evil.io", "Authorization", "Bearer "+good), 403, ""},
		{"look-alike origin", ws, header("Origin", "https://example.com.evil.io", "Authorization", "Bearer "+good), 403, ""},
		{"wildcard wrong scheme", ws, header("Origin", "http://app.example.com", "Authorization", "Bearer "+good), 403, ""},
		{"no token", ws, header("Origin", goodOrigin), 401, "Bearer"},
		{"garbage token", ws, bearer("not.a.jwt"), 401, "invalid_token"},
		{"alg none", ws, bearer(noneTok), 401, "invalid_token"},
		{"RS256 re-signed as HS256", ws, bearer(confused), 401, "invalid_token"},
		{"expired", ws, bearer(k.rs256(t, claims("u1", func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Hour).Unix() }))), 401, "invalid_token"},
		{"not yet valid", ws, bearer(k.rs256(t, claims("u1", func(c jwt.MapClaims) { c["nbf"] = time.Now().Add(time.Hour).Unix() }))), 401, "invalid_token"},
		{"wrong iss", ws, bearer(k.rs256(t, claims("u1", func(c jwt.MapClaims) { c["iss"] = "https://other" }))), 401, "invalid_token"},
		{"wrong aud", ws, bearer(k.rs256(t, claims("u1", func(c jwt.MapClaims) { c["aud"] = "someone-else" }))), 401, "invalid_token"},
		{"no exp", ws, bearer(k.rs256(t, claims("u1", func(c jwt.MapClaims) { delete(c, "exp") }))), 401, "invalid_token"},
		{"unknown kid", ws, bearer(unknownKidTok), 401, "invalid_token"},
		{"tampered payload", ws, bearer(tampered), 401, "invalid_token"},
		{"wrong hmac secret", ws, bearer(hs256(t, "h1", []byte("guess-guess-guess-guess-guess-guess"), claims("u1", nil))), 401, "invalid_token"},
		{"no route", sc.WS + "/nowhere", bearer(good), 404, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, res := tryDial(tc.url, tc.header, nil)
			if c != nil {
				c.CloseNow()
				t.Fatalf("upgraded, want %d", tc.status)
			}
			if res.status != tc.status {
				t.Fatalf("status %d, want %d", res.status, tc.status)
			}
			if tc.auth != "" && !strings.Contains(res.header.Get("WWW-Authenticate"), tc.auth) {
				t.Errorf("WWW-Authenticate = %q, want it to mention %q", res.header.Get("WWW-Authenticate"), tc.auth)
			}
		})
	}
	if n := len(be.calls("/connect")); n != 0 {
		t.Fatalf("backend saw %d connect calls for rejected handshakes", n)
	}

	// The good token gets in, through each source, and its claims reach the backend.
	for _, src := range []struct {
		name string
		url  string
		h    http.Header
		sub  []string
	}{
		{"header", ws, bearer(good), nil},
		{"query", ws + "?access_token=" + good, header("Origin", goodOrigin), nil},
		{"protocol", ws, header("Origin", "https://b.example.com"), []string{"bearer", good}},
		{"hmac", ws, bearer(hs256(t, "h1", []byte(testSecret), claims("u1", nil))), nil},
	} {
		c, res := tryDial(src.url, src.h, &websocket.DialOptions{Subprotocols: src.sub})
		if c == nil {
			t.Fatalf("%s: good token refused with %d", src.name, res.status)
		}
		if c.Subprotocol() != "" {
			t.Errorf("%s: bearer entries echoed back as subprotocol %q", src.name, c.Subprotocol())
		}
		c.Close(websocket.StatusNormalClosure, "")
	}
	calls := be.waitCalls(t, "/connect", 4)
	if calls[0].Header.Get("X-WS-User") != "u1" || !strings.Contains(calls[0].Header.Get("X-WS-Claims"), `"iss":"https://issuer.test"`) {
		t.Errorf("identity headers: user %q claims %q", calls[0].Header.Get("X-WS-User"), calls[0].Header.Get("X-WS-Claims"))
	}
	if strings.Contains(sc.logs.String(), good) {
		t.Error("a token appears in the logs")
	}

	// 11th connection from one IP with a cap of 10: 429 + Retry-After.
	// A spoofed X-Forwarded-For from an untrusted peer changes nothing.
	var open []*client
	for i := 0; i < 10; i++ {
		c, res := tryDial(ws, bearer(good), nil)
		if c == nil {
			t.Fatalf("connection %d refused with %d", i+1, res.status)
		}
		open = append(open, c)
	}
	for _, h := range []http.Header{bearer(good), func() http.Header {
		h := bearer(good)
		h.Set("X-Forwarded-For", "203.0.113.9")
		h.Set("X-Real-IP", "203.0.113.9")
		return h
	}()} {
		c, res := tryDial(ws, h, nil)
		if c != nil || res.status != 429 || res.header.Get("Retry-After") == "" {
			t.Errorf("11th connection: status %d Retry-After %q, want 429 with Retry-After", res.status, res.header.Get("Retry-After"))
		}
	}
	for _, c := range open {
		c.CloseNow()
	}
}

// Handshake flood: past the per-IP rate, handshakes get 429 + Retry-After
// before anything else is looked at.
func TestDoorHandshakeFlood(t *testing.T) {
	be := newBackend(t)
	sc := startSidecar(t, be.URL, `
backend { url = "%BACKEND%" }
origins { allow_missing = true }
limits {
  handshake_rate  = "5/s"
  handshake_burst = 5
}
route "/ws" {
  auth       = "none"
  on_connect = "/connect"
}
`)
	limited := 0
	for i := 0; i < 30; i++ {
		c, res := tryDial(sc.WS+"/ws", nil, nil)
		if c != nil {
			c.CloseNow()
			continue
		}
		if res.status != 429 || res.header.Get("Retry-After") == "" {
			t.Fatalf("flood answer %d Retry-After %q, want 429", res.status, res.header.Get("Retry-After"))
		}
		limited++
	}
	if limited < 20 {
		t.Errorf("only %d of 30 flood handshakes limited", limited)
	}
	if n := len(be.calls("/connect")); n > 10 {
		t.Errorf("backend saw %d connects during a flood limited to 5/s", n)
	}
}

// After the upgrade: oversize frames get 1009, message floods get 1008 under
// the close policy, a decompression bomb gets 1009 — and none of those
// messages reach the backend.
func TestDoorFrameLimits(t *testing.T) {
	be := newBackend(t)
	sc := startSidecar(t, be.URL, `
listener {
  address     = "127.0.0.1:0"
  compression = true
}
backend { url = "%BACKEND%" }
origins { allow_missing = true }
limits {
  max_message_size  = "4KiB"
  max_inflated_size = "64KiB"
  message_rate      = "20/s"
  message_burst     = 20
  rate_policy       = "close"
}
route "/ws" {
  auth       = "none"
  on_message = "/message"
}
`)
	t.Run("oversize frame", func(t *testing.T) {
		c := dial(t, sc.WS+"/ws", nil)
		c.Write(context.Background(), websocket.MessageText, make([]byte, 8<<10))
		if code, _ := closeStatus(t, c, 5*time.Second); code != websocket.StatusMessageTooBig {
			t.Errorf("close %d, want 1009", code)
		}
	})
	t.Run("message flood", func(t *testing.T) {
		before := len(be.calls("/message"))
		c := dial(t, sc.WS+"/ws", nil)
		go func() {
			for i := 0; i < 200; i++ {
				if c.Write(context.Background(), websocket.MessageText, []byte("spam")) != nil {
					return
				}
			}
		}()
		if code, _ := closeStatus(t, c, 5*time.Second); code != websocket.StatusPolicyViolation {
			t.Errorf("close %d, want 1008", code)
		}
		if n := len(be.calls("/message")) - before; n > 25 {
			t.Errorf("backend saw %d of a flood limited to a burst of 20", n)
		}
	})
	t.Run("decompression bomb", func(t *testing.T) {
		before := len(be.calls("/message"))
		c := dial(t, sc.WS+"/ws", &websocket.DialOptions{CompressionMode: websocket.CompressionNoContextTakeover, CompressionThreshold: 1})
		// 4 MiB of zeros deflates to a few KiB: under the frame limit, far over the inflated cap.
		c.Write(context.Background(), websocket.MessageText, make([]byte, 4<<20))
		if code, _ := closeStatus(t, c, 5*time.Second); code != websocket.StatusMessageTooBig {
			t.Errorf("close %d, want 1009", code)
		}
		if n := len(be.calls("/message")) - before; n != 0 {
			t.Errorf("backend saw %d calls from a bomb", n)
		}
	})
}

// Under a handshake flood from many loopback source addresses, legitimate
// clients from another address still connect and memory stays bounded.
func TestDoorSprayFlood(t *testing.T) {
	be := newBackend(t)
	sc := startSidecar(t, be.URL, `
backend { url = "%BACKEND%" }
origins { allow_missing = true }
limits {
  handshake_rate     = "2/s"
  handshake_burst    = 2
  per_ip_connections = 2
}
route "/ws" { auth = "none" }
`)
	host := strings.TrimPrefix(sc.WS, "ws://")
	const sources, perSource = 100, 20 // 2,000 handshakes; the full figure is in bench/
	done := make(chan int, sources)
	for s := 0; s < sources; s++ {
		go func(ip net.IP) {
			ok := 0
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 5 * time.Second}
			for i := 0; i < perSource; i++ {
				conn, err := d.Dial("tcp", host)
				if err != nil {
					continue
				}
				fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
				buf := make([]byte, 64)
				conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, _ := conn.Read(buf)
				if strings.HasPrefix(string(buf[:n]), "HTTP/1.1 101") {
					ok++
				}
				conn.Close()
			}
			done <- ok
		}(net.IPv4(127, 0, 1+byte(s/250), 2+byte(s%250)))
	}
	upgraded := 0
	for s := 0; s < sources; s++ {
		upgraded += <-done
	}
	if upgraded > sources*4 {
		t.Errorf("%d handshakes upgraded; the rate allows about %d", upgraded, sources*2)
	}
	c, res := tryDial(sc.WS+"/ws", nil, nil)
	if c == nil {
		t.Fatalf("legitimate client refused with %d after the flood", res.status)
	}
	c.CloseNow()
	var m map[string]any
	status, raw := httpDo(t, "GET", sc.Admin+"/readyz", "", nil, nil)
	_ = json.Unmarshal(raw, &m)
	if status != 200 {
		t.Errorf("readyz %d after flood", status)
	}
}
