package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// peer is one server under test (or the webhook backend), running as its
// own process.
type peer struct {
	name   string
	cmd    *exec.Cmd
	pid    int
	log    string // file holding its stdout and stderr
	wsURL  string // ws:// or wss:// base, no path
	push   string // URL a POST to which fans out to every socket
	admin  string // wsidecar: admin base URL
	exited chan struct{}
}

// freePort returns a loopback port nobody listens on right now.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// startProcess starts cmd with its output in logPath and Pdeathsig set, so
// a runner killed by the user does not leave servers behind.
func startProcess(name string, cmd *exec.Cmd, logPath string) (*peer, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", logPath, err)
	}
	if cmd.Stdout == nil {
		cmd.Stdout = f
	}
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &peer{name: name, cmd: cmd, pid: cmd.Process.Pid, log: logPath, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(p.exited)
	}()
	return p, nil
}

// waitHTTP polls url until it answers 200, the process exits or timeout.
func (p *peer) waitHTTP(url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited during startup; its log:\n%s", p.name, tail(p.log, 20))
		default:
		}
		resp, err := c.Get(url)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %s; its log:\n%s", p.name, timeout, tail(p.log, 20))
}

// stop sends SIGTERM and, after grace, SIGKILL, and waits for the exit.
func (p *peer) stop(grace time.Duration) {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log)"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.Join(lines, "\n    ")
}

// sidecarConfig is the benchmark's sidecar.hcl: no auth, no Origin header
// needed, the door's per-IP limits off (every client is on loopback), rates
// unlimited, and the defaults everywhere else — the send queue (256) and
// slow-consumer policy ("close") included, as a user would run it.
const sidecarConfig = `# Written by go run ./bench.
listener {
  address = "127.0.0.1:%d"
%s}

admin {
  address = "127.0.0.1:%d"
}

backend {
  url       = "%s"
  timeout   = "5s"
  max_conns = 2048
  breaker {
    enabled = false
  }
}

origins {
  allow_missing = true
}

limits {
  max_connections    = 200000
  per_ip_connections = 0
  handshake_rate     = "unlimited"
  message_rate       = "unlimited"
  byte_rate          = "unlimited"
}

drain {
  window  = "100ms"
  timeout = "3s"
}

log {
  level = "warn"
}

# Fan-out sockets: every one joins the channel the runner pushes to.
route "/ws" {
  auth     = "none"
  channels = ["bench"]
}

# Round-trip sockets: each message is a webhook to the echo backend, whose
# answer goes back as a frame.
route "/echo" {
  auth       = "none"
  on_message = "/echo"
}
`

// startSidecar writes a config and starts the wsidecar binary (or the
// profiling build) with it. certDir, when set, holds tls.crt and tls.key.
func startSidecar(name, bin string, env, listenerAttrs []string, dir, backendURL, certDir string) (*peer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	adminPort, err := freePort()
	if err != nil {
		return nil, err
	}
	tlsBlock, scheme := "", "ws"
	if certDir != "" {
		tlsBlock = fmt.Sprintf("  tls {\n    cert_file = %q\n    key_file  = %q\n  }\n",
			filepath.Join(certDir, "tls.crt"), filepath.Join(certDir, "tls.key"))
		scheme = "wss"
	}
	for _, a := range listenerAttrs {
		tlsBlock += "  " + a + "\n"
	}
	cfgPath := filepath.Join(dir, name+".hcl")
	cfg := fmt.Sprintf(sidecarConfig, port, tlsBlock, adminPort, backendURL)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, fmt.Errorf("writing %s: %w", cfgPath, err)
	}
	cmd := exec.Command(bin, "-config", cfgPath)
	cmd.Env = append(os.Environ(), env...)
	p, err := startProcess(name, cmd, filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	p.admin = fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	p.wsURL = fmt.Sprintf("%s://127.0.0.1:%d", scheme, port)
	p.push = p.admin + "/v1/push/channel/bench"
	if err := p.waitHTTP(p.admin+"/healthz", 15*time.Second); err != nil {
		p.stop(time.Second)
		return nil, err
	}
	if err := waitTCP(fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second); err != nil {
		p.stop(time.Second)
		return nil, err
	}
	return p, nil
}

// startNode starts the ws broadcast server.
func startNode(nodeDir, dir string) (*peer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("node", filepath.Join(nodeDir, "server.js"))
	cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", port))
	cmd.Dir = nodeDir
	p, err := startProcess("node-ws", cmd, filepath.Join(dir, "node-ws.log"))
	if err != nil {
		return nil, err
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	p.wsURL = fmt.Sprintf("ws://127.0.0.1:%d", port)
	p.push = base + "/broadcast"
	if err := p.waitHTTP(base+"/healthz", 15*time.Second); err != nil {
		p.stop(time.Second)
		return nil, err
	}
	return p, nil
}

// startBackend re-executes the bench binary as the webhook backend.
func startBackend(self, dir string) (*peer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p, err := startProcess("backend", exec.Command(self, "backend", "-addr", addr), filepath.Join(dir, "backend.log"))
	if err != nil {
		return nil, err
	}
	p.admin = "http://" + addr
	if err := p.waitHTTP(p.admin+"/healthz", 10*time.Second); err != nil {
		p.stop(time.Second)
		return nil, err
	}
	return p, nil
}

func waitTCP(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not accepting: %w", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// backendMain is `bench backend -addr A`: the legacy service stand-in. It
// answers the message webhook with the message itself (200, text/plain), so
// wsidecar sends it back to the socket as one frame, and 204 to anything
// else.
func backendMain(args []string) int {
	addr := "127.0.0.1:0"
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "-addr" {
			addr = args[i+1]
		}
	}
	s := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			switch string(ctx.Path()) {
			case "/echo":
				ctx.SetContentType("text/plain; charset=utf-8")
				ctx.SetBody(ctx.PostBody())
			case "/healthz":
				ctx.SetBodyString("ok\n")
			default:
				ctx.SetStatusCode(fasthttp.StatusNoContent)
			}
		},
		Name:                  "bench-backend",
		NoDefaultServerHeader: true,
		Concurrency:           1 << 16,
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench backend:", err)
		return 1
	}
	// The runner ends it with SIGTERM; there is nothing to drain.
	if err := s.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
		fmt.Fprintln(os.Stderr, "bench backend:", err)
		return 1
	}
	return 0
}

// writeSelfSigned writes a throwaway ECDSA P-256 certificate for 127.0.0.1
// into dir as tls.crt and tls.key.
func writeSelfSigned(dir string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "wsidecar bench"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("creating certificate: %w", err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encoding key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tls.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("writing certificate: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tls.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return fmt.Errorf("writing key: %w", err)
	}
	return nil
}

// readMetric returns the value of one un-labelled series from a Prometheus
// text page, or -1.
func readMetric(page, name string) float64 {
	sc := bufio.NewScanner(strings.NewReader(page))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			var v float64
			if _, err := fmt.Sscan(strings.TrimSpace(rest), &v); err == nil {
				return v
			}
		}
	}
	return -1
}

// fetchMetrics returns the sidecar's /metrics page.
func fetchMetrics(admin string) string {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(admin + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
