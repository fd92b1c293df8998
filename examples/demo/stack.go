package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// options are the demo's settings: the flags fill them, tests set them.
type options struct {
	Addr    string // backend host:port; it serves the chat page
	Listen  string // sidecar WebSocket listener host:port
	Admin   string // sidecar admin listener host:port
	Backend string // "go" or "flask"; "" means "go"
	Config  string // sidecar.hcl; "" means the one at the module root

	SidecarBin string // prebuilt wsidecar; "" builds one
	LegacyBin  string // prebuilt examples/legacy; "" builds one (backend "go")
	Python     string // interpreter for backend "flask"; "" finds one

	Ready time.Duration // how long the children get to become healthy
	Grace time.Duration // how long a child gets to stop before it is killed

	// Stdout and Stderr receive the demo's progress and the children's
	// output, each line prefixed with the child's name. Nil discards.
	Stdout, Stderr io.Writer
	// BackendEnv is added to the backend's environment (e.g. NOTICE_EVERY=0).
	BackendEnv []string
}

// stack is a running demo: the legacy backend and the sidecar in front of it.
type stack struct {
	BackendURL string // http://addr: the page, /notice, /log, /healthz
	WSURL      string // ws://listen/ws: what the page connects to
	AdminURL   string // http://admin: the push API, /healthz

	opts    options
	tmp     string // built binaries; removed by stop
	sidecar *child
	backend *child
}

// errInterrupted means a signal ended the demo; not a failure.
var errInterrupted = errors.New("interrupted")

