package main

// The README's promise, shown by a browser instead of by hand: the demo
// stack (built and started by the demo's own code), two tabs of headless
// Chromium on the chat page, a conversation, a notice from the backend, and
// a sidecar that dies and comes back while the pages reconnect by
// themselves.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// chromiumCandidates are tried in order: Debian's chromium first (what
// .ci/run installs), then the usual names on PATH.
var chromiumCandidates = []string{"/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome-stable", "google-chrome"}

func findChromium() string {
	for _, c := range chromiumCandidates {
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	return ""
}

// tab is one browser tab on the chat page.
type tab struct {
	name string
	ctx  context.Context

	mu         sync.Mutex
	exceptions []string // uncaught JavaScript exceptions
}

// js quotes s as a JavaScript string literal.
func js(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// do runs browser actions on the tab, failing the test on error.
func (tb *tab) do(t *testing.T, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, 15*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %s: %v\n%s", tb.name, what, err, tb.page())
	}
}

// waitFor polls a JavaScript predicate on the tab until it is true.
func (tb *tab) waitFor(t *testing.T, what, predicate string, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, within+time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[bool](predicate, chromedp.WithPollingInterval(25*time.Millisecond), chromedp.WithPollingTimeout(within)))
	if err != nil {
		t.Fatalf("%s: waiting for %s: %v\n%s", tb.name, what, err, tb.page())
	}
}

// page describes what the tab shows, for failure messages.
func (tb *tab) page() string {
	ctx, cancel := context.WithTimeout(tb.ctx, 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`"state: " + document.getElementById("state").textContent + "\n" +
		[...document.querySelectorAll("#messages li")].map(li => "  [" + li.dataset.type + "] " + li.textContent).join("\n")`))
	if err != nil {
		return fmt.Sprintf("(cannot read the page: %v)", err)
	}
	return tb.name + " shows " + s
}

// say types a message and sends it, as a person would.
func (tb *tab) say(t *testing.T, text string) {
	t.Helper()
	tb.do(t, "send "+text,
		chromedp.SetValue(chromedp.CSS("#text"), text),
		chromedp.Click(chromedp.CSS("#send")),
	)
}

// hasItem is a predicate: the message list has an entry of type typ whose
// text contains want.
func hasItem(typ, want string) string {
	return fmt.Sprintf(`[...document.querySelectorAll('#messages li[data-type=%s]')].some(li => li.textContent.includes(%s))`, js(typ), js(want))
}

// hasChat is a predicate: a chat line from whom with exactly text.
func hasChat(from, text string) string {
	return fmt.Sprintf(`[...document.querySelectorAll('#messages li[data-type=chat]')].some(li =>
		li.querySelector('.from').textContent === %s && li.querySelector('.text').textContent === %s)`, js(from), js(text))
}

func countItems(typ string) string {
	return fmt.Sprintf(`document.querySelectorAll('#messages li[data-type=%s]').length`, js(typ))
}

func stateIs(s string) string {
	return fmt.Sprintf(`document.getElementById("state").dataset.state === %s`, js(s))
}

// requireChromium returns the Chromium binary, or skips the test.
func requireChromium(t *testing.T) string {
	t.Helper()
	chromium := findChromium()
	if chromium == "" {
		t.Skipf("skipping the browser test: no Chromium binary (looked for %s); install it (Debian: apt install chromium)", strings.Join(chromiumCandidates, ", "))
	}
	return chromium
}

// startBrowser starts headless Chromium with a fresh profile and returns
// the context of its first tab; it is stopped when the test ends. It skips
// the test when there is no Chromium.
func startBrowser(t *testing.T) context.Context {
	t.Helper()
	chromium := requireChromium(t)
	profile := t.TempDir() // removed after the browser has exited (cleanups run last-in first-out)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(chromium),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(900, 700),
	)
	t.Cleanup(cancelAlloc) // waits for the browser to exit
	browserCtx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(cancelBrowser)
	if err := chromedp.Do(browserCtx); err != nil { // starts Chromium with the first tab
		t.Fatalf("start %s: %v", chromium, err)
	}
	return browserCtx
}

