package main

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/wsidecar/wsidecar/bridge"
)

// userStreams is a backend serving one SSE stream per user at
// GET /users/{sub}/events. The test feeds each user's stream through a
// channel: an event is written as is, "cut" ends the response (the
// sidecar must reconnect). It records each request and counts the streams
// the sidecar itself ended (the request context was cancelled).
type userStreams struct {
	mu    sync.Mutex
	feeds map[string]chan string
	reqs  []streamReq
	ended map[string]int
}

type streamReq struct {
	user   string
	header http.Header
}

func newUserStreams(t *testing.T) (*userStreams, string) {
	us := &userStreams{feeds: map[string]chan string{}, ended: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /users/{sub}/events", func(w http.ResponseWriter, r *http.Request) {
		user := r.PathValue("sub")
		us.mu.Lock()
		us.reqs = append(us.reqs, streamReq{user, r.Header.Clone()})
		us.mu.Unlock()
		feed := us.feed(user)
		w.Header().Set("Content-Type", "text/event-stream")
		fl := w.(http.Flusher)
		fl.Flush()
		for {
			select {
			case ev := <-feed:
				if ev == "cut" {
					return
				}
				fmt.Fprint(w, ev)
				fl.Flush()
			case <-r.Context().Done():
				us.mu.Lock()
				us.ended[user]++
				us.mu.Unlock()
				return
			}
		}
	})
	return us, newHTTPServer(t, mux)
}

func (us *userStreams) feed(user string) chan string {
	us.mu.Lock()
	defer us.mu.Unlock()
	f, ok := us.feeds[user]
	if !ok {
		f = make(chan string, 16)
		us.feeds[user] = f
	}
	return f
}

// send queues one event on a user's stream.
func (us *userStreams) send(user, id, data string) {
	us.feed(user) <- fmt.Sprintf("id: %s\ndata: %s\n\n", id, data)
}

func (us *userStreams) requests(user string) []streamReq {
	us.mu.Lock()
	defer us.mu.Unlock()
	var out []streamReq
	for _, r := range us.reqs {
		if r.user == user {
			out = append(out, r)
		}
	}
	return out
}

func (us *userStreams) endedBySidecar(user string) int {
	us.mu.Lock()
	defer us.mu.Unlock()
	return us.ended[user]
}

const streamConnSecret = "stream-conn-test-secret-of-32-bytes!"

func bearerFor(t *testing.T, sub string) http.Header {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": sub, "exp": time.Now().Add(time.Hour).Unix()}).
		SignedString([]byte(streamConnSecret))
	if err != nil {
		t.Fatal(err)
	}
	return http.Header{"Authorization": {"Bearer " + tok}}
}

// connIDOf asks the admin API for the id of a user's one socket.
func connIDOf(t *testing.T, sc *sidecar, user string) string {
	t.Helper()
	var list struct {
		Connections []struct {
			ID string `json:"id"`
		} `json:"connections"`
	}
	status, body := httpDo(t, "GET", sc.Admin+"/v1/connections?user="+user, "", nil, &list)
	if status != 200 || len(list.Connections) != 1 {
		t.Fatalf("connections of %s: %d %s", user, status, body)
	}
	return list.Connections[0].ID
}

