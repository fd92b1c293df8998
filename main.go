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
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
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

Signals while running:
  SIGTERM, SIGINT  graceful drain (readiness fails, sockets closed with 1001 over
                   drain.window); a second signal exits at once
  SIGHUP           reload the config (origins, limits, keys, routes, streams) and
                   the TLS certificate without dropping connections

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