// startStack builds what it must, starts the backend and then the sidecar,
// and returns once both answer /healthz. On error nothing is left running.
func startStack(ctx context.Context, o options) (_ *stack, err error) {
	if o.Backend == "" {
		o.Backend = "go"
	}
	if o.Backend != "go" && o.Backend != "flask" {
		return nil, fmt.Errorf(`-backend %q: want "go" or "flask"`, o.Backend)
	}
	if o.Stdout == nil {
		o.Stdout = io.Discard
	}
	if o.Stderr == nil {
		o.Stderr = io.Discard
	}
	if o.Ready <= 0 {
		o.Ready = 60 * time.Second
	}
	if o.Grace <= 0 {
		o.Grace = 30 * time.Second
	}
	root, err := moduleRoot(ctx)
	if err != nil {
		return nil, err
	}
	if o.Config == "" {
		o.Config = filepath.Join(root, "sidecar.hcl")
	}
	if o.Config, err = filepath.Abs(o.Config); err != nil {
		return nil, fmt.Errorf("config path: %w", err)
	}
	if _, err := os.Stat(o.Config); err != nil {
		return nil, fmt.Errorf("sidecar config: %w (pass -config; see examples/README.md for what it needs)", err)
	}

	if err := portsFree(o.Addr, o.Listen, o.Admin); err != nil {
		return nil, err
	}

	s := &stack{
		BackendURL: "http://" + o.Addr,
		WSURL:      "ws://" + o.Listen + "/ws",
		AdminURL:   "http://" + o.Admin,
		opts:       o,
	}
	if s.tmp, err = os.MkdirTemp("", "wsidecar-demo-"); err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()

	if o.SidecarBin == "" {
		s.opts.SidecarBin = filepath.Join(s.tmp, "wsidecar")
		if err := goBuild(ctx, o.Stdout, o.Stderr, root, s.opts.SidecarBin, "."); err != nil {
			return nil, err
		}
	}
	var backendCmd func() *exec.Cmd
	switch o.Backend {
	case "go":
		if o.LegacyBin == "" {
			s.opts.LegacyBin = filepath.Join(s.tmp, "legacy")
			if err := goBuild(ctx, o.Stdout, o.Stderr, root, s.opts.LegacyBin, "./examples/legacy"); err != nil {
				return nil, err
			}
		}
		backendCmd = func() *exec.Cmd { return exec.Command(s.opts.LegacyBin) }
	case "flask":
		if o.Python == "" {
			if s.opts.Python, err = findPython(ctx); err != nil {
				return nil, err
			}
		} else if err := importsFlask(ctx, o.Python); err != nil {
			return nil, fmt.Errorf("-python %s: %w; install flask for it or leave -python out", o.Python, err)
		}
		app := filepath.Join(root, "examples", "flask", "app.py")
		backendCmd = func() *exec.Cmd { return exec.Command(s.opts.Python, app) }
	}

	// Both backends read the same variables; flags would do as well, but
	// the environment is what a container or a Procfile would use.
	backendEnv := append([]string{
		"LEGACY_ADDR=" + o.Addr,
		"SIDECAR_ADMIN=" + s.AdminURL,
		"WS_URL=" + s.WSURL,
		"PYTHONUNBUFFERED=1",
	}, o.BackendEnv...)
	s.backend = s.newChild("backend", backendCmd, backendEnv, s.BackendURL+"/healthz")
	s.sidecar = s.newChild("wsidecar", func() *exec.Cmd {
		return exec.Command(s.opts.SidecarBin, "-config", o.Config)
	}, []string{
		"WSIDECAR_LISTEN=" + o.Listen,
		"WSIDECAR_ADMIN=" + o.Admin,
		"BACKEND_URL=" + s.BackendURL,
		"WSIDECAR_ORIGIN=" + s.BackendURL, // the page is served by the backend
	}, s.AdminURL+"/healthz")
	// Healthy is not enough for the demo: a notice posted before the
	// sidecar's SSE stream is open would never reach the page.
	s.sidecar.extra = func(ctx context.Context, client *http.Client) bool {
		return streamsOpen(ctx, client, s.AdminURL+"/metrics")
	}

	// The backend first: the sidecar opens its SSE stream at once.
	for _, c := range []*child{s.backend, s.sidecar} {
		if err := c.start(); err != nil {
			return nil, err
		}
		if err := c.waitHealthy(ctx, o.Ready); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// killSidecar ends the sidecar at once (SIGKILL), as a crash or an OOM kill
// would: clients see their sockets drop without a close frame.
func (s *stack) killSidecar() { s.sidecar.kill() }

// startSidecar starts the sidecar again on the same ports and waits until
// it is healthy.
func (s *stack) startSidecar(ctx context.Context) error {
	if err := s.sidecar.start(); err != nil {
		return err
	}
	return s.sidecar.waitHealthy(ctx, s.opts.Ready)
}

// wait returns errInterrupted when ctx ends (Ctrl-C) and an error when a
// child exits on its own first.
func (s *stack) wait(parent context.Context) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel() // releases the watchers below
	dead := make(chan *child, 2)
	for _, c := range []*child{s.sidecar, s.backend} {
		done := c.doneChan()
		go func() {
			select {
			case <-done:
				dead <- c
			case <-ctx.Done():
			}
		}()
	}
	select {
	case <-parent.Done():
		return errInterrupted
	case c := <-dead:
		return c.exited()
	}
}

// stop stops the sidecar (it drains first, so clients hear 1001) and then
// the backend, and removes the built binaries. It is safe to call twice.
func (s *stack) stop() {
	for _, c := range []*child{s.sidecar, s.backend} {
		if c != nil {
			c.stop(s.opts.Grace)
		}
	}
	if s.tmp != "" {
		os.RemoveAll(s.tmp)
	}
}

// portsFree checks that every address can be listened on. Without it, a
// demo still running from before would answer the health checks in place
// of the new processes, which die on "address already in use".
func portsFree(addrs ...string) error {
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return fmt.Errorf("%s is not free (is another demo still running?): pick others with -addr, -listen and -admin: %w", a, err)
		}
		ln.Close()
	}
	return nil
}

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

func goBuild(ctx context.Context, stdout, stderr io.Writer, root, out, pkg string) error {
	fmt.Fprintf(stdout, "building %s\n", pkg)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return errInterrupted
		}
		return fmt.Errorf("go build %s: %w", pkg, err)
	}
	return nil
}

// pythons are the interpreters tried for the Flask backend: whatever
// python3 is first on PATH (a virtualenv, pyenv), then Debian's, which has
// python3-flask.
var pythons = []string{"python3", "/usr/bin/python3"}

// findPython returns the first interpreter that can import flask.
func findPython(ctx context.Context) (string, error) {
	var tried []string
	for _, p := range pythons {
		if err := importsFlask(ctx, p); err != nil {
			tried = append(tried, fmt.Sprintf("%s: %v", p, err))
			continue
		}
		return p, nil
	}
	return "", fmt.Errorf("no Python that can import flask (%s); install it (Debian: apt install python3-flask; else: pip install flask) or pass -python", strings.Join(tried, "; "))
}

