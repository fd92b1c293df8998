package main

// The Kubernetes example is checked against itself and against the code:
// the ConfigMap's sidecar.hcl loads, the pod provides every env() it needs,
// probes, ports and the preStop hook point where the config says, the grace
// period outlasts the drain — and the hook, run against a sidecar started
// from that very config, drains it.

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsidecar/wsidecar/config"
)

func TestKubernetesExample(t *testing.T) {
	var docs []any
	files, _ := filepath.Glob("examples/k8s/*.yaml")
	if len(files) == 0 {
		t.Fatal("no manifests in examples/k8s")
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		ds, err := parseYAMLDocs(string(raw))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		docs = append(docs, ds...)
	}
	byKind := map[string]any{}
	for _, d := range docs {
		byKind[ystr(t, d, "kind")] = d
	}
	for _, kind := range []string{"ConfigMap", "Deployment", "Service", "Kustomization"} {
		if byKind[kind] == nil {
			t.Fatalf("no %s in examples/k8s", kind)
		}
	}
	for _, r := range ylist(t, byKind["Kustomization"], "resources") {
		if _, err := os.Stat(filepath.Join("examples/k8s", r.(string))); err != nil {
			t.Errorf("kustomization lists %v: %v", r, err)
		}
	}
	cm, dep, svc := byKind["ConfigMap"], byKind["Deployment"], byKind["Service"]
	pod := yget(t, dep, "spec.template.spec")

	// wsidecar is a native sidecar: an init container that keeps running.
	var side, app map[string]any
	for _, c := range ylist(t, pod, "initContainers") {
		if strings.Contains(ystr(t, c, "image"), "wsidecar") {
			side = c.(map[string]any)
		}
	}
	if side == nil || ystr(t, side, "restartPolicy") != "Always" {
		t.Fatal("wsidecar is not an init container with restartPolicy: Always")
	}
	apps := ylist(t, pod, "containers")
	if len(apps) != 1 {
		t.Fatalf("want one app container, got %d", len(apps))
	}
	app = apps[0].(map[string]any)

	// The config it runs is the ConfigMap's, mounted where -config points.
	args := strList(t, yget(t, side, "args"))
	if len(args) != 3 || args[0] != "run" || args[1] != "-config" {
		t.Fatalf("sidecar args %v", args)
	}
	mountDir, file := filepath.Split(args[2])
	mounted := false
	for _, m := range ylist(t, side, "volumeMounts") {
		if filepath.Clean(ystr(t, m, "mountPath")) == filepath.Clean(mountDir) {
			for _, v := range ylist(t, pod, "volumes") {
				if ystr(t, v, "name") == ystr(t, m, "name") && ystr(t, v, "configMap.name") == ystr(t, cm, "metadata.name") {
					mounted = true
				}
			}
		}
	}
	if !mounted {
		t.Fatalf("the ConfigMap %s is not mounted at %s", ystr(t, cm, "metadata.name"), mountDir)
	}
	data, _ := yget(t, cm, "data").(map[string]any)
	hcl, ok := data[file].(string) // the key has a dot: no path lookup
	if !ok {
		t.Fatalf("the ConfigMap has no %s", file)
	}

	// Every env() without a default is provided by the container; with
	// them (secrets as dummies) the config is valid.
	provided := map[string]string{}
	for _, e := range ylist(t, side, "env") {
		name := ystr(t, e, "name")
		if v, ok := yopt(e, "value"); ok {
			provided[name] = v.(string)
		} else {
			ystr(t, e, "valueFrom.secretKeyRef.key")
			provided[name] = strings.Repeat("ab", 32) // like openssl rand -hex 32
		}
	}
	for _, m := range regexp.MustCompile(`env\("([A-Z0-9_]+)"\)`).FindAllStringSubmatch(hcl, -1) {
		if _, ok := provided[m[1]]; !ok {
			t.Errorf("sidecar.hcl needs env %s, which the container does not set", m[1])
		}
	}
	for k, v := range provided {
		t.Setenv(k, v)
	}
	for _, k := range []string{"WSIDECAR_LISTEN", "WSIDECAR_ADMIN", "BACKEND_URL"} {
		t.Setenv(k, "") // envOr-style defaults: empty means the file's default
		os.Unsetenv(k)
	}
	path := filepath.Join(t.TempDir(), file)
	os.WriteFile(path, []byte(hcl), 0o600)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("the ConfigMap's sidecar.hcl does not load:\n%s", configErrorText(err))
	}

	// Ports: the listener and admin ports are the container's, the
	// backend is the app container on loopback, the Service targets ws.
	ports := map[string]int{}
	for _, p := range ylist(t, side, "ports") {
		ports[ystr(t, p, "name")] = yint(t, p, "containerPort")
	}
	wsPort, adminPort := portOf(t, cfg.Listener.Address), portOf(t, cfg.Admin.Address)
	if ports["ws"] != wsPort || ports["admin"] != adminPort {
		t.Errorf("container ports %v, config listens on %d and %d", ports, wsPort, adminPort)
	}
	if host := strings.TrimSuffix(cfg.Admin.Address, fmt.Sprintf(":%d", adminPort)); host != "0.0.0.0" && host != "" {
		t.Errorf("admin on %s: the kubelet's probes come to the pod IP, not loopback", cfg.Admin.Address)
	}
	if cfg.Admin.Token == "" {
		t.Error("the admin API is reachable in the pod network without a token")
	}
	appPort := yint(t, ylist(t, app, "ports")[0], "containerPort")
	if cfg.Backend.URL != fmt.Sprintf("http://127.0.0.1:%d", appPort) {
		t.Errorf("backend.url %s, the app listens on %d", cfg.Backend.URL, appPort)
	}
	svcPorts := map[string]bool{}
	for _, p := range ylist(t, svc, "spec.ports") {
		svcPorts[fmt.Sprint(yget(t, p, "targetPort"))] = true
	}
	if !svcPorts["ws"] || svcPorts["admin"] || svcPorts[strconv.Itoa(adminPort)] {
		t.Errorf("Service targets %v: want ws, never the admin port", svcPorts)
	}

	// Probes: readiness on /readyz, liveness on /healthz, admin port.
	for probe, want := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"} {
		if got := ystr(t, side, probe+".httpGet.path"); got != want {
			t.Errorf("%s path %s, want %s", probe, got, want)
		}
		if p := ystr(t, side, probe+".httpGet.port"); p != "admin" && p != strconv.Itoa(adminPort) {
			t.Errorf("%s on port %s, want the admin port", probe, p)
		}
	}
	if yint(t, side, "readinessProbe.failureThreshold")*yint(t, side, "readinessProbe.periodSeconds") > int(cfg.Drain.Window/time.Second) {
		t.Error("readiness takes longer to fail than the drain window: sockets would close while the pod still gets traffic")
	}

	// The preStop hook is on the app container (a native sidecar is stopped
	// only after the app has exited) and runs `wsidecar drain` against the
	// admin port, waiting at least drain.timeout.
	hook := strList(t, yget(t, app, "lifecycle.preStop.exec.command"))
	if len(hook) < 2 || hook[0] != "/wsidecar" || hook[1] != "drain" {
		t.Fatalf("app preStop %v, want /wsidecar drain …", hook)
	}
	if _, ok := yopt(side, "lifecycle"); ok {
		t.Error("a preStop hook on the sidecar would run after the app has gone")
	}
	hookAdmin, hookTimeout := flagValue(hook, "-admin"), flagValue(hook, "-timeout")
	if hookAdmin != fmt.Sprintf("http://127.0.0.1:%d", adminPort) {
		t.Errorf("preStop -admin %q, the admin listens on %d", hookAdmin, adminPort)
	}
	waitFor, err := time.ParseDuration(hookTimeout)
	if err != nil || waitFor < cfg.Drain.Timeout {
		t.Errorf("preStop -timeout %q is shorter than drain.timeout %v", hookTimeout, cfg.Drain.Timeout)
	}
	dockerfile, err := os.ReadFile("examples/k8s/Dockerfile.legacy")
	if err != nil || !regexp.MustCompile(`(?m)^COPY .* /wsidecar$`).Match(dockerfile) {
		t.Error("the app image (Dockerfile.legacy) does not contain /wsidecar for the preStop hook")
	}
	for _, e := range ylist(t, app, "env") {
		if ystr(t, e, "name") == "SIDECAR_ADMIN_TOKEN" {
			goto tokenOK
		}
	}
	t.Error("the app container lacks SIDECAR_ADMIN_TOKEN, which the hook (and the push API) need")
