package proxy

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cws "github.com/coder/websocket"

	"github.com/wsidecar/wsidecar/bridge"
	"github.com/wsidecar/wsidecar/config"
)

// rawHandshake sends a hand-made request and returns the answer.
func rawHandshake(t *testing.T, method, url string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, strings.Replace(url, "ws://", "http://", 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

var upgradeHeaders = map[string]string{
	"Connection":            "Upgrade",
	"Upgrade":               "websocket",
	"Sec-WebSocket-Version": "13",
	"Sec-WebSocket-Key":     "dGhlIHNhbXBsZSBub25jZQ==",
}

func withHeaders(extra map[string]string, drop ...string) map[string]string {
	m := map[string]string{}
	for k, v := range upgradeHeaders {
		m[k] = v
	}
	for _, k := range drop {
		delete(m, k)
	}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

func TestHandshakeRefusals(t *testing.T) {
	be := newFakeBackend()
	authRoute := openRoute("/private")
	authRoute.Auth = "jwt"
	var reasons sync.Map
	s := startServer(t, Options{
		Routes:   []config.Route{openRoute("/ws"), authRoute},
		Backend:  be,
		OnReject: func(r string) { v, _ := reasons.LoadOrStore(r, new(atomic.Int32)); v.(*atomic.Int32).Add(1) },
	})
	cases := []struct {
		name       string
		method     string
		path       string
		hdr        map[string]string
		wantStatus int
		wantReason string
		wantHeader [2]string
	}{
		{"no_route", "GET", "/nope", upgradeHeaders, 404, "not_found", [2]string{}},
		{"post_on_route", "POST", "/ws", upgradeHeaders, 405, "method", [2]string{"Allow", "GET"}},
		{"plain_get_on_route", "GET", "/ws", nil, 400, "not_websocket", [2]string{"Upgrade", "websocket"}},
		{"old_version", "GET", "/ws", withHeaders(map[string]string{"Sec-WebSocket-Version": "8"}), 426, "version", [2]string{"Sec-WebSocket-Version", "13"}},
		{"no_key", "GET", "/ws", withHeaders(nil, "Sec-WebSocket-Key"), 400, "bad_handshake", [2]string{}},
		{"cross_origin", "GET", "/ws", withHeaders(map[string]string{"Origin": "https://evil.example"}), 403, "origin", [2]string{}},
		{"auth_route_without_auth_guard", "GET", "/private", upgradeHeaders, 401, "auth", [2]string{"WWW-Authenticate", `Bearer error="invalid_request"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := rawHandshake(t, tc.method, s.url+tc.path, tc.hdr)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d (body %q)", resp.StatusCode, tc.wantStatus, body)
			}
			if !strings.Contains(body, `"code":"`+tc.wantReason+`"`) {
				t.Fatalf("body %q lacks reason %s", body, tc.wantReason)
			}
			if tc.wantHeader[0] != "" && resp.Header.Get(tc.wantHeader[0]) != tc.wantHeader[1] {
				t.Fatalf("%s = %q", tc.wantHeader[0], resp.Header.Get(tc.wantHeader[0]))
			}
			if got := metricValue(s.set, `wsidecar_handshake_rejections_total{reason="`+tc.wantReason+`"}`); got == "" || got == "0" {
				t.Fatalf("rejection not counted in metrics (got %q)", got)
			}
			if v, ok := reasons.Load(tc.wantReason); !ok || v.(*atomic.Int32).Load() == 0 {
				t.Fatalf("OnReject not called with %s", tc.wantReason)
			}
		})
	}
	// A same-origin browser passes the default Origin stage.
	c := wsDial(t, s.url+"/ws", &cws.DialOptions{HTTPHeader: http.Header{"Origin": {"http://" + strings.TrimPrefix(s.url, "ws://")}}})
	_ = c.CloseNow()
	// Local refusals never reach the backend.
	be.mu.Lock()
	n := len(be.connects)
	be.mu.Unlock()
	if n != 1 {
		t.Fatalf("backend saw %d connects, want only the admitted one", n)
	}
}

// recorder is a Door whose guards log their order and hold a slot each that
// must be given back.
type recorder struct {
	mu    sync.Mutex
	order []string
	held  atomic.Int32
}

func (r *recorder) guard(name string, f func(h *Handshake) *Rejection) Guard {
	return GuardFunc(func(h *Handshake) *Rejection {
		r.mu.Lock()
		r.order = append(r.order, name)
		r.mu.Unlock()
		r.held.Add(1)
		h.OnRelease(func() { r.held.Add(-1) })
		if f != nil {
			return f(h)
		}
		return nil
	})
}

func TestDoorOrderAndReleases(t *testing.T) {
	rec := &recorder{}
	var refuseUser atomic.Bool
	var routeSeenByOrigin atomic.Value
	door := Door{
		GlobalCap: rec.guard("global_cap", nil),
		ClientIP: rec.guard("client_ip", func(h *Handshake) *Rejection {
			h.ClientIP = netip.MustParseAddr("203.0.113.9") // as a trusted proxy would say
			return nil
		}),
		HandshakeRate: rec.guard("rate", nil),
		IPCap:         rec.guard("ip_cap", nil),
		Origin: rec.guard("origin", func(h *Handshake) *Rejection {
			if h.Route != nil {
				routeSeenByOrigin.Store(h.Route.Path)
			}
			return nil
		}),
		Auth: rec.guard("auth", func(h *Handshake) *Rejection {
			h.User = "alice"
			h.ClaimsJSON = []byte(`{"sub":"alice"}`)
			// Strip the token carried in Sec-WebSocket-Protocol.
			var kept []string
			for _, p := range h.Protocols {
				if p != "bearer" && !strings.HasPrefix(p, "tok.") {
					kept = append(kept, p)
				}
			}
			h.Protocols = kept
			return nil
		}),
		UserCap: rec.guard("user_cap", func(h *Handshake) *Rejection {
			if refuseUser.Load() {
				return &Rejection{Status: 429, Reason: "user_cap", Message: "too many", RetryAfter: 1500 * time.Millisecond}
			}
			return nil
		}),
	}
	be := newFakeBackend()
	r := openRoute("/ws/{room}")
	r.Auth = "jwt"
	r.Subprotocols = []string{"chat"}
	s := startServer(t, Options{Routes: []config.Route{r}, Backend: be, Door: door})

	// Admitted: every stage ran in order; what guards set reaches the backend.
	c := wsDial(t, s.url+"/ws/1", &cws.DialOptions{Subprotocols: []string{"bearer", "tok.abc", "chat"}})
	want := "global_cap,client_ip,rate,ip_cap,origin,auth,user_cap"
	rec.mu.Lock()
	got := strings.Join(rec.order, ",")
	rec.order = nil
	rec.mu.Unlock()
	if got != want {
		t.Fatalf("stage order %s, want %s", got, want)
	}
	if c.Subprotocol() != "chat" {
		t.Fatalf("negotiated %q after token stripping", c.Subprotocol())
	}
	if p, _ := routeSeenByOrigin.Load().(string); p != "/ws/{room}" {
		t.Fatalf("Origin stage saw route %q", p)
	}
	be.mu.Lock()
	ci := be.connects[0]
	be.mu.Unlock()
	if ci.User != "alice" || string(ci.Claims) != `{"sub":"alice"}` || ci.ClientIP != "203.0.113.9" || ci.Protocol != "chat" {
		t.Fatalf("ConnInfo = %+v", ci)
	}
	if rec.held.Load() != 7 {
		t.Fatalf("open socket holds %d slots, want 7", rec.held.Load())
	}
	// The slots come back when the socket closes.
	_ = c.Close(cws.StatusNormalClosure, "")
	be.waitDisconnect(t)
	eventually(t, 5*time.Second, "slots released", func() bool { return rec.held.Load() == 0 })

	// Refused at the last stage: 429 + Retry-After, earlier slots released,
	// no backend call.
	refuseUser.Store(true)
	status, hdr, body := wsDialFail(t, s.url+"/ws/1", nil)
	if status != 429 || hdr.Get("Retry-After") != "2" || !strings.Contains(body, "user_cap") {
		t.Fatalf("answer %d Retry-After=%q %q", status, hdr.Get("Retry-After"), body)
	}
	if rec.held.Load() != 0 {
		t.Fatalf("refused handshake kept %d slots", rec.held.Load())
	}
	be.mu.Lock()
	n := len(be.connects)
	be.mu.Unlock()
	if n != 1 {
		t.Fatalf("refused handshake reached the backend (%d connects)", n)
	}
}

func TestBuiltinGlobalCap(t *testing.T) {
	be := newFakeBackend()
	s := startServer(t, Options{Routes: []config.Route{openRoute("/ws")}, Backend: be, Limits: config.Limits{MaxConnections: 2}})
	a := wsDial(t, s.url+"/ws", nil)
	wsDial(t, s.url+"/ws", nil)
	status, hdr, _ := wsDialFail(t, s.url+"/ws", nil)
	if status != 503 || hdr.Get("Retry-After") == "" {
		t.Fatalf("third socket: %d Retry-After=%q", status, hdr.Get("Retry-After"))
	}
	_ = a.Close(cws.StatusNormalClosure, "")
	be.waitDisconnect(t)
	wsDial(t, s.url+"/ws", nil) // the slot came back
	// Reloaded limits apply to new handshakes.
	s.UpdateLimits(config.Limits{MaxConnections: 3})
	wsDial(t, s.url+"/ws", nil)
}

func TestTokenExpiryClosesSocket(t *testing.T) {
	be := newFakeBackend()
	r := openRoute("/ws")
	r.Auth = "jwt"
	door := Door{Auth: GuardFunc(func(h *Handshake) *Rejection {
		h.User = "bob"
		h.ExpiresAt = time.Now().Add(300 * time.Millisecond)
		return nil
	})}
	s := startServer(t, Options{Routes: []config.Route{r}, Backend: be, Door: door,
		Heartbeat: config.Heartbeat{Interval: 50 * time.Millisecond, Timeout: 5 * time.Second}})
	c := wsDial(t, s.url+"/ws", nil)
	start := time.Now()
	code, reason := wsReadClose(t, c, 5*time.Second)
	if code != cws.StatusPolicyViolation || reason != "token expired" {
		t.Fatalf("close %d %q", code, reason)
	}
	if el := time.Since(start); el < 200*time.Millisecond {
		t.Fatalf("closed after %v, before the token expired", el)
	}
	if d := be.waitDisconnect(t); d.d.Code != 1008 || d.ci.User != "bob" {
		t.Fatalf("disconnect %+v", d)
	}
}

func TestUpdateRoutesKeepsOpenSockets(t *testing.T) {
	be := newFakeBackend()
	s := startServer(t, Options{Routes: []config.Route{openRoute("/old")}, Backend: be})
	c := wsDial(t, s.url+"/old", nil)
	if err := s.UpdateRoutes([]config.Route{openRoute("/new")}); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateRoutes([]config.Route{{Path: "/bad/{x"}}); err == nil {
		t.Fatal("bad pattern accepted")
	}
	wsWrite(t, c, cws.MessageText, "still here")
	if _, msg := wsRead(t, c); msg != "still here" {
		t.Fatalf("got %q", msg)
	}
	if status, _, _ := wsDialFail(t, s.url+"/old", nil); status != 404 {
		t.Fatalf("old route answered %d", status)
	}
	wsDial(t, s.url+"/new", nil)
}

func TestClientLeavesDuringConnectWebhook(t *testing.T) {
	be := newFakeBackend()
	release := make(chan struct{})
	be.connect = func(*bridge.ConnInfo) (*bridge.ConnectResult, error) {
		<-release
		return &bridge.ConnectResult{Accepted: true, Status: 200, Actions: &bridge.Actions{Subscribe: []string{"room"}}}, nil
	}
	rec := &recorder{}
	s := startServer(t, Options{Routes: []config.Route{openRoute("/ws")}, Backend: be,
		Door: Door{IPCap: rec.guard("ip_cap", nil)}})

	nc, err := net.Dial("tcp", strings.TrimPrefix(s.url, "ws://"))
	if err != nil {
		t.Fatal(err)
	}
	req := "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := nc.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "connect webhook called", func() bool {
		be.mu.Lock()
		defer be.mu.Unlock()
		return len(be.connects) == 1
	})
	_ = nc.(*net.TCPConn).SetLinger(0) // RST: the client is gone for good
	_ = nc.Close()
	close(release)

	d := be.waitDisconnect(t)
	if d.d.Code != 1006 || d.d.Clean {
		t.Fatalf("disconnect %+v", d.d)
	}
	eventually(t, 5*time.Second, "socket gone and slot released", func() bool {
		return s.Hub().Count() == 0 && rec.held.Load() == 0
	})
	if got := s.Hub().Deliver(&bridge.Target{Channels: []string{"room"}}, bridge.Message{Data: []byte("x")}); got != (bridge.Counts{}) {
		t.Fatalf("deliver to the gone socket's channel: %+v", got)
	}
	time.Sleep(50 * time.Millisecond)
	if n := len(be.disconnects()); n != 1 {
		t.Fatalf("%d disconnects", n)
	}
}

func TestOversizedHandshakeHeaders(t *testing.T) {
	s := startServer(t, Options{Routes: []config.Route{openRoute("/ws")}, Backend: newFakeBackend(),
		Listener: config.Listener{MaxHeaderBytes: 4096}})
	resp, body := rawHandshake(t, "GET", s.url+"/ws", withHeaders(map[string]string{"X-Big": strings.Repeat("b", 8000)}))
	if resp.StatusCode != 431 || !strings.Contains(body, "headers_too_large") {
		t.Fatalf("answer %d %q", resp.StatusCode, body)
	}
	if got := metricValue(s.set, `wsidecar_handshake_rejections_total{reason="headers_too_large"}`); got != "1" {
		t.Fatalf("not counted: %q", got)
	}
}

func TestListenAndServe(t *testing.T) {
	s, err := NewServer(Options{Listener: config.Listener{Address: "127.0.0.1:0"},
		Routes: []config.Route{openRoute("/ws")}, Backend: newFakeBackend()})
	if err != nil {
		t.Fatal(err)
	}
	if s.Addr() != nil {
		t.Fatal("Addr before serving")
	}
	served := make(chan error, 1)
	go func() { served <- s.ListenAndServe() }()
	eventually(t, 5*time.Second, "listening", func() bool { return s.Addr() != nil })
	c := wsDial(t, "ws://"+s.Addr().String()+"/ws", nil)
	wsWrite(t, c, cws.MessageText, "hi")
	if _, msg := wsRead(t, c); msg != "hi" {
		t.Fatalf("got %q", msg)
	}
	if id := connIDs(s.Hub(), "/ws"); len(id) != 1 || bridge.NodeOf(id[0]) == "" {
		t.Fatalf("ids %v: a random node id is used when none is set", id)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatalf("ListenAndServe: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(ln); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve after Close: %v", err)
	}
}
