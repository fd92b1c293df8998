package proxy

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cws "github.com/coder/websocket"

	"github.com/wsidecar/wsidecar/bridge"
	"github.com/wsidecar/wsidecar/config"
)

func TestRoundTripTextAndBinary(t *testing.T) {
	be := newFakeBackend()
	s := startServer(t, Options{
		Routes:         []config.Route{openRoute("/ws")},
		Backend:        be,
		ForwardHeaders: []string{"Cookie"},
	})
	hdr := http.Header{}
	hdr.Set("Cookie", "session=abc")
	c := wsDial(t, s.url+"/ws?room=1", &cws.DialOptions{HTTPHeader: hdr})

	wsWrite(t, c, cws.MessageText, "héllo")
	if typ, got := wsRead(t, c); typ != cws.MessageText || got != "héllo" {
		t.Fatalf("text echo = %v %q", typ, got)
	}
	wsWrite(t, c, cws.MessageBinary, "\x00\x01\xff")
	if typ, got := wsRead(t, c); typ != cws.MessageBinary || got != "\x00\x01\xff" {
		t.Fatalf("binary echo = %v %q", typ, got)
	}

	msgs := be.messages()
	if len(msgs) != 2 || msgs[0].m.Binary || !msgs[1].m.Binary || msgs[0].seq != 1 || msgs[1].seq != 2 {
		t.Fatalf("backend saw %+v", msgs)
	}
	be.mu.Lock()
	ci := be.connects[0]
	be.mu.Unlock()
	if ci.Route != "/ws" || ci.Path != "/ws?room=1" || ci.ClientIP != "127.0.0.1" || bridge.NodeOf(ci.ID) != "test-node" {
		t.Fatalf("ConnInfo = %+v", ci)
	}
	if len(ci.Headers) != 1 || ci.Headers[0] != [2]string{"Cookie", "session=abc"} {
		t.Fatalf("forwarded headers = %v", ci.Headers)
	}
	if ci.Hooks.Message != "/message" || ci.Hooks.Disconnect != "/disconnect" {
		t.Fatalf("hooks = %+v", ci.Hooks)
	}
	for series, want := range map[string]string{
		`wsidecar_connections_open{route="/ws"}`:  "1",
		`wsidecar_connections_total{route="/ws"}`: "1",
		"wsidecar_frames_in_total":                "2",
		"wsidecar_bytes_in_total":                 "9", // "héllo" is 6 bytes, plus 3
		"wsidecar_frames_out_total":               "2",
		"wsidecar_bytes_out_total":                "9",
	} {
		// Out counters move after the write returns, which may be just
		// after the client has read the frame.
		eventually(t, 5*time.Second, series+" = "+want, func() bool { return metricValue(s.set, series) == want })
	}
}

func TestThousandMessagesArriveInOrder(t *testing.T) {
	for _, inFlight := range []int{1, 4} {
		t.Run("in_flight_"+strconv.Itoa(inFlight), func(t *testing.T) {
			be := newFakeBackend()
			var cur, peak atomic.Int32
			be.message = func(ci *bridge.ConnInfo, seq uint64, m bridge.Message) (*bridge.Actions, error) {
				n := cur.Add(1)
				defer cur.Add(-1)
				for {
					p := peak.Load()
					if n <= p || peak.CompareAndSwap(p, n) {
						break
					}
				}
				if inFlight > 1 && seq%7 == 0 {
					time.Sleep(time.Millisecond) // later calls overtake this one
				}
				return &bridge.Actions{Frames: []bridge.Message{{Data: []byte(strconv.FormatUint(seq, 10) + ":" + string(m.Data))}}}, nil
			}
			r := openRoute("/ws")
			r.MaxInFlight = inFlight
			s := startServer(t, Options{Routes: []config.Route{r}, Backend: be})
			c := wsDial(t, s.url+"/ws", nil)

			const n = 1000
			go func() {
				for i := 1; i <= n; i++ {
					if err := c.Write(context.Background(), cws.MessageText, []byte(strconv.Itoa(i))); err != nil {
						return
					}
				}
			}()
			for i := 1; i <= n; i++ {
				_, got := wsRead(t, c)
				if want := fmt.Sprintf("%d:%d", i, i); got != want {
					t.Fatalf("reply %d = %q, want %q", i, got, want)
				}
			}
			msgs := be.messages()
			if len(msgs) != n {
				t.Fatalf("backend got %d messages", len(msgs))
			}
			if inFlight == 1 {
				// One call in flight: the backend sees them in order.
				for i, m := range msgs {
					if m.seq != uint64(i+1) || string(m.m.Data) != strconv.Itoa(i+1) {
						t.Fatalf("message %d: seq %d data %q", i, m.seq, m.m.Data)
					}
				}
			}
			if p := peak.Load(); p > int32(inFlight) {
				t.Fatalf("peak concurrent calls %d > max_in_flight %d", p, inFlight)
			}
			if inFlight > 1 && peak.Load() < 2 {
				t.Logf("pipeline never overlapped calls (peak %d)", peak.Load())
			}
		})
	}
}

