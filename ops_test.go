package main

// Operations test kit: the real binary as a child process, many light
// WebSocket clients, a backend that can be killed and restarted on the same
// port, and a strict Prometheus text-format parser for /metrics. The stories
// themselves are in ops_*_test.go.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestMain removes the binary the child-process tests build.
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

// wsidecarBinary builds the command once per test binary run.
func wsidecarBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "wsidecar-ops-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "wsidecar")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// freePort returns a loopback port that was free a moment ago. The child
// process needs its ports in the config file, before it starts.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// child is the real wsidecar binary running as a child process.
type child struct {
	cmd    *exec.Cmd
	WS     string // ws://127.0.0.1:port
	Admin  string // http://127.0.0.1:port
	Config string // the config file; rewrite it and send SIGHUP to reload
	stderr *syncBuffer
	done   chan struct{} // closed when the process has exited
	code   int           // exit code, valid after done
	exited time.Time
}

// startChild writes hcl (with %BACKEND%, %LISTEN% and %ADMIN% replaced) and
// runs `wsidecar run -config FILE`, waiting until /healthz answers.
func startChild(t *testing.T, backendURL, hcl string, env ...string) *child {
	t.Helper()
	bin := wsidecarBinary(t)
	wsPort, adminPort := freePort(t), freePort(t)
	src := strings.NewReplacer("%BACKEND%", backendURL,
		"%LISTEN%", fmt.Sprintf("127.0.0.1:%d", wsPort),
		"%ADMIN%", fmt.Sprintf("127.0.0.1:%d", adminPort)).Replace(hcl)
	path := filepath.Join(t.TempDir(), "sidecar.hcl")
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &child{
		cmd:    exec.Command(bin, "run", "-config", path),
		WS:     fmt.Sprintf("ws://127.0.0.1:%d", wsPort),
		Admin:  fmt.Sprintf("http://127.0.0.1:%d", adminPort),
		Config: path,
		stderr: &syncBuffer{},
		done:   make(chan struct{}),
	}
	c.cmd.Env = append(os.Environ(), env...)
	c.cmd.Stderr = c.stderr
	c.cmd.Stdout = c.stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := c.cmd.Wait()
		c.exited = time.Now()
		c.code = 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			c.code = ee.ExitCode()
		} else if err != nil {
			c.code = -1
		}
		close(c.done)
	}()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			_ = c.cmd.Process.Kill()
			<-c.done
		}
		if t.Failed() {
			t.Logf("child stderr:\n%s", tail(c.stderr.String(), 8000))
		}
	})
	eventually(t, 10*time.Second, func() bool {
		select {
		case <-c.done:
			t.Fatalf("wsidecar exited with %d at start:\n%s", c.code, c.stderr.String())
		default:
		}
		st, _ := getStatus(c.Admin + "/healthz")
		return st == http.StatusOK
	}, "wsidecar did not come up:\n%s", c.stderr)
	return c
}

func (c *child) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := c.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

// waitExit waits for the process to end and returns its exit code.
func (c *child) waitExit(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-c.done:
		return c.code
	case <-time.After(within):
		t.Fatalf("wsidecar still running after %v", within)
		return 0
	}
}

// reloadAndWait sends SIGHUP and waits for the log line of the outcome
// ("config reloaded" or "reload rejected").
func (c *child) reloadAndWait(t *testing.T, want string) {
	t.Helper()
	n := strings.Count(c.stderr.String(), want)
	c.signal(t, syscall.SIGHUP)
	eventually(t, 10*time.Second, func() bool { return strings.Count(c.stderr.String(), want) > n },
		"no %q in the log after SIGHUP", want)
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// getStatus returns the status of GET url, or an error when it cannot be
// reached.
func getStatus(url string) (int, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// lightConn is a WebSocket client cheap enough to hold a thousand of: one
// reader goroutine that counts messages and records how the socket ended.
type lightConn struct {
	*websocket.Conn
	msgs     atomic.Int64
	ended    chan struct{}
	code     websocket.StatusCode // -1: ended without a close frame
	reason   string
	endedAt  time.Time
	received func(data []byte) // optional, called by the reader
}

// dialMany opens n sockets to url with a few parallel dialers.
func dialMany(t *testing.T, url string, n int, received func(i int, data []byte)) []*lightConn {
	t.Helper()
	conns := make([]*lightConn, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				var cb func([]byte)
				if received != nil {
					cb = func(d []byte) { received(i, d) }
				}
				c, err := dialLight(url, nil, cb)
				if err != nil {
					errc <- fmt.Errorf("socket %d: %w", i, err)
					return
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.CloseNow()
			}
		}
	})
	return conns
}

