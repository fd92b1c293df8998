package auth

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"github.com/wsidecar/wsidecar/config"
)

// httpRequest adapts net/http to Request, as the proxy adapts fasthttp.
type httpRequest struct {
	r *http.Request
	q url.Values
}

func (h httpRequest) Header(name string) string { return strings.Join(h.r.Header.Values(name), ", ") }
func (h httpRequest) Query(name string) string  { return h.q.Get(name) }
func (h httpRequest) Cookie(name string) string {
	c, err := h.r.Cookie(name)
	if err != nil {
		return ""
	}
	return c.Value
}

// guardServer is a minimal handshake guard built from this package alone:
// Origin, token, verification, subprotocol — what the proxy will do — in
// front of a real WebSocket endpoint on loopback.
func guardServer(t *testing.T, v *Verifier, origins *OriginPolicy, logs *logBuffer) *httptest.Server {
	t.Helper()
	log := logs.logger()
	queryNames := QueryNames(v.Sources())
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req := httpRequest{r: r, q: r.URL.Query()}
		logLine := func(msg string, args ...any) {
			log.Info(msg, append([]any{"path", r.URL.Path, "query", RedactQuery(r.URL.RawQuery, queryNames)}, args...)...)
		}
		_, present := r.Header["Origin"]
		if !origins.Allowed(r.Header.Get("Origin"), present) {
			logLine("handshake refused", "reason", "origin")
			http.Error(w, "origin not allowed", http.StatusForbidden)
			return
		}
		token, source := v.Extract(req)
		id, err := v.Verify(r.Context(), token)
		if err != nil {
			var ae *Error
			errors.As(err, &ae)
			logLine("handshake refused", "reason", string(ae.Reason), "source", source, "err", err)
			w.Header().Set("WWW-Authenticate", ae.WWWAuthenticate())
			http.Error(w, string(ae.Reason), http.StatusUnauthorized)
			return
		}
		opts := &websocket.AcceptOptions{InsecureSkipVerify: true} // Origin checked above
		if p := SelectSubprotocol(OfferedProtocols(req.Header("Sec-WebSocket-Protocol")), []string{"chat.v1"}); p != "" {
			opts.Subprotocols = []string{p}
		}
		c, err := websocket.Accept(w, r, opts)
		if err != nil {
			return
		}
		defer c.CloseNow()
		logLine("handshake accepted", "user", id.User, "source", source)
		_ = c.Write(r.Context(), websocket.MessageText, []byte(id.User+"|"+c.Subprotocol()))
		c.Close(websocket.StatusNormalClosure, "")
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestHandshakeGuardOverRealWebSocket(t *testing.T) {
	k := testKeys(t)
	cfg := baseJWT()
	cfg.Sources = []string{"header", "protocol", "cookie:wsid", "query:access_token"}
	cfg.Keys = []config.JWTKey{{Name: "idp", Algorithms: []string{"EdDSA"}, PEMFile: writePublicPEM(t, k.ed.Public())}}
	v := newTestVerifier(t, cfg, VerifierOptions{Now: time.Now})
	origins, err := NewOriginPolicy(config.Origins{Allow: []string{"https://*.example.com"}, AllowMissing: true})
	if err != nil {
		t.Fatal(err)
	}
	var logs logBuffer
	srv := guardServer(t, v, origins, &logs)
	wsURL := "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"

	live := func() jwt.MapClaims {
		c := goodClaims()
		c["exp"] = time.Now().Add(time.Hour).Unix()
		c["iat"] = time.Now().Unix()
		return c
	}
	token := sign(t, "EdDSA", k.ed, live(), nil)
	expiredClaims := live()
	expiredClaims["exp"] = time.Now().Add(-time.Hour).Unix()
	expired := sign(t, "EdDSA", k.ed, expiredClaims, nil)
	forged := sign(t, "EdDSA", k.ed2, live(), nil)

	hdr := func(kv ...string) http.Header {
		h := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			h.Add(kv[i], kv[i+1])
		}
		return h
	}
	cases := []struct {
		name      string
		query     string
		header    http.Header
		protocols []string
		status    int    // 0: upgrade expected
		got       string // first message: user|subprotocol
		challenge string // substring of WWW-Authenticate
	}{
		{name: "browser: bearer pair plus app protocol", protocols: []string{"bearer", token, "chat.v1"}, got: "user-1|chat.v1"},
		{name: "browser: bearer pair only", protocols: []string{"bearer", token}, got: "user-1|bearer"},
		{name: "browser with allowed origin", header: hdr("Origin", "https://app.example.com"), protocols: []string{"bearer", token}, got: "user-1|bearer"},
		{name: "Authorization header", header: hdr("Authorization", "Bearer "+token), got: "user-1|"},
		{name: "cookie", header: hdr("Cookie", "wsid="+token), got: "user-1|"},
		{name: "query", query: "?room=7&access_token=" + token, got: "user-1|"},
		{name: "no token", status: 401, challenge: `Bearer realm="wsidecar"`},
		{name: "forged signature", query: "?access_token=" + forged, status: 401, challenge: `error="invalid_token"`},
		{name: "expired", protocols: []string{"bearer", expired, "chat.v1"}, status: 401, challenge: `error_description="the token has expired"`},
		{name: "garbage", header: hdr("Authorization", "Bearer garbage"), status: 401, challenge: `error_description="the token is malformed"`},
		{name: "foreign origin", header: hdr("Origin", "https://example.com.evil.io"), protocols: []string{"bearer", token}, status: 403},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, resp, err := websocket.Dial(ctx, wsURL+c.query, &websocket.DialOptions{HTTPHeader: c.header, Subprotocols: c.protocols})
			if c.status != 0 {
				if err == nil {
					conn.CloseNow()
					t.Fatal("handshake succeeded")
				}
				if resp == nil || resp.StatusCode != c.status {
					t.Fatalf("dial error %v, response %v; want status %d", err, resp, c.status)
				}
				if got := resp.Header.Get("WWW-Authenticate"); !strings.Contains(got, c.challenge) {
					t.Errorf("WWW-Authenticate = %q, want %q in it", got, c.challenge)
				}
				return
			}
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer conn.CloseNow()
			if p := conn.Subprotocol(); p == token {
				t.Fatal("the token was echoed as the subprotocol")
			}
			_, msg, err := conn.Read(ctx)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if string(msg) != c.got {
				t.Errorf("got %q, want %q", msg, c.got)
			}
		})
	}
	out := logs.String()
	for _, secret := range []string{token, expired, forged} {
		if strings.Contains(out, secret) {
			t.Fatalf("a token reached the log:\n%s", out)
		}
	}
	if !strings.Contains(out, "access_token=REDACTED") || !strings.Contains(out, "room=7") {
		t.Errorf("query not logged redacted:\n%s", out)
	}
}
