// Command wsidecar gives a plain-HTTP service real-time WebSocket traffic.
// It terminates WS/WSS next to the service, guards the door, turns client
// frames into webhooks and the service's push requests and SSE streams into
// frames. See README.md and docs/config.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"
)

// Exit codes.
const (
	exitOK     = 0
	exitFail   = 1 // runtime failure
	exitConfig = 2 // bad config or usage: nothing was started
)

// version is set at build time with -ldflags "-X main.version=…"; otherwise
// the module version from the build info is used.
var version = ""

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	os.Exit(dispatch(context.Background(), os.Args[1:], os.Stdout, os.Stderr, sigs))
}

// dispatch runs one subcommand and returns the process exit code. Tests call
// it directly with their own signal channel.
func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer, sigs <-chan os.Signal) int {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		usage(stdout)
		return exitOK
	}
	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run":
		return cmdRun(ctx, args, stdout, stderr, sigs)
	case "validate":
		return cmdValidate(args, stdout, stderr)
	case "token":
		return cmdToken(args, stdout, stderr)
	case "drain":
		return cmdDrain(ctx, args, stdout, stderr)
	case "version":
		fmt.Fprintf(stdout, "wsidecar %s\n", buildVersion())
		return exitOK
	case "help":
		usage(stdout)
		return exitOK
	default:
		fmt.Fprintf(stderr, "wsidecar: unknown command %q\n\n", cmd)
		usage(stderr)
		return exitConfig
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `wsidecar — a WebSocket sidecar for plain-HTTP services

Usage:
  wsidecar [run] [-config FILE]     run the sidecar (default config ./sidecar.hcl)
  wsidecar validate FILE            check a config file; exit 2 and print diagnostics on error
  wsidecar token [flags]            mint a development JWT from the config's jwt block
  wsidecar drain [flags]            drain a running sidecar (for a Kubernetes preStop hook)
  wsidecar version                  print the version
  wsidecar help                     show this help

run flags:
  -config FILE   config file (default ./sidecar.hcl, env WSIDECAR_CONFIG)

token flags:
  -config FILE     config file whose jwt block the token must satisfy (default ./sidecar.hcl)
  -key NAME        which jwt key block to sign with (default: the first one)
  -pem FILE        private key PEM to sign with (for RS*/PS*/ES*/EdDSA keys)
  -sub SUBJECT     the token's subject (the user id)
  -ttl DURATION    lifetime, e.g. 1h (default 1h)
  -claim K=V       an extra claim (repeatable); V is parsed as JSON when it is valid JSON

drain flags:
  -admin URL       the sidecar's admin listener (default http://127.0.0.1:9090,
                   env WSIDECAR_ADMIN_URL)
  -token TOKEN     admin bearer token (default env SIDECAR_ADMIN_TOKEN)
  -wait            wait until the drain has finished and the sidecar has
                   exited (default true)
  -timeout D       give up waiting after D (default 60s); exit 1

Examples:
  wsidecar validate sidecar.hcl
  wsidecar -config /etc/wsidecar/sidecar.hcl
  TOKEN=$(wsidecar token -sub alice -claim role=admin -ttl 15m)
  wsidecar drain -admin http://127.0.0.1:9090

Signals while running:
  SIGTERM, SIGINT  graceful drain (readiness fails, sockets closed with 1001 over
                   drain.window, disconnect webhooks delivered); a second signal
                   exits at once
  SIGHUP           reload the config (routes, limits, origins, keys, backend,
                   streams, log level) and the TLS certificate without dropping
                   connections; an invalid file is logged and ignored

Exit codes: 0 drained cleanly; 1 runtime failure, or the drain was cut short
(timeout, second signal, undelivered disconnect webhooks); 2 bad config or usage.

Docs: README.md (protocol, push API) and docs/config.md (every option).
`)
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// newFlagSet returns a flag set that reports errors instead of exiting.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseFlags parses and maps -h and bad flags to exit codes.
func parseFlags(fs *flag.FlagSet, args []string) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK, false
		}
		return exitConfig, false
	}
	return 0, true
}

// cmdDrain asks a running sidecar to drain (POST /v1/drain) and, with
// -wait, returns once the drain is over: the admin listener refuses
// connections (the process has exited) or answers ready again (a new
// process: Kubernetes restarts an exited native sidecar until the app
// container has stopped). It is meant for the app container's preStop
// hook: the kubelet sends the app SIGTERM only after the hook returns, so
// the backend is still there for the last message and disconnect webhooks
// of the drain. The distroless image has no shell or curl, hence a
// subcommand rather than a curl line.
func cmdDrain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("drain", stderr)
	admin := fs.String("admin", envOr("WSIDECAR_ADMIN_URL", "http://127.0.0.1:9090"), "admin listener URL")
	token := fs.String("token", os.Getenv("SIDECAR_ADMIN_TOKEN"), "admin bearer token")
	wait := fs.Bool("wait", true, "wait until the drain has finished")
	timeout := fs.Duration("timeout", 60*time.Second, "how long to wait")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	u, err := url.Parse(*admin)
	if fs.NArg() != 0 || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || *timeout <= 0 {
		fmt.Fprintln(stderr, "usage: wsidecar drain [-admin http://127.0.0.1:9090] [-token TOKEN] [-wait=true] [-timeout 60s]")
		return exitConfig
	}
	base := strings.TrimRight(*admin, "/")
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	// A fresh connection per request: a refused dial is how the end of
	// the process shows, and a pooled connection would hide it.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/drain", nil)
	if err != nil {
		fmt.Fprintf(stderr, "wsidecar drain: %v\n", err)
		return exitConfig
	}
	if *token != "" {
		req.Header.Set("Authorization", "Bearer "+*token)
	}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "wsidecar drain: %v\n", err)
		return exitFail
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		fmt.Fprintf(stderr, "wsidecar drain: %s answered %d: %s\n", base, resp.StatusCode, strings.TrimSpace(string(body)))
		return exitFail
	}
	fmt.Fprintln(stdout, "wsidecar drain: draining")
	if !*wait {
		return exitOK
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintf(stderr, "wsidecar drain: still draining after %s\n", *timeout)
			return exitFail
		case <-tick.C:
		}
		status, err := probeReady(ctx, client, base+"/readyz")
		var op *net.OpError
		switch {
		case err != nil && errors.As(err, &op) && op.Op == "dial":
			fmt.Fprintln(stdout, "wsidecar drain: done, the sidecar has exited")
			return exitOK
		case err == nil && status == http.StatusOK:
			fmt.Fprintln(stdout, "wsidecar drain: done, a new sidecar process is ready")
			return exitOK
		}
		// 503 (draining), or the listener closing under the request:
		// ask again.
	}
}

// probeReady returns the status of GET url.
func probeReady(ctx context.Context, client *http.Client, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	return resp.StatusCode, nil
}