tokenOK:

	// The grace period covers the hook (and so the drain) and the app's
	// shutdown after it.
	grace := time.Duration(yint(t, pod, "terminationGracePeriodSeconds")) * time.Second
	if grace <= cfg.Drain.Timeout || grace <= waitFor {
		t.Errorf("terminationGracePeriodSeconds %v must exceed drain.timeout %v and the hook's %v", grace, cfg.Drain.Timeout, waitFor)
	}
	if yget(t, pod, "securityContext.runAsNonRoot") != "true" {
		t.Error("pod does not require runAsNonRoot")
	}

	// The hook itself, against a sidecar started from this config.
	be := newBackend(t)
	t.Setenv("WSIDECAR_LISTEN", "127.0.0.1:0")
	t.Setenv("WSIDECAR_ADMIN", "127.0.0.1:0")
	t.Setenv("BACKEND_URL", be.URL)
	sc := startSidecar(t, "", hcl)
	c, err := dialLight(sc.WS+"/ws", http.Header{"Origin": {provided["WSIDECAR_ORIGIN"]}}, nil)
	if err != nil {
		t.Fatalf("a browser from the allowed origin cannot connect: %v", err)
	}
	hookArgs := append([]string(nil), hook[1:]...)
	for i := range hookArgs {
		if hookArgs[i] == hookAdmin {
			hookArgs[i] = sc.Admin
		}
	}
	code, out, stderr := runCLI(t, hookArgs...)
	if code != 0 {
		t.Fatalf("preStop %v: exit %d\n%s%s", hookArgs, code, out, stderr)
	}
	select {
	case got := <-sc.done:
		sc.done <- got
		if got != 0 {
			t.Errorf("the sidecar exited %d", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the hook returned but the sidecar is still running")
	}
	waitEnded(t, []*lightConn{c}, time.Second)
	if c.code != websocket.StatusGoingAway {
		t.Errorf("socket closed with %d, want 1001", c.code)
	}
	if n := len(be.calls("/ws/disconnect")); n != 1 {
		t.Errorf("%d disconnect webhooks when the hook returned, want 1", n)
	}
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	i := strings.LastIndexByte(addr, ':')
	p, err := strconv.Atoi(addr[i+1:])
	if i < 0 || err != nil {
		t.Fatalf("address %q has no port", addr)
	}
	return p
}

func flagValue(args []string, name string) string {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

// yopt walks a dotted path through maps; list elements are not addressed.
func yopt(v any, path string) (any, bool) {
	for _, k := range strings.Split(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = m[k]; !ok {
			return nil, false
		}
	}
	return v, true
}

func yget(t *testing.T, v any, path string) any {
	t.Helper()
	got, ok := yopt(v, path)
	if !ok {
		t.Fatalf("manifest has no %s", path)
	}
	return got
}

func ystr(t *testing.T, v any, path string) string {
	t.Helper()
	s, ok := yget(t, v, path).(string)
	if !ok {
		t.Fatalf("%s is not a scalar", path)
	}
	return s
}

func yint(t *testing.T, v any, path string) int {
	t.Helper()
	n, err := strconv.Atoi(ystr(t, v, path))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return n
}

func ylist(t *testing.T, v any, path string) []any {
	t.Helper()
	l, ok := yget(t, v, path).([]any)
	if !ok {
		t.Fatalf("%s is not a list", path)
	}
	return l
}

func strList(t *testing.T, v any) []string {
	t.Helper()
	l, ok := v.([]any)
	if !ok {
		t.Fatalf("%v is not a list", v)
	}
	out := make([]string, len(l))
	for i, x := range l {
		out[i], ok = x.(string)
		if !ok {
			t.Fatalf("%v is not a list of scalars", v)
		}
	}
	return out
}

// parseYAMLDocs parses the YAML subset Kubernetes manifests here are
// written in — block maps and lists, plain and quoted scalars, flow lists
// of scalars, literal block scalars (|, |-), comments, --- separators —
// into map[string]any, []any and string. Anything else is an error rather
// than a guess, so the checks above read what kubectl would read.
func parseYAMLDocs(src string) ([]any, error) {
	var docs []any
	var cur []string
	flush := func() error {
		p := &yparser{lines: cur}
		p.skip()
		if p.i < len(p.lines) {
			v, err := p.node(p.indent())
			if err != nil {
				return err
			}
			if p.skip(); p.i < len(p.lines) {
				return fmt.Errorf("line %q: unexpected indentation", p.lines[p.i])
			}
			docs = append(docs, v)
		}
		cur = nil
		return nil
	}
	for _, line := range strings.Split(src, "\n") {
		if strings.TrimRight(line, " ") == "---" {
			if err := flush(); err != nil {
				return nil, err
			}
			continue
		}
		if strings.Contains(line, "\t") {
			return nil, fmt.Errorf("tab in %q", line)
		}
		cur = append(cur, line)
	}
	return docs, flush()
}

type yparser struct {
	lines []string
	i     int
}

func (p *yparser) skip() {
	for p.i < len(p.lines) {
		s := strings.TrimSpace(p.lines[p.i])
		if s != "" && !strings.HasPrefix(s, "#") {
			return
		}
		p.i++
	}
}

func (p *yparser) indent() int {
	l := p.lines[p.i]
	return len(l) - len(strings.TrimLeft(l, " "))
}

func (p *yparser) text() string { return stripComment(strings.TrimSpace(p.lines[p.i])) }

func isItem(s string) bool { return s == "-" || strings.HasPrefix(s, "- ") }

// node parses the block at indent ind.
func (p *yparser) node(ind int) (any, error) {
	if isItem(p.text()) {
		return p.seq(ind)
	}
	return p.mapping(ind)
}

func (p *yparser) mapping(ind int) (any, error) {
	m := map[string]any{}
	for p.skip(); p.i < len(p.lines) && p.indent() == ind && !isItem(p.text()); p.skip() {
		key, rest, ok := splitKey(p.text())
		if !ok {
			return nil, fmt.Errorf("line %q: want key: value", p.lines[p.i])
		}
		if _, dup := m[key]; dup {
			return nil, fmt.Errorf("key %s twice", key)
		}
		p.i++
		var err error
		switch {
		case rest == "|" || rest == "|-":
			m[key] = p.blockScalar(ind, rest == "|-")
		case rest != "":
			m[key], err = scalar(rest)
		default:
			p.skip()
			switch {
			case p.i < len(p.lines) && p.indent() > ind:
				m[key], err = p.node(p.indent())
			case p.i < len(p.lines) && p.indent() == ind && isItem(p.text()):
				m[key], err = p.seq(ind)
			default:
				m[key] = ""
			}
		}
		if err != nil {
			return nil, err
		}
	}
	if p.i < len(p.lines) && p.indent() > ind {
		return nil, fmt.Errorf("line %q: unexpected indentation", p.lines[p.i])
	}
	return m, nil
}

func (p *yparser) seq(ind int) (any, error) {
	var l []any
	for p.skip(); p.i < len(p.lines) && p.indent() == ind && isItem(p.text()); p.skip() {
		line := p.lines[p.i]
		item := strings.TrimLeft(strings.TrimSpace(line)[1:], " ")
		itemInd := len(line) - len(strings.TrimLeft(strings.TrimLeft(line, " ")[1:], " "))
		switch _, _, isMap := splitKey(stripComment(item)); {
		case item == "" || strings.HasPrefix(item, "#"):
			p.i++
			p.skip()
			if p.i >= len(p.lines) || p.indent() <= ind {
				return nil, fmt.Errorf("empty list item after %q", line)
			}
			v, err := p.node(p.indent())
			if err != nil {
				return nil, err
			}
			l = append(l, v)
		case isMap && !strings.HasPrefix(item, `"`) && !strings.HasPrefix(item, "'"):
			// "- key: value" opens a map whose keys align with "key".
			p.lines[p.i] = strings.Repeat(" ", itemInd) + item
			v, err := p.mapping(itemInd)
			if err != nil {
				return nil, err
			}
			l = append(l, v)
		default:
			v, err := scalar(stripComment(item))
			if err != nil {
				return nil, err
			}
			l = append(l, v)
			p.i++
		}
	}
	return l, nil
}

// blockScalar reads the literal block after a "key: |" line at indent ind.
func (p *yparser) blockScalar(ind int, chomp bool) string {
	var out []string
	base := -1
	for p.i < len(p.lines) {
		l := p.lines[p.i]
		if strings.TrimSpace(l) == "" {
			out = append(out, "")
			p.i++
			continue
		}
		li := len(l) - len(strings.TrimLeft(l, " "))
		if li <= ind {
			break
		}
		if base < 0 {
			base = li
		}
		out = append(out, l[min(base, li):])
		p.i++
	}
	for len(out) > 0 && out[len(out)-1] == "" {
		out = out[:len(out)-1]
	}
	s := strings.Join(out, "\n")
	if !chomp {
		s += "\n"
	}
	return s
}

// splitKey splits "key: value" (or "key:"); keys are plain.
func splitKey(s string) (key, rest string, ok bool) {
	if strings.HasPrefix(s, `"`) || strings.HasPrefix(s, "'") || strings.HasPrefix(s, "[") || strings.HasPrefix(s, "{") {
		return "", "", false
	}
	if k, ok := strings.CutSuffix(s, ":"); ok && !strings.Contains(k, ": ") {
		return k, "", true
	}
	k, r, ok := strings.Cut(s, ": ")
	if !ok || k == "" || strings.ContainsAny(k, " \"'") {
		return "", "", false
	}
	return k, strings.TrimSpace(r), true
}

// stripComment drops a " #" comment outside quotes.
func stripComment(s string) string {
	var q byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case q != 0:
			if c == q {
				q = 0
			} else if c == '\\' && q == '"' {
				i++
			}
		case c == '"' || c == '\'':
			q = c
		case c == '#' && (i == 0 || s[i-1] == ' '):
			return strings.TrimSpace(s[:i])
		}
	}
	return s
}

