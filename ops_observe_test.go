package main

// Observability stories: /metrics is valid Prometheus text with every series
// an operator needs, and its counters move as clients act; logs carry the
// connection id and never a token, a cookie or a message body.

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
)

// opsService is a legacy backend for the observability tests: hooks are
// recorded and echoed, /events sends one event (type "room") per stream and
// holds the stream open until cut.
type opsService struct {
	*backend
	cmu sync.Mutex
	cut chan struct{} // closing it ends the current SSE stream
}

func newOpsService(t *testing.T, reply func(w http.ResponseWriter, h hook) bool, sse string) (*opsService, string) {
	t.Helper()
	s := &opsService{backend: newBackend(t)}
	s.setReply(func(w http.ResponseWriter, h hook) {
		if reply != nil && reply(w, h) {
			return
		}
		if h.Path == "/message" {
			w.Header().Set("Content-Type", "text/plain")
			w.Write(append([]byte("echo:"), h.Body...))
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux := http.NewServeMux()
	mux.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "event: room\ndata: %s\n\n", sse)
		w.(http.Flusher).Flush()
		cut := make(chan struct{})
		s.cmu.Lock()
		s.cut = cut
		s.cmu.Unlock()
		select {
		case <-cut:
		case <-r.Context().Done():
		}
	})
	mux.Handle("/", s.backend.Server.Config.Handler) // the recording hooks
	return s, newHTTPServer(t, mux)
}

// cutStream ends the SSE stream the sidecar holds, so it reconnects.
func (s *opsService) cutStream(t *testing.T) {
	t.Helper()
	var c chan struct{}
	eventually(t, 5*time.Second, func() bool {
		s.cmu.Lock()
		defer s.cmu.Unlock()
		c, s.cut = s.cut, nil
		return c != nil
	}, "no SSE stream to cut")
	close(c)
}

