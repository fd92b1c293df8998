// Command legacy is the "legacy backend" of the wsidecar examples: a plain
// net/http chat service with no WebSocket code at all. wsidecar holds the
// sockets and turns them into webhooks (/ws/connect, /ws/message,
// /ws/disconnect); the service talks back through the sidecar's push API
// and streams notices as server-sent events (/events).
//
//	go run ./examples/legacy -addr 127.0.0.1:5000 -sidecar-admin http://127.0.0.1:9090
//
// Every flag has an environment variable (LEGACY_ADDR, SIDECAR_ADMIN,
// WS_URL, SIDECAR_ADMIN_TOKEN, NOTICE_EVERY); SIGNING_SECRET, when set,
// makes it reject webhooks without a valid X-WS-Signature.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "legacy:", err)
		os.Exit(1)
	}
}

// run parses flags, serves until ctx is cancelled and then shuts down.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	envOr := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	fs := flag.NewFlagSet("legacy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", envOr("LEGACY_ADDR", "127.0.0.1:5000"), "listen address (env LEGACY_ADDR)")
	admin := fs.String("sidecar-admin", envOr("SIDECAR_ADMIN", "http://127.0.0.1:9090"), "wsidecar admin URL for pushes (env SIDECAR_ADMIN)")
	wsURL := fs.String("ws-url", envOr("WS_URL", "ws://127.0.0.1:8080/ws"), "public WebSocket URL the chat page connects to (env WS_URL)")
	token := fs.String("admin-token", envOr("SIDECAR_ADMIN_TOKEN", ""), "bearer token for the push API (env SIDECAR_ADMIN_TOKEN)")
	every := fs.Duration("notice-every", 10*time.Second, "interval of the periodic SSE notice; 0 disables (env NOTICE_EVERY)")
	if v := getenv("NOTICE_EVERY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("NOTICE_EVERY: %w", err)
		}
		*every = d
	}
	if err := fs.Parse(args); err != nil {
		return err
	}

	log := slog.New(slog.NewTextHandler(stderr, nil))
	s := newServer(serverConfig{
		SidecarAdmin:  *admin,
		AdminToken:    *token,
		WSURL:         *wsURL,
		SigningSecret: getenv("SIGNING_SECRET"),
		Log:           log,
		Now:           time.Now,
	})

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		// No WriteTimeout: /events is a stream that stays open. Its handlers
		// end when ctx is cancelled (BaseContext), so Shutdown is not stuck.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	// The line tests and scripts wait for; the port is real even for ":0".
	fmt.Fprintf(stdout, "legacy backend listening on http://%s\n", ln.Addr())
	log.Info("serving", "addr", ln.Addr().String(), "sidecar_admin", *admin, "ws_url", *wsURL, "signed_webhooks", getenv("SIGNING_SECRET") != "")

	done := make(chan struct{})
	go func() {
		defer close(done)
		s.notices.run(ctx, *every, s.now)
	}()

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		<-done
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = srv.Shutdown(shutCtx)
	<-done
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("stopped")
	return nil
}