func dialLight(url string, h http.Header, received func([]byte)) (*lightConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial: %w (status %d)", err, resp.StatusCode)
		}
		return nil, fmt.Errorf("dial: %w", err)
	}
	c := &lightConn{Conn: ws, ended: make(chan struct{}), received: received}
	go func() {
		for {
			_, data, err := ws.Read(context.Background())
			if err != nil {
				c.endedAt = time.Now()
				c.code = websocket.CloseStatus(err)
				var ce websocket.CloseError
				if errors.As(err, &ce) {
					c.reason = ce.Reason
				}
				close(c.ended)
				return
			}
			c.msgs.Add(1)
			if c.received != nil {
				c.received(data)
			}
		}
	}()
	return c, nil
}

// waitEnded waits until every conn has ended.
func waitEnded(t *testing.T, conns []*lightConn, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for i, c := range conns {
		select {
		case <-c.ended:
		case <-deadline:
			t.Fatalf("socket %d (of %d) still open after %v", i, len(conns), within)
		}
	}
}

// isOpen reports whether a conn has not ended.
func (c *lightConn) isOpen() bool {
	select {
	case <-c.ended:
		return false
	default:
		return true
	}
}

// dialStatus tries a handshake and returns the HTTP status of a refusal (0
// when it succeeded; the socket is then closed) and the response headers.
func dialStatus(t *testing.T, url string, h http.Header) (int, http.Header) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h})
	if err == nil {
		ws.CloseNow()
		return 0, nil
	}
	if resp == nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	return resp.StatusCode, resp.Header
}

// scrape fetches and strictly parses /metrics.
func scrape(t *testing.T, admin string) *promText {
	t.Helper()
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, raw)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("/metrics Content-Type = %q, want the Prometheus text format", ct)
	}
	p, err := parsePromText(string(raw))
	if err != nil {
		t.Fatalf("/metrics is not valid Prometheus text: %v", err)
	}
	return p
}

// promSample is one sample line.
type promSample struct {
	name   string
	labels map[string]string
	value  float64
}

// promText is a parsed exposition.
type promText struct {
	samples []promSample
	types   map[string]string // family → type from # TYPE
	index   map[string]float64
}

// get returns the value of the series written as it would be in the
// exposition, labels in any order: `name{a="1",b="2"}`.
func (p *promText) get(series string) (float64, bool) {
	name, labels, err := parseSeries(series)
	if err != nil {
		panic(err)
	}
	v, ok := p.index[seriesKey(name, labels)]
	return v, ok
}

// value is get that fails the test when the series is missing.
func (p *promText) value(t *testing.T, series string) float64 {
	t.Helper()
	v, ok := p.get(series)
	if !ok {
		t.Fatalf("/metrics has no series %s", series)
	}
	return v
}

func parseSeries(s string) (string, map[string]string, error) {
	name, rest := scanName(s, true)
	if name == "" {
		return "", nil, fmt.Errorf("bad series %q", s)
	}
	labels := map[string]string{}
	if rest != "" {
		var err error
		labels, rest, err = scanLabels(rest)
		if err != nil || rest != "" {
			return "", nil, fmt.Errorf("bad series %q: %v", s, err)
		}
	}
	return name, labels, nil
}

func seriesKey(name string, labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(name)
	for _, k := range keys {
		fmt.Fprintf(&b, "|%s=%q", k, labels[k])
	}
	return b.String()
}

