package main

// The scripted chat conversation, end to end: real WebSocket clients
// (coder/websocket, independent of the sidecar's library) → the real
// wsidecar binary with the shipped sidecar.hcl → each example backend.
// examples/legacy tests the same script against the backends directly;
// this proves that what the backends answer is what a client gets.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// wsClient reads in the background, so a test can wait with a deadline
// without cancelling a read (coder/websocket closes the socket then).
type wsClient struct {
	*websocket.Conn
	name string
	in   chan frame
}

type frame struct {
	typ  websocket.MessageType
	data []byte
	err  error
}

// dialChat connects to the sidecar as the chat page would: from the
// page's origin.
func dialChat(t *testing.T, s *stack, name string) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, s.WSURL, &websocket.DialOptions{
		HTTPHeader: http.Header{"Origin": {s.BackendURL}},
	})
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("%s: dial %s: %v (status %d)", name, s.WSURL, err, status)
	}
	t.Cleanup(func() { c.CloseNow() })
	wc := &wsClient{Conn: c, name: name, in: make(chan frame, 64)}
	go func() {
		for {
			typ, data, err := c.Read(context.Background())
			wc.in <- frame{typ, data, err}
			if err != nil {
				return
			}
		}
	}()
	return wc
}

// next returns the next message, failing after 10s.
func (c *wsClient) next(t *testing.T) frame {
	t.Helper()
	select {
	case f := <-c.in:
		if f.err != nil {
			t.Fatalf("%s: read: %v", c.name, f.err)
		}
		return f
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no message within 10s", c.name)
	}
	return frame{}
}

// nextJSON returns the next message, which must be a JSON text frame.
func (c *wsClient) nextJSON(t *testing.T) map[string]any {
	t.Helper()
	f := c.next(t)
	var m map[string]any
	if f.typ != websocket.MessageText || json.Unmarshal(f.data, &m) != nil {
		t.Fatalf("%s: got %v frame %q; want a JSON text frame", c.name, f.typ, f.data)
	}
	return m
}

// expect reads the next message and checks the given fields.
func (c *wsClient) expect(t *testing.T, want map[string]any) map[string]any {
	t.Helper()
	m := c.nextJSON(t)
	for k, v := range want {
		if fmt.Sprint(m[k]) != fmt.Sprint(v) {
			t.Fatalf("%s: got %v; want %s = %v", c.name, m, k, v)
		}
	}
	return m
}

// quiet checks that nothing more arrives for a moment.
func (c *wsClient) quiet(t *testing.T) {
	t.Helper()
	select {
	case f := <-c.in:
		t.Fatalf("%s: unexpected %v %q (err %v)", c.name, f.typ, f.data, f.err)
	case <-time.After(200 * time.Millisecond):
	}
}

func (c *wsClient) send(t *testing.T, typ websocket.MessageType, data string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Write(ctx, typ, []byte(data)); err != nil {
		t.Fatalf("%s: write: %v", c.name, err)
	}
}

// backendLog is GET /log on the backend: every webhook it answered.
func backendLog(t *testing.T, s *stack) []map[string]any {
	t.Helper()
	status, _, body := get(t, s.BackendURL+"/log")
	var hooks []map[string]any
	if err := json.Unmarshal([]byte(body), &hooks); status != http.StatusOK || err != nil {
		t.Fatalf("GET /log = %d %s (%v)", status, body, err)
	}
	return hooks
}

