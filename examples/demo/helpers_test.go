package main

// Shared by the demo tests: the binaries are built once per test run (the
// way the demo builds them), and each test gets its own stack on free
// loopback ports with the children's output kept for its failure report.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var binDir string // set by TestMain; the built binaries live here

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "wsidecar-demo-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	buildOnce sync.Once
	buildErr  error
	buildLog  bytes.Buffer
)

// binaries builds wsidecar and examples/legacy once, as the demo does.
func binaries(t *testing.T) (sidecar, legacy string) {
	t.Helper()
	sidecar, legacy = filepath.Join(binDir, "wsidecar"), filepath.Join(binDir, "legacy")
	buildOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		root, err := moduleRoot(ctx)
		if err != nil {
			buildErr = err
			return
		}
		if buildErr = goBuild(ctx, &buildLog, &buildLog, root, sidecar, "."); buildErr != nil {
			return
		}
		buildErr = goBuild(ctx, &buildLog, &buildLog, root, legacy, "./examples/legacy")
	})
	if buildErr != nil {
		t.Fatalf("build: %v\n%s", buildErr, buildLog.String())
	}
	return sidecar, legacy
}

// freeAddrs returns n distinct loopback addresses that were free a moment
// ago; all n are held open together so that none is handed out twice.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}

// syncBuffer collects the children's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// flaskPython returns an interpreter that can import flask, or skips.
func flaskPython(t *testing.T) string {
	t.Helper()
	p, err := findPython(context.Background())
	if err != nil {
		t.Skipf("skipping the Flask backend: %v", err)
	}
	return p
}

// startTestStack starts the demo's stack ("go" or "flask" backend) on free
// ports with the periodic notices off, so a test sees only what it caused.
func startTestStack(t *testing.T, backend string) *stack {
	t.Helper()
	return startTestStackWith(t, backend, nil)
}

// startTestStackWith is startTestStack with options changed by edit.
func startTestStackWith(t *testing.T, backend string, edit func(*options)) *stack {
	t.Helper()
	sidecarBin, legacyBin := binaries(t)
	addrs := freeAddrs(t, 3)
	logs := &syncBuffer{}
	o := options{
		Addr: addrs[0], Listen: addrs[1], Admin: addrs[2],
		Backend:    backend,
		SidecarBin: sidecarBin, LegacyBin: legacyBin,
		Ready: 30 * time.Second, Grace: 10 * time.Second,
		Stdout: logs, Stderr: logs,
		BackendEnv: []string{"NOTICE_EVERY=0"},
	}
	if backend == "flask" {
		o.Python = flaskPython(t)
	}
	if edit != nil {
		edit(&o)
	}
	s, err := startStack(context.Background(), o)
	if err != nil {
		t.Fatalf("start the demo stack: %v\n%s", err, logs.String())
	}
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("demo output:\n%s", logs.String())
		}
	})
	return s
}

// get fetches url and returns its status, Content-Type and body.
func get(t *testing.T, url string) (int, string, string) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(body)
}

// postNotice makes the backend publish a notice on its SSE feed, the way
// an operator would: POST /notice on the backend.
func postNotice(t *testing.T, s *stack, text string) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Post(s.BackendURL+"/notice", "application/json", strings.NewReader(fmt.Sprintf(`{"text":%q}`, text)))
	if err != nil {
		t.Fatalf("POST /notice: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("POST /notice: %d %s", resp.StatusCode, b)
	}
}

// pushBroadcast is the README's curl example: POST /v1/push/broadcast on
// the sidecar's admin listener, body = the message.
func pushBroadcast(t *testing.T, s *stack, body string) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Post(s.AdminURL+"/v1/push/broadcast", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST /v1/push/broadcast: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"delivered":`) {
		t.Fatalf("POST /v1/push/broadcast: %d %s", resp.StatusCode, b)
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
