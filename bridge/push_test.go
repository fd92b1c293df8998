package bridge

import (
	"encoding/base64"
	"reflect"
	"strings"
	"testing"
)

// pushHub is the socket population of the push tests:
// c1 (u1; room:1), c2 (u1; room:1, lobby), c3 (u2; room:2), c4 (no user;
// room:1, send queue full).
func pushHub() *recHub {
	h := newRecHub().add("c1", "u1", "room:1").add("c2", "u1", "room:1", "lobby").
		add("c3", "u2", "room:2").add("c4", "", "room:1")
	h.setFull("c4")
	return h
}

func TestPushJSON(t *testing.T) {
	tests := []struct {
		name     string
		body     string
		want     pushAnswer
		conns    []string // sockets that got it, in id order
		binary   bool
		data     string
		wantBody string // exact answer, when given
	}{
		{
			name: "channel", body: `{"channels":["room:1"],"text":"hello"}`,
			want: pushAnswer{Delivered: 2, Dropped: 1}, conns: []string{"c1", "c2"}, data: "hello",
			wantBody: `{"delivered":2,"dropped":1}` + "\n",
		},
		{
			name: "user", body: `{"users":["u1"],"text":"hi u1"}`,
			want: pushAnswer{Delivered: 2}, conns: []string{"c1", "c2"}, data: "hi u1",
		},
		{
			name: "connections", body: `{"connections":["c3","nope"],"text":"x"}`,
			want: pushAnswer{Delivered: 1}, conns: []string{"c3"}, data: "x",
		},
		{
			name: "broadcast with exclude", body: `{"broadcast":true,"exclude":["c1"],"text":"all"}`,
			want: pushAnswer{Delivered: 2, Dropped: 1}, conns: []string{"c2", "c3"}, data: "all",
		},
		{
			name: "overlapping targets deliver once", body: `{"users":["u1"],"channels":["room:1","lobby"],"connections":["c1"],"text":"once"}`,
			want: pushAnswer{Delivered: 2, Dropped: 1}, conns: []string{"c1", "c2"}, data: "once",
		},
		{
			name: "binary", body: `{"channels":["room:2"],"binary":"` + base64.StdEncoding.EncodeToString([]byte{0, 1, 2, 255}) + `"}`,
			want: pushAnswer{Delivered: 1}, conns: []string{"c3"}, binary: true, data: "\x00\x01\x02\xff",
		},
		{
			name: "unpadded base64", body: `{"channels":["room:2"],"binary":"AAE"}`,
			want: pushAnswer{Delivered: 1}, conns: []string{"c3"}, binary: true, data: "\x00\x01",
		},
		{
			name: "empty text is a message", body: `{"channels":["room:2"],"text":""}`,
			want: pushAnswer{Delivered: 1}, conns: []string{"c3"}, data: "",
		},
		{
			name: "channel nobody is in", body: `{"channels":["empty"],"text":"x"}`,
			want: pushAnswer{}, wantBody: `{"delivered":0,"dropped":0}` + "\n",
		},
		{
			name: "connection excluded by itself", body: `{"connections":["c1"],"exclude":["c1"],"text":"x"}`,
			want: pushAnswer{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := pushHub()
			base := startAdmin(t, AdminOptions{Broker: NewMemoryBroker(h)})
			a := call(t, "POST", base+"/v1/push", tt.body, "Content-Type", "application/json")
			var got pushAnswer
			a.decode(t, &got)
			if a.Status != 200 || got != tt.want {
				t.Fatalf("answer %d %s, want %+v", a.Status, a.Body, tt.want)
			}
			if tt.wantBody != "" && a.Body != tt.wantBody {
				t.Fatalf("body %q, want %q", a.Body, tt.wantBody)
			}
			var conns []string
			for _, d := range h.got() {
				conns = append(conns, d.Conn)
				if d.Msg.Binary != tt.binary || string(d.Msg.Data) != tt.data {
					t.Fatalf("%s got %+v, want binary=%v %q", d.Conn, d.Msg, tt.binary, tt.data)
				}
			}
			if !reflect.DeepEqual(conns, tt.conns) {
				t.Fatalf("delivered to %v, want %v", conns, tt.conns)
			}
		})
	}
}

