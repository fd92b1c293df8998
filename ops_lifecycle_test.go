package main

// Lifecycle stories with the real binary and real signals: SIGTERM drains a
// thousand sockets, a second SIGTERM exits at once, `wsidecar drain` (the
// preStop hook) drains and waits, SIGHUP reloads; and in-process: POST
// /v1/drain, reload of every reloadable part, a failed start cleans up.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsidecar/wsidecar/config"
)

// readyWatch polls /readyz back to back and keeps every answer, so a test
// can check what readiness said at any moment.
type readyWatch struct {
	mu    sync.Mutex
	polls []readyPoll
	stop  chan struct{}
	done  chan struct{}
}

type readyPoll struct {
	sent, got time.Time
	status    int // 0: no answer (refused)
}

func watchReady(url string) *readyWatch {
	w := &readyWatch{stop: make(chan struct{}), done: make(chan struct{})}
	client := &http.Client{Timeout: 2 * time.Second}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			sent := time.Now()
			st := 0
			if resp, err := client.Get(url); err == nil {
				st = resp.StatusCode
				resp.Body.Close()
			} else {
				time.Sleep(5 * time.Millisecond)
			}
			w.mu.Lock()
			w.polls = append(w.polls, readyPoll{sent, time.Now(), st})
			w.mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return w
}

func (w *readyWatch) halt() []readyPoll {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.polls
}

// checkReadyBeforeClose fails when /readyz answered 200 to a poll sent
// after the first socket was closed (readiness must fail first), or when
// no poll was answered 503 while the sockets were being closed (the check
// would prove nothing).
func checkReadyBeforeClose(t *testing.T, polls []readyPoll, firstClose, lastClose time.Time) {
	t.Helper()
	during := 0
	for _, p := range polls {
		if p.status == http.StatusOK && p.sent.After(firstClose) {
			t.Errorf("/readyz answered 200 to a poll sent %v after the first socket was closed", p.sent.Sub(firstClose))
		}
		if p.status == http.StatusServiceUnavailable && p.sent.After(firstClose) && p.got.Before(lastClose) {
			during++
		}
	}
	if during == 0 {
		t.Errorf("no /readyz poll answered 503 between the first and the last close (%d polls)", len(polls))
	}
}

