package main

// These tests act as the sidecar: they POST webhooks to a backend and
// stand up the admin listener the backend pushes to (adminRecorder, a real
// HTTP server that records what it is sent). Every scenario runs against
// both backends — this Go one (httptest) and examples/flask/app.py
// (python3 on a free port) — because the protocol is the product, and a
// backend in another language must be able to follow it from the docs.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	testSecret = "test-signing-secret"
	testToken  = "test-admin-token"
	testWSURL  = "ws://sidecar.test:8080/ws"
)

// push is one request the backend made to the sidecar's admin listener.
type push struct {
	Path, ContentType, Auth string
	Body                    []byte
}

// adminRecorder stands in for wsidecar's admin listener.
type adminRecorder struct {
	*httptest.Server
	mu     sync.Mutex
	pushes []push
}

func newAdminRecorder(t *testing.T) *adminRecorder {
	a := &adminRecorder{}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		a.mu.Lock()
		a.pushes = append(a.pushes, push{r.URL.EscapedPath(), r.Header.Get("Content-Type"), r.Header.Get("Authorization"), body})
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"delivered":1,"dropped":0}`)
	}))
	t.Cleanup(a.Close)
	return a
}

// take returns and forgets the pushes so far. Backends push before they
// answer the webhook, so after a reply everything it caused is here.
func (a *adminRecorder) take() []push {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.pushes
	a.pushes = nil
	return p
}

// backend is one running implementation under test.
type backend struct {
	url    string
	secret string // signs every webhook when set
	admin  *adminRecorder
	client *http.Client
}

// forEachBackend runs fn against the Go backend and the Flask backend, each
// freshly started with the given signing secret ("" for none).
func forEachBackend(t *testing.T, secret string, fn func(t *testing.T, b *backend)) {
	t.Run("go", func(t *testing.T) {
		b := &backend{secret: secret, admin: newAdminRecorder(t), client: &http.Client{Timeout: 10 * time.Second}}
		s := newServer(serverConfig{SidecarAdmin: b.admin.URL, AdminToken: testToken, WSURL: testWSURL, SigningSecret: secret})
		srv := httptest.NewServer(s.routes())
		t.Cleanup(srv.Close)
		b.url = srv.URL
		fn(t, b)
	})
	t.Run("flask", func(t *testing.T) {
		b := &backend{secret: secret, admin: newAdminRecorder(t), client: &http.Client{Timeout: 10 * time.Second}}
		b.url = startFlask(t, b.admin.URL, secret)
		fn(t, b)
	})
}

// startFlask runs examples/flask/app.py on a free port and returns its URL.
func startFlask(t *testing.T, adminURL, secret string) string {
	t.Helper()
	if err := exec.Command("python3", "-c", "import flask").Run(); err != nil {
		t.Skipf("skipping the Flask backend: python3 cannot import flask (%v); install python3-flask to run it", err)
	}
	app, err := filepath.Abs("../flask/app.py")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("python3", app, "--addr", "127.0.0.1:0", "--sidecar-admin", adminURL,
		"--ws-url", testWSURL, "--admin-token", testToken, "--notice-every", "0")
	cmd.Env = append(os.Environ(), "SIGNING_SECRET="+secret, "PYTHONUNBUFFERED=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start flask app: %v", err)
	}
	exited := make(chan struct{})
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("flask app stderr:\n%s", stderr.String())
		}
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if _, url, ok := strings.Cut(sc.Text(), "listening on "); ok {
				lines <- url
			}
		}
		cmd.Wait() // after stdout is drained, as os/exec requires
		close(exited)
	}()
	select {
	case url := <-lines:
		return url
	case <-exited:
		t.Fatalf("flask app exited before listening:\n%s", stderr.String())
	case <-time.After(15 * time.Second):
		t.Fatalf("flask app did not start in 15s:\n%s", stderr.String())
	}
	return ""
}

// sign is the sidecar's side of the signature scheme, written from the
// protocol text rather than shared with the code under test.
func sign(secret string, ts int64, connID string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	fmt.Fprintf(mac, "%d.%s.", ts, connID)
	mac.Write(body)
	return "v1=" + hex.EncodeToString(mac.Sum(nil))
}

// hookReply is what the backend answered a webhook.
type hookReply struct {
	Status      int
	ContentType string
	Body        []byte
}

// hook makes one webhook call the way the sidecar does. header may
// override or remove (empty value) any header, including the signature.
func (b *backend) hook(t *testing.T, path, connID string, seq int, ctype string, body []byte, header map[string]string) hookReply {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, b.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-WS-Connection-Id", connID)
	req.Header.Set("X-WS-Route", "/ws")
	if seq > 0 {
		req.Header.Set("X-WS-Seq", strconv.Itoa(seq))
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if b.secret != "" {
		ts := time.Now().Unix()
		req.Header.Set("X-WS-Timestamp", strconv.FormatInt(ts, 10))
		req.Header.Set("X-WS-Signature", sign(b.secret, ts, connID, body))
	}
	for k, v := range header {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := b.client.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST %s: read reply: %v", path, err)
	}
	return hookReply{resp.StatusCode, resp.Header.Get("Content-Type"), rb}
}

func (b *backend) get(t *testing.T, path string) (int, string, []byte) {
	t.Helper()
	resp, err := b.client.Get(b.url + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Content-Type"), body
}

// actionsDoc is the wsidecar actions document as the sidecar parses it.
type actionsDoc struct {
	Frames []struct {
		Text   *string `json:"text"`
		Binary *string `json:"binary"`
	} `json:"frames"`
	Subscribe   []string `json:"subscribe"`
	Unsubscribe []string `json:"unsubscribe"`
}

// wantActions checks a reply is an actions document and returns it with
// its text frames decoded as JSON.
func wantActions(t *testing.T, r hookReply) (actionsDoc, []map[string]any) {
	t.Helper()
	if r.Status != http.StatusOK || r.ContentType != actionsType {
		t.Fatalf("reply = %d %q %s; want 200 %s", r.Status, r.ContentType, r.Body, actionsType)
	}
	var doc actionsDoc
	if err := json.Unmarshal(r.Body, &doc); err != nil {
		t.Fatalf("actions document %s: %v", r.Body, err)
	}
	var frames []map[string]any
	for _, f := range doc.Frames {
		if f.Text == nil {
			t.Fatalf("frame without text in %s", r.Body)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(*f.Text), &m); err != nil {
			t.Fatalf("text frame %q is not JSON: %v", *f.Text, err)
		}
		frames = append(frames, m)
	}
	return doc, frames
}

func wantJSON(t *testing.T, data []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("%s is not a JSON object: %v", data, err)
	}
	return m
}

// wantPresence checks one JSON push carrying a presence event.
func wantPresence(t *testing.T, p push, room, event, conn, nick string, count int) {
	t.Helper()
	if p.Path != "/v1/push" || !strings.HasPrefix(p.ContentType, "application/json") || p.Auth != "Bearer "+testToken {
		t.Fatalf("presence push = %s %q auth %q; want /v1/push application/json with the token", p.Path, p.ContentType, p.Auth)
	}
	var req struct {
		Channels []string `json:"channels"`
		Exclude  []string `json:"exclude"`
		Text     string   `json:"text"`
	}
	if err := json.Unmarshal(p.Body, &req); err != nil {
		t.Fatalf("push body %s: %v", p.Body, err)
	}
	if !slices.Equal(req.Channels, []string{"room:" + room}) || !slices.Equal(req.Exclude, []string{conn}) {
		t.Errorf("presence push to %v excluding %v; want [room:%s] excluding [%s]", req.Channels, req.Exclude, room, conn)
	}
	m := wantJSON(t, []byte(req.Text))
	if m["type"] != "presence" || m["room"] != room || m["event"] != event || m["id"] != conn || m["nick"] != nick || m["count"] != float64(count) {
		t.Errorf("presence = %v; want %s %s by %s (%s), count %d", m, event, room, nick, conn, count)
	}
}

func text(s string) []byte { return []byte(s) }

const textType = "text/plain; charset=utf-8"

// TestConversation is the whole chat as the sidecar drives it: two people
// connect, one is refused, they join, talk, ping, send binary, move rooms
// and leave. Each step checks the reply frames/actions and the pushes.
func TestConversation(t *testing.T) {
	t.Parallel()
	forEachBackend(t, testSecret, func(t *testing.T, b *backend) {
		// connect: welcome frame, lobby + notices subscriptions.
		doc, frames := wantActions(t, b.hook(t, "/ws/connect", "c-alice", 0, "", nil, map[string]string{"X-WS-Path": "/ws?x=1"}))
		if !slices.Contains(doc.Subscribe, "lobby") || !slices.Contains(doc.Subscribe, "notices") {
			t.Errorf("connect subscribes %v; want lobby and notices", doc.Subscribe)
		}
		if len(frames) != 1 || frames[0]["type"] != "welcome" || frames[0]["id"] != "c-alice" {
			t.Errorf("connect frames = %v; want one welcome for c-alice", frames)
		}

		// ?reject=1 is refused with a body the sidecar relays to the client.
		r := b.hook(t, "/ws/connect", "c-mallory", 0, "", nil, map[string]string{"X-WS-Path": "/ws?room=x&reject=1"})
		if r.Status != http.StatusForbidden || len(r.Body) == 0 {
			t.Errorf("reject=1 connect = %d %q; want 403 with a body", r.Status, r.Body)
		}

		// alice joins general.
		doc, frames = wantActions(t, b.hook(t, "/ws/message", "c-alice", 1, textType, text(`{"type":"join","room":"general","nick":"alice"}`), nil))
		if !slices.Equal(doc.Subscribe, []string{"room:general"}) || len(doc.Unsubscribe) != 0 {
			t.Errorf("join actions = %+v; want subscribe [room:general] only", doc)
		}
		if len(frames) != 1 || frames[0]["type"] != "joined" || frames[0]["room"] != "general" || fmt.Sprint(frames[0]["members"]) != "[alice]" {
			t.Errorf("join frames = %v; want joined general with [alice]", frames)
		}
		if p := b.admin.take(); len(p) != 1 {
			t.Fatalf("join pushed %d times; want 1 presence push", len(p))
		} else {
			wantPresence(t, p[0], "general", "join", "c-alice", "alice", 1)
		}

		// bob connects and joins; the welcome lists the active room.
		_, frames = wantActions(t, b.hook(t, "/ws/connect", "c-bob", 0, "", nil, map[string]string{"X-WS-Path": "/ws"}))
		if fmt.Sprint(frames[0]["rooms"]) != "[general]" {
			t.Errorf("welcome rooms = %v; want [general]", frames[0]["rooms"])
		}
		_, frames = wantActions(t, b.hook(t, "/ws/message", "c-bob", 1, textType, text(`{"type":"join","room":"general","nick":"bob"}`), nil))
		if fmt.Sprint(frames[0]["members"]) != "[alice bob]" {
			t.Errorf("members = %v; want [alice bob]", frames[0]["members"])
		}
		if p := b.admin.take(); len(p) != 1 {
			t.Fatalf("bob's join pushed %d times; want 1", len(p))
		} else {
			wantPresence(t, p[0], "general", "join", "c-bob", "bob", 2)
		}

		// alice says hello: a raw channel push, and 204 to the sidecar.
		before := time.Now().UnixMilli()
		r = b.hook(t, "/ws/message", "c-alice", 2, textType, text(`{"type":"say","room":"general","text":"  hello <b>bob</b>  ","nick":"alice"}`), nil)
		if r.Status != http.StatusNoContent || len(r.Body) != 0 {
			t.Errorf("say = %d %q; want 204 without a body", r.Status, r.Body)
		}
		p := b.admin.take()
		if len(p) != 1 || p[0].Path != "/v1/push/channel/room:general" || !strings.HasPrefix(p[0].ContentType, "application/json") || p[0].Auth != "Bearer "+testToken {
			t.Fatalf("say pushes = %+v; want one POST /v1/push/channel/room:general, application/json, bearer token", p)
		}
		chat := wantJSON(t, p[0].Body)
		ts, _ := chat["ts"].(float64)
		if chat["type"] != "chat" || chat["room"] != "general" || chat["from"] != "alice" || chat["text"] != "hello <b>bob</b>" ||
			int64(ts) < before-1000 || int64(ts) > time.Now().UnixMilli()+1000 {
			t.Errorf("chat push = %v; want chat from alice, trimmed text, ts in unix ms", chat)
		}

		// ping: answered directly with the same t, as JSON.
		r = b.hook(t, "/ws/message", "c-alice", 3, textType, text(`{"type":"ping","t":42.5}`), nil)
		if pong := wantJSON(t, r.Body); r.Status != http.StatusOK || !strings.HasPrefix(r.ContentType, "application/json") || pong["type"] != "pong" || pong["t"] != 42.5 {
			t.Errorf("ping reply = %d %q %s; want 200 application/json pong with t 42.5", r.Status, r.ContentType, r.Body)
		}

		// binary: echoed byte for byte.
		bin := []byte{0, 1, 2, 0xff, 0xfe, '{'}
		r = b.hook(t, "/ws/message", "c-alice", 4, "application/octet-stream", bin, nil)
		if r.Status != http.StatusOK || r.ContentType != "application/octet-stream" || !bytes.Equal(r.Body, bin) {
			t.Errorf("binary echo = %d %q %x; want 200 application/octet-stream %x", r.Status, r.ContentType, r.Body, bin)
		}

		// bob moves to random: unsubscribed from general, presence both ways.
		doc, _ = wantActions(t, b.hook(t, "/ws/message", "c-bob", 2, textType, text(`{"type":"join","room":"random","nick":"bob"}`), nil))
		if !slices.Equal(doc.Subscribe, []string{"room:random"}) || !slices.Equal(doc.Unsubscribe, []string{"room:general"}) {
			t.Errorf("move actions = %+v; want subscribe [room:random], unsubscribe [room:general]", doc)
		}
		if p := b.admin.take(); len(p) != 2 {
			t.Fatalf("move pushed %d times; want leave + join", len(p))
		} else {
			wantPresence(t, p[0], "general", "leave", "c-bob", "bob", 1)
			wantPresence(t, p[1], "random", "join", "c-bob", "bob", 1)
		}

		// alice leaves: 2xx, and the room hears it.
		r = b.hook(t, "/ws/disconnect", "c-alice", 0, "application/json", text(`{"code":1001,"reason":"going away","clean":true,"duration_ms":1234}`), nil)
		if r.Status/100 != 2 {
			t.Errorf("disconnect = %d %s; want 2xx", r.Status, r.Body)
		}
		if p := b.admin.take(); len(p) != 1 {
			t.Fatalf("disconnect pushed %d times; want 1 leave", len(p))
		} else {
			wantPresence(t, p[0], "general", "leave", "c-alice", "alice", 0)
		}
		// A retried disconnect is harmless: no second leave.
		if r := b.hook(t, "/ws/disconnect", "c-alice", 0, "application/json", text(`{"code":1001}`), nil); r.Status/100 != 2 || len(b.admin.take()) != 0 {
			t.Errorf("repeated disconnect = %d, or it pushed again", r.Status)
		}

		// /log saw it all, in order.
		status, _, body := b.get(t, "/log")
		var hooks []map[string]any
		if err := json.Unmarshal(body, &hooks); status != http.StatusOK || err != nil {
			t.Fatalf("/log = %d %s (%v)", status, body, err)
		}
		var got []string
		for _, h := range hooks {
			got = append(got, fmt.Sprintf("%v %v seq=%v code=%v status=%v", h["kind"], h["connection_id"], h["seq"], h["code"], h["status"]))
		}
		want := []string{
			"connect c-alice seq=<nil> code=<nil> status=200",
			"reject c-mallory seq=<nil> code=<nil> status=403",
			"message c-alice seq=1 code=<nil> status=200",
			"connect c-bob seq=<nil> code=<nil> status=200",
			"message c-bob seq=1 code=<nil> status=200",
			"message c-alice seq=2 code=<nil> status=204",
			"message c-alice seq=3 code=<nil> status=200",
			"message c-alice seq=4 code=<nil> status=200",
			"message c-bob seq=2 code=<nil> status=200",
			"disconnect c-alice seq=<nil> code=1001 status=204",
			"disconnect c-alice seq=<nil> code=1001 status=204",
		}
		if !slices.Equal(got, want) {
			t.Errorf("/log =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	})
}

// TestBadMessages: every frame the service cannot use gets a 4xx JSON error
// (the sidecar's on_error policy turns it into the client's answer).
func TestBadMessages(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, body, code string
	}{
		{"not json", `hello`, "bad_json"},
		{"json array", `[1,2]`, "bad_json"},
		{"NaN is not JSON", `{"type":"ping","t":NaN}`, "bad_json"},
		{"number type", `{"type":7}`, "bad_json"},
		{"no type", `{"room":"general"}`, "unknown_type"},
		{"unknown type", `{"type":"shout","room":"general"}`, "unknown_type"},
		{"join without room", `{"type":"join"}`, "bad_room"},
		{"join bad room", `{"type":"join","room":"../etc"}`, "bad_room"},
		{"join room newline", `{"type":"join","room":"general\n"}`, "bad_room"},
		{"join room too long", `{"type":"join","room":"` + strings.Repeat("a", 33) + `"}`, "bad_room"},
		{"say bad room", `{"type":"say","room":"a b","text":"hi"}`, "bad_room"},
		{"say blank text", `{"type":"say","room":"general","text":"   "}`, "bad_text"},
		{"say text too long", `{"type":"say","room":"general","text":"` + strings.Repeat("é", 1001) + `"}`, "bad_text"},
		{"ping without t", `{"type":"ping"}`, "bad_ping"},
		{"ping string t", `{"type":"ping","t":"5"}`, "bad_ping"},
		{"ping null t", `{"type":"ping","t":null}`, "bad_ping"},
		{"ping bool t", `{"type":"ping","t":true}`, "bad_ping"},
	}
	forEachBackend(t, "", func(t *testing.T, b *backend) {
		for _, tc := range cases {
			r := b.hook(t, "/ws/message", "c1", 1, textType, text(tc.body), nil)
			var e struct {
				Error struct{ Code, Message string } `json:"error"`
			}
			json.Unmarshal(r.Body, &e)
			if r.Status != http.StatusBadRequest || !strings.HasPrefix(r.ContentType, "application/json") || e.Error.Code != tc.code || e.Error.Message == "" {
				t.Errorf("%s: %s → %d %q %s; want 400 JSON error %q", tc.name, tc.body, r.Status, r.ContentType, r.Body, tc.code)
			}
		}
		if pushes := b.admin.take(); len(pushes) != 0 {
			t.Errorf("bad messages caused pushes: %+v", pushes)
		}
		// Without a connection id a call is not from the sidecar.
		for _, path := range []string{"/ws/connect", "/ws/message", "/ws/disconnect"} {
			if r := b.hook(t, path, "", 1, textType, text(`{"type":"ping","t":1}`), nil); r.Status != http.StatusBadRequest {
				t.Errorf("%s without X-WS-Connection-Id = %d; want 400", path, r.Status)
			}
		}
	})
}

// TestSayPushFailure: when the sidecar refuses the push, the sender is told
// (5xx → on_error) instead of the message vanishing.
func TestSayPushFailure(t *testing.T) {
	t.Parallel()
	forEachBackend(t, "", func(t *testing.T, b *backend) {
		b.admin.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, `{"error":{"code":"unauthorized","message":"bad token"}}`, http.StatusUnauthorized)
		})
		r := b.hook(t, "/ws/message", "c1", 1, textType, text(`{"type":"say","room":"general","text":"hi"}`), nil)
		if r.Status != http.StatusBadGateway || !bytes.Contains(r.Body, []byte("push_failed")) {
			t.Errorf("say with a failing sidecar = %d %s; want 502 push_failed", r.Status, r.Body)
		}
		// Presence is best effort: a join still succeeds.
		wantActions(t, b.hook(t, "/ws/message", "c1", 2, textType, text(`{"type":"join","room":"general"}`), nil))
	})
}

// TestSignature: with SIGNING_SECRET set only correctly signed, fresh calls
// for the right connection and body get through.
func TestSignature(t *testing.T) {
	t.Parallel()
	body := text(`{"type":"ping","t":1}`)
	now := time.Now().Unix()
	ts := strconv.FormatInt(now, 10)
	good := sign(testSecret, now, "c1", body)
	cases := []struct {
		name   string
		header map[string]string
		want   int
	}{
		{"valid", nil, 200},
		{"rotation list with one good value", map[string]string{"X-WS-Signature": "v1=" + strings.Repeat("ab", 32) + ", " + good}, 200},
		{"no signature", map[string]string{"X-WS-Signature": ""}, 401},
		{"no timestamp", map[string]string{"X-WS-Timestamp": ""}, 401},
		{"wrong secret", map[string]string{"X-WS-Signature": sign("other", now, "c1", body)}, 401},
		{"signed for another connection", map[string]string{"X-WS-Signature": sign(testSecret, now, "c2", body)}, 401},
		{"signed for another body", map[string]string{"X-WS-Signature": sign(testSecret, now, "c1", text(`{"type":"ping","t":2}`))}, 401},
		{"timestamp changed after signing", map[string]string{"X-WS-Timestamp": strconv.FormatInt(now+1, 10), "X-WS-Signature": good}, 401},
		{"stale", map[string]string{"X-WS-Timestamp": strconv.FormatInt(now-600, 10), "X-WS-Signature": sign(testSecret, now-600, "c1", body)}, 401},
		{"future", map[string]string{"X-WS-Timestamp": strconv.FormatInt(now+600, 10), "X-WS-Signature": sign(testSecret, now+600, "c1", body)}, 401},
		{"timestamp not a number", map[string]string{"X-WS-Timestamp": "soon"}, 401},
		{"unknown scheme", map[string]string{"X-WS-Signature": strings.Replace(good, "v1=", "v2=", 1)}, 401},
		{"not hex", map[string]string{"X-WS-Signature": "v1=zz"}, 401},
		{"bare hex", map[string]string{"X-WS-Signature": strings.TrimPrefix(good, "v1=")}, 401},
		{"non-ASCII signature", map[string]string{"X-WS-Signature": "v1=\u00ff\u00fe" + strings.TrimPrefix(good, "v1=")[4:]}, 401},
		{"non-ASCII timestamp", map[string]string{"X-WS-Timestamp": "\u00ff"}, 401},
	}
	t.Run("signed", func(t *testing.T) {
		forEachBackend(t, testSecret, func(t *testing.T, b *backend) {
			for _, tc := range cases {
				h := map[string]string{"X-WS-Timestamp": ts, "X-WS-Signature": good}
				for k, v := range tc.header {
					h[k] = v
				}
				r := b.hook(t, "/ws/message", "c1", 1, textType, body, h)
				if r.Status != tc.want {
					t.Errorf("%s: %d %s; want %d", tc.name, r.Status, r.Body, tc.want)
				}
			}
		})
	})
	t.Run("unsigned", func(t *testing.T) {
		forEachBackend(t, "", func(t *testing.T, b *backend) {
			if r := b.hook(t, "/ws/message", "c1", 1, textType, body, nil); r.Status != http.StatusOK {
				t.Errorf("unsigned call without SIGNING_SECRET = %d; want 200", r.Status)
			}
		})
	})
}

// sseEvent is one parsed server-sent event.
type sseEvent struct{ Event, ID, Data string }

// openEvents starts GET /events and returns a function reading the next
// event (comments skipped), failing the test after a deadline.
func openEvents(t *testing.T, b *backend, lastID string) func() sseEvent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, b.url+"/events", nil)
	req.Header.Set("Accept", "text/event-stream")
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := (&http.Client{}).Do(req) // no timeout: it is a stream
	if err != nil {
		t.Fatalf("GET /events: %v", err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("GET /events = %d %q; want 200 text/event-stream", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	events := make(chan sseEvent)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.Data != "" {
					select {
					case events <- ev:
					case <-ctx.Done():
						return
					}
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, ":"):
			default:
				k, v, _ := strings.Cut(line, ":")
				v = strings.TrimPrefix(v, " ")
				switch k {
				case "event":
					ev.Event = v
				case "id":
					ev.ID = v
				case "data":
					ev.Data += v
				}
			}
		}
	}()
	return func() sseEvent {
		t.Helper()
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("event stream ended")
			}
			return ev
		case <-time.After(5 * time.Second):
			t.Fatal("no event within 5s")
		}
		return sseEvent{}
	}
}

func (b *backend) notice(t *testing.T, text string) int {
	t.Helper()
	resp, err := b.client.Post(b.url+"/notice", "application/json", strings.NewReader(fmt.Sprintf(`{"text":%q}`, text)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var n struct{ ID int }
	if err := json.NewDecoder(resp.Body).Decode(&n); resp.StatusCode != http.StatusOK || err != nil || n.ID == 0 {
		t.Fatalf("POST /notice = %d (%v)", resp.StatusCode, err)
	}
	return n.ID
}

// wantNotice checks an SSE event is notice id with the given text.
func wantNotice(t *testing.T, ev sseEvent, id int, text string) {
	t.Helper()
	var d struct {
		Type, Text string
		ID         int
	}
	if err := json.Unmarshal([]byte(ev.Data), &d); err != nil {
		t.Fatalf("event data %q: %v", ev.Data, err)
	}
	if ev.Event != "notices" || ev.ID != strconv.Itoa(id) || d.Type != "notice" || d.ID != id || d.Text != text {
		t.Errorf("event = %+v; want event notices, id %d, notice %q", ev, id, text)
	}
}

// TestEvents: the SSE feed delivers live, and a reader that was cut off and
// comes back with Last-Event-ID gets exactly what it missed.
func TestEvents(t *testing.T) {
	t.Parallel()
	forEachBackend(t, "", func(t *testing.T, b *backend) {
		live := openEvents(t, b, "")
		id1 := b.notice(t, "first")
		wantNotice(t, live(), id1, "first")

		// The sidecar is cut off after id1; two notices happen meanwhile.
		id2 := b.notice(t, "second")
		id3 := b.notice(t, "third, with \"quotes\"\nand a newline")
		next := openEvents(t, b, strconv.Itoa(id1))
		wantNotice(t, next(), id2, "second")
		wantNotice(t, next(), id3, "third, with \"quotes\"\nand a newline")
		// … and then stays live.
		id4 := b.notice(t, "fourth")
		wantNotice(t, next(), id4, "fourth")

		// A Last-Event-ID the backend never issued means it restarted and
		// counts from 1 again: everything kept is replayed.
		restarted := openEvents(t, b, "999999")
		wantNotice(t, restarted(), id1, "first")

		// A fresh reader starts from now, not from history.
		fresh := openEvents(t, b, "")
		id5 := b.notice(t, "fifth")
		wantNotice(t, fresh(), id5, "fifth")
	})
}

// TestPage: the chat page and its WebSocket URL are served.
func TestPage(t *testing.T) {
	t.Parallel()
	forEachBackend(t, "", func(t *testing.T, b *backend) {
		for _, tc := range []struct{ path, ctype, contains string }{
			{"/", "text/html", `id="messages"`},
			{"/app.js", "javascript", "new WebSocket("},
			{"/style.css", "text/css", "#messages"},
			{"/config.js", "javascript", `"wsUrl":"` + testWSURL + `"`},
			{"/healthz", "text/plain", "ok"},
		} {
			status, ctype, body := b.get(t, tc.path)
			if status != http.StatusOK || !strings.Contains(ctype, tc.ctype) || !bytes.Contains(body, []byte(tc.contains)) {
				t.Errorf("GET %s = %d %q, body has %q: %v; want 200 %s", tc.path, status, ctype, tc.contains, bytes.Contains(body, []byte(tc.contains)), tc.ctype)
			}
		}
		if status, _, _ := b.get(t, "/nope.txt"); status != http.StatusNotFound {
			t.Errorf("GET /nope.txt = %d; want 404", status)
		}
	})
}