// A stream whose path uses the token's subject gives every socket its own
// backend stream: each user's socket hears only that user's events, an
// anonymous socket gets no stream, a cut stream resumes with
// Last-Event-ID, closing a socket ends its backend request, and a drain
// ends the rest.
func TestStreamConnPerUser(t *testing.T) {
	us, url := newUserStreams(t)
	sc := startSidecar(t, url, `
backend { url = "%BACKEND%" }
origins { allow_missing = true }
drain   { window = "100ms" }
jwt {
  key "hmac" {
    algorithms = ["HS256"]
    secret     = "`+streamConnSecret+`"
  }
}
route "/ws" {}
route "/anon" {
  auth = "none"
}
stream "inbox" {
  path          = "/users/${claims.sub}/events"
  reconnect_min = "50ms"
  reconnect_max = "200ms"
}
`)
	alice := dial(t, sc.WS+"/ws", &websocket.DialOptions{HTTPHeader: bearerFor(t, "alice")})
	bob := dial(t, sc.WS+"/ws", &websocket.DialOptions{HTTPHeader: bearerFor(t, "bob")})
	anon := dial(t, sc.WS+"/anon", nil)
	eventually(t, 10*time.Second, func() bool { return len(us.requests("alice")) == 1 && len(us.requests("bob")) == 1 },
		"the backend never saw one stream request per user")

	us.send("bob", "1", "bob-1")
	us.send("alice", "1", "alice-1")
	us.send("alice", "2", "alice-2")
	for c, want := range map[*client][]string{alice: {"alice-1", "alice-2"}, bob: {"bob-1"}} {
		for _, w := range want {
			if got := readText(t, c); got != w {
				t.Fatalf("got %q, want %q: a socket hears only its own user's stream", got, w)
			}
		}
	}
	noMessage(t, anon, 100*time.Millisecond)
	noMessage(t, alice, 50*time.Millisecond)

	// The backend can tell whose stream it serves.
	for _, user := range []string{"alice", "bob"} {
		h := us.requests(user)[0].header
		if id := connIDOf(t, sc, user); h.Get("X-WS-Connection-Id") != id || h.Get("X-WS-User") != user {
			t.Errorf("%s's stream request: X-WS-Connection-Id %q (socket %q), X-WS-User %q",
				user, h.Get("X-WS-Connection-Id"), id, h.Get("X-WS-User"))
		}
		if h.Get("Accept") != "text/event-stream" {
			t.Errorf("Accept %q", h.Get("Accept"))
		}
	}
	if len(us.requests("")) != 0 {
		t.Error("a stream was requested for the anonymous socket")
	}

	// Bob's stream is cut after event 2; event 3 happens meanwhile.
	us.send("bob", "2", "bob-2")
	us.feed("bob") <- "cut"
	us.send("bob", "3", "bob-3")
	for _, w := range []string{"bob-2", "bob-3"} {
		if got := readText(t, bob); got != w {
			t.Fatalf("bob got %q, want %q", got, w)
		}
	}
	reqs := us.requests("bob")
	if len(reqs) != 2 || reqs[1].header.Get("Last-Event-ID") != "2" {
		var ids []string
		for _, r := range reqs {
			ids = append(ids, r.header.Get("Last-Event-ID"))
		}
		t.Fatalf("bob's stream requests sent Last-Event-ID %q, want [\"\" \"2\"]", ids)
	}
	if got := reqs[1].header.Get("X-WS-Connection-Id"); got != reqs[0].header.Get("X-WS-Connection-Id") {
		t.Errorf("the reconnect is for connection %q, the first request for %q", got, reqs[0].header.Get("X-WS-Connection-Id"))
	}

	// Alice leaves: her backend stream ends now, Bob's goes on.
	alice.Close(websocket.StatusNormalClosure, "bye")
	eventually(t, 5*time.Second, func() bool { return us.endedBySidecar("alice") == 1 },
		"alice's backend stream is still open after her socket closed")
	us.send("bob", "4", "bob-4")
	if got := readText(t, bob); got != "bob-4" {
		t.Fatalf("bob got %q after alice left", got)
	}
	if n := us.endedBySidecar("bob"); n != 0 {
		t.Errorf("alice's close ended %d of bob's streams", n)
	}
	m := scrape(t, sc.Admin)
	if v := m.value(t, `wsidecar_sse_connection_streams{stream="inbox",state="open"}`); v != 1 {
		t.Errorf("open per-connection streams = %v, want 1 (bob's)", v)
	}
	if v := m.value(t, `wsidecar_sse_events_total{stream="inbox"}`); v != 6 {
		t.Errorf("events = %v, want 6", v)
	}
	if !strings.Contains(sc.logs.String(), "no per-connection stream for this socket") {
		t.Error("the anonymous socket's missing stream was not logged at debug")
	}

	// A drain closes bob's socket, and with it his stream.
	sc.app.requestDrain()
	code := <-sc.done
	sc.done <- code // for the harness's cleanup
	if code != exitOK {
		t.Errorf("drain exit code %d", code)
	}
	if n := us.endedBySidecar("bob"); n != 1 {
		t.Errorf("after the drain %d of bob's streams ended, want 1", n)
	}
}

// The backend can sign-check a per-connection stream: with a signing
// secret its GET carries X-WS-Signature over the connection id, and
// query values cannot escape their path segment.
func TestStreamConnSignedQueryPath(t *testing.T) {
	us, url := newUserStreams(t)
	sc := startSidecar(t, url, `
backend {
  url            = "%BACKEND%"
  signing_secret = "`+streamConnSecret+`"
}
origins { allow_missing = true }
drain   { window = "100ms" }
route "/ws" {
  auth = "none"
}
stream "inbox" {
  path = "/users/${query.user}/events"
}
`)
	c := dial(t, sc.WS+"/ws?user=carol", nil)
	eventually(t, 10*time.Second, func() bool { return len(us.requests("carol")) == 1 }, "no stream for carol")
	h := us.requests("carol")[0].header
	id := h.Get("X-WS-Connection-Id")
	if err := verifyStreamSignature(h, id); err != nil || id == "" {
		t.Errorf("stream request for connection %q: signature %v", id, err)
	}
	us.send("carol", "1", "carol-1")
	if got := readText(t, c); got != "carol-1" {
		t.Fatalf("got %q", got)
	}
	// Values stay one segment: a space is encoded and decoded back by the
	// backend's router; a value that would climb once decoded
	// ("..%2Fadmin" is "/users/../admin/events" to many routers, Go's
	// included) gets no stream at all.
	dial(t, sc.WS+"/ws?user=..%2Fadmin", nil)
	dial(t, sc.WS+"/ws?user=dave+smith", nil)
	eventually(t, 10*time.Second, func() bool { return len(us.requests("dave smith")) == 1 }, "no stream for \"dave smith\"")
	us.mu.Lock()
	n := len(us.reqs)
	us.mu.Unlock()
	if n != 2 || !strings.Contains(sc.logs.String(), "not a usable backend path") {
		t.Errorf("the backend got %d stream requests, want 2 (carol's and dave's), and the refusal is logged", n)
	}
}

func verifyStreamSignature(h http.Header, connID string) error {
	return bridge.VerifySignature([]byte(streamConnSecret), h.Get("X-WS-Signature"), h.Get("X-WS-Timestamp"), connID, nil, time.Now(), time.Minute)
}
