package proxy

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	cws "github.com/coder/websocket"

	"github.com/wsidecar/wsidecar/auth"
	"github.com/wsidecar/wsidecar/config"
	"github.com/wsidecar/wsidecar/limits"
)

const gateSecret = "a-gate-test-secret-long-enough-for-hs256"

var gateJWT = config.JWT{
	Sources:    []string{"cookie:sid", "protocol", "query:tok", "header"},
	RequireExp: true,
	Keys:       []config.JWTKey{{Name: "hmac", Algorithms: []string{"HS256"}, Secret: gateSecret}},
}

func gateToken(t *testing.T, sub string, ttl time.Duration) string {
	t.Helper()
	tok, err := auth.Mint(gateJWT, gateJWT.Keys[0], map[string]any{"sub": sub, "exp": time.Now().Add(ttl).Unix()}, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// gated is a server whose door is a Gate, with its logs and limits.
type gated struct {
	*testServer
	gate *Gate
	adm  *limits.Door
	logs *lockedBuffer
	be   *fakeBackend
}

func startGated(t *testing.T, lim config.Limits, p GatePolicy, routes ...config.Route) *gated {
	t.Helper()
	set := metrics.NewSet()
	logs := &lockedBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	adm := limits.NewDoor(lim, limits.Options{Metrics: set, Logger: log})
	if p.Verifier == nil {
		v, err := auth.NewVerifier(context.Background(), gateJWT, auth.VerifierOptions{Metrics: set})
		if err != nil {
			t.Fatal(err)
		}
		p.Verifier = v
	}
	g, err := NewGate(p, GateOptions{Limits: adm, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	be := newFakeBackend()
	s := startServer(t, Options{Routes: routes, Backend: be, Door: g.Door(), Limits: lim, Metrics: set, Logger: log})
	return &gated{testServer: s, gate: g, adm: adm, logs: logs, be: be}
}

func jwtRoute(path string) config.Route {
	r := openRoute(path)
	r.Auth = "jwt"
	return r
}

func (g *gated) connects() int {
	g.be.mu.Lock()
	defer g.be.mu.Unlock()
	return len(g.be.connects)
}

// Each guard answers with its status, reason and headers; refusals are
// counted exactly once (limits.Door counts its own, the server the rest)
// and never reach the backend.
func TestGateRefusals(t *testing.T) {
	perRoute := &config.Origins{Allow: []string{"https://admin.example.com"}}
	admin := jwtRoute("/admin")
	admin.Origins = perRoute
	g := startGated(t,
		config.Limits{PerIPConnections: 1, PerUserConnections: 1},
		GatePolicy{Origins: config.Origins{Allow: []string{"https://*.example.com"}, AllowMissing: true}, Routes: []config.Route{admin}},
		jwtRoute("/ws"), admin)
	good := gateToken(t, "alice", time.Hour)

	cases := []struct {
		name   string
		path   string
		hdr    http.Header
		status int
		reason string
		header [2]string
	}{
		{"look-alike origin", "/ws", http.Header{"Origin": {"https://example.com.evil.io"}}, 403, "origin", [2]string{}},
		{"two origin lines", "/ws", http.Header{"Origin": {"https://a.example.com", "https://b.example.com"}}, 403, "origin", [2]string{}},
		{"route override refuses the global list", "/admin", http.Header{"Origin": {"https://app.example.com"}}, 403, "origin", [2]string{}},
		{"route override refuses a missing origin", "/admin", nil, 403, "origin", [2]string{}},
		{"ip cap", "/ws", http.Header{"Authorization": {"Bearer " + good}}, 429, "ip_cap", [2]string{"Retry-After", "5"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.reason == "ip_cap" {
				// The cap is checked before Origin: take the one slot only now.
				wsDial(t, g.url+"/ws", &cws.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + good}}})
			}
			status, hdr, body := wsDialFail(t, g.url+tc.path, &cws.DialOptions{HTTPHeader: tc.hdr})
			if status != tc.status || !strings.Contains(body, `"code":"`+tc.reason+`"`) {
				t.Fatalf("answer %d %q, want %d %s", status, body, tc.status, tc.reason)
			}
			if tc.header[0] != "" && hdr.Get(tc.header[0]) != tc.header[1] {
				t.Fatalf("%s = %q, want %q", tc.header[0], hdr.Get(tc.header[0]), tc.header[1])
			}
		})
	}
	if got := metricValue(g.set, `wsidecar_handshake_rejections_total{reason="ip_cap"}`); got != "1" {
		t.Errorf("one ip_cap refusal counted %s times", got)
	}
	if got := metricValue(g.set, `wsidecar_handshake_rejections_total{reason="origin"}`); got != "4" {
		t.Errorf("four origin refusals counted %s times", got)
	}
	// One log line per reason and address.
	if n := strings.Count(g.logs.String(), "reason=origin"); n != 1 {
		t.Errorf("%d log lines for four origin refusals", n)
	}
	if n := g.connects(); n != 1 {
		t.Errorf("backend saw %d connects, want only the admitted one", n)
	}
}

// The per-user cap counts the token's subject across addresses; the
// handshake rate answers 429 with the limiter's Retry-After.
func TestGateUserCapAndRate(t *testing.T) {
	g := startGated(t,
		config.Limits{PerUserConnections: 1, HandshakeRate: config.Rate{N: 1, Per: time.Minute, Burst: 3}},
		GatePolicy{Origins: config.Origins{AllowMissing: true}}, jwtRoute("/ws"))
	as := func(sub string) *cws.DialOptions {
		return &cws.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + gateToken(t, sub, time.Hour)}}}
	}
	wsDial(t, g.url+"/ws", as("bob"))
	if status, hdr, body := wsDialFail(t, g.url+"/ws", as("bob")); status != 429 || hdr.Get("Retry-After") == "" || !strings.Contains(body, "user_cap") {
		t.Fatalf("second socket of one user: %d Retry-After=%q %q", status, hdr.Get("Retry-After"), body)
	}
	wsDial(t, g.url+"/ws", as("carol")) // third handshake: the burst is spent
	status, hdr, body := wsDialFail(t, g.url+"/ws", as("dave"))
	if status != 429 || !strings.Contains(body, "handshake_rate") || hdr.Get("Retry-After") != "60" {
		t.Fatalf("fourth handshake: %d Retry-After=%q %q", status, hdr.Get("Retry-After"), body)
	}
	if g.adm.OpenUser("bob") != 1 {
		t.Errorf("bob holds %d slots", g.adm.OpenUser("bob"))
	}
}