// SIGTERM to the real binary with 1,000 open sockets: /readyz fails before
// any socket is closed, every socket gets 1001 (spread over drain.window,
// not in one wave), every disconnect webhook is delivered before the
// process exits, and it exits 0 within drain.timeout. The log is JSON at
// debug level, as configured, and every line parses.
func TestSIGTERMDrainsThousandSockets(t *testing.T) {
	be := newBackend(t)
	c := startChild(t, be.URL, `
listener { address = "%LISTEN%" }
admin    { address = "%ADMIN%" }
backend  { url = "%BACKEND%" }
origins  { allow_missing = true }
limits {
  per_ip_connections = 0
  handshake_rate     = "unlimited"
}
drain {
  window  = "2s"
  timeout = "10s"
}
log {
  format = "json"
  level  = "debug"
}
route "/ws" {
  auth          = "none"
  on_connect    = "/connect"
  on_disconnect = "/disconnect"
}
`)
	const n = 1000
	const window, timeout = 2 * time.Second, 10 * time.Second
	// A backend slower than the closes (4 webhook workers × 10ms < 500
	// closes/s): disconnects pile up, and only a flush before exit
	// delivers them all.
	be.setReply(slowDisconnects(10 * time.Millisecond))
	conns := dialMany(t, c.WS+"/ws", n, nil)
	be.waitCalls(t, "/connect", n)

	watch := watchReady(c.Admin + "/readyz")
	time.Sleep(20 * time.Millisecond)
	sigAt := time.Now()
	c.signal(t, syscall.SIGTERM)
	code := c.waitExit(t, timeout+5*time.Second)
	took := c.exited.Sub(sigAt)
	polls := watch.halt()
	disconnects := be.calls("/disconnect") // as the process exits, not later

	if code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if took > timeout {
		t.Errorf("exited %v after SIGTERM, beyond drain.timeout %v", took, timeout)
	}
	waitEnded(t, conns, 2*time.Second)
	first, last := conns[0].endedAt, conns[0].endedAt
	for i, cn := range conns {
		if cn.code != websocket.StatusGoingAway {
			t.Fatalf("socket %d ended with %d %q, want 1001", i, cn.code, cn.reason)
		}
		first, last = minTime(first, cn.endedAt), maxTime(last, cn.endedAt)
	}
	if spread := last.Sub(first); spread < window/2 {
		t.Errorf("1001s came within %v, want them spread over the %v window", spread, window)
	}
	checkReadyBeforeClose(t, polls, first, last)

	connected := map[string]bool{}
	for _, h := range be.calls("/connect") {
		connected[h.Header.Get("X-WS-Connection-Id")] = true
	}
	seen := map[string]int{}
	for _, h := range disconnects {
		seen[h.Header.Get("X-WS-Connection-Id")]++
		var d struct {
			Code int `json:"code"`
		}
		if err := json.Unmarshal(h.Body, &d); err != nil || d.Code != 1001 {
			t.Fatalf("disconnect body %s, want code 1001", h.Body)
		}
	}
	if len(disconnects) != n || len(seen) != n {
		t.Errorf("%d disconnect webhooks for %d connections before exit, want %d", len(disconnects), len(seen), n)
	}
	for id := range connected {
		if seen[id] != 1 {
			t.Errorf("connection %s: %d disconnects", id, seen[id])
			break
		}
	}
	t.Logf("drained %d sockets in %v (1001s spread over %v)", n, took, last.Sub(first))

	// The log format and level came from the config.
	lines := strings.Split(strings.TrimSpace(c.stderr.String()), "\n")
	debug := 0
	for _, line := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		if rec["level"] == "DEBUG" {
			debug++
		}
	}
	if debug < n {
		t.Errorf("%d debug lines; log.level = \"debug\" should log each connection", debug)
	}
}