// /metrics parses as Prometheus text at every step, has every series the
// issue lists, and its counters move with what the client does.
func TestMetricsExposition(t *testing.T) {
	svc, url := newOpsService(t, nil, "notice-1")
	sc := startSidecar(t, url, `
backend { url = "%BACKEND%" }
origins { allow_missing = true }
route "/ws" {
  auth          = "none"
  on_connect    = "/connect"
  on_message    = "/message"
  on_disconnect = "/disconnect"
  channels      = ["room"]
}
stream "notices" {
  path = "/events"
  reconnect_min = "50ms"
  reconnect_max = "100ms"
}
`)
	eventually(t, 5*time.Second, func() bool {
		v, _ := scrape(t, sc.Admin).get(`wsidecar_sse_stream_state{stream="notices"}`)
		return v == 1
	}, "the SSE stream never opened")
	m0 := scrape(t, sc.Admin)

	// Always there, from the start.
	for _, series := range []string{
		`wsidecar_connections_open{route="/ws"}`,
		`wsidecar_connections_total{route="/ws"}`,
		"wsidecar_frames_in_total", "wsidecar_frames_out_total",
		"wsidecar_bytes_in_total", "wsidecar_bytes_out_total",
		`wsidecar_push_requests_total{kind="channel"}`, "wsidecar_push_deliveries_total",
		"wsidecar_push_dropped_total", "wsidecar_send_queue_dropped_total",
		"wsidecar_slow_consumer_closes_total",
		"wsidecar_breaker_state", `wsidecar_webhook_unavailable_total{kind="message",reason="breaker_open"}`,
		`wsidecar_sse_stream_state{stream="notices"}`, `wsidecar_sse_reconnects_total{stream="notices"}`,
		`wsidecar_sse_events_total{stream="notices"}`,
		"wsidecar_draining", "wsidecar_disconnect_queue_length", "wsidecar_disconnect_dropped_total",
		`wsidecar_config_reloads_total{result="success"}`, "wsidecar_config_last_reload_successful",
		"process_resident_memory_bytes", "go_goroutines",
	} {
		m0.value(t, series)
	}
	info := 0
	for _, s := range m0.samples {
		if s.name == "wsidecar_build_info" && s.labels["version"] != "" && s.labels["goversion"] != "" && s.value == 1 {
			info++
		}
	}
	if info != 1 {
		t.Errorf("want one wsidecar_build_info{version,goversion} 1, got %d", info)
	}
	if m0.value(t, "wsidecar_draining") != 0 || m0.value(t, "wsidecar_breaker_state") != 0 {
		t.Error("a fresh sidecar reports draining or an open breaker")
	}

	// A client connects, talks, gets a push and an SSE event; a stranger
	// knocks on the wrong door; the stream is cut once.
	c := dial(t, sc.WS+"/ws", nil)
	write(t, c, websocket.MessageText, []byte("hello"))
	waitText(t, c, 5*time.Second, func(s string) bool { return s == "echo:hello" })
	pushRaw(t, sc.Admin, "/v1/push/channel/room", "text/plain", []byte("pushed"))
	waitText(t, c, 5*time.Second, func(s string) bool { return s == "pushed" })
	if st, _ := dialStatus(t, sc.WS+"/nowhere", nil); st != http.StatusNotFound {
		t.Fatalf("/nowhere: %d", st)
	}
	svc.cutStream(t)
	waitText(t, c, 5*time.Second, func(s string) bool { return s == "notice-1" })
	m1 := scrape(t, sc.Admin)

	delta := func(series string) float64 {
		t.Helper()
		v0, _ := m0.get(series)
		return m1.value(t, series) - v0
	}
	for series, want := range map[string]float64{
		`wsidecar_connections_open{route="/ws"}`:                                          1,
		`wsidecar_connections_total{route="/ws"}`:                                         1,
		"wsidecar_frames_in_total":                                                        1,
		"wsidecar_bytes_in_total":                                                         5,
		`wsidecar_push_requests_total{kind="channel"}`:                                    1,
		"wsidecar_push_deliveries_total":                                                  1,
		`wsidecar_handshake_rejections_total{reason="not_found"}`:                         1,
		`wsidecar_webhook_duration_seconds_count{kind="connect",status="2xx"}`:            1,
		`wsidecar_webhook_duration_seconds_count{kind="message",status="2xx"}`:            1,
		`wsidecar_webhook_duration_seconds_bucket{kind="message",status="2xx",le="+Inf"}`: 1,
		`wsidecar_sse_reconnects_total{stream="notices"}`:                                 1,
	} {
		if got := delta(series); got != want {
			t.Errorf("%s moved by %v, want %v", series, got, want)
		}
	}
	if d := delta("wsidecar_frames_out_total"); d < 3 {
		t.Errorf("frames_out moved by %v; the echo, the push and the SSE event were sent", d)
	}
	if d := delta("wsidecar_bytes_out_total"); d < float64(len("echo:hello")+len("pushed")+len("notice-1")) {
		t.Errorf("bytes_out moved by %v", d)
	}
	if d := delta(`wsidecar_sse_events_total{stream="notices"}`); d < 1 {
		t.Errorf("sse_events moved by %v", d)
	}
	if ty := m1.types["wsidecar_webhook_duration_seconds"]; ty != "histogram" {
		t.Errorf("webhook latency is typed %q, want histogram (le buckets Prometheus can use)", ty)
	}
	if sum := m1.value(t, `wsidecar_webhook_duration_seconds_sum{kind="message",status="2xx"}`); sum <= 0 || sum > 5 {
		t.Errorf("message webhook latency sum %v s", sum)
	}

	// The socket leaves: open goes back down, its disconnect is delivered.
	c.Close(websocket.StatusNormalClosure, "bye")
	svc.waitCalls(t, "/disconnect", 1)
	eventually(t, 5*time.Second, func() bool {
		m := scrape(t, sc.Admin)
		v, _ := m.get(`wsidecar_webhook_duration_seconds_count{kind="disconnect",status="2xx"}`)
		return m.value(t, `wsidecar_connections_open{route="/ws"}`) == 0 && v == 1 &&
			m.value(t, "wsidecar_disconnect_delivered_total") == 1
	}, "connections_open, disconnect latency or disconnect_delivered did not move on close")
}