func TestRouteParamsReachChannels(t *testing.T) {
	be := newFakeBackend()
	var seen atomic.Pointer[config.Scope]
	exact := openRoute("/rooms/lobby")
	param := openRoute("/rooms/{room}/{lang}")
	opts := Options{Routes: []config.Route{param, exact}, Backend: be}
	// config.Template.Eval is being written by the config work; the hook
	// stands in for `channels = ["room:${path.room}", "lang:${path.lang}",
	// "q:${query.tag}", "h:${header.x-team}"]`.
	opts.evalChannels = func(r *config.Route, sc config.Scope) ([]string, error) {
		seen.Store(&sc)
		if r.Path == "/rooms/lobby" {
			return []string{"lobby"}, nil
		}
		return []string{"room:" + sc.Path["room"], "lang:" + sc.Path["lang"], "q:" + sc.Query["tag"], "h:" + sc.Header["x-team"]}, nil
	}
	s := startServer(t, opts)

	hdr := http.Header{"X-Team": {"blue"}}
	c := wsDial(t, s.url+"/rooms/42/fr?tag=news", &cws.DialOptions{HTTPHeader: hdr})
	lobby := wsDial(t, s.url+"/rooms/lobby", nil)

	for _, ch := range []string{"room:42", "lang:fr", "q:news", "h:blue"} {
		got := s.Hub().Deliver(&bridge.Target{Channels: []string{ch}}, bridge.Message{Data: []byte("to " + ch)})
		if got.Delivered != 1 {
			t.Fatalf("Deliver to %s = %+v", ch, got)
		}
		if _, msg := wsRead(t, c); msg != "to "+ch {
			t.Fatalf("got %q", msg)
		}
	}
	// The exact route wins over the param route for the same shape.
	if got := s.Hub().Deliver(&bridge.Target{Channels: []string{"lobby"}}, bridge.Message{Data: []byte("hi lobby")}); got.Delivered != 1 {
		t.Fatalf("lobby deliver = %+v", got)
	}
	if _, msg := wsRead(t, lobby); msg != "hi lobby" {
		t.Fatalf("lobby got %q", msg)
	}
	states := s.Hub().List("", "room:42")
	if len(states) != 1 || states[0].Route != "/rooms/{room}/{lang}" {
		t.Fatalf("List(room:42) = %+v", states)
	}
}

func TestSubprotocolNegotiation(t *testing.T) {
	r := openRoute("/ws")
	r.Subprotocols = []string{"v2.chat", "v1.chat"}
	s := startServer(t, Options{Routes: []config.Route{r}, Backend: newFakeBackend()})
	cases := []struct {
		offered []string
		want    string
	}{
		{[]string{"v1.chat", "v2.chat"}, "v1.chat"}, // client order wins
		{[]string{"other", "v2.chat"}, "v2.chat"},
		{[]string{"other"}, ""},
		{nil, ""},
	}
	for _, tc := range cases {
		c := wsDial(t, s.url+"/ws", &cws.DialOptions{Subprotocols: tc.offered})
		if got := c.Subprotocol(); got != tc.want {
			t.Errorf("offered %v: negotiated %q, want %q", tc.offered, got, tc.want)
		}
		_ = c.CloseNow()
	}
}