func scalar(s string) (any, error) {
	switch {
	case strings.HasPrefix(s, "["):
		if !strings.HasSuffix(s, "]") {
			return nil, fmt.Errorf("unterminated flow list %q", s)
		}
		var out []any
		inner := strings.TrimSpace(s[1 : len(s)-1])
		for inner != "" {
			var item string
			if inner[0] == '"' {
				end := 1
				for end < len(inner) && (inner[end] != '"' || inner[end-1] == '\\') {
					end++
				}
				if end >= len(inner) {
					return nil, fmt.Errorf("unterminated string in %q", s)
				}
				item, inner = inner[:end+1], strings.TrimSpace(inner[end+1:])
			} else {
				item, inner, _ = strings.Cut(inner, ",")
				item, inner = strings.TrimSpace(item), ","+inner
			}
			v, err := scalar(item)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
			inner = strings.TrimSpace(inner)
			if inner == "," {
				break
			}
			if inner != "" {
				if inner[0] != ',' {
					return nil, fmt.Errorf("want , in %q", s)
				}
				inner = strings.TrimSpace(inner[1:])
			}
		}
		return out, nil
	case strings.HasPrefix(s, "{"), strings.HasPrefix(s, "&"), strings.HasPrefix(s, "*"), strings.HasPrefix(s, ">"):
		return nil, fmt.Errorf("unsupported YAML %q", s)
	case strings.HasPrefix(s, `"`):
		v, err := strconv.Unquote(s)
		if err != nil {
			return nil, fmt.Errorf("bad string %s: %w", s, err)
		}
		return v, nil
	case strings.HasPrefix(s, "'"):
		if len(s) < 2 || !strings.HasSuffix(s, "'") {
			return nil, fmt.Errorf("bad string %s", s)
		}
		return strings.ReplaceAll(s[1:len(s)-1], "''", "'"), nil
	}
	return s, nil
}

// The manifest parser must read what it claims to and refuse the rest.
func TestYAMLSubset(t *testing.T) {
	docs, err := parseYAMLDocs(`# c
a: 1
b:
  c: "x # not a comment" # a comment
  d:
    - e: 1
      f: [x, "y, z", 'q''s']
    - plain
  g: |
    line one
      indented

    # kept
h:
- 1
---
z: 'two'
`)
	if err != nil {
		t.Fatal(err)
	}
	want := `[map[a:1 b:map[c:x # not a comment d:[map[e:1 f:[x y, z q's]] plain] g:line one
  indented

# kept
] h:[1]] map[z:two]]`
	if got := fmt.Sprint(docs); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	for _, bad := range []string{"a: {b: 1}\n", "a: 1\n  b: 2\n", "a: [1, 2\n", "a: &x 1\n", "a:\n\tb: 1\n", "a: 1\na: 2\n", "- a\nb: 1\n"} {
		if _, err := parseYAMLDocs(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}