func TestPushRaw(t *testing.T) {
	tests := []struct {
		name, path, ctype string
		want              pushAnswer
		conns             []string
		binary            bool
	}{
		{name: "channel text", path: "/v1/push/channel/room:1", ctype: "text/plain; charset=utf-8", want: pushAnswer{2, 1, 0, 0}, conns: []string{"c1", "c2"}},
		{name: "encoded channel", path: "/v1/push/channel/room%3A2", ctype: "text/plain", want: pushAnswer{1, 0, 0, 0}, conns: []string{"c3"}},
		{name: "json is text", path: "/v1/push/user/u2", ctype: "application/json", want: pushAnswer{1, 0, 0, 0}, conns: []string{"c3"}},
		{name: "+json is text", path: "/v1/push/user/u2", ctype: "application/vnd.api+json", want: pushAnswer{1, 0, 0, 0}, conns: []string{"c3"}},
		{name: "octet-stream is binary", path: "/v1/push/connection/c3", ctype: "application/octet-stream", want: pushAnswer{1, 0, 0, 0}, conns: []string{"c3"}, binary: true},
		{name: "no type is binary", path: "/v1/push/connection/c3", want: pushAnswer{1, 0, 0, 0}, conns: []string{"c3"}, binary: true},
		{name: "broadcast with exclude", path: "/v1/push/broadcast?exclude=c1,%20c3", ctype: "text/plain", want: pushAnswer{1, 1, 0, 0}, conns: []string{"c2"}},
		{name: "encoded slash stays in the name", path: "/v1/push/channel/a%2Fb", ctype: "text/plain", want: pushAnswer{}, conns: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := pushHub()
			base := startAdmin(t, AdminOptions{Broker: NewMemoryBroker(h)})
			hdr := []string{}
			if tt.ctype != "" {
				hdr = append(hdr, "Content-Type", tt.ctype)
			}
			a := call(t, "POST", base+tt.path, "payload ✓", hdr...)
			var got pushAnswer
			a.decode(t, &got)
			if a.Status != 200 || got != tt.want {
				t.Fatalf("answer %d %s, want %+v", a.Status, a.Body, tt.want)
			}
			var conns []string
			for _, d := range h.got() {
				conns = append(conns, d.Conn)
				if d.Msg.Binary != tt.binary || string(d.Msg.Data) != "payload ✓" {
					t.Fatalf("%s got %+v", d.Conn, d.Msg)
				}
			}
			if !reflect.DeepEqual(conns, tt.conns) {
				t.Fatalf("delivered to %v, want %v", conns, tt.conns)
			}
		})
	}

	// A channel name with a slash is reachable encoded, and only that way.
	h := pushHub().add("c9", "", "a/b")
	base := startAdmin(t, AdminOptions{Broker: NewMemoryBroker(h)})
	if a := call(t, "POST", base+"/v1/push/channel/a%2Fb", "x"); a.Status != 200 || len(h.got()) != 1 || h.got()[0].Conn != "c9" {
		t.Fatalf("push to a/b: %+v %v", a, h.got())
	}
}