// Tokens are found in the configured sources; a browser that offered only
// the bearer pair gets the marker back, never the token; a 401 carries the
// RFC 6750 challenge.
func TestGateTokenSources(t *testing.T) {
	r := jwtRoute("/ws")
	r.Subprotocols = []string{"chat"}
	g := startGated(t, config.Limits{}, GatePolicy{Origins: config.Origins{AllowMissing: true}}, r)
	tok := gateToken(t, "erin", time.Hour)
	for _, tc := range []struct {
		name  string
		url   string
		opts  *cws.DialOptions
		proto string
	}{
		{"cookie", g.url + "/ws", &cws.DialOptions{HTTPHeader: http.Header{"Cookie": {"theme=dark; sid=" + tok}}}, ""},
		{"query", g.url + "/ws?tok=" + tok, nil, ""},
		{"protocol only", g.url + "/ws", &cws.DialOptions{Subprotocols: []string{"bearer", tok}}, "bearer"},
		{"protocol and chat", g.url + "/ws", &cws.DialOptions{Subprotocols: []string{"bearer", tok, "chat"}}, "chat"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := g.connects()
			c := wsDial(t, tc.url, tc.opts)
			defer c.CloseNow()
			if c.Subprotocol() != tc.proto {
				t.Fatalf("subprotocol %q, want %q", c.Subprotocol(), tc.proto)
			}
			g.be.mu.Lock()
			ci := g.be.connects[before]
			g.be.mu.Unlock()
			if ci.User != "erin" || !strings.Contains(string(ci.Claims), `"sub":"erin"`) {
				t.Fatalf("identity %q %s", ci.User, ci.Claims)
			}
			want := tc.proto
			if want == "bearer" {
				want = "" // the marker is no application protocol
			}
			if ci.Protocol != want {
				t.Fatalf("backend told protocol %q, want %q", ci.Protocol, want)
			}
		})
	}
	// Sec-WebSocket-Protocol may arrive on several lines (RFC 9110 §5.3).
	nc, err := net.Dial("tcp", strings.TrimPrefix(g.url, "ws://"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	fmt.Fprintf(nc, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: Bearer\r\nSec-WebSocket-Protocol: %s, chat\r\n\r\n", tok)
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Protocol") != "chat" {
		t.Fatalf("two protocol lines: %d, protocol %q", resp.StatusCode, resp.Header.Get("Sec-WebSocket-Protocol"))
	}
	for _, tc := range []struct {
		name, url, challenge, reason string
	}{
		{"none", g.url + "/ws", `Bearer realm="wsidecar"`, "token_missing"},
		{"expired", g.url + "/ws?tok=" + gateToken(t, "erin", -time.Minute), `Bearer error="invalid_token"`, "token_expired"},
		{"garbage", g.url + "/ws?tok=x.y.z", `Bearer error="invalid_token"`, "token_invalid"},
	} {
		status, hdr, body := wsDialFail(t, tc.url, nil)
		if status != 401 || !strings.HasPrefix(hdr.Get("WWW-Authenticate"), tc.challenge) || !strings.Contains(body, tc.reason) {
			t.Errorf("%s: %d %q %q", tc.name, status, hdr.Get("WWW-Authenticate"), body)
		}
	}
	if logs := g.logs.String(); strings.Contains(logs, tok) || strings.Contains(logs, "x.y.z") {
		t.Errorf("a token reached the logs:\n%s", logs)
	}
	if !strings.Contains(g.logs.String(), "tok=REDACTED") {
		t.Errorf("refused query token not logged redacted:\n%s", g.logs.String())
	}
}

// X-Forwarded-For is believed only from trusted peers, walked right to left.
func TestGateClientIP(t *testing.T) {
	for _, tc := range []struct {
		name    string
		trusted []netip.Prefix
		xff     string
		realIP  string
		want    string
	}{
		{"untrusted peer: headers ignored", nil, "203.0.113.9", "203.0.113.8", "127.0.0.1"},
		{"trusted peer: rightmost untrusted hop", []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, "198.51.100.1, 203.0.113.9", "", "203.0.113.9"},
		{"trusted peer: X-Real-IP without XFF", []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, "", "203.0.113.7", "203.0.113.7"},
		{"trusted peer: garbage hop stops the walk", []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, "203.0.113.9, unknown", "", "127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := startGated(t, config.Limits{}, GatePolicy{Origins: config.Origins{AllowMissing: true}, TrustedProxies: tc.trusted}, openRoute("/ws"))
			h := http.Header{}
			if tc.xff != "" {
				h.Set("X-Forwarded-For", tc.xff)
			}
			if tc.realIP != "" {
				h.Set("X-Real-IP", tc.realIP)
			}
			wsDial(t, g.url+"/ws", &cws.DialOptions{HTTPHeader: h})
			g.be.mu.Lock()
			got := g.be.connects[0].ClientIP
			g.be.mu.Unlock()
			if got != tc.want {
				t.Fatalf("client IP %s, want %s", got, tc.want)
			}
		})
	}
}

