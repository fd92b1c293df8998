package main

// Resilience stories: the backend dies and comes back, a client stops
// answering pings, one socket never reads during a big broadcast.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	fws "github.com/fasthttp/websocket"
)

// outageBackend is a legacy service that can be killed and started again on
// the same port; its log of webhooks spans every life.
type outageBackend struct {
	addr string
	URL  string

	mu    sync.Mutex
	srv   *http.Server
	hooks []hook
	hang  chan struct{} // non-nil: /message blocks until it is closed
}

func newOutageBackend(t *testing.T) *outageBackend {
	t.Helper()
	b := &outageBackend{}
	b.addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	b.URL = "http://" + b.addr
	b.start(t)
	t.Cleanup(b.kill)
	return b
}

func (b *outageBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	b.mu.Lock()
	b.hooks = append(b.hooks, hook{Path: r.URL.Path, Header: r.Header.Clone(), Body: body})
	hang := b.hang
	b.mu.Unlock()
	if r.URL.Path != "/message" {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if hang != nil {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Write(append([]byte("echo:"), body...))
}

// start serves on the backend's port (again).
func (b *outageBackend) start(t *testing.T) {
	t.Helper()
	var ln net.Listener
	eventually(t, 5*time.Second, func() bool {
		var err error
		ln, err = net.Listen("tcp", b.addr)
		return err == nil
	}, "port %s not free again", b.addr)
	srv := &http.Server{Handler: b}
	b.mu.Lock()
	b.srv = srv
	b.mu.Unlock()
	go srv.Serve(ln)
}

// kill stops the backend the hard way: the listener and every connection,
// with requests in flight, are closed at once.
func (b *outageBackend) kill() {
	b.mu.Lock()
	srv := b.srv
	b.srv = nil
	if b.hang != nil {
		close(b.hang)
		b.hang = nil
	}
	b.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

func (b *outageBackend) setHang(on bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if on && b.hang == nil {
		b.hang = make(chan struct{})
	}
	if !on && b.hang != nil {
		close(b.hang)
		b.hang = nil
	}
}

// ids returns the X-WS-Connection-Id of every call to path, with counts.
func (b *outageBackend) ids(path string) map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[string]int{}
	for _, h := range b.hooks {
		if h.Path == path {
			out[h.Header.Get("X-WS-Connection-Id")]++
		}
	}
	return out
}

// chatter sends numbered messages on one socket, one at a time, and records
// how each was answered.
type chatter struct {
	c      *client
	stop   chan struct{}
	done   chan struct{}
	mu     sync.Mutex
	echoes int       // answers that came from the backend
	errs   int       // error frames (the on_error policy)
	slow   []string  // answers that took longer than the limit
	lastOK time.Time // when the last echo arrived
	err    error     // the socket failed
}

func startChatter(c *client, limit time.Duration) *chatter {
	ch := &chatter{c: c, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(ch.done)
		for i := 0; ; i++ {
			select {
			case <-ch.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			msg := fmt.Sprintf("m%d", i)
			sent := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := c.Write(ctx, websocket.MessageText, []byte(msg))
			cancel()
			if err != nil {
				ch.fail(fmt.Errorf("write: %w", err))
				return
			}
			var m inbound
			select {
			case m = <-c.in:
			case <-time.After(10 * time.Second):
				ch.fail(fmt.Errorf("no answer to %s within 10s", msg))
				return
			}
			if m.err != nil {
				ch.fail(fmt.Errorf("read: %w", m.err))
				return
			}
			took := time.Since(sent)
			ch.mu.Lock()
			switch {
			case string(m.data) == "echo:"+msg:
				ch.echoes++
				ch.lastOK = time.Now()
			case strings.Contains(string(m.data), `"backend_unavailable"`):
				ch.errs++
			default:
				ch.mu.Unlock()
				ch.fail(fmt.Errorf("unexpected answer %q to %s", m.data, msg))
				return
			}
			if took > limit {
				ch.slow = append(ch.slow, fmt.Sprintf("%s answered after %v", msg, took))
			}
			ch.mu.Unlock()
		}
	}()
	return ch
}

func (ch *chatter) fail(err error) {
	ch.mu.Lock()
	ch.err = err
	ch.mu.Unlock()
}

func (ch *chatter) snapshot() (echoes, errs int, lastOK time.Time, err error) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.echoes, ch.errs, ch.lastOK, ch.err
}

func (ch *chatter) halt() {
	select {
	case <-ch.stop:
	default:
		close(ch.stop)
	}
	<-ch.done
}

// The backend hangs, then dies mid-traffic, then comes back on the same
// port. Clients get the on_error answer within the webhook timeout, the
// breaker opens (and /metrics says so), handshakes that need the connect
// webhook get 503 + Retry-After while it is open, traffic resumes on the
// same sockets when the backend is back, and the backend ends up with
// exactly one disconnect per connect — including for sockets that closed
// while it was down.
func TestBackendOutage(t *testing.T) {
	be := newOutageBackend(t)
	sc := startSidecar(t, be.URL, `
backend {
  url     = "%BACKEND%"
  timeout = "1s"
  disconnect_retry_max = "200ms"
  breaker {
    failures     = 3
    open_timeout = "1s"
  }
}
origins { allow_missing = true } # the test clients are not browsers
limits {
  per_ip_connections = 0
  handshake_rate     = "unlimited"
}
route "/ws" {
  auth          = "none"
  on_connect    = "/connect"
  on_message    = "/message"
  on_disconnect = "/disconnect"
  on_error      = "reply"
}
`)
	const timeout = time.Second
	const limit = timeout + 700*time.Millisecond // the webhook timeout plus scheduling slack

	// A hung backend: the client's answer is the error frame, after the
	// webhook timeout and not much later.
	probe := dial(t, sc.WS+"/ws", nil)
	be.setHang(true)
	sent := time.Now()
	write(t, probe, websocket.MessageText, []byte("hello?"))
	if got := readText(t, probe); !strings.Contains(got, `"backend_unavailable"`) {
		t.Fatalf("hung backend: answer %q, want the backend_unavailable error frame", got)
	}
	if took := time.Since(sent); took < timeout-100*time.Millisecond || took > limit {
		t.Errorf("hung backend: error frame after %v, want about the 1s timeout", took)
	}
	be.setHang(false)
	write(t, probe, websocket.MessageText, []byte("again"))
	if got := readText(t, probe); got != "echo:again" {
		t.Fatalf("after the hang: %q", got)
	}

	// Mid-traffic: eight sockets chatting.
	var chats []*chatter
	for range 8 {
		chats = append(chats, startChatter(dial(t, sc.WS+"/ws", nil), limit))
	}
	eventually(t, 10*time.Second, func() bool {
		for _, ch := range chats {
			if e, _, _, _ := ch.snapshot(); e < 3 {
				return false
			}
		}
		return true
	}, "chat never got going")
	if st := scrape(t, sc.Admin).value(t, "wsidecar_breaker_state"); st != 0 {
		t.Fatalf("breaker state %v before the outage, want 0 (closed)", st)
	}

	be.kill()
	killedAt := time.Now()

	// The breaker opens, and /metrics shows it.
	eventually(t, 5*time.Second, func() bool {
		return scrape(t, sc.Admin).value(t, "wsidecar_breaker_state") == 2
	}, "wsidecar_breaker_state never showed 2 (open)")
	opened := scrape(t, sc.Admin)
	if v, _ := opened.get(`wsidecar_webhook_unavailable_total{kind="message",reason="breaker_open"}`); v == 0 {
		t.Error("no message refused by the open breaker was counted")
	}

	// While it is open, a handshake that needs the connect webhook is
	// refused at once with 503 and a Retry-After.
	status, h := dialStatus(t, sc.WS+"/ws", nil)
	if status != http.StatusServiceUnavailable || h.Get("Retry-After") == "" {
		t.Errorf("handshake during the outage: %d, Retry-After %q; want 503 with Retry-After", status, h.Get("Retry-After"))
	}
	if v, _ := scrape(t, sc.Admin).get(`wsidecar_handshake_rejections_total{reason="backend_unavailable"}`); v < 1 {
		t.Error("the refused handshake is not counted under reason backend_unavailable")
	}

	// Two sockets leave while the backend is down: their disconnects
	// must wait for it.
	for _, ch := range chats[:2] {
		ch.halt()
		ch.c.Close(websocket.StatusNormalClosure, "bye")
	}
	probe.Close(websocket.StatusNormalClosure, "bye")
	time.Sleep(300 * time.Millisecond) // a few failed disconnect attempts

	be.start(t)
	restartedAt := time.Now()

	// Traffic resumes on the same sockets.
	eventually(t, 10*time.Second, func() bool {
		for _, ch := range chats[2:] {
			if _, _, last, _ := ch.snapshot(); !last.After(restartedAt) {
				return false
			}
		}
		return true
	}, "chat did not resume on every socket after the restart")
	eventually(t, 5*time.Second, func() bool {
		return scrape(t, sc.Admin).value(t, "wsidecar_breaker_state") == 0
	}, "breaker did not close again")
	t.Logf("outage: killed, restarted after %v", restartedAt.Sub(killedAt))

	errFrames := 0
	for i, ch := range chats {
		ch.halt()
		e, errs, _, err := ch.snapshot()
		errFrames += errs
		if err != nil {
			t.Errorf("socket %d: %v (the socket must survive the outage)", i, err)
		}
		if e == 0 {
			t.Errorf("socket %d: no echo at all", i)
		}
		if len(ch.slow) > 0 {
			t.Errorf("socket %d: answers slower than %v: %v", i, limit, ch.slow)
		}
	}
	if errFrames == 0 {
		t.Error("no client saw the on_error answer during the outage")
	}
	for _, ch := range chats[2:] {
		ch.c.Close(websocket.StatusNormalClosure, "bye")
	}

	// Every connect has exactly one disconnect.
	connects := be.ids("/connect")
	eventually(t, 10*time.Second, func() bool { return len(be.ids("/disconnect")) >= len(connects) },
		"only %d of %d disconnects arrived", len(be.ids("/disconnect")), len(connects))
	time.Sleep(200 * time.Millisecond) // a duplicate would show up now
	disconnects := be.ids("/disconnect")
	for id, n := range connects {
		if n != 1 {
			t.Errorf("connection %s: %d connects", id, n)
		}
		if disconnects[id] != 1 {
			t.Errorf("connection %s: %d disconnects, want exactly 1", id, disconnects[id])
		}
	}
	for id := range disconnects {
		if connects[id] == 0 {
			t.Errorf("disconnect for %s, which never connected", id)
		}
	}
	if len(connects) != 9 {
		t.Errorf("%d connects, want 9 (the probe and eight chatters)", len(connects))
	}
}

// A client that stops answering pings is closed within heartbeat.interval
// + heartbeat.timeout of its last pong; one that answers stays; a client's
// own ping is answered.
func TestHeartbeatClosesSilentPeer(t *testing.T) {
	be := newBackend(t)
	sc := startSidecar(t, be.URL, `
backend { url = "%BACKEND%" }
heartbeat {
  interval = "1s"
  timeout  = "1s"
}
origins { allow_missing = true }
route "/ws" { auth = "none" }
`)
	const interval, timeout = time.Second, time.Second
	const tick = 250 * time.Millisecond // the scanner's resolution: min(interval, timeout)/4

	type peer struct {
		ws       *fws.Conn
		answer   atomic.Bool
		lastPong atomic.Int64 // unix ns
		pings    atomic.Int32
		pongs    chan string
		closed   chan struct{}
		closedAt time.Time
		err      error
	}
	open := func() *peer {
		ws, _, err := fws.DefaultDialer.Dial(sc.WS+"/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ws.Close() })
		p := &peer{ws: ws, pongs: make(chan string, 4), closed: make(chan struct{})}
		p.answer.Store(true)
		p.lastPong.Store(time.Now().UnixNano())
		ws.SetPingHandler(func(data string) error {
			p.pings.Add(1)
			if !p.answer.Load() {
				return nil // a peer that has gone quiet (or half-open)
			}
			p.lastPong.Store(time.Now().UnixNano())
			return ws.WriteControl(fws.PongMessage, []byte(data), time.Now().Add(time.Second))
		})
		ws.SetPongHandler(func(data string) error { p.pongs <- data; return nil })
		go func() {
			for {
				if _, _, err := ws.ReadMessage(); err != nil {
					p.closedAt, p.err = time.Now(), err
					close(p.closed)
					return
				}
			}
		}()
		return p
	}
	quiet, lively := open(), open()

	// The client's own ping is answered.
	if err := lively.ws.WriteControl(fws.PingMessage, []byte("are you there"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-lively.pongs:
		if got != "are you there" {
			t.Errorf("pong payload %q", got)
		}
	case <-time.After(2 * time.Second):
		t.Error("the sidecar did not answer a client ping")
	}

	// Both answer the first ping, then one goes quiet.
	eventually(t, 3*time.Second, func() bool { return quiet.pings.Load() >= 1 }, "no ping within 3s")
	quiet.answer.Store(false)
	last := time.Unix(0, quiet.lastPong.Load())

	select {
	case <-quiet.closed:
	case <-time.After(interval + timeout + 2*time.Second):
		t.Fatal("the quiet client was not closed")
	}
	took := quiet.closedAt.Sub(last)
	var ce *fws.CloseError
	if !errors.As(quiet.err, &ce) || ce.Code != fws.CloseGoingAway || ce.Text != "heartbeat timeout" {
		t.Errorf("quiet client ended with %v, want close 1001 \"heartbeat timeout\"", quiet.err)
	}
	if took > interval+timeout+tick+700*time.Millisecond { // scheduling slack on a busy machine
		t.Errorf("closed %v after the last pong, want within interval+timeout (%v) plus the scan tick", took, interval+timeout)
	}
	if took < interval {
		t.Errorf("closed only %v after the last pong: too eager", took)
	}

	// The lively client has answered every ping since and is still open.
	time.Sleep(interval)
	select {
	case <-lively.closed:
		t.Fatalf("a client answering pings was closed: %v", lively.err)
	default:
	}
	if n := lively.pings.Load(); n < 2 {
		t.Errorf("lively client saw %d pings in ~3s with a 1s interval", n)
	}
}

// slowPeer is a raw TCP WebSocket client that never reads after the
// handshake, with a tiny receive buffer: the sidecar's writes to it stall
// once the kernel buffers are full.
func slowPeer(t *testing.T, wsURL, path string) net.Conn {
	t.Helper()
	host := strings.TrimPrefix(wsURL, "ws://")
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	nc, err := d.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	fmt.Fprintf(nc, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", path, host)
	// Read the 101 byte by byte so that nothing after it is consumed.
	var hdr []byte
	one := make([]byte, 1)
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for !strings.HasSuffix(string(hdr), "\r\n\r\n") {
		if _, err := nc.Read(one); err != nil {
			t.Fatalf("slow peer handshake: %v (%q)", err, hdr)
		}
		hdr = append(hdr, one[0])
	}
	if !strings.HasPrefix(string(hdr), "HTTP/1.1 101") {
		t.Fatalf("slow peer handshake: %q", hdr)
	}
	return nc
}

// pushRaw posts body to an admin push shortcut.
func pushRaw(t *testing.T, admin, path, ctype string, body []byte) pushResult {
	t.Helper()
	var res pushResult
	st, raw := httpDo(t, "POST", admin+path, ctype, body, &res)
	if st != http.StatusOK {
		t.Fatalf("POST %s: %d %s", path, st, raw)
	}
	return res
}

// stallSlowPeer pushes big messages to one connection until the sidecar's
// writer to it is stuck: bytes_out stops growing while some of what was
// pushed is still unwritten. It returns the number of frames pushed.
func stallSlowPeer(t *testing.T, admin, id string) int {
	t.Helper()
	big := make([]byte, 768<<10)
	base := scrape(t, admin).value(t, "wsidecar_bytes_out_total")
	pushed := 0.0
	for n := 1; n <= 12; n++ {
		if r := pushRaw(t, admin, "/v1/push/connection/"+id, "application/octet-stream", big); r.Delivered != 1 {
			t.Fatalf("push %d to the slow peer: %+v", n, r)
		}
		pushed += float64(len(big))
		// Wait for the writer to settle.
		prev := -1.0
		for {
			time.Sleep(150 * time.Millisecond)
			out := scrape(t, admin).value(t, "wsidecar_bytes_out_total") - base
			if out == prev {
				break
			}
			prev = out
		}
		if prev < pushed {
			return n
		}
	}
	t.Fatal("the slow peer absorbed 9 MiB without stalling")
	return 0
}

// One socket that never reads must not slow a broadcast to a thousand
// others: the broadcast reaches every healthy socket promptly while the
// stalled socket's writer is stuck (its write timeout is 10s), the stalled
// socket's queue overflows and it is handled by the slow_consumer policy —
// closed with 1013 under "close", messages dropped under "drop" — and
// /metrics counts it.
func TestSlowConsumerDoesNotSlowBroadcast(t *testing.T) {
	for _, tc := range []struct {
		policy string
		fast   int
	}{
		{"close", 1000},
		{"drop", 50},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			be := newBackend(t)
			sc := startSidecar(t, be.URL, `
backend { url = "%BACKEND%" }
origins { allow_missing = true }
limits {
  per_ip_connections = 0
  handshake_rate     = "unlimited"
  send_queue         = 16
  slow_consumer      = "`+tc.policy+`"
}
drain { window = "200ms" } # the harness drains at cleanup
route "/fast" {
  auth     = "none"
  channels = ["all"]
}
route "/slow" {
  auth     = "none"
  channels = ["all", "slow"]
}
`)
			var delivered atomic.Int64
			fast := dialMany(t, sc.WS+"/fast", tc.fast, func(int, []byte) { delivered.Add(1) })
			slowPeer(t, sc.WS, "/slow")
			slowID := connIDs(t, sc.Admin, "slow")[0]
			waitSubscribers(t, sc, "all", tc.fast+1)

			stalled := stallSlowPeer(t, sc.Admin, slowID)
			before := scrape(t, sc.Admin)

			// Broadcast rounds: every fast socket gets every message, each
			// round promptly, while the slow socket's writer is stuck.
			const rounds = 24
			dropped := 0
			var worst time.Duration
			for r := 1; r <= rounds; r++ {
				start := time.Now()
				res := pushRaw(t, sc.Admin, "/v1/push/broadcast", "text/plain", []byte(fmt.Sprintf("round %d", r)))
				dropped += res.Dropped
				want := int64(r * tc.fast)
				for delivered.Load() < want {
					if time.Since(start) > 3*time.Second {
						t.Fatalf("round %d: %d of %d fast sockets got it within 3s", r, delivered.Load()-want+int64(tc.fast), tc.fast)
					}
					time.Sleep(2 * time.Millisecond)
				}
				worst = max(worst, time.Since(start))
			}
			t.Logf("%s: slow peer stalled after %d big frames; worst broadcast round to %d sockets: %v", tc.policy, stalled, tc.fast, worst)
			if worst > 2*time.Second {
				t.Errorf("a broadcast round took %v with one stalled socket", worst)
			}
			if got := delivered.Load(); got != int64(rounds*tc.fast) {
				t.Errorf("fast sockets got %d messages, want %d", got, rounds*tc.fast)
			}
			for i, c := range fast {
				if !c.isOpen() {
					t.Fatalf("fast socket %d was closed: %d %s", i, c.code, c.reason)
				}
			}

			after := scrape(t, sc.Admin)
			overflow := after.value(t, "wsidecar_send_queue_dropped_total") - before.value(t, "wsidecar_send_queue_dropped_total")
			pushDropped := after.value(t, "wsidecar_push_dropped_total") - before.value(t, "wsidecar_push_dropped_total")
			closes := after.value(t, "wsidecar_slow_consumer_closes_total")
			if dropped == 0 || overflow != float64(dropped) || pushDropped != float64(dropped) {
				t.Errorf("push replies said %d dropped; send_queue_dropped grew by %v, push_dropped by %v", dropped, overflow, pushDropped)
			}
			switch tc.policy {
			case "close":
				if dropped != 1 || closes != 1 {
					t.Errorf("close policy: %d drops and %v slow-consumer closes, want 1 and 1", dropped, closes)
				}
				eventually(t, 10*time.Second, func() bool {
					st, _ := httpDo(t, "GET", sc.Admin+"/v1/connections/"+slowID, "", nil, nil)
					return st == http.StatusNotFound
				}, "the slow consumer was not closed")
				if v := scrape(t, sc.Admin).value(t, `wsidecar_connections_open{route="/slow"}`); v != 0 {
					t.Errorf("connections_open{route=\"/slow\"} = %v after the close", v)
				}
			case "drop":
				if closes != 0 {
					t.Errorf("drop policy closed %v sockets", closes)
				}
				if dropped < rounds-16 {
					t.Errorf("drop policy: only %d of %d rounds dropped for the stalled socket", dropped, rounds)
				}
				if st, _ := httpDo(t, "GET", sc.Admin+"/v1/connections/"+slowID, "", nil, nil); st != http.StatusOK {
					t.Errorf("drop policy: the slow socket is gone (%d)", st)
				}
			}
		})
	}
}

// connIDs lists the ids of the sockets in a channel; it fails unless there
// is at least one.
func connIDs(t *testing.T, admin, channel string) []string {
	t.Helper()
	var list struct {
		Connections []struct {
			ID string `json:"id"`
		} `json:"connections"`
	}
	httpDo(t, "GET", admin+"/v1/connections?channel="+channel, "", nil, &list)
	if len(list.Connections) == 0 {
		t.Fatalf("no socket in channel %s", channel)
	}
	var ids []string
	for _, c := range list.Connections {
		ids = append(ids, c.ID)
	}
	return ids
}