// parsePromText parses the Prometheus text exposition format 0.0.4
// strictly: metric and label names by their grammar, label values with only
// the \\ \" \n escapes, values as Go floats (NaN, ±Inf), optional integer
// timestamps, HELP/TYPE at most once per family and TYPE before its
// samples, a family's lines contiguous, no duplicate series, counters
// non-negative, and histograms consistent: cumulative `le` buckets ending
// at +Inf = _count, or VictoriaMetrics `vmrange` buckets summing to _count,
// each with a _sum.
func parsePromText(text string) (*promText, error) {
	p := &promText{types: map[string]string{}, index: map[string]float64{}}
	if text != "" && !strings.HasSuffix(text, "\n") {
		return nil, errors.New("exposition does not end with a newline")
	}
	helps := map[string]bool{}
	closed := map[string]bool{} // families whose lines are behind us
	cur := ""
	sampled := map[string]bool{}
	enter := func(fam string, line int) error {
		if fam == cur {
			return nil
		}
		if closed[fam] {
			return fmt.Errorf("line %d: family %s appears again after other families", line, fam)
		}
		if cur != "" {
			closed[cur] = true
		}
		cur = fam
		return nil
	}
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	for i, line := range lines {
		n := i + 1
		if strings.TrimSpace(line) == "" {
			continue
		}
		if strings.HasPrefix(line, "#") {
			f := strings.SplitN(line, " ", 4)
			if len(f) < 3 || (f[1] != "HELP" && f[1] != "TYPE") {
				continue // a plain comment
			}
			name := f[2]
			if nm, rest := scanName(name, true); nm != name || rest != "" {
				return nil, fmt.Errorf("line %d: bad metric name %q in %s", n, name, f[1])
			}
			if err := enter(name, n); err != nil {
				return nil, err
			}
			if f[1] == "HELP" {
				if helps[name] {
					return nil, fmt.Errorf("line %d: second HELP for %s", n, name)
				}
				helps[name] = true
				if len(f) == 4 {
					if err := checkHelpEscapes(f[3]); err != nil {
						return nil, fmt.Errorf("line %d: %v", n, err)
					}
				}
				continue
			}
			if len(f) != 4 {
				return nil, fmt.Errorf("line %d: TYPE without a type", n)
			}
			switch f[3] {
			case "counter", "gauge", "histogram", "summary", "untyped":
			default:
				return nil, fmt.Errorf("line %d: unknown type %q", n, f[3])
			}
			if _, dup := p.types[name]; dup {
				return nil, fmt.Errorf("line %d: second TYPE for %s", n, name)
			}
			if sampled[name] {
				return nil, fmt.Errorf("line %d: TYPE for %s after its samples", n, name)
			}
			p.types[name] = f[3]
			continue
		}
		s, err := parseSampleLine(line)
		if err != nil {
			return nil, fmt.Errorf("line %d %q: %v", n, line, err)
		}
		fam := s.name
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(s.name, suf); ok {
				if ty := p.types[base]; ty == "histogram" || (ty == "summary" && suf != "_bucket") {
					fam = base
				}
			}
		}
		if err := enter(fam, n); err != nil {
			return nil, err
		}
		sampled[fam] = true
		key := seriesKey(s.name, s.labels)
		if _, dup := p.index[key]; dup {
			return nil, fmt.Errorf("line %d: duplicate series %s", n, line)
		}
		ty := p.types[fam]
		if (ty == "counter" || strings.HasSuffix(s.name, "_total")) && !(s.value >= 0) {
			return nil, fmt.Errorf("line %d: counter %s is %v", n, s.name, s.value)
		}
		p.index[key] = s.value
		p.samples = append(p.samples, s)
	}
	return p, p.checkHistograms()
}

func checkHelpEscapes(s string) error {
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			if i+1 >= len(s) || (s[i+1] != '\\' && s[i+1] != 'n') {
				return fmt.Errorf("bad escape in HELP %q", s)
			}
			i++
		}
	}
	return nil
}