// slowDisconnects answers disconnect webhooks after d, everything else at
// once.
func slowDisconnects(d time.Duration) func(w http.ResponseWriter, h hook) {
	return func(w http.ResponseWriter, h hook) {
		if strings.HasSuffix(h.Path, "/disconnect") {
			time.Sleep(d)
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// A second SIGTERM during a drain exits at once (non-zero: the drain did
// not finish). log.level = "warn" keeps info lines out.
func TestSecondSIGTERMExitsAtOnce(t *testing.T) {
	be := newBackend(t)
	c := startChild(t, be.URL, `
listener { address = "%LISTEN%" }
admin    { address = "%ADMIN%" }
backend  { url = "%BACKEND%" }
origins  { allow_missing = true }
drain {
  window  = "20s"
  timeout = "25s"
}
log { level = "warn" }
route "/ws" { auth = "none" }
`)
	conns := dialMany(t, c.WS+"/ws", 20, nil)
	c.signal(t, syscall.SIGTERM)
	eventually(t, 5*time.Second, func() bool {
		st, _ := getStatus(c.Admin + "/readyz")
		return st == http.StatusServiceUnavailable
	}, "/readyz never went 503")
	again := time.Now()
	c.signal(t, syscall.SIGTERM)
	code := c.waitExit(t, 5*time.Second)
	if took := c.exited.Sub(again); took > time.Second {
		t.Errorf("second SIGTERM: exited after %v, want at once", took)
	}
	if code == 0 {
		t.Error("exit code 0 after an interrupted drain; want non-zero")
	}
	waitEnded(t, conns, 2*time.Second)
	graceful := 0
	for _, cn := range conns {
		if cn.code == websocket.StatusGoingAway {
			graceful++
		}
	}
	t.Logf("second SIGTERM: exit %d; %d of %d sockets had had their 1001 before the cut", code, graceful, len(conns))
	logs := c.stderr.String()
	if !strings.Contains(logs, "second signal") {
		t.Errorf("no warning about the second signal in:\n%s", logs)
	}
	if strings.Contains(logs, "level=INFO") || strings.Contains(logs, "level=DEBUG") {
		t.Errorf("log.level = \"warn\" but info/debug lines were written:\n%s", logs)
	}
}

// `wsidecar drain` is the preStop hook: it needs the admin token, starts
// the drain and returns only when the sidecar has finished (exited 0),
// after every socket got 1001 and every disconnect webhook was delivered.
func TestDrainCommand(t *testing.T) {
	be := newBackend(t)
	c := startChild(t, be.URL, `
listener { address = "%LISTEN%" }
admin {
  address = "%ADMIN%"
  token   = env("SIDECAR_ADMIN_TOKEN")
}
backend  { url = "%BACKEND%" }
origins  { allow_missing = true }
drain {
  window  = "1s"
  timeout = "5s"
}
route "/ws" {
  auth          = "none"
  on_connect    = "/connect"
  on_disconnect = "/disconnect"
}
`, "SIDECAR_ADMIN_TOKEN=s3cret-admin-token")
	be.setReply(slowDisconnects(500 * time.Millisecond)) // a backlog for the flush
	conns := dialMany(t, c.WS+"/ws", 10, nil)
	bin := wsidecarBinary(t)

	// A wrong token drains nothing.
	out, err := exec.Command(bin, "drain", "-admin", c.Admin, "-token", "wrong").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "401") {
		t.Fatalf("drain with a wrong token: %v %s", err, out)
	}
	if st, _ := getStatus(c.Admin + "/readyz"); st != http.StatusOK {
		t.Fatalf("/readyz %d after a refused drain", st)
	}

	cmd := exec.Command(bin, "drain", "-admin", c.Admin, "-timeout", "20s")
	cmd.Env = append(os.Environ(), "SIDECAR_ADMIN_TOKEN=s3cret-admin-token")
	start := time.Now()
	out, err = cmd.CombinedOutput()
	returned := time.Now()
	delivered := len(be.calls("/disconnect"))
	if err != nil {
		t.Fatalf("wsidecar drain: %v\n%s", err, out)
	}
	// The admin listener is the last thing the sidecar closes; the
	// process is gone a moment later.
	if code := c.waitExit(t, time.Second); code != 0 {
		t.Errorf("sidecar exit code %d after the drain", code)
	}
	t.Logf("wsidecar drain took %v: %s", returned.Sub(start), strings.TrimSpace(string(out)))
	waitEnded(t, conns, time.Second)
	for i, cn := range conns {
		if cn.code != websocket.StatusGoingAway {
			t.Errorf("socket %d: %d, want 1001", i, cn.code)
		}
	}
	if delivered != len(conns) {
		t.Errorf("%d disconnect webhooks when the preStop hook returned, want %d", delivered, len(conns))
	}
	if code, _, stderr := runCLI(t, "drain", "-admin", "ftp://x"); code != exitConfig {
		t.Errorf("drain with a bad URL: exit %d %s", code, stderr)
	}
}

// POST /v1/drain in-process: /readyz fails at once and keeps answering
// (503) while the sockets are closed with 1001; new handshakes get 503 +
// Retry-After; disconnect webhooks are flushed before the sidecar stops;
// it stops with 0 before drain.timeout and both listeners are closed.
func TestDrainEndpoint(t *testing.T) {
	be := newBackend(t)
	sc := startSidecar(t, be.URL, `
backend { url = "%BACKEND%" }
origins { allow_missing = true }
drain {
  window  = "1s"
  timeout = "5s"
}
route "/ws" {
  auth          = "none"
  on_connect    = "/connect"
  on_disconnect = "/disconnect"
}
`)
	be.setReply(slowDisconnects(300 * time.Millisecond)) // a backlog for the flush
	conns := dialMany(t, sc.WS+"/ws", 20, nil)
	if st, _ := getStatus(sc.Admin + "/readyz"); st != http.StatusOK {
		t.Fatalf("/readyz %d before the drain", st)
	}
	watch := watchReady(sc.Admin + "/readyz")
	start := time.Now()
	var res map[string]string
	if st, raw := httpDo(t, "POST", sc.Admin+"/v1/drain", "", nil, &res); st != http.StatusAccepted {
		t.Fatalf("POST /v1/drain: %d %s", st, raw)
	}
	accepted := time.Now()
	if st, _ := getStatus(sc.Admin + "/readyz"); st != http.StatusServiceUnavailable {
		t.Errorf("/readyz %d right after POST /v1/drain, want 503", st)
	}
	status, h := dialStatus(t, sc.WS+"/ws", nil)
	if status != http.StatusServiceUnavailable || h.Get("Retry-After") == "" {
		t.Errorf("handshake during the drain: %d Retry-After %q, want 503 with Retry-After", status, h.Get("Retry-After"))
	}
	if v := scrape(t, sc.Admin).value(t, "wsidecar_draining"); v != 1 {
		t.Errorf("wsidecar_draining = %v during the drain", v)
	}

	var code int
	select {
	case code = <-sc.done:
		sc.done <- code // for the harness's cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("the sidecar did not stop")
	}
	stopped := time.Now()
	disconnects := len(be.calls("/disconnect"))
	polls := watch.halt()
	if code != 0 || stopped.Sub(start) > 5*time.Second {
		t.Errorf("stopped with %d after %v; want 0 within drain.timeout (5s)", code, stopped.Sub(start))
	}
	if disconnects != len(conns) {
		t.Errorf("%d disconnect webhooks delivered when the sidecar stopped, want %d", disconnects, len(conns))
	}
	waitEnded(t, conns, time.Second)
	last := conns[0].endedAt
	first := last
	for i, cn := range conns {
		if cn.code != websocket.StatusGoingAway {
			t.Errorf("socket %d: %d, want 1001", i, cn.code)
		}
		first, last = minTime(first, cn.endedAt), maxTime(last, cn.endedAt)
	}
	checkReadyBeforeClose(t, polls, first, last)
	// The admin listener answered 503 until the last socket was gone.
	answered := time.Time{}
	for _, p := range polls {
		if p.status == http.StatusOK && p.sent.After(accepted) {
			t.Errorf("/readyz answered 200 during the drain")
		}
		if p.status == http.StatusServiceUnavailable {
			answered = maxTime(answered, p.got)
		}
	}
	if answered.Before(last) {
		t.Errorf("/readyz stopped answering %v before the last socket closed", last.Sub(answered))
	}
	for _, addr := range []string{sc.app.wsAddr, sc.app.adminAddr} {
		if nc, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			nc.Close()
			t.Errorf("%s still accepts connections after the sidecar stopped", addr)
		}
	}
}

// A start that fails half-way (the admin port is taken) closes what it had
// opened: the WebSocket port is free again and no webhook worker or
// heartbeat loop is left running.
func TestStartFailureCleansUp(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	wsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	path := t.TempDir() + "/sidecar.hcl"
	os.WriteFile(path, []byte(fmt.Sprintf(`
listener { address = %q }
admin    { address = %q }
backend  { url = "http://127.0.0.1:1" }
route "/ws" {
  auth          = "none"
  on_disconnect = "/disconnect"
}
`, wsAddr, taken.Addr().String())), 0o600)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	before := goroutines("disconnectWorker", "heartbeatLoop")
	logs := &syncBuffer{}
	if _, err := start(context.Background(), cfg, newLogger(logs, cfg.Log, new(slog.LevelVar))); err == nil || !strings.Contains(err.Error(), "admin listen") {
		t.Fatalf("start with the admin port taken: %v", err)
	}
	ln, err := net.Listen("tcp", wsAddr)
	if err != nil {
		t.Fatalf("the WebSocket port is still held after a failed start: %v", err)
	}
	ln.Close()
	eventually(t, 2*time.Second, func() bool { return goroutines("disconnectWorker", "heartbeatLoop") == before },
		"a failed start left goroutines running: %d, before %d", goroutines("disconnectWorker", "heartbeatLoop"), before)
}

// goroutines counts the goroutines whose stack mentions any of names.
func goroutines(names ...string) int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, name := range names {
			if strings.Contains(g, name) {
				n++
				break
			}
		}
	}
	return n
}