func TestConnectWebhookAnswers(t *testing.T) {
	cases := []struct {
		name       string
		res        *bridge.ConnectResult
		err        error
		wantStatus int
		wantBody   string
		wantHeader [2]string
	}{
		{name: "rejected_401", res: &bridge.ConnectResult{Status: 401, Body: []byte("who are you"), Header: [][2]string{{"Content-Type", "text/plain"}}},
			wantStatus: 401, wantBody: "who are you", wantHeader: [2]string{"Content-Type", "text/plain"}},
		{name: "rejected_429", res: &bridge.ConnectResult{Status: 429, Body: []byte(`{"slow":"down"}`), Header: [][2]string{{"Retry-After", "7"}}},
			wantStatus: 429, wantBody: `{"slow":"down"}`, wantHeader: [2]string{"Retry-After", "7"}},
		{name: "breaker_open", err: fmt.Errorf("calling connect: %w", bridge.ErrBackendUnavailable),
			wantStatus: 503, wantBody: "backend_unavailable", wantHeader: [2]string{"Retry-After", "5"}},
		{name: "backend_down", err: fmt.Errorf("dial tcp: connection refused"),
			wantStatus: 502, wantBody: "backend_error"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			be := newFakeBackend()
			be.connect = func(*bridge.ConnInfo) (*bridge.ConnectResult, error) { return tc.res, tc.err }
			s := startServer(t, Options{Routes: []config.Route{openRoute("/ws")}, Backend: be})
			status, hdr, body := wsDialFail(t, s.url+"/ws", nil)
			if status != tc.wantStatus || !strings.Contains(body, tc.wantBody) {
				t.Fatalf("answer %d %q, want %d containing %q", status, body, tc.wantStatus, tc.wantBody)
			}
			if tc.wantHeader[0] != "" && hdr.Get(tc.wantHeader[0]) != tc.wantHeader[1] {
				t.Fatalf("header %s = %q, want %q", tc.wantHeader[0], hdr.Get(tc.wantHeader[0]), tc.wantHeader[1])
			}
			if s.Hub().Count() != 0 {
				t.Fatalf("refused handshake left %d sockets", s.Hub().Count())
			}
			if len(be.disconnects()) != 0 {
				t.Fatalf("refused handshake got a disconnect webhook")
			}
		})
	}
}

func TestConnectActionsThenDeliver(t *testing.T) {
	be := newFakeBackend()
	be.connect = func(ci *bridge.ConnInfo) (*bridge.ConnectResult, error) {
		return &bridge.ConnectResult{Accepted: true, Status: 200, Actions: &bridge.Actions{
			Frames:    []bridge.Message{{Data: []byte("welcome")}},
			Subscribe: []string{"news", "sport"},
			User:      "u42",
			Meta:      map[string]string{"tenant": "a"},
		}}, nil
	}
	s := startServer(t, Options{Routes: []config.Route{openRoute("/ws")}, Backend: be})
	c := wsDial(t, s.url+"/ws", nil)
	if _, msg := wsRead(t, c); msg != "welcome" {
		t.Fatalf("first frame %q", msg)
	}
	got := s.Hub().Deliver(&bridge.Target{Channels: []string{"news"}}, bridge.Message{Data: []byte("headline")})
	if got != (bridge.Counts{Delivered: 1}) {
		t.Fatalf("Deliver = %+v", got)
	}
	if _, msg := wsRead(t, c); msg != "headline" {
		t.Fatalf("got %q", msg)
	}
	// The user set by the connect actions reaches later webhooks and the hub.
	wsWrite(t, c, cws.MessageText, "ping")
	wsRead(t, c)
	be.mu.Lock()
	ci := be.connects[0]
	be.mu.Unlock()
	st, ok := s.Hub().Lookup(ci.ID)
	if !ok || st.User != "u42" || st.Meta["tenant"] != "a" || strings.Join(st.Channels, ",") != "news,sport" {
		t.Fatalf("Lookup = %+v %v", st, ok)
	}
	if msgs := be.messages(); len(msgs) != 1 {
		t.Fatalf("messages %+v", msgs)
	}
	if got := s.Hub().Deliver(&bridge.Target{Users: []string{"u42"}}, bridge.Message{Binary: true, Data: []byte{1}}); got.Delivered != 1 {
		t.Fatalf("user deliver = %+v", got)
	}
	if typ, _ := wsRead(t, c); typ != cws.MessageBinary {
		t.Fatalf("user deliver type %v", typ)
	}
}