func TestPushErrors(t *testing.T) {
	h := pushHub()
	base := startAdmin(t, AdminOptions{Broker: NewMemoryBroker(h), MaxBody: 64})
	long := strings.Repeat("x", 257)
	tests := []struct {
		name, path, ctype, body string
		want                    int
		code, msg               string
	}{
		{"malformed JSON", "/v1/push", "", `{"text":`, 400, "invalid_json", "malformed JSON"},
		{"syntax error has offset", "/v1/push", "", `{"text" "x"}`, 400, "invalid_json", "at byte"},
		{"wrong type", "/v1/push", "", `{"channels":"room:1","text":"x"}`, 400, "invalid_json", "cannot unmarshal"},
		{"unknown field", "/v1/push", "", `{"channel":["room:1"],"text":"x"}`, 400, "invalid_json", `unknown field "channel"`},
		{"trailing data", "/v1/push", "", `{"channels":["room:1"],"text":"x"} {}`, 400, "invalid_json", "after the JSON"},
		{"empty body", "/v1/push", "", ``, 400, "invalid_json", "empty"},
		{"no message", "/v1/push", "", `{"channels":["room:1"]}`, 400, "invalid_message", "no message"},
		{"null text", "/v1/push", "", `{"channels":["room:1"],"text":null}`, 400, "invalid_message", "no message"},
		{"text and binary", "/v1/push", "", `{"channels":["room:1"],"text":"a","binary":"AA=="}`, 400, "invalid_message", "not both"},
		{"bad base64", "/v1/push", "", `{"channels":["room:1"],"binary":"%%%"}`, 400, "invalid_message", "base64"},
		{"empty target", "/v1/push", "", `{"text":"x"}`, 400, "invalid_target", "no target"},
		{"empty lists", "/v1/push", "", `{"channels":[],"users":[],"text":"x"}`, 400, "invalid_target", "no target"},
		{"empty channel name", "/v1/push", "", `{"channels":[""],"text":"x"}`, 400, "invalid_name", "channel is empty"},
		{"control char", "/v1/push", "", `{"channels":["a\u0007b"],"text":"x"}`, 400, "invalid_name", "control character"},
		{"C1 control char", "/v1/push", "", `{"users":["a\u0085b"],"text":"x"}`, 400, "invalid_name", "control character"},
		{"bad exclude", "/v1/push", "", `{"broadcast":true,"exclude":["\n"],"text":"x"}`, 400, "invalid_name", "excluded"},
		{"unknown connection", "/v1/push", "", `{"connections":["nope"],"text":"x"}`, 404, "not_found", "no such connection"},
		{"body too large", "/v1/push", "", `{"channels":["room:1"],"text":"` + strings.Repeat("x", 64) + `"}`, 413, "too_large", "64 bytes"},
		{"raw too large", "/v1/push/broadcast", "text/plain", strings.Repeat("x", 65), 413, "too_large", ""},
		{"raw empty body", "/v1/push/broadcast", "text/plain", "", 400, "invalid_message", "empty"},
		{"raw text not UTF-8", "/v1/push/broadcast", "text/plain", "a\xffb", 400, "invalid_message", "UTF-8"},
		{"raw empty channel", "/v1/push/channel/", "text/plain", "x", 400, "invalid_name", "channel is empty"},
		{"raw long channel", "/v1/push/channel/" + long, "text/plain", "x", 400, "invalid_name", "256 bytes"},
		{"raw encoded control char", "/v1/push/user/a%0Ab", "text/plain", "x", 400, "invalid_name", "control character"},
		{"raw unknown connection", "/v1/push/connection/nope", "text/plain", "x", 404, "not_found", ""},
		{"raw bad exclude", "/v1/push/broadcast?exclude=" + long, "text/plain", "x", 400, "invalid_name", ""},
		{"subscribe malformed", "/v1/subscribe", "", `{`, 400, "invalid_json", ""},
		{"subscribe both", "/v1/subscribe", "", `{"connection":"c1","user":"u1","channels":["a"]}`, 400, "invalid_target", "exactly one"},
		{"subscribe neither", "/v1/subscribe", "", `{"channels":["a"]}`, 400, "invalid_target", "exactly one"},
		{"subscribe no channels", "/v1/unsubscribe", "", `{"user":"u1"}`, 400, "invalid_target", "no channels"},
		{"subscribe bad channel", "/v1/subscribe", "", `{"user":"u1","channels":["ok",""]}`, 400, "invalid_name", ""},
		{"subscribe bad user", "/v1/subscribe", "", `{"user":"a\u0000","channels":["a"]}`, 400, "invalid_name", ""},
		{"subscribe too large", "/v1/subscribe", "", `{"user":"u1","channels":["` + strings.Repeat("a", 64) + `"]}`, 413, "too_large", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hdr []string
			if tt.ctype != "" {
				hdr = []string{"Content-Type", tt.ctype}
			}
			a := call(t, "POST", base+tt.path, tt.body, hdr...)
			var e struct{ Error apiError }
			a.decode(t, &e)
			if a.Status != tt.want || e.Error.Code != tt.code || !strings.Contains(e.Error.Message, tt.msg) {
				t.Fatalf("got %d %s, want %d %s containing %q", a.Status, a.Body, tt.want, tt.code, tt.msg)
			}
		})
	}
	if n := len(h.got()); n != 0 {
		t.Fatalf("rejected requests delivered %d messages", n)
	}
}