// Logs name the connection on every connection line and never contain a
// token, a cookie or a message body — whatever happens: accepted and
// refused handshakes, message round trips, webhook errors, pushes, SSE.
func TestLogsCarryNoSecrets(t *testing.T) {
	const (
		secret     = "jwt-hmac-secret-0123456789abcdef0123456789abcdef"
		cookie     = "session=COOKIE-SECRET-4242"
		bearerTok  = "BEARER-SECRET-5353"
		query      = "x=plain-query-value" // logged (redacted of token parameters only)
		body       = "BODY-MARKER-1111"
		failBody   = "FAIL-MARKER-2222"
		reply      = "REPLY-MARKER-3333"
		errReply   = "ERRREPLY-MARKER-4444"
		rejectBody = "REJECT-MARKER-5555"
		push       = "PUSH-MARKER-6666"
		sse        = "SSE-MARKER-8888"
	)
	svc, url := newOpsService(t, func(w http.ResponseWriter, h hook) bool {
		switch {
		case h.Path == "/connect" && strings.Contains(h.Header.Get("X-WS-Path"), "reject"):
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, rejectBody)
		case h.Path == "/message" && string(h.Body) == failBody:
			w.WriteHeader(http.StatusInternalServerError)
			io.WriteString(w, errReply)
		case h.Path == "/message":
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, reply)
		default:
			return false
		}
		return true
	}, sse)
	sc := startSidecar(t, url, `
backend {
  url             = "%BACKEND%"
  forward_headers = ["Cookie", "Authorization"]
}
origins { allow_missing = true }
jwt {
  sources = ["query:access_token", "header"]
  key "k" {
    algorithms = ["HS256"]
    secret     = "`+secret+`"
  }
}
route "/open" {
  auth          = "none"
  on_connect    = "/connect"
  on_message    = "/message"
  on_disconnect = "/disconnect"
  channels      = ["room"]
}
route "/secure" {
  on_connect    = "/connect"
  on_message    = "/message"
  on_disconnect = "/disconnect"
  channels      = ["room"]
}
stream "feed" { path = "/events" }
`)
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u-42", "exp": time.Now().Add(time.Hour).Unix()})
	token, err := tok.SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	expired, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u-42", "exp": time.Now().Add(-time.Hour).Unix()}).SignedString([]byte(secret))
	hdr := http.Header{"Cookie": {cookie}}

	a := dial(t, sc.WS+"/secure?access_token="+token+"&"+query, &websocket.DialOptions{HTTPHeader: hdr})
	b := dial(t, sc.WS+"/open?"+query, &websocket.DialOptions{HTTPHeader: http.Header{
		"Cookie": {cookie}, "Authorization": {"Bearer " + bearerTok}}})
	for _, c := range []*client{a, b} {
		write(t, c, websocket.MessageText, []byte(body))
		waitText(t, c, 5*time.Second, func(s string) bool { return s == reply })
		write(t, c, websocket.MessageText, []byte(failBody))
		waitText(t, c, 5*time.Second, func(s string) bool { return strings.Contains(s, "backend_error") })
	}
	pushRaw(t, sc.Admin, "/v1/push/channel/room", "text/plain", []byte(push))
	waitText(t, b, 5*time.Second, func(s string) bool { return s == push })
	svc.cutStream(t)
	waitText(t, b, 5*time.Second, func(s string) bool { return s == sse })
	for _, try := range []struct {
		url string
		h   http.Header
	}{
		{sc.WS + "/open?reject=1&" + query, hdr},             // connect webhook refuses
		{sc.WS + "/secure?access_token=" + expired, hdr},     // expired token
		{sc.WS + "/secure?access_token=" + token + "x", hdr}, // bad signature
		{sc.WS + "/secure", http.Header{"Authorization": {"Bearer " + token + "x"}, "Cookie": {cookie}}},
		{sc.WS + "/nowhere?access_token=" + token, hdr}, // no route
	} {
		if st, _ := dialStatus(t, try.url, try.h); st == 0 {
			t.Fatalf("%s was accepted", try.url)
		}
	}
	a.Close(websocket.StatusNormalClosure, "bye")
	b.Close(websocket.StatusNormalClosure, "bye")
	svc.waitCalls(t, "/disconnect", 2)
	time.Sleep(100 * time.Millisecond)

	logs := sc.logs.String()
	for name, s := range map[string]string{
		"the JWT": token, "the JWT signature": token[strings.LastIndexByte(token, '.')+1:],
		"the expired JWT": expired, "the HMAC secret": secret,
		"the cookie": "COOKIE-SECRET", "the bearer token": bearerTok,
		"a message body": body, "a failing message body": failBody, "a webhook reply": reply,
		"an error reply": errReply, "a connect rejection body": rejectBody,
		"a push": push, "an SSE event": sse,
	} {
		if strings.Contains(logs, s) {
			t.Errorf("the log contains %s (%q)", name, s)
		}
	}

	// The refusals were logged (with their queries), so the check above
	// covered them.
	if !strings.Contains(logs, "path=/nowhere") || !strings.Contains(logs, "reason=connect_rejected") {
		t.Error("the refused handshakes were not logged at all")
	}

	// Every line about a socket says which one, in the conn attribute.
	ids := map[string]bool{}
	for _, h := range svc.calls("/connect") {
		if id := h.Header.Get("X-WS-Connection-Id"); id != "" {
			ids[id] = true
		}
	}
	connAttr := regexp.MustCompile(`(?:^| )conn=(\S+)`)
	perConn := 0
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		m := connAttr.FindStringSubmatch(line)
		for id := range ids {
			if strings.Contains(line, id) && (m == nil || m[1] != id) {
				t.Errorf("line mentions connection %s outside a conn attribute: %s", id, line)
			}
		}
		for _, msg := range []string{"connection opened", "connection closed", "message webhook failed"} {
			if strings.Contains(line, `msg="`+msg+`"`) {
				perConn++
				if m == nil || !ids[m[1]] {
					t.Errorf("connection line without the connection id: %s", line)
				}
			}
		}
	}
	if perConn < 6 {
		t.Errorf("only %d per-connection lines at debug level; want opened, failed and closed for both sockets", perConn)
	}
}