// reloadBackend answers messages with a fixed prefix and serves an SSE
// stream that sends a tick every 50ms.
func reloadBackend(t *testing.T, name string) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/msg", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "%s:%d", name, len(body))
	})
	mux.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; ; i++ {
			fmt.Fprintf(w, "data: %s-tick-%d\n\n", name, i)
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
	// The sidecar (started later, so stopped first) ends the stream
	// before the server's Close waits for it.
	return newHTTPServer(t, mux)
}

// waitText reads until a text message satisfies ok.
func waitText(t *testing.T, c *client, within time.Duration, ok func(string) bool) string {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case m := <-c.in:
			if m.err != nil {
				t.Fatalf("socket ended while waiting: %v", m.err)
			}
			if ok(string(m.data)) {
				return string(m.data)
			}
		case <-deadline:
			t.Fatalf("no matching message within %v", within)
			return ""
		}
	}
}

// reloadIn sends SIGHUP to an in-process sidecar and waits for the outcome
// in its log.
func reloadIn(t *testing.T, sc *sidecar, want string) {
	t.Helper()
	n := strings.Count(sc.logs.String(), want)
	sc.sigs <- syscall.SIGHUP
	eventually(t, 10*time.Second, func() bool { return strings.Count(sc.logs.String(), want) > n },
		"no %q in the log after SIGHUP", want)
}