func TestConversationThroughSidecar(t *testing.T) {
	for _, backend := range []string{"go", "flask"} {
		t.Run(backend, func(t *testing.T) {
			s := startTestStack(t, backend)
			alice := dialChat(t, s, "alice")
			id1 := alice.expect(t, map[string]any{"type": "welcome"})["id"]
			bob := dialChat(t, s, "bob")
			id2 := bob.expect(t, map[string]any{"type": "welcome"})["id"]
			if id1 == nil || id2 == nil || id1 == id2 {
				t.Fatalf("welcome ids %v and %v; want two distinct connection ids", id1, id2)
			}

			// The connect webhook's refusal is the handshake's answer.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c, resp, err := websocket.Dial(ctx, s.WSURL+"?reject=1", &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {s.BackendURL}}})
			cancel()
			if err == nil {
				c.CloseNow()
				t.Fatal("?reject=1: connected; want the backend's 403")
			}
			if resp == nil || resp.StatusCode != http.StatusForbidden {
				t.Fatalf("?reject=1: %v (response %v); want 403", err, resp)
			}
			body, _ := io.ReadAll(resp.Body)
			if !strings.Contains(string(body), "rejected") {
				t.Errorf("?reject=1: body %q; want the backend's JSON error", body)
			}

			// join: a reply to the sender, presence pushed to the room.
			alice.send(t, websocket.MessageText, `{"type":"join","room":"general","nick":"alice"}`)
			alice.expect(t, map[string]any{"type": "joined", "room": "general", "members": []any{"alice"}})
			bob.send(t, websocket.MessageText, `{"type":"join","room":"general","nick":"bob"}`)
			bob.expect(t, map[string]any{"type": "joined", "room": "general", "members": []any{"alice", "bob"}})
			alice.expect(t, map[string]any{"type": "presence", "event": "join", "nick": "bob", "room": "general", "count": 2, "id": id2})

			// say: the backend pushes to the room; both hear it.
			alice.send(t, websocket.MessageText, `{"type":"say","room":"general","text":"hello <b>bob</b>","nick":"alice"}`)
			for _, c := range []*wsClient{bob, alice} {
				c.expect(t, map[string]any{"type": "chat", "room": "general", "from": "alice", "text": "hello <b>bob</b>"})
			}

			// ping: the webhook's JSON reply comes back as a text frame.
			bob.send(t, websocket.MessageText, `{"type":"ping","t":42.5}`)
			bob.expect(t, map[string]any{"type": "pong", "t": 42.5})

			// binary: echoed byte for byte, as a binary frame.
			bin := "\x00\x01\xff\xfe{"
			alice.send(t, websocket.MessageBinary, bin)
			if f := alice.next(t); f.typ != websocket.MessageBinary || !bytes.Equal(f.data, []byte(bin)) {
				t.Errorf("binary echo = %v %x; want binary %x", f.typ, f.data, bin)
			}

			// A frame the backend refuses: on_error = "reply" gives an error frame.
			alice.send(t, websocket.MessageText, `not json`)
			if m := alice.nextJSON(t); m["error"] == nil {
				t.Errorf("refused frame answered %v; want an error frame", m)
			}

			// A notice on the backend's SSE feed reaches every socket.
			postNotice(t, s, "maintenance at noon")
			for _, c := range []*wsClient{alice, bob} {
				c.expect(t, map[string]any{"type": "notice", "text": "maintenance at noon"})
			}
			alice.quiet(t)
			bob.quiet(t)

			// bob leaves: the disconnect webhook tells the backend, which
			// tells the room.
			bob.Close(websocket.StatusNormalClosure, "bye")
			alice.expect(t, map[string]any{"type": "presence", "event": "leave", "nick": "bob", "count": 1, "id": id2})
			alice.Close(websocket.StatusNormalClosure, "bye")

			// Per connection, the backend saw everything in order (one
			// webhook in flight per socket). Across sockets the log order
			// is the order replies were written, which is a race: bob's
			// ping can be answered while alice's say is still pushing.
			want := map[string][]string{
				"alice": {
					"connect seq=<nil> code=<nil> status=200",
					"message seq=1 code=<nil> status=200",
					"message seq=2 code=<nil> status=204",
					"message seq=3 code=<nil> status=200",
					"message seq=4 code=<nil> status=400",
					"disconnect seq=<nil> code=1000 status=204",
				},
				"bob": {
					"connect seq=<nil> code=<nil> status=200",
					"message seq=1 code=<nil> status=200",
					"message seq=2 code=<nil> status=200",
					"disconnect seq=<nil> code=1000 status=204",
				},
				"other": {"reject seq=<nil> code=<nil> status=403"},
			}
			var got map[string][]string
			eventually(t, 10*time.Second, func() error {
				got = map[string][]string{}
				for _, h := range backendLog(t, s) {
					who := map[any]string{id1: "alice", id2: "bob"}[h["connection_id"]]
					if who == "" {
						who = "other"
					}
					got[who] = append(got[who], fmt.Sprintf("%v seq=%v code=%v status=%v", h["kind"], h["seq"], h["code"], h["status"]))
				}
				if len(got["alice"]) < len(want["alice"]) || len(got["bob"]) < len(want["bob"]) {
					return fmt.Errorf("backend saw %v so far", got)
				}
				return nil
			})
			for _, who := range []string{"alice", "bob", "other"} {
				if !slices.Equal(got[who], want[who]) {
					t.Errorf("backend /log for %s =\n%s\nwant\n%s", who, strings.Join(got[who], "\n"), strings.Join(want[who], "\n"))
				}
			}
		})
	}
}