func TestDisconnectExactlyOnce(t *testing.T) {
	be := newFakeBackend()
	be.message = func(ci *bridge.ConnInfo, seq uint64, m bridge.Message) (*bridge.Actions, error) {
		if string(m.Data) == "kick me" {
			return &bridge.Actions{Frames: []bridge.Message{{Data: []byte("bye")}}, Close: &bridge.CloseAction{Code: 4001, Reason: "kicked"}}, nil
		}
		return nil, nil
	}
	s := startServer(t, Options{Routes: []config.Route{openRoute("/ws")}, Backend: be})

	t.Run("client_close", func(t *testing.T) {
		c := wsDial(t, s.url+"/ws", nil)
		if err := c.Close(4005, "done here"); err != nil {
			t.Fatalf("close: %v", err)
		}
		d := be.waitDisconnect(t)
		if d.d.Code != 4005 || d.d.Reason != "done here" || !d.d.Clean {
			t.Fatalf("disconnect = %+v", d.d)
		}
	})
	t.Run("backend_close_action", func(t *testing.T) {
		c := wsDial(t, s.url+"/ws", nil)
		wsWrite(t, c, cws.MessageText, "kick me")
		if _, msg := wsRead(t, c); msg != "bye" {
			t.Fatalf("frame before close = %q", msg)
		}
		code, reason := wsReadClose(t, c, 5*time.Second)
		if code != 4001 || reason != "kicked" {
			t.Fatalf("close = %d %q", code, reason)
		}
		d := be.waitDisconnect(t)
		if d.d.Code != 4001 || !d.d.Clean {
			t.Fatalf("disconnect = %+v", d.d)
		}
	})
	t.Run("hub_disconnect", func(t *testing.T) {
		c := wsDial(t, s.url+"/ws", nil)
		ids := connIDs(s.Hub(), "/ws")
		if len(ids) != 1 || !s.Hub().Disconnect(ids[0], 4010, "admin") {
			t.Fatalf("Disconnect(%v) failed", ids)
		}
		if code, reason := wsReadClose(t, c, 5*time.Second); code != 4010 || reason != "admin" {
			t.Fatalf("close = %d %q", code, reason)
		}
		if d := be.waitDisconnect(t); d.d.Code != 4010 || d.ci.ID != ids[0] {
			t.Fatalf("disconnect = %+v", d)
		}
		if s.Hub().Disconnect(ids[0], 1000, "") {
			t.Fatalf("Disconnect of a gone socket reported true")
		}
	})
	t.Run("tcp_dropped", func(t *testing.T) {
		c := wsDial(t, s.url+"/ws", nil)
		_ = c.CloseNow() // no close frame
		if d := be.waitDisconnect(t); d.d.Code != 1006 || d.d.Clean {
			t.Fatalf("disconnect = %+v", d.d)
		}
	})
	// Nothing else arrives: each socket got exactly one disconnect.
	time.Sleep(100 * time.Millisecond)
	if n := len(be.disconnects()); n != 4 {
		t.Fatalf("%d disconnect webhooks for 4 sockets", n)
	}
	seen := map[string]bool{}
	for _, d := range be.disconnects() {
		if seen[d.ci.ID] {
			t.Fatalf("socket %s got two disconnects", d.ci.ID)
		}
		seen[d.ci.ID] = true
	}
}