func parseSampleLine(line string) (promSample, error) {
	name, rest := scanName(line, true)
	if name == "" {
		return promSample{}, errors.New("no metric name")
	}
	s := promSample{name: name, labels: map[string]string{}}
	if strings.HasPrefix(rest, "{") {
		var err error
		if s.labels, rest, err = scanLabels(rest); err != nil {
			return s, err
		}
	}
	if rest == "" || (rest[0] != ' ' && rest[0] != '\t') {
		return s, errors.New("no blank before the value")
	}
	f := strings.Fields(rest)
	if len(f) < 1 || len(f) > 2 {
		return s, fmt.Errorf("want a value and an optional timestamp, got %q", rest)
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil || strings.ContainsAny(f[0], "_xXpP") || strings.EqualFold(strings.TrimLeft(f[0], "+-"), "infinity") {
		return s, fmt.Errorf("bad value %q", f[0])
	}
	s.value = v
	if len(f) == 2 {
		if _, err := strconv.ParseInt(f[1], 10, 64); err != nil {
			return s, fmt.Errorf("bad timestamp %q", f[1])
		}
	}
	return s, nil
}

// scanName reads a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*) or, with
// metric=false, a label name ([a-zA-Z_][a-zA-Z0-9_]*).
func scanName(s string, metric bool) (string, string) {
	i := 0
	for i < len(s) {
		c := s[i]
		ok := c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || (metric && c == ':') || (i > 0 && c >= '0' && c <= '9')
		if !ok {
			break
		}
		i++
	}
	return s[:i], s[i:]
}

// scanLabels reads {name="value",...} with an optional trailing comma.
func scanLabels(s string) (map[string]string, string, error) {
	labels := map[string]string{}
	// Blanks between the tokens inside the braces are allowed, as the
	// Prometheus parsers allow them (Go's process metrics use them).
	blanks := func(s string) string { return strings.TrimLeft(s, " \t") }
	s = s[1:]
	for {
		s = blanks(s)
		if strings.HasPrefix(s, "}") {
			return labels, s[1:], nil
		}
		name, rest := scanName(s, false)
		if name == "" {
			return nil, "", fmt.Errorf("bad label name at %q", s)
		}
		if strings.HasPrefix(name, "__") {
			return nil, "", fmt.Errorf("reserved label name %q", name)
		}
		rest = blanks(rest)
		if !strings.HasPrefix(rest, "=") {
			return nil, "", fmt.Errorf("want = after label %s", name)
		}
		rest = blanks(rest[1:])
		if !strings.HasPrefix(rest, `"`) {
			return nil, "", fmt.Errorf("want a quoted value for label %s", name)
		}
		rest = rest[1:]
		var b strings.Builder
		closed := false
		for len(rest) > 0 {
			c := rest[0]
			rest = rest[1:]
			if c == '"' {
				closed = true
				break
			}
			if c == '\n' {
				return nil, "", errors.New("raw newline in a label value")
			}
			if c == '\\' {
				if rest == "" {
					return nil, "", errors.New("dangling backslash")
				}
				switch rest[0] {
				case '\\':
					b.WriteByte('\\')
				case '"':
					b.WriteByte('"')
				case 'n':
					b.WriteByte('\n')
				default:
					return nil, "", fmt.Errorf("bad escape \\%c in label %s", rest[0], name)
				}
				rest = rest[1:]
				continue
			}
			b.WriteByte(c)
		}
		if !closed {
			return nil, "", fmt.Errorf("unterminated value of label %s", name)
		}
		if _, dup := labels[name]; dup {
			return nil, "", fmt.Errorf("label %s twice", name)
		}
		labels[name] = b.String()
		rest = blanks(rest)
		switch {
		case strings.HasPrefix(rest, ","):
			s = rest[1:]
		case strings.HasPrefix(rest, "}"):
			s = rest
		default:
			return nil, "", fmt.Errorf("want , or } after label %s", name)
		}
	}
}

// checkHistograms checks every _bucket group against its _count and _sum.
func (p *promText) checkHistograms() error {
	type group struct {
		base    string
		labels  map[string]string // without le/vmrange
		le      map[float64]float64
		vmrange float64
		vm, cl  bool
	}
	groups := map[string]*group{}
	for _, s := range p.samples {
		base, ok := strings.CutSuffix(s.name, "_bucket")
		if !ok {
			continue
		}
		rest := map[string]string{}
		for k, v := range s.labels {
			if k != "le" && k != "vmrange" {
				rest[k] = v
			}
		}
		key := seriesKey(base, rest)
		g := groups[key]
		if g == nil {
			g = &group{base: base, labels: rest, le: map[float64]float64{}}
			groups[key] = g
		}
		switch {
		case s.labels["le"] != "":
			le, err := strconv.ParseFloat(s.labels["le"], 64)
			if err != nil {
				return fmt.Errorf("%s: bad le %q", s.name, s.labels["le"])
			}
			g.le[le], g.cl = s.value, true
		case s.labels["vmrange"] != "":
			lo, hi, ok := strings.Cut(s.labels["vmrange"], "...")
			a, err1 := strconv.ParseFloat(lo, 64)
			b, err2 := strconv.ParseFloat(hi, 64)
			if !ok || err1 != nil || err2 != nil || a > b {
				return fmt.Errorf("%s: bad vmrange %q", s.name, s.labels["vmrange"])
			}
			g.vmrange += s.value
			g.vm = true
		default:
			return fmt.Errorf("%s%v: a bucket without le or vmrange", s.name, s.labels)
		}
	}
	for _, g := range groups {
		base, labels := g.base, g.labels
		// A family declared a histogram must be complete; untyped bucket
		// series (Go runtime histograms from WriteProcessMetrics have no
		// _sum or _count) are checked against what they do have.
		typed := p.types[base] == "histogram"
		count, hasCount := p.index[seriesKey(base+"_count", labels)]
		_, hasSum := p.index[seriesKey(base+"_sum", labels)]
		if typed && (!hasCount || !hasSum) {
			return fmt.Errorf("histogram %s%v lacks _count or _sum", base, labels)
		}
		if g.vm && !hasSum {
			return fmt.Errorf("histogram %s%v has no _sum", base, labels)
		}
		if g.vm && g.cl {
			return fmt.Errorf("histogram %s%v mixes le and vmrange buckets", base, labels)
		}
		if g.vm && (!hasCount || g.vmrange != count) {
			return fmt.Errorf("histogram %s%v: vmrange buckets add up to %v, _count is %v", base, labels, g.vmrange, count)
		}
		if g.cl {
			les := make([]float64, 0, len(g.le))
			for le := range g.le {
				les = append(les, le)
			}
			sort.Float64s(les)
			if !math.IsInf(les[len(les)-1], 1) {
				return fmt.Errorf("histogram %s%v has no +Inf bucket", base, labels)
			}
			prev := 0.0
			for _, le := range les {
				if g.le[le] < prev {
					return fmt.Errorf("histogram %s%v: bucket le=%v (%v) below the previous one (%v)", base, labels, le, g.le[le], prev)
				}
				prev = g.le[le]
			}
			if hasCount && prev != count {
				return fmt.Errorf("histogram %s%v: +Inf bucket %v != _count %v", base, labels, prev, count)
			}
		}
	}
	return nil
}

// The parser must refuse what a Prometheus server would refuse, or the
// metrics tests prove nothing.
func TestPromParserStrict(t *testing.T) {
	good := "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 3\nb 1.5e3 1700000000000\nc{ x=\"1\", y = \"2\" ,} 1\n" +
		"# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n" +
		"v_bucket{k=\"m\",vmrange=\"1.000e-01...1.136e-01\"} 2\nv_bucket{k=\"m\",vmrange=\"2.000e-01...2.150e-01\"} 1\nv_sum{k=\"m\"} 0.5\nv_count{k=\"m\"} 3\n" +
		"n NaN\ni +Inf\n"
	p, err := parsePromText(good)
	if err != nil {
		t.Fatalf("valid exposition refused: %v", err)
	}
	if v := p.value(t, `a_total{x="q\"\\\n"}`); v != 3 {
		t.Errorf("escaped label value: %v", v)
	}
	for name, bad := range map[string]string{
		"no final newline":   "a 1",
		"bad name":           "1a 1\n",
		"bad label name":     "a{1x=\"1\"} 1\n",
		"unquoted value":     "a{x=1} 1\n",
		"bad escape":         "a{x=\"\\t\"} 1\n",
		"unterminated":       "a{x=\"1} 1\n",
		"missing value":      "a{x=\"1\"}\n",
		"bad value":          "a 1,5\n",
		"hex value":          "a 0x10\n",
		"bad timestamp":      "a 1 1.5\n",
		"duplicate series":   "a{x=\"1\"} 1\na{x=\"1\"} 2\n",
		"duplicate label":    "a{x=\"1\",x=\"2\"} 1\n",
		"split family":       "a 1\nb 1\na{x=\"1\"} 2\n",
		"type after samples": "a 1\n# TYPE a gauge\n",
		"second type":        "# TYPE a gauge\n# TYPE a gauge\na 1\n",
		"unknown type":       "# TYPE a thing\na 1\n",
		"negative counter":   "a_total -1\n",
		"le not cumulative":  "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
		"inf != count":       "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
		"no inf bucket":      "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_sum 1\nh_count 2\n",
		"typed, no count":    "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\n",
		"no sum":             "h_bucket{vmrange=\"1...2\"} 1\nh_count 1\n",
		"vmrange != count":   "h_bucket{vmrange=\"1...2\"} 1\nh_sum 1\nh_count 2\n",
		"reserved label":     "a{__name__=\"x\"} 1\n",
	} {
		if _, err := parsePromText(bad); err == nil {
			t.Errorf("%s: accepted %q", name, bad)
		}
	}
}