// importsFlask checks that python can import flask.
func importsFlask(ctx context.Context, python string) error {
	out, err := exec.CommandContext(ctx, python, "-c", "import flask").CombinedOutput()
	if err != nil {
		if line := lastLine(out); line != "" {
			return fmt.Errorf("cannot import flask: %s", line)
		}
		return fmt.Errorf("cannot import flask: %w", err)
	}
	return nil
}

// lastLine is the last non-empty line of a command's output: for Python,
// the exception ("ModuleNotFoundError: No module named 'flask'").
func lastLine(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// child is one process of the demo, which can be started again after it
// has exited (the tests restart the sidecar).
type child struct {
	name   string
	newCmd func() *exec.Cmd
	env    []string
	health string // URL that answers 200 once it is ready
	// extra, when set, must also hold before the child counts as ready.
	extra  func(context.Context, *http.Client) bool
	out    io.Writer
	errOut io.Writer

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when the current process has exited
	err  error         // its exit status, once done
}

func (s *stack) newChild(name string, newCmd func() *exec.Cmd, env []string, health string) *child {
	return &child{
		name: name, newCmd: newCmd, env: env, health: health,
		out:    &prefixWriter{prefix: "[" + name + "] ", w: s.opts.Stdout},
		errOut: &prefixWriter{prefix: "[" + name + "] ", w: s.opts.Stderr},
	}
}

// start runs a new process; the previous one must have exited.
func (c *child) start() error {
	cmd := c.newCmd()
	cmd.Env = append(os.Environ(), c.env...)
	detach(cmd)
	cmd.Stdout, cmd.Stderr = c.out, c.errOut
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", c.name, err)
	}
	done := make(chan struct{})
	c.mu.Lock()
	c.cmd, c.done, c.err = cmd, done, nil
	c.mu.Unlock()
	go func() {
		err := cmd.Wait()
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
		close(done)
	}()
	return nil
}

// doneChan is closed when the current process exits; nil before start.
func (c *child) doneChan() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done
}

// exited returns an error if the current process is no longer running.
func (c *child) exited() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.done:
		return fmt.Errorf("%s exited: %v", c.name, c.err)
	default:
		return nil
	}
}

func (c *child) running() bool {
	done := c.doneChan()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// stop asks the child to exit (SIGTERM, which both backends and the
// sidecar treat as a graceful stop) and kills it if it has not within grace.
func (c *child) stop(grace time.Duration) {
	if !c.running() {
		return
	}
	c.mu.Lock()
	p, done := c.cmd.Process, c.done
	c.mu.Unlock()
	p.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		fmt.Fprintf(c.errOut, "did not stop within %v; killing it\n", grace)
		p.Kill()
		<-done
	}
}

// kill ends the child with SIGKILL and waits until it is gone.
func (c *child) kill() {
	if !c.running() {
		return
	}
	c.mu.Lock()
	p, done := c.cmd.Process, c.done
	c.mu.Unlock()
	p.Kill()
	<-done
}

// waitHealthy polls the child's health URL until it answers 200, the
// child exits, ctx ends or the timeout passes.
func (c *child) waitHealthy(parent context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(parent, timeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	done := c.doneChan()
	for {
		if err := c.exited(); err != nil {
			return err
		}
		if healthy(ctx, client, c.health) && (c.extra == nil || c.extra(ctx, client)) {
			return nil
		}
		select {
		case <-ctx.Done():
			if parent.Err() != nil {
				return errInterrupted
			}
			return fmt.Errorf("%s not healthy at %s within %v", c.name, c.health, timeout)
		case <-done:
		case <-time.After(50 * time.Millisecond):
		}
	}
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

// streamsOpen reports whether every SSE stream of the sidecar is open,
// going by its wsidecar_sse_stream_state gauges (1 = open).
func streamsOpen(ctx context.Context, client *http.Client, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return false
	}
	for line := range strings.Lines(string(body)) {
		if name, value, ok := strings.Cut(strings.TrimSpace(line), " "); ok &&
			strings.HasPrefix(name, "wsidecar_sse_stream_state{") && value != "1" {
			return false
		}
	}
	return true
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
