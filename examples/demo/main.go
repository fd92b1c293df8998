// Command demo runs the whole example: it builds wsidecar and the legacy
// chat backend, starts both, waits until they are healthy and tells you
// which page to open.
//
//	go run ./examples/demo
//
// Ports are flags so that tests can run it on free ones; they reach the
// sidecar through the environment, which sidecar.hcl reads with env():
//
//	WSIDECAR_LISTEN  client WebSocket listener, host:port (-listen)
//	WSIDECAR_ADMIN   admin listener (push API, /healthz), host:port (-admin)
//	BACKEND_URL      the legacy backend, http://host:port (-addr)
//	WSIDECAR_ORIGIN  the chat page's origin, http://host:port (-addr)
//
// SIDECAR_ADMIN_TOKEN and SIGNING_SECRET are passed through unchanged when
// set, so both processes agree on them. Ctrl-C (or SIGTERM) is forwarded to
// both children, which are given time to stop cleanly.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:5000", "legacy backend address (serves the chat page)")
	listen := fs.String("listen", "127.0.0.1:8080", "wsidecar WebSocket listener address")
	admin := fs.String("admin", "127.0.0.1:9090", "wsidecar admin listener address")
	config := fs.String("config", "", "sidecar config (default: sidecar.hcl at the module root)")
	sidecarBin := fs.String("sidecar-bin", "", "use this wsidecar binary instead of building one")
	ready := fs.Duration("ready-timeout", 60*time.Second, "how long to wait for both processes to be healthy")
	grace := fs.Duration("stop-timeout", 30*time.Second, "how long children get to stop before they are killed")
	if err := fs.Parse(args); err != nil {
		return err
	}

	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	if *config == "" {
		*config = filepath.Join(root, "sidecar.hcl")
	}
	if *config, err = filepath.Abs(*config); err != nil {
		return fmt.Errorf("config path: %w", err)
	}
	if _, err := os.Stat(*config); err != nil {
		return fmt.Errorf("sidecar config: %w (pass -config; see examples/README.md for what it needs)", err)
	}

	tmp, err := os.MkdirTemp("", "wsidecar-demo-")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	if *sidecarBin == "" {
		*sidecarBin = filepath.Join(tmp, "wsidecar")
		if err := goBuild(ctx, root, *sidecarBin, "."); err != nil {
			return err
		}
	}
	legacyBin := filepath.Join(tmp, "legacy")
	if err := goBuild(ctx, root, legacyBin, "./examples/legacy"); err != nil {
		return err
	}

	backendURL := "http://" + *addr
	legacy := start("legacy", exec.Command(legacyBin, "-addr", *addr, "-sidecar-admin", "http://"+*admin, "-ws-url", "ws://"+*listen+"/ws"), nil)
	if legacy.err != nil {
		return legacy.err
	}
	sidecar := start("wsidecar", exec.Command(*sidecarBin, "-config", *config), []string{
		"WSIDECAR_LISTEN=" + *listen,
		"WSIDECAR_ADMIN=" + *admin,
		"BACKEND_URL=" + backendURL,
		"WSIDECAR_ORIGIN=" + backendURL,
	})
	if sidecar.err != nil {
		legacy.stop(*grace)
		return sidecar.err
	}
	children := []*child{sidecar, legacy} // stop order: the sidecar drains first

	err = waitHealthy(ctx, *ready, children, map[*child]string{
		legacy:  backendURL + "/healthz",
		sidecar: "http://" + *admin + "/healthz",
	})
	if err == nil {
		fmt.Printf("\nopen %s/ in two browser tabs (Ctrl-C stops the demo)\n\n", backendURL)
		err = waitEnd(ctx, children)
	}
	if ctx.Err() != nil {
		fmt.Println("\nstopping")
	}
	for _, c := range children {
		c.stop(*grace)
	}
	if errors.Is(err, errInterrupted) {
		return nil // Ctrl-C is how the demo ends
	}
	return err
}

// errInterrupted means a signal ended the demo; not a failure.
var errInterrupted = errors.New("interrupted")

// moduleRoot finds the wsidecar module the demo runs from.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the wsidecar module: run the demo from the repository")
	}
	return filepath.Dir(gomod), nil
}

func goBuild(ctx context.Context, root, out, pkg string) error {
	fmt.Printf("building %s\n", pkg)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %w", pkg, err)
	}
	return nil
}

// child is one running process of the demo.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
	err  error         // start error, or the exit status once done
}

func start(name string, cmd *exec.Cmd, env []string) *child {
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	cmd.Env = append(os.Environ(), env...)
	detach(cmd)
	cmd.Stdout = &prefixWriter{prefix: "[" + name + "] ", w: os.Stdout}
	cmd.Stderr = &prefixWriter{prefix: "[" + name + "] ", w: os.Stderr}
	if err := cmd.Start(); err != nil {
		c.err = fmt.Errorf("start %s: %w", name, err)
		close(c.done)
		return c
	}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c
}

// stop asks the child to exit (SIGTERM, which both children treat as a
// graceful stop) and kills it if it has not within grace.
func (c *child) stop(grace time.Duration) {
	select {
	case <-c.done:
		return
	default:
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(grace):
		fmt.Fprintf(os.Stderr, "demo: %s did not stop within %v; killing it\n", c.name, grace)
		c.cmd.Process.Kill()
		<-c.done
	}
}

// waitHealthy polls each child's health URL until all answer 200, a child
// exits, ctx ends or the timeout passes.
func waitHealthy(parent context.Context, timeout time.Duration, children []*child, urls map[*child]string) error {
	ctx, cancel := context.WithTimeout(parent, timeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	for _, c := range children {
		for {
			if err := exited(c); err != nil {
				return err
			}
			if healthy(ctx, client, urls[c]) {
				break
			}
			select {
			case <-ctx.Done():
				if parent.Err() != nil {
					return errInterrupted
				}
				return fmt.Errorf("%s not healthy at %s within %v", c.name, urls[c], timeout)
			case <-c.done:
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

func healthy(ctx context.Context, client *http.Client, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// exited returns an error if c is no longer running.
func exited(c *child) error {
	select {
	case <-c.done:
		return fmt.Errorf("%s exited: %v", c.name, c.err)
	default:
		return nil
	}
}

// waitEnd returns errInterrupted when ctx ends (Ctrl-C) and an error when
// a child exits on its own first.
func waitEnd(parent context.Context, children []*child) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel() // releases the watchers below
	dead := make(chan *child, len(children))
	for _, c := range children {
		go func() {
			select {
			case <-c.done:
				dead <- c
			case <-ctx.Done():
			}
		}()
	}
	select {
	case <-parent.Done():
		return errInterrupted
	case c := <-dead:
		return exited(c)
	}
}

// prefixWriter labels each line of a child's output with its name.
type prefixWriter struct {
	prefix string
	w      io.Writer
	mu     sync.Mutex
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		if _, err := fmt.Fprintf(p.w, "%s%s", p.prefix, p.buf[:i+1]); err != nil {
			return len(b), err
		}
		p.buf = p.buf[i+1:]
	}
	if len(p.buf) > 64<<10 { // a child writing without newlines: do not hoard it
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf)
		p.buf = p.buf[:0]
	}
	return len(b), nil
}