// TestPushCluster checks what a push answers when a clustered broker was
// involved: remote replicas are reported, not counted as deliveries.
func TestPushCluster(t *testing.T) {
	tests := []struct {
		name, path, body string
		extra            PublishResult
		want             int
		wantBody         string
	}{
		{"remote replicas reported", "/v1/push/channel/room:1", "x", PublishResult{Remote: 2}, 200, `{"delivered":2,"dropped":1,"remote":2}`},
		{"partial cluster failure", "/v1/push/channel/room:1", "x", PublishResult{Remote: 1, Failed: 1}, 200, `{"delivered":2,"dropped":1,"remote":1,"failed":1}`},
		{"remote connection is not a 404", "/v1/push/connection/node2-c7", "x", PublishResult{Remote: 1}, 200, `{"delivered":0,"dropped":0,"remote":1}`},
		{"nothing reached", "/v1/push/channel/empty", "x", PublishResult{Failed: 1}, 503, ""},
		{"unknown connection, cluster down", "/v1/push/connection/node2-c7", "x", PublishResult{Failed: 1}, 503, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sb := &stubBroker{MemoryBroker: NewMemoryBroker(pushHub()), ready: true, extra: tt.extra}
			base := startAdmin(t, AdminOptions{Broker: sb})
			a := call(t, "POST", base+tt.path, tt.body)
			if a.Status != tt.want {
				t.Fatalf("status %d %s, want %d", a.Status, a.Body, tt.want)
			}
			if tt.wantBody != "" && strings.TrimSpace(a.Body) != tt.wantBody {
				t.Fatalf("body %s, want %s", a.Body, tt.wantBody)
			}
			if tt.want == 503 && a.errCode() != "cluster_unavailable" {
				t.Fatalf("503 code %q", a.errCode())
			}
		})
	}
}

func TestPushBrokerClosed(t *testing.T) {
	b := NewMemoryBroker(pushHub())
	_ = b.Close()
	base := startAdmin(t, AdminOptions{Broker: b})
	for _, r := range []struct{ method, path, body string }{
		{"POST", "/v1/push/broadcast", "x"},
		{"POST", "/v1/subscribe", `{"user":"u1","channels":["a"]}`},
		{"GET", "/v1/connections/c1", ""},
		{"GET", "/v1/connections", ""},
		{"DELETE", "/v1/connections/c1", ""},
	} {
		if a := call(t, r.method, base+r.path, r.body); a.Status != 503 || a.errCode() != "unavailable" {
			t.Fatalf("%s %s with a closed broker: %+v", r.method, r.path, a)
		}
	}
}

func TestSubscribe(t *testing.T) {
	h := pushHub()
	base := startAdmin(t, AdminOptions{Broker: NewMemoryBroker(h)})
	steps := []struct {
		path, body string
		changed    int
	}{
		{"/v1/subscribe", `{"connection":"c3","channels":["news","room:1"]}`, 1},
		{"/v1/subscribe", `{"connection":"c3","channels":["news"]}`, 0},
		{"/v1/subscribe", `{"user":"u1","channels":["news"]}`, 2},
		{"/v1/unsubscribe", `{"user":"u1","channels":["room:1"]}`, 2},
		{"/v1/subscribe", `{"connection":"gone","channels":["news"]}`, 0},
	}
	for _, s := range steps {
		a := call(t, "POST", base+s.path, s.body)
		var got changeAnswer
		a.decode(t, &got)
		if a.Status != 200 || got != (changeAnswer{Changed: s.changed}) {
			t.Fatalf("%s %s: %d %s, want changed %d", s.path, s.body, a.Status, a.Body, s.changed)
		}
	}
	// The changes are what pushes now see.
	a := call(t, "POST", base+"/v1/push/channel/news", "n")
	var got pushAnswer
	a.decode(t, &got)
	if got.Delivered != 3 {
		t.Fatalf("news reached %d sockets, want 3 (c1, c2, c3): %s", got.Delivered, a.Body)
	}
	a = call(t, "POST", base+"/v1/push/channel/room:1", "r")
	a.decode(t, &got)
	if got.Delivered != 1 || got.Dropped != 1 { // c3 and the full c4
		t.Fatalf("room:1 after unsubscribe: %s", a.Body)
	}
}