// SIGHUP re-reads sidecar.hcl and applies routes, limits, backend settings
// and streams without touching open sockets; settings that need a restart
// are named in a warning. An invalid file is rejected with its diagnostics
// in the log, and the running config stays.
func TestReloadAppliesConfig(t *testing.T) {
	one, two := reloadBackend(t, "one"), reloadBackend(t, "two")
	const tmpl = `
backend {
  url     = "%s"
  timeout = "%s"
}
origins { allow_missing = true }
limits  { max_message_size = "%s" }
heartbeat { interval = "%s" }
route "/a" {
  auth       = "none"
  on_message = "/msg"
  channels   = ["news"]
}
%s
stream "%s" {
  path    = "/events"
  channel = "news"
}
`
	sc := startSidecar(t, one, fmt.Sprintf(tmpl, "%BACKEND%", "2s", "1KiB", "25s", "", "first"))
	path := sc.app.cfg.Path
	old := dial(t, sc.WS+"/a", nil)
	waitText(t, old, 5*time.Second, func(s string) bool { return strings.HasPrefix(s, "one-tick") })
	write(t, old, websocket.MessageText, []byte("hi"))
	waitText(t, old, 5*time.Second, func(s string) bool { return s == "one:2" })
	if st, _ := dialStatus(t, sc.WS+"/b", nil); st != http.StatusNotFound {
		t.Fatalf("/b before the reload: %d, want 404", st)
	}

	// Another backend, a longer timeout, bigger messages, a new route, the
	// stream renamed, and a heartbeat change that needs a restart. The
	// listener and admin lines the harness added stay.
	orig, _ := os.ReadFile(path)
	var head string
	for _, line := range strings.Split(string(orig), "\n") {
		if strings.HasPrefix(line, "listener {") || strings.HasPrefix(line, "admin {") {
			head += line + "\n"
		}
	}
	os.WriteFile(path, []byte(head+fmt.Sprintf(tmpl, two, "3s", "4KiB", "20s",
		`route "/b" {
  auth       = "none"
  on_message = "/msg"
}`, "second")), 0o600)
	reloadIn(t, sc, "config reloaded")

	// The open socket is still there and now talks to the new backend…
	write(t, old, websocket.MessageText, []byte("hey"))
	waitText(t, old, 5*time.Second, func(s string) bool { return s == "two:3" })
	// …and hears the new stream, not the old one.
	waitText(t, old, 5*time.Second, func(s string) bool { return strings.HasPrefix(s, "two-tick") })
	time.Sleep(100 * time.Millisecond)
	for len(old.in) > 0 {
		if m := <-old.in; strings.HasPrefix(string(m.data), "one-tick") {
			t.Errorf("the removed stream still delivers: %q", m.data)
		}
	}
	// New route; new sockets get the new limits.
	b := dial(t, sc.WS+"/b", nil)
	write(t, b, websocket.MessageText, []byte(strings.Repeat("x", 2048)))
	waitText(t, b, 5*time.Second, func(s string) bool { return s == "two:2048" })
	m := scrape(t, sc.Admin)
	if v := m.value(t, `wsidecar_config_reloads_total{result="success"}`); v != 1 {
		t.Errorf("reloads success = %v", v)
	}
	if v, ok := m.get(`wsidecar_sse_stream_state{stream="first"}`); ok {
		t.Errorf("the removed stream's state gauge is still exported (%v)", v)
	}
	if v := m.value(t, `wsidecar_sse_stream_state{stream="second"}`); v != 1 {
		t.Errorf("wsidecar_sse_stream_state{stream=\"second\"} = %v, want 1 (open)", v)
	}
	if !strings.Contains(sc.logs.String(), "need a restart") || !strings.Contains(sc.logs.String(), "heartbeat") {
		t.Error("no warning that the heartbeat change needs a restart")
	}

	// A broken file: rejected with its diagnostic, nothing changes.
	os.WriteFile(path, []byte("backend {\n  url = \"http://127.0.0.1:1\"\n  timeout = \"soon\"\n}\nroute \"/c\" { auth = \"none\" }\n"), 0o600)
	reloadIn(t, sc, "reload rejected")
	logs := sc.logs.String()
	if !strings.Contains(logs, path+":3:") || !strings.Contains(logs, "timeout") {
		t.Errorf("the rejection does not carry the diagnostic (file:line):\n%s", logs)
	}
	if st, _ := dialStatus(t, sc.WS+"/c", nil); st != http.StatusNotFound {
		t.Errorf("/c from the rejected file answers %d", st)
	}
	write(t, old, websocket.MessageText, []byte("still"))
	waitText(t, old, 5*time.Second, func(s string) bool { return s == "two:5" })
	write(t, b, websocket.MessageText, []byte("b"))
	waitText(t, b, 5*time.Second, func(s string) bool { return s == "two:1" })
	m = scrape(t, sc.Admin)
	if v := m.value(t, `wsidecar_config_reloads_total{result="failure"}`); v != 1 {
		t.Errorf("reloads failure = %v", v)
	}
	if v := m.value(t, "wsidecar_config_last_reload_successful"); v != 0 {
		t.Errorf("wsidecar_config_last_reload_successful = %v after a rejected reload", v)
	}

	// The socket opened before the reload keeps the limits it opened
	// with (1KiB): a 2KiB message closes it with 1009.
	write(t, old, websocket.MessageText, []byte(strings.Repeat("y", 2048)))
	if code, _ := closeStatus(t, old, 5*time.Second); code != websocket.StatusMessageTooBig {
		t.Errorf("old socket: close %d for 2KiB, want 1009 (it keeps its 1KiB limit)", code)
	}
}

