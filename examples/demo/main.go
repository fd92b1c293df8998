// Command demo runs the whole example: it builds wsidecar and the legacy
// chat backend, starts both, waits until they are healthy and tells you
// which page to open.
//
//	go run ./examples/demo                   # the Go backend (examples/legacy)
//	go run ./examples/demo -backend flask    # the Flask backend (examples/flask)
//
// Ports are flags so that tests can run it on free ones. They reach the
// sidecar through the environment, which sidecar.hcl reads with env():
//
//	WSIDECAR_LISTEN  client WebSocket listener, host:port (-listen)
//	WSIDECAR_ADMIN   admin listener (push API, /healthz), host:port (-admin)
//	BACKEND_URL      the legacy backend, http://host:port (-addr)
//	WSIDECAR_ORIGIN  the chat page's origin, http://host:port (-addr)
//
// and the backend through the environment both backends read:
//
//	LEGACY_ADDR      where it listens (-addr)
//	SIDECAR_ADMIN    the sidecar's admin URL, for pushes (http:// + -admin)
//	WS_URL           the WebSocket URL the page connects to (ws:// + -listen + /ws)
//
// SIDECAR_ADMIN_TOKEN, SIGNING_SECRET and NOTICE_EVERY are passed through
// unchanged when set, so both processes agree on them. Ctrl-C (or SIGTERM)
// is forwarded to both children, which are given time to stop cleanly.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "demo:", err)
		}
		os.Exit(1)
	}
}

// run parses the flags, starts the stack, waits for Ctrl-C (or a child
// dying) and stops it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := options{Stdout: stdout, Stderr: stderr}
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Addr, "addr", "127.0.0.1:5000", "legacy backend address (serves the chat page)")
	fs.StringVar(&o.Listen, "listen", "127.0.0.1:8080", "wsidecar WebSocket listener address")
	fs.StringVar(&o.Admin, "admin", "127.0.0.1:9090", "wsidecar admin listener address")
	fs.StringVar(&o.Backend, "backend", "go", `which legacy backend: "go" (examples/legacy) or "flask" (examples/flask, needs python3 with flask)`)
	fs.StringVar(&o.Config, "config", "", "sidecar config (default: sidecar.hcl at the module root)")
	fs.StringVar(&o.SidecarBin, "sidecar-bin", "", "use this wsidecar binary instead of building one")
	fs.StringVar(&o.Python, "python", "", "Python interpreter for -backend flask (default: the first of python3, /usr/bin/python3 that can import flask)")
	fs.DurationVar(&o.Ready, "ready-timeout", 60*time.Second, "how long to wait for both processes to be healthy")
	fs.DurationVar(&o.Grace, "stop-timeout", 30*time.Second, "how long children get to stop before they are killed")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (flags only; see -h)", fs.Arg(0))
	}

	s, err := startStack(ctx, o)
	if err != nil {
		if errors.Is(err, errInterrupted) {
			return nil
		}
		return err
	}
	fmt.Fprintf(stdout, "\nopen %s/ in two browser tabs (Ctrl-C stops the demo)\n\n", s.BackendURL)
	err = s.wait(ctx)
	if ctx.Err() != nil {
		fmt.Fprintln(stdout, "\nstopping")
	}
	s.stop()
	if errors.Is(err, errInterrupted) {
		return nil // Ctrl-C is how the demo ends
	}
	return err
}