func TestBrowserChat(t *testing.T) {
	start := time.Now()
	requireChromium(t)
	s := startTestStack(t, "go")
	browserCtx := startBrowser(t) // stopped before the stack: no sockets to drain
	page := s.BackendURL + "/"
	ctx := browserCtx

	shots := t.TempDir()
	if dir := os.Getenv("WSIDECAR_SCREENSHOT_DIR"); dir != "" {
		shots = dir // keep them after the test
	}

	aliceCtx := browserCtx
	bobCtx, cancelBob := chromedp.NewContext(browserCtx) // a second tab in the same browser
	t.Cleanup(cancelBob)

	var tabs []*tab
	for _, c := range []struct {
		name string
		ctx  context.Context
	}{{"alice", aliceCtx}, {"bob", bobCtx}} {
		tb := &tab{name: c.name, ctx: c.ctx}
		console := chromedp.Console(c.ctx) // subscribed before the page loads
		go func() {
			for m, err := range console {
				if err != nil {
					return
				}
				if m.IsException() {
					tb.mu.Lock()
					tb.exceptions = append(tb.exceptions, m.Text)
					tb.mu.Unlock()
				}
			}
		}()
		tabs = append(tabs, tb)
	}
	alice, bob := tabs[0], tabs[1]

	// Both open the page, pick a nickname and join the same room.
	for _, tb := range tabs {
		tb.do(t, "open "+page, chromedp.Navigate(page))
		tb.waitFor(t, "the socket to open", stateIs("open"), 10*time.Second)
	}
	for _, tb := range tabs {
		tb.do(t, "join",
			chromedp.SetValue(chromedp.CSS("#nick"), tb.name),
			chromedp.SetValue(chromedp.CSS("#room"), "e2e"),
			chromedp.Click(chromedp.CSS("#join")),
		)
		tb.waitFor(t, "joined #e2e", hasItem("joined", "you joined #e2e"), 10*time.Second)
	}
	alice.waitFor(t, "bob's arrival", hasItem("presence", "bob joined #e2e"), 10*time.Second)
	bob.waitFor(t, "the member list", hasItem("joined", "here now: alice, bob"), time.Second)
	for _, tb := range tabs {
		// The page pings on open; a number means the pong made the trip
		// page → sidecar → webhook → sidecar → page.
		tb.waitFor(t, "a round-trip time", `/^[0-9.]+ ms$/.test(document.getElementById("rtt").textContent)`, 10*time.Second)
	}

	// One sends, the other sees it; markup arrives as text, never as HTML.
	alice.say(t, "hello <b>bob</b>")
	bob.waitFor(t, "alice's message", hasChat("alice", "hello <b>bob</b>"), 10*time.Second)
	alice.waitFor(t, "her own message", hasChat("alice", "hello <b>bob</b>"), 10*time.Second)
	bob.waitFor(t, "no HTML from peers", `document.querySelector("#messages b") === null`, time.Second)

	// The backend pushes a notice (its SSE feed → sidecar → channel "notices").
	postNotice(t, s, "maintenance at noon")
	for _, tb := range tabs {
		tb.waitFor(t, "the notice", hasItem("notice", "notice: maintenance at noon"), 10*time.Second)
	}

	// The README's curl line: a push straight to the sidecar's admin API.
	pushBroadcast(t, s, `{"type":"notice","text":"hello from curl"}`)
	for _, tb := range tabs {
		tb.waitFor(t, "the broadcast", hasItem("notice", "notice: hello from curl"), 10*time.Second)
	}

	// The sidecar dies; both pages notice and retry on their own.
	s.killSidecar()
	for _, tb := range tabs {
		tb.waitFor(t, "the drop to be noticed", stateIs("reconnecting"), 10*time.Second)
	}
	if err := s.startSidecar(ctx); err != nil {
		t.Fatalf("restart the sidecar: %v", err)
	}
	for _, tb := range tabs {
		tb.waitFor(t, "the socket to reopen", stateIs("open"), 20*time.Second)
		// The page rejoins its room after every reconnect.
		tb.waitFor(t, "the room to be rejoined", countItems("joined")+" >= 2", 10*time.Second)
	}

	// They talk again, both ways, and notices flow again.
	bob.say(t, "back again")
	alice.waitFor(t, "bob's message after the restart", hasChat("bob", "back again"), 10*time.Second)
	alice.say(t, "welcome back")
	bob.waitFor(t, "alice's message after the restart", hasChat("alice", "welcome back"), 10*time.Second)
	postNotice(t, s, "all systems go")
	for _, tb := range tabs {
		tb.waitFor(t, "the notice after the restart", hasItem("notice", "notice: all systems go"), 10*time.Second)
	}

	for _, tb := range tabs {
		png, err := chromedp.Run(tb.ctx, chromedp.FullScreenshot(100)) // 100: PNG; lower is JPEG
		if err != nil {
			t.Fatalf("%s: screenshot: %v", tb.name, err)
		}
		path := filepath.Join(shots, "chat-"+tb.name+".png")
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot of %s's tab: %s", tb.name, path)

		// Nothing went wrong on the page along the way.
		errs, err := chromedp.Run(tb.ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll('#messages li[data-type=error]')].map(li => li.textContent)`))
		if err != nil || len(errs) > 0 {
			t.Errorf("%s: error lines on the page: %q (%v)", tb.name, errs, err)
		}
		tb.mu.Lock()
		if len(tb.exceptions) > 0 {
			t.Errorf("%s: uncaught JavaScript exceptions: %q", tb.name, tb.exceptions)
		}
		tb.mu.Unlock()
	}
	t.Logf("browser test took %v", time.Since(start).Round(time.Millisecond))
}

// tokenConfig is the demo's config with the route behind a JWT, as the
// README shows it: an HMAC key for development, tokens from `wsidecar token`.
const tokenConfig = `
listener {
  address = env("WSIDECAR_LISTEN", "127.0.0.1:8080")
}
admin {
  address = env("WSIDECAR_ADMIN", "127.0.0.1:9090")
}
backend {
  url = env("BACKEND_URL", "http://127.0.0.1:5000")
}
origins {
  allow = [env("WSIDECAR_ORIGIN", "http://127.0.0.1:5000")]
}
jwt {
  key "dev" {
    algorithms = ["HS256"]
    secret     = env("JWT_SECRET")
  }
}
route "/ws" {
  subprotocols  = ["chat.v1"]
  on_connect    = "/ws/connect"
  on_message    = "/ws/message"
  on_disconnect = "/ws/disconnect"
}
stream "notices" {
  path = "/events"
}
`

// A browser cannot set an Authorization header on a WebSocket; the README
// tells it to pass the token as a subprotocol or in the query. Both work
// in Chromium, from the page's origin, with a token from `wsidecar token`,
// and the backend learns the user; without a valid token the handshake
// fails and the backend never hears of it.
func TestBrowserTokens(t *testing.T) {
	requireChromium(t)
	t.Setenv("JWT_SECRET", "browser-test-secret-0123456789abcdef0123")
	cfg := filepath.Join(t.TempDir(), "sidecar.hcl")
	if err := os.WriteFile(cfg, []byte(tokenConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startTestStackWith(t, "go", func(o *options) { o.Config = cfg })
	sidecarBin, _ := binaries(t)
	out, err := exec.Command(sidecarBin, "token", "-config", cfg, "-sub", "alice", "-ttl", "5m").Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("wsidecar token: %v\n%s", err, stderr)
	}
	token := strings.TrimSpace(string(out))

	browserCtx := startBrowser(t)
	tb := &tab{name: "page", ctx: browserCtx}
	// Any page of the backend's origin will do; /healthz runs no script of its own.
	tb.do(t, "open the backend's origin", chromedp.Navigate(s.BackendURL+"/healthz"))

	// try opens a socket and reports "open <protocol>" or "closed <code>".
	try := func(url string, protocols []string) string {
		t.Helper()
		args, _ := json.Marshal([]any{url, protocols})
		ctx, cancel := context.WithTimeout(browserCtx, 15*time.Second)
		defer cancel()
		got, err := chromedp.Run(ctx, chromedp.Evaluate[string](`((url, protocols) => new Promise(resolve => {
			const ws = protocols ? new WebSocket(url, protocols) : new WebSocket(url);
			const timer = setTimeout(() => resolve("no answer in 10s"), 10000);
			ws.onopen = () => { clearTimeout(timer); resolve("open " + ws.protocol); ws.close(1000); };
			ws.onclose = (ev) => { clearTimeout(timer); resolve("closed " + ev.code); };
		}))(...`+string(args)+`)`, chromedp.EvalAwaitPromise))
		if err != nil {
			t.Fatalf("evaluate: %v", err)
		}
		return got
	}
	forged := token[:len(token)-2] + map[bool]string{true: "AA", false: "BB"}[!strings.HasSuffix(token, "AA")]
	for _, c := range []struct {
		name      string
		url       string
		protocols []string
		want      string
	}{
		{"protocol", s.WSURL, []string{"bearer", token}, "open bearer"},
		{"protocol beside the app's", s.WSURL, []string{"chat.v1", "bearer", token}, "open chat.v1"},
		{"query", s.WSURL + "?access_token=" + token, nil, "open "},
		{"no token", s.WSURL, nil, "closed 1006"},
		{"forged token", s.WSURL, []string{"bearer", forged}, "closed 1006"},
	} {
		if got := try(c.url, c.protocols); got != c.want {
			t.Errorf("%s: %s; want %s", c.name, got, c.want)
		}
	}

	// The backend saw exactly the three good sockets, each as alice.
	var users []string
	for _, h := range backendLog(t, s) {
		if h["kind"] == "connect" {
			users = append(users, fmt.Sprint(h["user"]))
		}
	}
	if strings.Join(users, ",") != "alice,alice,alice" {
		t.Errorf("connect webhooks came with users %q; want alice three times", users)
	}
}
