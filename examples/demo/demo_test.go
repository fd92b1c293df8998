package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestDemoCommand runs the demo's main code path, `go run ./examples/demo`
// with flags for free ports, for each backend: it builds, starts both
// processes, prints the URL to open; the page, its WebSocket URL and both
// health endpoints answer; Ctrl-C (ctx) stops everything and run returns nil.
func TestDemoCommand(t *testing.T) {
	for _, backend := range []string{"go", "flask"} {
		t.Run(backend, func(t *testing.T) {
			sidecarBin, _ := binaries(t)
			args := []string{"-sidecar-bin", sidecarBin, "-backend", backend, "-ready-timeout", "30s", "-stop-timeout", "10s"}
			if backend == "flask" {
				args = append(args, "-python", flaskPython(t))
			}
			addrs := freeAddrs(t, 3)
			args = append(args, "-addr", addrs[0], "-listen", addrs[1], "-admin", addrs[2])

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			outR, outW := io.Pipe()
			logs := &syncBuffer{}
			done := make(chan error, 1)
			go func() {
				done <- run(ctx, args, io.MultiWriter(outW, logs), logs)
				outW.Close()
			}()
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("demo output:\n%s", logs.String())
				}
			})

			// The line a person copies into a browser.
			want := "open http://" + addrs[0] + "/ in two browser tabs"
			found := make(chan bool, 1)
			go func() {
				sc := bufio.NewScanner(outR)
				ok := false
				for sc.Scan() {
					if strings.Contains(sc.Text(), want) && !ok {
						ok = true
						found <- true
					}
				}
				if !ok {
					found <- false
				}
			}()
			select {
			case ok := <-found:
				if !ok {
					t.Fatalf("demo ended without printing %q: %v", want, <-done)
				}
			case <-time.After(60 * time.Second):
				t.Fatalf("demo did not print %q within 60s", want)
			}

			base := "http://" + addrs[0]
			for _, c := range []struct{ url, ctype, body string }{
				{base + "/healthz", "", "ok"},
				{"http://" + addrs[2] + "/healthz", "", ""},
				{base + "/", "text/html", "<title>wsidecar chat</title>"},
				{base + "/app.js", "javascript", "new WebSocket("},
				{base + "/config.js", "javascript", `"ws://` + addrs[1] + `/ws"`},
			} {
				status, ctype, body := get(t, c.url)
				if status != 200 || !strings.Contains(ctype, c.ctype) || !strings.Contains(body, c.body) {
					t.Errorf("GET %s = %d %q %.200q; want 200, type ~%q, body containing %q", c.url, status, ctype, body, c.ctype, c.body)
				}
			}

			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("run after Ctrl-C = %v; want nil", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("demo did not stop within 30s of Ctrl-C")
			}
			// Nothing is left listening.
			for _, a := range addrs {
				if ln, err := net.Listen("tcp", a); err != nil {
					t.Errorf("%s still in use after the demo stopped: %v", a, err)
				} else {
					ln.Close()
				}
			}
		})
	}
}

// Mistakes a person makes first get an answer that says what to do.
func TestDemoUsageErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	free := freeAddrs(t, 3)
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown backend", []string{"-backend", "rails"}, `want "go" or "flask"`},
		{"port in use", []string{"-addr", busy.Addr().String(), "-listen", free[0], "-admin", free[1]}, "pick others with -addr, -listen and -admin"},
		{"missing config", []string{"-config", "/nonexistent/sidecar.hcl"}, "pass -config"},
		{"stray argument", []string{"flask"}, "flags only"},
		{"python that cannot import flask", []string{"-backend", "flask", "-python", "/nonexistent/python3", "-sidecar-bin", "/bin/true", "-addr", free[0], "-listen", free[1], "-admin", free[2]}, "cannot import flask"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := run(context.Background(), c.args, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("run(%q) = %v; want an error containing %q", c.args, err, c.want)
			}
		})
	}
}