func TestOversizeMessageCloses1009(t *testing.T) {
	be := newFakeBackend()
	s := startServer(t, Options{Routes: []config.Route{openRoute("/ws")}, Backend: be, Limits: config.Limits{MaxMessageSize: 1024}})
	c := wsDial(t, s.url+"/ws", nil)
	wsWrite(t, c, cws.MessageText, strings.Repeat("a", 1024)) // at the limit: fine
	wsRead(t, c)
	if err := c.Write(context.Background(), cws.MessageText, []byte(strings.Repeat("a", 1025))); err != nil {
		t.Fatalf("write: %v", err)
	}
	if code, _ := wsReadClose(t, c, 5*time.Second); code != cws.StatusMessageTooBig {
		t.Fatalf("close code %d, want 1009", code)
	}
	if d := be.waitDisconnect(t); d.d.Code != 1009 {
		t.Fatalf("disconnect = %+v", d.d)
	}
	if n := len(be.messages()); n != 1 {
		t.Fatalf("backend got %d messages, want only the one within the limit", n)
	}
}

func TestMessageErrorPolicies(t *testing.T) {
	cases := []struct {
		policy    string
		err       error
		wantFrame string // substring of the error frame
		wantClose cws.StatusCode
	}{
		{"reply", &bridge.StatusError{Status: 500}, `"code":"backend_error"`, 0},
		{"reply", fmt.Errorf("x: %w", bridge.ErrBackendUnavailable), `"code":"backend_unavailable"`, 0},
		{"drop", &bridge.StatusError{Status: 500}, "", 0},
		{"close", &bridge.StatusError{Status: 500}, "", cws.StatusInternalError},
		{"close", fmt.Errorf("x: %w", bridge.ErrBackendUnavailable), "", cws.StatusTryAgainLater},
	}
	for i, tc := range cases {
		t.Run(fmt.Sprintf("%s_%d", tc.policy, i), func(t *testing.T) {
			be := newFakeBackend()
			be.message = func(ci *bridge.ConnInfo, seq uint64, m bridge.Message) (*bridge.Actions, error) {
				if string(m.Data) == "fail" {
					return nil, tc.err
				}
				return &bridge.Actions{Frames: []bridge.Message{{Data: []byte("ok")}}}, nil
			}
			r := openRoute("/ws")
			r.OnError = tc.policy
			s := startServer(t, Options{Routes: []config.Route{r}, Backend: be})
			c := wsDial(t, s.url+"/ws", nil)
			wsWrite(t, c, cws.MessageText, "fail")
			switch {
			case tc.wantClose != 0:
				if code, _ := wsReadClose(t, c, 5*time.Second); code != tc.wantClose {
					t.Fatalf("close %d, want %d", code, tc.wantClose)
				}
				return
			case tc.wantFrame != "":
				if _, msg := wsRead(t, c); !strings.Contains(msg, tc.wantFrame) {
					t.Fatalf("error frame %q, want %s", msg, tc.wantFrame)
				}
			}
			wsWrite(t, c, cws.MessageText, "next")
			if _, msg := wsRead(t, c); msg != "ok" {
				t.Fatalf("after error got %q", msg)
			}
		})
	}
}

func TestRouteWithoutOnMessageIgnoresMessages(t *testing.T) {
	be := newFakeBackend()
	r := openRoute("/ws")
	r.OnMessage = ""
	s := startServer(t, Options{Routes: []config.Route{r}, Backend: be})
	c := wsDial(t, s.url+"/ws", nil)
	wsWrite(t, c, cws.MessageText, "nobody listens")
	s.Hub().Deliver(&bridge.Target{Broadcast: true}, bridge.Message{Data: []byte("still open")})
	if _, msg := wsRead(t, c); msg != "still open" {
		t.Fatalf("got %q", msg)
	}
	if n := len(be.messages()); n != 0 {
		t.Fatalf("backend got %d messages", n)
	}
}

