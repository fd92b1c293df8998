package main

// End-to-end stories of the door: every hostile or unlucky client gets
// exactly the answer of DESIGN.md, and the backend never hears of it.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/wsidecar/wsidecar/config"
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
		{"garbage token (query)", ws + "?room=7&access_token=not.a.jwt", header("Origin", goodOrigin), 401, "invalid_token"},
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
	// A browser that offered only the bearer pair must get a protocol back
	// or it fails the handshake: the marker is echoed, never the token.
	for _, src := range []struct {
		name  string
		url   string
		h     http.Header
		sub   []string
		proto string
	}{
		{"header", ws, bearer(good), nil, ""},
		{"query", ws + "?access_token=" + good, header("Origin", goodOrigin), nil, ""},
		{"protocol", ws, header("Origin", "https://b.example.com"), []string{"bearer", good}, "bearer"},
		{"hmac", ws, bearer(hs256(t, "h1", []byte(testSecret), claims("u1", nil))), nil, ""},
	} {
		c, res := tryDial(src.url, src.h, &websocket.DialOptions{Subprotocols: src.sub})
		if c == nil {
			t.Fatalf("%s: good token refused with %d", src.name, res.status)
		}
		if c.Subprotocol() != src.proto {
			t.Errorf("%s: subprotocol %q, want %q", src.name, c.Subprotocol(), src.proto)
		}
		c.Close(websocket.StatusNormalClosure, "")
	}
	calls := be.waitCalls(t, "/connect", 4)
	if calls[0].Header.Get("X-WS-User") != "u1" || !strings.Contains(calls[0].Header.Get("X-WS-Claims"), `"iss":"https://issuer.test"`) {
		t.Errorf("identity headers: user %q claims %q", calls[0].Header.Get("X-WS-User"), calls[0].Header.Get("X-WS-Claims"))
	}
	logs := sc.logs.String()
	if strings.Contains(logs, good) || strings.Contains(logs, "not.a.jwt") {
		t.Error("a token appears in the logs")
	}
	if !strings.Contains(logs, "access_token=REDACTED") || !strings.Contains(logs, "room=REDACTED") {
		t.Error("the refused query-token handshake is not logged with its query redacted")
	}
	// Logged once per reason per client address, however many refusals.
	if n := strings.Count(logs, "reason=origin"); n != 1 {
		t.Errorf("%d log lines for 4 origin refusals from one address, want 1", n)
	}
	// The sockets above must have given their per-IP slots back.
	eventually(t, 5*time.Second, func() bool { return sc.app.door.limits.OpenIP(netip.MustParseAddr("127.0.0.1")) == 0 },
		"per-IP slots not released after close")

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
	// Every refusal counted once, under one metric family.
	m := metricsText(t, sc)
	for reason, want := range map[string]int{"origin": 4, "token_missing": 1, "ip_cap": 2, "not_found": 1} {
		if got := metricValues(m, `wsidecar_handshake_rejections_total{reason="`+reason+`"}`); len(got) != 1 || got[0] != want {
			t.Errorf("rejections{reason=%q} = %v, want [%d]", reason, got, want)
		}
	}
	inv := metricValues(m, `wsidecar_handshake_rejections_total{reason="token_invalid"}`)
	exp := metricValues(m, `wsidecar_handshake_rejections_total{reason="token_expired"}`)
	if len(inv) != 1 || len(exp) != 1 || inv[0]+exp[0] != 11 {
		t.Errorf("token_invalid %v + token_expired %v, want 11 in all", inv, exp)
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
	if n := strings.Count(sc.logs.String(), "reason=handshake_rate"); n != 1 {
		t.Errorf("%d log lines for %d rate-limited handshakes from one address, want 1", n, limited)
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
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const sources, perSource = 100, 20 // 2,000 handshakes; the full figure is in bench/
	done := make(chan int, sources)
	start := time.Now()
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
	// Each source may have its burst of 2 plus 2/s for as long as the flood
	// lasted (seconds under -race on a busy machine), and no more.
	allowed := sources * (2 + int(math.Ceil(2*time.Since(start).Seconds())))
	if upgraded > allowed || upgraded < sources {
		t.Errorf("%d handshakes upgraded; the rate allows %d to %d", upgraded, sources, allowed)
	}
	// Loose: the per-address state of 100 sources is a few tens of KiB; what
	// must not happen is per-handshake state piling up (2,000 × anything
	// handshake-sized, or leaked sockets and goroutines).
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 16<<20 {
		t.Errorf("heap grew by %d KiB over a 2,000-handshake flood", grown>>10)
	}
	if n := sc.app.door.limits.TrackedIPs(); n > sources+1 {
		t.Errorf("%d addresses tracked after a flood from %d", n, sources)
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

// metricsText fetches the admin /metrics page.
func metricsText(t *testing.T, sc *sidecar) string {
	t.Helper()
	status, body := httpDo(t, "GET", sc.Admin+"/metrics", "", nil, nil)
	if status != 200 {
		t.Fatalf("/metrics answered %d", status)
	}
	return string(body)
}

// metricValues returns the value of every line of the exposition naming
// series exactly (more than one would be a duplicate registration).
func metricValues(text, series string) []int {
	var out []int
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var n int
			fmt.Sscan(v, &n)
			out = append(out, n)
		}
	}
	return out
}

// echoMessages makes the backend answer every message with its body.
func echoMessages(be *backend) {
	be.setReply(func(w http.ResponseWriter, h hook) {
		if h.Path == "/message" {
			w.Header().Set("Content-Type", "text/plain")
			w.Write(h.Body)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// echoes checks that c is open and working: a message makes the round trip.
func echoes(t *testing.T, c *client, msg string) {
	t.Helper()
	write(t, c, websocket.MessageText, []byte(msg))
	if got := readText(t, c); got != msg {
		t.Fatalf("echo %q, want %q", got, msg)
	}
}

// reloadConfig rewrites the sidecar's config file (when src is not empty),
// sends SIGHUP and waits for the reload to be applied or rejected; it
// reports whether it was applied.
func reloadConfig(t *testing.T, sc *sidecar, path, src string) bool {
	t.Helper()
	if src != "" {
		if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	count := func() (int, int) {
		l := sc.logs.String()
		return strings.Count(l, "config reloaded"), strings.Count(l, "reload rejected")
	}
	ok0, bad0 := count()
	sc.sigs <- syscall.SIGHUP
	var ok, bad int
	eventually(t, 15*time.Second, func() bool { ok, bad = count(); return ok > ok0 || bad > bad0 }, "SIGHUP not handled")
	return ok > ok0
}

// A slow client is cut by handshake_timeout (slowloris), an oversized
// request head gets 431, and neither touches open sockets: the timeout
// covers the handshake only.
func TestDoorHandshakeTimeoutAndSize(t *testing.T) {
	be := newBackend(t)
	echoMessages(be)
	sc := startSidecar(t, be.URL, `
listener {
  address           = "127.0.0.1:0"
  handshake_timeout = "1s"
  max_header_size   = "2KiB"
}
backend { url = "%BACKEND%" }
origins { allow_missing = true }
route "/ws" {
  auth       = "none"
  on_connect = "/connect"
  on_message = "/message"
}
`)
	open := dial(t, sc.WS+"/ws", nil)
	host := strings.TrimPrefix(sc.WS, "ws://")

	t.Run("slowloris", func(t *testing.T) {
		conn, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		start := time.Now()
		fmt.Fprint(conn, "GET /ws HTTP/1.1\r\nHost: x\r\n")
		stop := make(chan struct{})
		defer close(stop)
		go func() { // one header byte a second, forever
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					if _, err := conn.Write([]byte("X")); err != nil {
						return
					}
				}
			}
		}()
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf, _ := io.ReadAll(conn) // returns when the sidecar hangs up
		el := time.Since(start)
		if el > 4*time.Second {
			t.Fatalf("slow client held the connection for %v with handshake_timeout 1s", el)
		}
		if len(buf) > 0 && !strings.HasPrefix(string(buf), "HTTP/1.1 408") {
			t.Errorf("slow client got %q, want 408 or a hang-up", firstLine(buf))
		}
	})
	t.Run("oversized head", func(t *testing.T) {
		conn, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Big: %s\r\n\r\n", strings.Repeat("b", 4<<10))
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf, _ := io.ReadAll(conn)
		if !strings.HasPrefix(string(buf), "HTTP/1.1 431") {
			t.Errorf("oversized head got %q, want 431", firstLine(buf))
		}
	})
	if n := len(be.calls("/connect")); n != 1 {
		t.Errorf("backend saw %d connects, want only the legitimate one", n)
	}
	// Well past the handshake timeout, the open socket still works.
	echoes(t, open, "still here")
	m := metricsText(t, sc)
	for _, reason := range []string{"handshake_timeout", "headers_too_large"} {
		if got := metricValues(m, `wsidecar_handshake_rejections_total{reason="`+reason+`"}`); len(got) != 1 || got[0] != 1 {
			t.Errorf("rejections{reason=%q} = %v, want [1]", reason, got)
		}
	}
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\r\n")
	return s
}

// A socket is closed with 1008 "token expired" when its token expires,
// unless the backend's actions document extended it.
func TestDoorTokenExpiry(t *testing.T) {
	be := newBackend(t)
	be.setReply(func(w http.ResponseWriter, h hook) {
		switch {
		case h.Path == "/connect" && h.Header.Get("X-WS-User") == "extended":
			actions(w, map[string]any{"expires_at": time.Now().Add(time.Hour).Unix()})
		case h.Path == "/message":
			w.Header().Set("Content-Type", "text/plain")
			w.Write(h.Body)
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	})
	sc := startSidecar(t, be.URL, `
backend { url = "%BACKEND%" }
origins { allow_missing = true }
jwt {
  key "hmac" {
    algorithms = ["HS256"]
    secret     = "`+testSecret+`"
  }
}
route "/ws" {
  on_connect    = "/connect"
  on_message    = "/message"
  on_disconnect = "/disconnect"
}
`)
	soon := func(sub string) http.Header {
		return header("Authorization", "Bearer "+hs256(t, "", []byte(testSecret), jwt.MapClaims{"sub": sub, "exp": time.Now().Add(2 * time.Second).Unix()}))
	}
	short := dial(t, sc.WS+"/ws", &websocket.DialOptions{HTTPHeader: soon("short")})
	long := dial(t, sc.WS+"/ws", &websocket.DialOptions{HTTPHeader: soon("extended")})
	echoes(t, short, "before")
	code, reason := closeStatus(t, short, 6*time.Second)
	if code != websocket.StatusPolicyViolation || reason != "token expired" {
		t.Fatalf("expired socket closed with %d %q, want 1008 \"token expired\"", code, reason)
	}
	// Past the token's exp, the extended socket works on.
	time.Sleep(time.Second)
	echoes(t, long, "after")
	disc := be.waitCalls(t, "/disconnect", 1)
	if !strings.Contains(string(disc[0].Body), `"code":1008`) || disc[0].Header.Get("X-WS-User") != "short" {
		t.Errorf("disconnect webhook %s for %q", disc[0].Body, disc[0].Header.Get("X-WS-User"))
	}
}

// Behind a trusted proxy the client address comes from X-Forwarded-For
// (rightmost untrusted hop) and is what the per-IP cap counts and the
// backend sees; the per-user cap counts the token's subject.
func TestDoorTrustedProxyAndUserCap(t *testing.T) {
	be := newBackend(t)
	sc := startSidecar(t, be.URL, `
backend { url = "%BACKEND%" }
origins { allow_missing = true }
limits {
  trusted_proxies      = ["127.0.0.1/32"]
  per_ip_connections   = 1
  per_user_connections = 1
}
jwt {
  key "hmac" {
    algorithms = ["HS256"]
    secret     = "`+testSecret+`"
  }
}
route "/ws" { on_connect = "/connect" }
`)
	as := func(xff, sub string) http.Header {
		return header("X-Forwarded-For", xff, "Authorization", "Bearer "+hs256(t, "", []byte(testSecret),
			jwt.MapClaims{"sub": sub, "exp": time.Now().Add(time.Hour).Unix()}))
	}
	for _, tc := range []struct {
		name, xff, sub string
		status         int
		clientIP       string
	}{
		{"first client", "203.0.113.1", "u1", 0, "203.0.113.1"},
		{"second client, same proxy", "203.0.113.2", "u2", 0, "203.0.113.2"},
		{"first client again", "203.0.113.1", "u3", 429, ""},
		{"first user elsewhere", "203.0.113.3", "u1", 429, ""},
		{"spoofed left entry", "203.0.113.1, 198.51.100.4", "u4", 0, "198.51.100.4"},
	} {
		before := len(be.calls("/connect"))
		c, res := tryDial(sc.WS+"/ws", as(tc.xff, tc.sub), nil)
		if c != nil {
			defer c.CloseNow()
		}
		if res.status != tc.status {
			t.Fatalf("%s: status %d, want %d", tc.name, res.status, tc.status)
		}
		if tc.status != 0 {
			if res.header.Get("Retry-After") == "" {
				t.Errorf("%s: 429 without Retry-After", tc.name)
			}
			continue
		}
		calls := be.waitCalls(t, "/connect", before+1)
		if got := calls[before].Header.Get("X-Real-IP"); got != tc.clientIP {
			t.Errorf("%s: backend saw client %q, want %q", tc.name, got, tc.clientIP)
		}
	}
}

// SIGHUP swaps origins, keys and limits for new handshakes while open
// sockets carry on; a reload that fails to build changes nothing.
func TestDoorReload(t *testing.T) {
	be := newBackend(t)
	echoMessages(be)
	conf := func(origin, secret string, perIP int, extra string) string {
		return fmt.Sprintf(`
listener { address = "127.0.0.1:0" }
admin { address = "127.0.0.1:0" }
backend { url = %q }
origins { allow = [%q] }
limits { per_ip_connections = %d }
jwt {
  key "hmac" {
    algorithms = ["HS256"]
    secret     = %q
  }
  %s
}
route "/ws" { on_message = "/message" }
`, be.URL, origin, perIP, secret, extra)
	}
	const s1, s2 = "first-secret-first-secret-first-secret", "second-secret-second-secret-second-secret"
	sc := startSidecar(t, be.URL, conf("https://a.example.com", s1, 100, ""))
	path := sc.app.cfg.Path // read before the first SIGHUP: reload replaces app.cfg
	as := func(origin, secret string) http.Header {
		return header("Origin", origin, "Authorization", "Bearer "+hs256(t, "", []byte(secret),
			jwt.MapClaims{"sub": "u", "exp": time.Now().Add(time.Hour).Unix()}))
	}
	old := dial(t, sc.WS+"/ws", &websocket.DialOptions{HTTPHeader: as("https://a.example.com", s1)})
	echoes(t, old, "one")

	if !reloadConfig(t, sc, path, conf("https://b.example.com", s2, 2, "")) {
		t.Fatalf("reload rejected:\n%s", sc.logs.String())
	}
	echoes(t, old, "two") // the open socket did not notice
	var admitted *client
	for _, tc := range []struct {
		name   string
		h      http.Header
		status int
	}{
		{"old origin", as("https://a.example.com", s2), 403},
		{"old key", as("https://b.example.com", s1), 401},
		{"new origin and key", as("https://b.example.com", s2), 0},
		{"over the new per-IP cap of 2", as("https://b.example.com", s2), 429},
	} {
		c, res := tryDial(sc.WS+"/ws", tc.h, nil)
		if c != nil {
			admitted = c
			defer c.CloseNow()
		}
		if res.status != tc.status {
			t.Fatalf("%s: status %d, want %d", tc.name, res.status, tc.status)
		}
	}

	// A key file that does not parse: the whole reload is rejected and the
	// running keys, origins and limits stay.
	bad := filepath.Join(t.TempDir(), "bad.pem")
	os.WriteFile(bad, []byte("not a key"), 0o600)
	badKey := fmt.Sprintf("key \"pem\" {\n algorithms = [\"RS256\"]\n pem_file = %q\n }", bad)
	if reloadConfig(t, sc, path, conf("https://c.example.com", "third-secret-third-secret-third-secret", 100, badKey)) {
		t.Fatal("a reload with an unreadable key was applied")
	}
	echoes(t, old, "three")
	if _, res := tryDial(sc.WS+"/ws", as("https://b.example.com", s2), nil); res.status != 429 {
		t.Errorf("after a rejected reload: status %d, want the running cap's 429", res.status)
	}
	admitted.Close(websocket.StatusNormalClosure, "")
	eventually(t, 5*time.Second, func() bool { return sc.app.door.limits.OpenIP(netip.MustParseAddr("127.0.0.1")) == 1 },
		"per-IP slot not released")
	if _, res := tryDial(sc.WS+"/ws", as("https://c.example.com", s2), nil); res.status != 403 {
		t.Errorf("after a rejected reload the new origin answered %d, want 403", res.status)
	}
	c, res := tryDial(sc.WS+"/ws", as("https://b.example.com", s2), nil)
	if c == nil {
		t.Fatalf("after a rejected reload the running key and origin answered %d", res.status)
	}
	c.CloseNow()
}

// A JWKS provider rotates its keys: tokens of the new key verify after the
// rotation, tokens of the removed key are refused.
func TestDoorJWKSRotation(t *testing.T) {
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var body atomic.Value
	publish := func(kid string, k *ecdsa.PrivateKey) {
		store := jwkset.NewMemoryStorage()
		j, err := jwkset.NewJWKFromKey(&k.PublicKey, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: jwkset.AlgES256, USE: jwkset.UseSig}})
		if err != nil {
			t.Fatal(err)
		}
		store.KeyWrite(context.Background(), j)
		b, err := store.JSONPublic(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		body.Store([]byte(b))
	}
	publish("k1", k1)
	idp := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(body.Load().([]byte))
	}))
	be := newBackend(t)
	sc := startSidecar(t, be.URL, `
backend { url = "%BACKEND%" }
origins { allow_missing = true }
jwt {
  key "idp" {
    algorithms = ["ES256"]
    jwks_url   = "`+idp+`/jwks.json"
  }
}
route "/ws" { on_connect = "/connect" }
`)
	token := func(kid string, k *ecdsa.PrivateKey) http.Header {
		tok := jwt.NewWithClaims(jwt.SigningMethodES256, claims("u1", nil))
		tok.Header["kid"] = kid
		s, err := tok.SignedString(k)
		if err != nil {
			t.Fatal(err)
		}
		return header("Authorization", "Bearer "+s)
	}
	try := func(name string, h http.Header, want int) {
		t.Helper()
		c, res := tryDial(sc.WS+"/ws", h, nil)
		if c != nil {
			c.CloseNow()
		}
		if res.status != want {
			t.Fatalf("%s: status %d, want %d", name, res.status, want)
		}
	}
	try("key in the set", token("k1", k1), 0)
	publish("k2", k2)
	try("new key after rotation", token("k2", k2), 0)
	try("removed key", token("k1", k1), 401)
}

// wss://: a generated certificate, replaced on disk and picked up on
// SIGHUP: a new handshake sees the new certificate while a socket opened
// on the old one stays open and working. Without a tls block the listener
// is plain ws:// (every other test).
func TestDoorWSS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	pool := x509.NewCertPool()
	first := writeCert(t, certFile, keyFile, 1001)
	pool.AddCert(first)
	second := writeCert(t, filepath.Join(dir, "next.crt"), filepath.Join(dir, "next.key"), 1002)
	pool.AddCert(second)

	be := newBackend(t)
	echoMessages(be)
	sc := startSidecar(t, be.URL, fmt.Sprintf(`
listener {
  address = "127.0.0.1:0"
  tls {
    cert_file = %q
    key_file  = %q
  }
}
backend { url = "%%BACKEND%%" }
origins { allow_missing = true }
route "/ws" {
  auth       = "none"
  on_message = "/message"
}
`, certFile, keyFile))
	wss := "wss://" + strings.TrimPrefix(sc.WS, "ws://") + "/ws"
	dialTLS := func() (*client, int64) {
		t.Helper()
		var serial atomic.Int64
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1",
			VerifyConnection: func(cs tls.ConnectionState) error {
				serial.Store(cs.PeerCertificates[0].SerialNumber.Int64())
				return nil
			}}}
		t.Cleanup(tr.CloseIdleConnections)
		return dial(t, wss, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}}), serial.Load()
	}
	old, serial := dialTLS()
	if serial != 1001 {
		t.Fatalf("first handshake saw certificate %d", serial)
	}
	echoes(t, old, "on the first certificate")

	// Rotate in place, as cert-manager does, then SIGHUP.
	for _, f := range [][2]string{{"next.crt", certFile}, {"next.key", keyFile}} {
		b, _ := os.ReadFile(filepath.Join(dir, f[0]))
		if err := os.WriteFile(f[1], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if !reloadConfig(t, sc, "", "") {
		t.Fatalf("reload rejected:\n%s", sc.logs.String())
	}
	fresh, serial := dialTLS()
	if serial != 1002 {
		t.Fatalf("handshake after the rotation saw certificate %d, want 1002", serial)
	}
	echoes(t, fresh, "on the second certificate")
	echoes(t, old, "still on the first")

	// A plain ws:// client gets nowhere on the wss listener.
	if c, res := tryDial(sc.WS+"/ws", nil, nil); c != nil || res.status > 0 {
		t.Errorf("plain ws on a wss listener: status %d", res.status)
	}
}

// A missing or mismatched pair stops startup with an error naming the files.
func TestDoorTLSStartupErrors(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, filepath.Join(dir, "a.crt"), filepath.Join(dir, "a.key"), 1)
	writeCert(t, filepath.Join(dir, "b.crt"), filepath.Join(dir, "b.key"), 2)
	for _, tc := range []struct {
		name, cert, key, want string
	}{
		{"mismatched pair", "a.crt", "b.key", "a.crt"},
		{"key is not a key", "a.crt", "a.crt", "a.crt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "sidecar.hcl")
			os.WriteFile(path, []byte(fmt.Sprintf(`
listener {
  address = "127.0.0.1:0"
  tls {
    cert_file = %q
    key_file  = %q
  }
}
admin { address = "127.0.0.1:0" }
backend { url = "http://127.0.0.1:1" }
route "/ws" { auth = "none" }
`, filepath.Join(dir, tc.cert), filepath.Join(dir, tc.key))), 0o600)
			cfg, err := config.Load(path)
			if err != nil {
				t.Fatalf("config: %v", err)
			}
			a, err := start(context.Background(), cfg, slog.New(slog.DiscardHandler))
			if err == nil {
				a.requestDrain()
				a.wait(make(chan os.Signal))
				t.Fatal("started with a bad certificate pair")
			}
			if !strings.Contains(err.Error(), "tls") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say which TLS file is wrong", err)
			}
		})
	}
}

// writeCert writes a self-signed certificate for 127.0.0.1 with serial and
// its key, and returns the certificate.
func writeCert(t *testing.T, certFile, keyFile string, serial int64) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "wsidecar test"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert
}

// permessage-deflate is off unless the listener enables it.
func TestDoorCompressionOffByDefault(t *testing.T) {
	be := newBackend(t)
	sc := startSidecar(t, be.URL, `
backend { url = "%BACKEND%" }
origins { allow_missing = true }
route "/ws" { auth = "none" }
`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, sc.WS+"/ws", &websocket.DialOptions{CompressionMode: websocket.CompressionContextTakeover})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
		t.Errorf("compression negotiated without listener.compression: %q", ext)
	}
}