// SIGHUP to the real binary with a changed origins list applies it to new
// handshakes without closing any socket; a broken file keeps the process
// serving with the old list and logs the diagnostic.
func TestSIGHUPOrigins(t *testing.T) {
	be := newBackend(t)
	const tmpl = `
listener { address = "%%LISTEN%%" }
admin    { address = "%%ADMIN%%" }
backend  { url = "%%BACKEND%%" }
origins  { allow = [%q] }
log      { level = %q }
route "/ws" { auth = "none" }
`
	c := startChild(t, be.URL, fmt.Sprintf(tmpl, "https://good.example", "info"))
	good := http.Header{"Origin": {"https://good.example"}}
	other := http.Header{"Origin": {"https://other.example"}}
	var conns []*lightConn
	for range 5 {
		cn, err := dialLight(c.WS+"/ws", good, nil)
		if err != nil {
			t.Fatalf("allowed origin refused: %v", err)
		}
		t.Cleanup(func() { cn.CloseNow() })
		conns = append(conns, cn)
	}
	if st, _ := dialStatus(t, c.WS+"/ws", other); st != http.StatusForbidden {
		t.Fatalf("origin not in the list: %d, want 403", st)
	}

	// At level info a refused handshake is logged.
	dialStatus(t, c.WS+"/nowhere", good)
	eventually(t, 5*time.Second, func() bool { return strings.Contains(c.stderr.String(), "reason=not_found") },
		"a refused handshake was not logged at level info")

	cfg := fmt.Sprintf(tmpl, "https://other.example", "warn")
	cfg = strings.NewReplacer("%LISTEN%", strings.TrimPrefix(c.WS, "ws://"), "%ADMIN%", strings.TrimPrefix(c.Admin, "http://"), "%BACKEND%", be.URL).Replace(cfg)
	os.WriteFile(c.Config, []byte(cfg), 0o600)
	c.reloadAndWait(t, "config reloaded")
	if st, _ := dialStatus(t, c.WS+"/ws", good); st != http.StatusForbidden {
		t.Errorf("removed origin after the reload: %d, want 403", st)
	}
	if st, _ := dialStatus(t, c.WS+"/ws", other); st != 0 {
		t.Errorf("added origin after the reload: %d, want a socket", st)
	}
	// The new level applies: a refusal for a reason not seen before (so
	// not held back by the per-reason log limiter) is no longer logged.
	req, _ := http.NewRequest("GET", "http"+strings.TrimPrefix(c.WS, "ws")+"/ws", nil)
	req.Header.Set("Origin", "https://other.example")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("plain GET on the WebSocket route: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	time.Sleep(100 * time.Millisecond)
	if _, after, _ := strings.Cut(c.stderr.String(), "config reloaded"); strings.Contains(after, "level=INFO") {
		t.Errorf("log.level = \"warn\" after the reload, but info lines follow:\n%s", after)
	}
	for i, cn := range conns {
		if !cn.isOpen() {
			t.Errorf("socket %d was closed by the reload: %d %s", i, cn.code, cn.reason)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := cn.Ping(ctx); err != nil {
			t.Errorf("socket %d does not answer after the reload: %v", i, err)
		}
		cancel()
	}

	os.WriteFile(c.Config, []byte("origins { allow = [\"not an origin\"] }\n"), 0o600)
	c.reloadAndWait(t, "reload rejected")
	if !strings.Contains(c.stderr.String(), c.Config+":1:") {
		t.Errorf("no file:line diagnostic in the log:\n%s", c.stderr)
	}
	if st, _ := dialStatus(t, c.WS+"/ws", other); st != 0 {
		t.Errorf("after a rejected reload the running origins changed: %d", st)
	}
	if st, _ := getStatus(c.Admin + "/readyz"); st != http.StatusOK {
		t.Errorf("/readyz %d after a rejected reload", st)
	}
	select {
	case <-c.done:
		t.Fatalf("wsidecar exited after a broken reload: %d", c.code)
	default:
	}
}