func TestConnections(t *testing.T) {
	h := pushHub()
	base := startAdmin(t, AdminOptions{Broker: NewMemoryBroker(h)})

	a := call(t, "GET", base+"/v1/connections/c2", "")
	var st ConnState
	a.decode(t, &st)
	if a.Status != 200 || st.ID != "c2" || st.User != "u1" || !reflect.DeepEqual(st.Channels, []string{"room:1", "lobby"}) ||
		st.ConnectedAt.IsZero() || st.ClientIP == "" || st.Route != "/ws" {
		t.Fatalf("GET c2: %d %s", a.Status, a.Body)
	}

	list := func(q string) []string {
		t.Helper()
		a := call(t, "GET", base+"/v1/connections"+q, "")
		var l struct{ Connections []ConnState }
		a.decode(t, &l)
		if a.Status != 200 || l.Connections == nil {
			t.Fatalf("list %s: %d %s", q, a.Status, a.Body)
		}
		ids := []string{}
		for _, c := range l.Connections {
			ids = append(ids, c.ID)
		}
		return ids
	}
	for q, want := range map[string][]string{
		"":                            {"c1", "c2", "c3", "c4"},
		"?user=u1":                    {"c1", "c2"},
		"?channel=room%3A1":           {"c1", "c2", "c4"},
		"?user=u1&channel=lobby":      {"c2"},
		"?channel=nobody":             {},
		"?user=u2&channel=room:1&x=1": {},
	} {
		if got := list(q); !reflect.DeepEqual(got, want) {
			t.Errorf("list %q = %v, want %v", q, got, want)
		}
	}
	// Channels are [] rather than null for a socket in none.
	h.add("c5", "u5")
	if a := call(t, "GET", base+"/v1/connections/c5", ""); !strings.Contains(a.Body, `"channels":[]`) {
		t.Fatalf("c5: %s", a.Body)
	}

	// DELETE closes with the given (or default) code and reason.
	if a := call(t, "DELETE", base+"/v1/connections/c1?code=4001&reason=kicked%20out", ""); a.Status != 200 || !strings.Contains(a.Body, `"closed":true`) {
		t.Fatalf("DELETE c1: %+v", a)
	}
	if a := call(t, "DELETE", base+"/v1/connections/c2", ""); a.Status != 200 {
		t.Fatalf("DELETE c2: %+v", a)
	}
	want := []recClose{{"c1", 4001, "kicked out"}, {"c2", 1000, ""}}
	if got := h.closes(); !reflect.DeepEqual(got, want) {
		t.Fatalf("closes %+v, want %+v", got, want)
	}

	long := strings.Repeat("r", 124)
	for _, tt := range []struct {
		method, path string
		want         int
		code         string
	}{
		{"GET", "/v1/connections/c1", 404, "not_found"}, // gone after DELETE
		{"HEAD", "/v1/connections/nope", 404, ""},
		{"DELETE", "/v1/connections/c1", 404, "not_found"},
		{"DELETE", "/v1/connections/c3?code=1001", 400, "invalid_close"},
		{"DELETE", "/v1/connections/c3?code=2999", 400, "invalid_close"},
		{"DELETE", "/v1/connections/c3?code=5000", 400, "invalid_close"},
		{"DELETE", "/v1/connections/c3?code=abc", 400, "invalid_close"},
		{"DELETE", "/v1/connections/c3?reason=" + long, 400, "invalid_close"},
		{"DELETE", "/v1/connections/c3?reason=%FF", 400, "invalid_close"},
		{"GET", "/v1/connections/%01", 400, "invalid_name"},
		{"GET", "/v1/connections/", 400, "invalid_name"},
		{"DELETE", "/v1/connections/" + strings.Repeat("i", 257), 400, "invalid_name"},
		{"GET", "/v1/connections?user=", 400, "invalid_name"},
		{"GET", "/v1/connections?channel=%7F", 400, "invalid_name"},
	} {
		a := call(t, tt.method, base+tt.path, "")
		if a.Status != tt.want || a.errCode() != tt.code {
			t.Errorf("%s %s: %d %s, want %d %s", tt.method, tt.path, a.Status, a.Body, tt.want, tt.code)
		}
	}
	if got := h.closes(); len(got) != 2 {
		t.Fatalf("rejected DELETEs closed sockets: %+v", got)
	}
	// Boundary codes are accepted.
	for _, id := range []string{"c3", "c4"} {
		code := map[string]string{"c3": "3000", "c4": "4999"}[id]
		if a := call(t, "DELETE", base+"/v1/connections/"+id+"?code="+code+"&reason="+long[:123], ""); a.Status != 200 {
			t.Fatalf("DELETE %s code %s: %+v", id, code, a)
		}
	}
}
