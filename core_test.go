package main

// End-to-end stories of the core bridge: a plain HTTP backend gets WebSocket
// clients, both ways.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

const chatRoute = `
backend { url = "%BACKEND%" }
origins { allow_missing = true } # the test clients are not browsers
route "/ws/{room}" {
  auth          = "none"
  subprotocols  = ["chat.v2", "chat.v1"]
  on_connect    = "/connect"
  on_message    = "/message"
  on_disconnect = "/disconnect"
  channels      = ["room:${path.room}", "all"]
}
`

// A text frame becomes a POST with the X-WS-* headers; the reply body comes
// back as a frame. Binary frames round-trip as binary.
func TestMessageRoundTrip(t *testing.T) {
	be := newBackend(t)
	be.setReply(func(w http.ResponseWriter, h hook) {
		switch h.Path {
		case "/message":
			w.Header().Set("Content-Type", h.Header.Get("Content-Type"))
			w.Write(append([]byte("echo:"), h.Body...))
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	})
	sc := startSidecar(t, be.URL, chatRoute)
	c := dial(t, sc.WS+"/ws/lobby?x=1", &websocket.DialOptions{Subprotocols: []string{"chat.v1", "other"}})
	if got := c.Subprotocol(); got != "chat.v1" {
		t.Errorf("subprotocol = %q, want chat.v1", got)
	}

	write(t, c, websocket.MessageText, []byte("hello"))
	if got := readText(t, c); got != "echo:hello" {
		t.Fatalf("reply = %q", got)
	}
	h := be.waitCalls(t, "/message", 1)[0]
	if string(h.Body) != "hello" {
		t.Errorf("backend body = %q", h.Body)
	}
	id := h.Header.Get("X-WS-Connection-Id")
	for name, want := range map[string]string{
		"Content-Type":  "text/plain; charset=utf-8",
		"X-Ws-Route":    "/ws/{room}",
		"X-Ws-Seq":      "1",
		"X-Ws-Protocol": "chat.v1",
		"X-Real-Ip":     "127.0.0.1",
	} {
		if got := h.Header.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if len(id) < 20 {
		t.Errorf("connection id %q looks guessable", id)
	}
	if got := be.calls("/connect")[0].Header.Get("X-WS-Path"); got != "/ws/lobby?x=1" {
		t.Errorf("X-WS-Path = %q", got)
	}

	bin := []byte{0, 1, 2, 0xff, 0xfe}
	write(t, c, websocket.MessageBinary, bin)
	typ, data := read(t, c)
	if typ != websocket.MessageBinary || !bytes.Equal(data, append([]byte("echo:"), bin...)) {
		t.Fatalf("binary reply = %v %x", typ, data)
	}
	if got := be.waitCalls(t, "/message", 2)[1].Header.Get("Content-Type"); got != "application/octet-stream" {
		t.Errorf("binary Content-Type = %q", got)
	}
}

// 1,000 messages sent quickly reach the backend in order, numbered 1..1000.
func TestMessagesInOrder(t *testing.T) {
	be := newBackend(t)
	sc := startSidecar(t, be.URL, chatRoute+`limits { message_rate = "100000/s" }`)
	c := dial(t, sc.WS+"/ws/a", nil)
	const n = 1000
	for i := 1; i <= n; i++ {
		write(t, c, websocket.MessageText, []byte(strconv.Itoa(i)))
	}
	calls := be.waitCalls(t, "/message", n)
	for i, h := range calls {
		want := strconv.Itoa(i + 1)
		if string(h.Body) != want || h.Header.Get("X-WS-Seq") != want {
			t.Fatalf("message %d: body %q seq %q, want %s", i, h.Body, h.Header.Get("X-WS-Seq"), want)
		}
	}
}

// The connect webhook can reject the handshake (status and body reach the
// client) and can subscribe the socket; every connection gets exactly one
// disconnect webhook with its close code.
func TestConnectRejectSubscribeDisconnect(t *testing.T) {
	be := newBackend(t)
	be.setReply(func(w http.ResponseWriter, h hook) {
		if h.Path != "/connect" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if strings.Contains(h.Header.Get("X-WS-Path"), "deny") {
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusForbidden)
			w.Write([]byte("banned from this room"))
			return
		}
		actions(w, map[string]any{"subscribe": []string{"vip"}, "user": "u42",
			"frames": []map[string]string{{"text": "welcome"}}})
	})
	sc := startSidecar(t, be.URL, chatRoute)

	resp, err := http.Get(strings.Replace(sc.WS, "ws://", "http://", 1) + "/ws/deny")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("plain GET on a route = %d, want 400", resp.StatusCode)
	}
	_, r, err := websocket.Dial(t.Context(), sc.WS+"/ws/deny", nil)
	if err == nil || r == nil || r.StatusCode != http.StatusForbidden {
		t.Fatalf("rejected dial: err %v resp %+v, want 403", err, r)
	}
	var body bytes.Buffer
	body.ReadFrom(r.Body)
	if body.String() != "banned from this room" {
		t.Errorf("reject body = %q", body.String())
	}

	c := dial(t, sc.WS+"/ws/ok", nil)
	if got := readText(t, c); got != "welcome" {
		t.Fatalf("first frame = %q, want welcome", got)
	}
	var res pushResult
	httpDo(t, "POST", sc.Admin+"/v1/push/channel/vip", "text/plain", []byte("for vips"), &res)
	if got := readText(t, c); got != "for vips" || res.Delivered != 1 {
		t.Fatalf("vip push = %q delivered %d", got, res.Delivered)
	}
	httpDo(t, "POST", sc.Admin+"/v1/push/user/u42", "text/plain", []byte("for u42"), &res)
	if got := readText(t, c); got != "for u42" || res.Delivered != 1 {
		t.Fatalf("user push = %q delivered %d", got, res.Delivered)
	}

	c.Close(4001, "bye now")
	calls := be.waitCalls(t, "/disconnect", 1)
	var d struct {
		Code   int    `json:"code"`
		Reason string `json:"reason"`
		Clean  bool   `json:"clean"`
	}
	if err := json.Unmarshal(calls[0].Body, &d); err != nil {
		t.Fatalf("disconnect body %q: %v", calls[0].Body, err)
	}
	if d.Code != 4001 || d.Reason != "bye now" || !d.Clean {
		t.Errorf("disconnect = %+v", d)
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(be.calls("/disconnect")); n != 1 {
		t.Errorf("%d disconnect webhooks, want 1 (the rejected handshake must not get one)", n)
	}
}

// Each push form reaches exactly the sockets it names, with exact counts.
func TestPushTargets(t *testing.T) {
	be := newBackend(t)
	be.setReply(func(w http.ResponseWriter, h hook) {
		if h.Path == "/connect" {
			// The user comes from the query in this test (no JWT yet).
			user := strings.TrimPrefix(h.Header.Get("X-WS-Path")[strings.Index(h.Header.Get("X-WS-Path"), "?")+1:], "user=")
			actions(w, map[string]any{"user": user})
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	sc := startSidecar(t, be.URL, chatRoute)
	// a1, a2: user alice in room a; b1: user bob in room b.
	a1 := dial(t, sc.WS+"/ws/a?user=alice", nil)
	a2 := dial(t, sc.WS+"/ws/b?user=alice", nil)
	b1 := dial(t, sc.WS+"/ws/b?user=bob", nil)
	connects := be.waitCalls(t, "/connect", 3)
	ids := map[string]string{}
	for _, h := range connects {
		ids[h.Header.Get("X-WS-Path")] = h.Header.Get("X-WS-Connection-Id")
	}
	idB1 := ids["/ws/b?user=bob"]

	type want struct {
		name      string
		method    string
		path, ct  string
		body      []byte
		delivered int
		receivers []*client
	}
	all := []*client{a1, a2, b1}
	cases := []want{
		{"connection", "POST", "/v1/push", "application/json", jsonBody(map[string]any{"connections": []string{idB1}, "text": "c"}), 1, []*client{b1}},
		{"user", "POST", "/v1/push", "application/json", jsonBody(map[string]any{"users": []string{"alice"}, "text": "u"}), 2, []*client{a1, a2}},
		{"channel", "POST", "/v1/push", "application/json", jsonBody(map[string]any{"channels": []string{"room:b"}, "text": "ch"}), 2, []*client{a2, b1}},
		{"dedupe", "POST", "/v1/push", "application/json", jsonBody(map[string]any{"channels": []string{"room:b", "all"}, "users": []string{"bob"}, "text": "d"}), 3, all},
		{"broadcast exclude", "POST", "/v1/push", "application/json", jsonBody(map[string]any{"broadcast": true, "exclude": []string{idB1}, "text": "bx"}), 2, []*client{a1, a2}},
		{"raw channel", "POST", "/v1/push/channel/room:a", "text/plain", []byte("rc"), 1, []*client{a1}},
		{"raw user", "POST", "/v1/push/user/bob", "text/plain", []byte("ru"), 1, []*client{b1}},
		{"raw connection", "POST", "/v1/push/connection/" + idB1, "text/plain", []byte("rconn"), 1, []*client{b1}},
		{"raw broadcast", "POST", "/v1/push/broadcast", "text/plain", []byte("rb"), 3, all},
	}
	for _, tc := range cases {
		var res pushResult
		status, raw := httpDo(t, tc.method, sc.Admin+tc.path, tc.ct, tc.body, &res)
		if status != 200 || res.Delivered != tc.delivered || res.Dropped != 0 {
			t.Fatalf("%s: status %d body %s, want delivered %d", tc.name, status, raw, tc.delivered)
		}
		for _, c := range tc.receivers {
			readText(t, c)
		}
		for _, c := range all {
			if !contains(tc.receivers, c) {
				noMessage(t, c, 50*time.Millisecond)
			}
		}
	}

	// Binary over JSON (base64) arrives as a binary frame.
	var res pushResult
	httpDo(t, "POST", sc.Admin+"/v1/push", "application/json",
		jsonBody(map[string]any{"connections": []string{idB1}, "binary": []byte{1, 2, 3}}), &res)
	if typ, data := read(t, b1); typ != websocket.MessageBinary || !bytes.Equal(data, []byte{1, 2, 3}) {
		t.Fatalf("binary push = %v %v", typ, data)
	}

	// Errors are JSON with the right status.
	var e apiError
	if status, _ := httpDo(t, "POST", sc.Admin+"/v1/push/connection/nope", "text/plain", []byte("x"), &e); status != 404 || e.Error.Code == "" {
		t.Errorf("unknown connection: %d %+v", status, e)
	}
	e = apiError{}
	if status, _ := httpDo(t, "POST", sc.Admin+"/v1/push", "application/json", []byte(`{"channels":["x"],"text":`), &e); status != 400 || e.Error.Message == "" {
		t.Errorf("malformed JSON: %d %+v", status, e)
	}
	e = apiError{}
	if status, _ := httpDo(t, "GET", sc.Admin+"/v1/connections/nope", "", nil, &e); status != 404 {
		t.Errorf("GET unknown connection: %d", status)
	}

	// Connection endpoints.
	var st struct {
		ID       string   `json:"id"`
		User     string   `json:"user"`
		Channels []string `json:"channels"`
	}
	if status, raw := httpDo(t, "GET", sc.Admin+"/v1/connections/"+idB1, "", nil, &st); status != 200 || st.User != "bob" || !containsStr(st.Channels, "room:b") {
		t.Errorf("GET connection: %d %s", status, raw)
	}
	var list connList
	if status, raw := httpDo(t, "GET", sc.Admin+"/v1/connections?user=alice", "", nil, &list); status != 200 || len(list.Connections) != 2 {
		t.Errorf("list by user: %d %s", status, raw)
	}
	var changed map[string]int
	httpDo(t, "POST", sc.Admin+"/v1/subscribe", "application/json", jsonBody(map[string]any{"user": "bob", "channels": []string{"news"}}), &changed)
	httpDo(t, "POST", sc.Admin+"/v1/push/channel/news", "text/plain", []byte("n"), &res)
	if res.Delivered != 1 || readText(t, b1) != "n" {
		t.Errorf("subscribe by user then push: delivered %d", res.Delivered)
	}
	if status, _ := httpDo(t, "DELETE", sc.Admin+"/v1/connections/"+idB1+"?code=4002&reason=admin", "", nil, nil); status != 200 && status != 204 {
		t.Errorf("DELETE connection: %d", status)
	}
	if code, reason := closeStatus(t, b1, 5*time.Second); code != 4002 || reason != "admin" {
		t.Errorf("closed with %d %q, want 4002 admin", code, reason)
	}
}

// The raw shortcuts work from curl, as a legacy shell script would use them.
func TestPushWithCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	be := newBackend(t)
	sc := startSidecar(t, be.URL, chatRoute)
	c := dial(t, sc.WS+"/ws/x", nil)
	be.waitCalls(t, "/connect", 1)
	out, err := exec.Command(curl, "-sS", "-X", "POST", "-H", "Content-Type: text/plain",
		"--data-binary", "from curl", sc.Admin+"/v1/push/channel/room:x").CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v %s", err, out)
	}
	if !strings.Contains(string(out), `"delivered":1`) {
		t.Errorf("curl output %s", out)
	}
	if got := readText(t, c); got != "from curl" {
		t.Errorf("got %q", got)
	}
}

// SSE events reach subscribed sockets; when the backend cuts the stream,
// wsidecar reconnects with Last-Event-ID and nothing replayed is lost.
func TestSSEBridge(t *testing.T) {
	be := newBackend(t)
	var mu sync.Mutex
	var lastIDs []string
	next := make(chan int, 100) // event numbers the test wants sent
	feed := http.NewServeMux()
	feed.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		lastIDs = append(lastIDs, r.Header.Get("Last-Event-ID"))
		mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		from := 1
		if id := r.Header.Get("Last-Event-ID"); id != "" {
			from, _ = strconv.Atoi(id)
			from++
		}
		fl := w.(http.Flusher)
		fmt.Fprint(w, "retry: 50\n\n")
		fl.Flush()
		for n := range next {
			if n < 0 { // cut the stream
				return
			}
			for ; from <= n; from++ { // replay anything missed
				fmt.Fprintf(w, "id: %d\nevent: news\ndata: item %d\r\n\r\n", from, from)
			}
			fl.Flush()
		}
	})
	feed.Handle("/", be.Server.Config.Handler)
	srv := newHTTPServer(t, feed)
	t.Cleanup(func() { close(next) }) // runs before the server's Close waits for the stream
	sc := startSidecar(t, srv, `
backend { url = "%BACKEND%" }
origins { allow_missing = true }
route "/ws" {
  auth = "none"
  channels = ["feed:news"]
}
stream "news" {
  path = "/events"
  prefix = "feed:"
  reconnect_min = "50ms"
  reconnect_max = "200ms"
}
`)
	c1 := dial(t, sc.WS+"/ws", nil)
	c2 := dial(t, sc.WS+"/ws", nil)
	waitSubscribers(t, sc, "feed:news", 2)
	next <- 1
	next <- 2
	for _, c := range []*client{c1, c2} {
		for i := 1; i <= 2; i++ {
			if got := readText(t, c); got != fmt.Sprintf("item %d", i) {
				t.Fatalf("got %q, want item %d", got, i)
			}
		}
	}
	next <- -1 // cut; events 3..5 happen while disconnected and are replayed
	next <- 5
	for _, c := range []*client{c1, c2} {
		for i := 3; i <= 5; i++ {
			if got := readText(t, c); got != fmt.Sprintf("item %d", i) {
				t.Fatalf("after reconnect got %q, want item %d", got, i)
			}
		}
		noMessage(t, c, 100*time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(lastIDs) < 2 || lastIDs[0] != "" || lastIDs[1] != "2" {
		t.Errorf("Last-Event-ID per connection = %q, want [\"\" \"2\" …]", lastIDs)
	}
}

// waitSubscribers waits until a channel has n local sockets.
func waitSubscribers(t *testing.T, sc *sidecar, channel string, n int) {
	t.Helper()
	eventually(t, 5*time.Second, func() bool {
		var list connList
		status, _ := httpDo(t, "GET", sc.Admin+"/v1/connections?channel="+channel, "", nil, &list)
		return status == 200 && len(list.Connections) == n
	}, "channel %s never had %d subscribers", channel, n)
}

// connList is the answer of GET /v1/connections.
type connList struct {
	Connections []json.RawMessage `json:"connections"`
}

func contains(cs []*client, c *client) bool {
	for _, x := range cs {
		if x == c {
			return true
		}
	}
	return false
}

func containsStr(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