// Set swaps origins and keys for new handshakes; a bad policy changes
// nothing; a route the policy did not list still gets its override.
func TestGateSet(t *testing.T) {
	late := openRoute("/late")
	late.Origins = &config.Origins{Allow: []string{"https://late.example.com"}}
	g := startGated(t, config.Limits{}, GatePolicy{Origins: config.Origins{Allow: []string{"https://a.example.com"}}},
		openRoute("/ws"), late)
	from := func(origin string) *cws.DialOptions {
		return &cws.DialOptions{HTTPHeader: http.Header{"Origin": {origin}}}
	}
	open := wsDial(t, g.url+"/ws", from("https://a.example.com"))
	wsDial(t, g.url+"/late", from("https://late.example.com")) // compiled on first use

	v, err := auth.NewVerifier(context.Background(), gateJWT, auth.VerifierOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.gate.Set(GatePolicy{Origins: config.Origins{Allow: []string{"https://*"}}, Verifier: v}); err == nil {
		t.Fatal("a bad origin pattern was accepted")
	}
	v.Close()
	if status, _, _ := wsDialFail(t, g.url+"/ws", from("https://b.example.com")); status != 403 {
		t.Fatalf("after a refused Set: %d", status)
	}
	if err := g.gate.Set(GatePolicy{Origins: config.Origins{Allow: []string{"https://b.example.com"}}}); err != nil {
		t.Fatal(err)
	}
	wsDial(t, g.url+"/ws", from("https://b.example.com"))
	if status, _, _ := wsDialFail(t, g.url+"/ws", from("https://a.example.com")); status != 403 {
		t.Fatalf("old origin after Set: %d", status)
	}
	wsWrite(t, open, cws.MessageText, "still open")
	if _, msg := wsRead(t, open); msg != "still open" {
		t.Fatalf("open socket after Set: %q", msg)
	}
	if got := AdmitsNobody(GatePolicy{Routes: []config.Route{openRoute("/x"), late}}); len(got) != 1 || got[0] != "/x" {
		t.Fatalf("AdmitsNobody = %v", got)
	}
}

// The adapter hands auth the request as RFC 9110 says: header lines
// joined, cookies and query values decoded.
func TestJoinHeader(t *testing.T) {
	for _, tc := range []struct {
		in   [][]byte
		want string
	}{
		{nil, ""},
		{[][]byte{[]byte("a")}, "a"},
		{[][]byte{[]byte("bearer"), []byte("tok, chat")}, "bearer, tok, chat"},
	} {
		if got := joinHeader(tc.in); got != tc.want {
			t.Errorf("joinHeader(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