// Over the per-connection message or byte rate (limits.ConnLimiter), the
// route's policy applies: an error frame, a silent drop, or 1008. Refused
// messages never reach the backend and are counted by reason.
func TestMessageRatePolicy(t *testing.T) {
	msgRate := config.Rate{N: 1, Per: time.Hour, Burst: 2}
	byteRate := config.Rate{N: 1, Per: time.Hour, Burst: 10}
	for _, tc := range []struct {
		name   string
		lim    config.Limits
		reason string
	}{
		{"reply", config.Limits{MessageRate: msgRate, RatePolicy: "reply"}, "message_rate"},
		{"drop", config.Limits{MessageRate: msgRate, RatePolicy: "drop"}, "message_rate"},
		{"close", config.Limits{MessageRate: msgRate, RatePolicy: "close"}, "message_rate"},
		{"close on bytes", config.Limits{ByteRate: byteRate, RatePolicy: "close"}, "byte_rate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := newFakeBackend()
			s := startServer(t, Options{Routes: []config.Route{openRoute("/ws")}, Backend: be, Limits: tc.lim})
			c := wsDial(t, s.url+"/ws", nil)
			for i := 0; i < 2; i++ { // within the burst: 2 messages, 10 bytes
				wsWrite(t, c, cws.MessageText, "12345")
				wsRead(t, c)
			}
			wsWrite(t, c, cws.MessageText, "one too many")
			switch tc.lim.RatePolicy {
			case "reply":
				if _, msg := wsRead(t, c); !strings.Contains(msg, "rate_limited") {
					t.Fatalf("got %q, want an error frame", msg)
				}
			case "drop":
				// The next message is refused too; a close proves nothing
				// came back in between.
				_ = c.Close(cws.StatusNormalClosure, "")
			case "close":
				if code, _ := wsReadClose(t, c, 5*time.Second); code != cws.StatusPolicyViolation {
					t.Fatalf("close %d, want 1008", code)
				}
			}
			if n := len(be.messages()); n != 2 {
				t.Fatalf("backend got %d messages, want 2", n)
			}
			if got := metricValue(s.set, `wsidecar_message_rejections_total{reason="`+tc.reason+`"}`); got != "1" {
				t.Fatalf("%s refusals counted %q, want 1", tc.reason, got)
			}
		})
	}
}

// A reload can raise and lower the bound on backend calls: the deadline a
// message webhook gets follows UpdateCallTimeout.
func TestUpdateCallTimeout(t *testing.T) {
	be := newFakeBackend()
	deadlines := make(chan time.Duration, 4)
	be.message = func(ci *bridge.ConnInfo, seq uint64, m bridge.Message) (*bridge.Actions, error) {
		return &bridge.Actions{Frames: []bridge.Message{{Data: []byte("ok")}}}, nil
	}
	s := startServer(t, Options{Routes: []config.Route{openRoute("/ws")}, Backend: deadlineBackend{be, deadlines}, CallTimeout: time.Second})
	c := wsDial(t, s.url+"/ws", nil)
	for _, want := range []time.Duration{time.Second, 30 * time.Second, 200 * time.Millisecond} {
		if want != time.Second {
			s.UpdateCallTimeout(want)
		}
		wsWrite(t, c, cws.MessageText, "x")
		wsRead(t, c)
		if got := <-deadlines; got > want || got < want-time.Second/2 {
			t.Errorf("call deadline %v away, want about %v", got, want)
		}
	}
}

// deadlineBackend reports how far away each message call's deadline is.
type deadlineBackend struct {
	*fakeBackend
	deadlines chan time.Duration
}

func (b deadlineBackend) Message(ctx context.Context, ci *bridge.ConnInfo, seq uint64, m bridge.Message) (*bridge.Actions, error) {
	if d, ok := ctx.Deadline(); ok {
		b.deadlines <- time.Until(d)
	} else {
		b.deadlines <- 0
	}
	return b.fakeBackend.Message(ctx, ci, seq, m)
}

// A text message that is not UTF-8 closes the socket with 1007 (RFC 6455
// §8.1) and never reaches the backend.
func TestInvalidUTF8TextCloses1007(t *testing.T) {
	be := newFakeBackend()
	s := startServer(t, Options{Routes: []config.Route{openRoute("/ws")}, Backend: be})
	c := wsDial(t, s.url+"/ws", nil)
	wsWrite(t, c, cws.MessageText, "ok")
	wsRead(t, c)
	wsWrite(t, c, cws.MessageText, "bad \xff\xfe")
	if code, _ := wsReadClose(t, c, 5*time.Second); code != cws.StatusInvalidFramePayloadData {
		t.Fatalf("close %d, want 1007", code)
	}
	if n := len(be.messages()); n != 1 {
		t.Errorf("backend saw %d messages, want only the valid one", n)
	}
}
