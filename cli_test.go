package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runCLI runs one wsidecar command line in-process.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = dispatch(context.Background(), args, &out, &errb, make(chan os.Signal))
	return code, out.String(), errb.String()
}

// A bad config is refused with a diagnostic that points at file:line and
// shows the line; the exit code is 2 and nothing starts.
func TestBadConfigExit2(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.hcl")
	src := "backend {\n  url = \"http://127.0.0.1:1\"\n  timeout = \"soon\"\n}\nroute \"/ws\" { auth = \"none\" }\n"
	os.WriteFile(path, []byte(src), 0o600)
	for _, args := range [][]string{{"validate", path}, {"-config", path}, {"run", "-config", path}} {
		code, _, stderr := runCLI(t, args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
		if !strings.Contains(stderr, path+":3:13:") || !strings.Contains(stderr, `timeout = "soon"`) {
			t.Errorf("%v: diagnostic lacks file:line or source line:\n%s", args, stderr)
		}
	}
	good := filepath.Join(dir, "good.hcl")
	os.WriteFile(good, []byte("backend { url = \"http://127.0.0.1:1\" }\nroute \"/ws\" { auth = \"none\" }\n"), 0o600)
	if code, out, stderr := runCLI(t, "validate", good); code != 0 || !strings.Contains(out, "valid (1 route, 0 streams)") {
		t.Errorf("validate good: %d %q %q", code, out, stderr)
	}
	if code, _, _ := runCLI(t, "validate", filepath.Join(dir, "missing.hcl")); code != 2 {
		t.Errorf("validate missing file: exit %d, want 2", code)
	}
}

// The shipped sidecar.hcl is valid.
func TestShippedConfigValid(t *testing.T) {
	if code, out, stderr := runCLI(t, "validate", "sidecar.hcl"); code != 0 {
		t.Fatalf("sidecar.hcl: %d %s %s", code, out, stderr)
	}
}

func TestHelpAndUnknownCommand(t *testing.T) {
	code, out, _ := runCLI(t, "help")
	if code != 0 || !strings.Contains(out, "validate FILE") || !strings.Contains(out, "token") {
		t.Errorf("help: %d %s", code, out)
	}
	for _, flag := range []string{"-h", "--help"} {
		if code, out, _ := runCLI(t, flag); code != 0 || !strings.Contains(out, "validate FILE") {
			t.Errorf("%s: %d %s", flag, code, out)
		}
	}
	code, _, stderr := runCLI(t, "frobnicate")
	if code != 2 || !strings.Contains(stderr, "unknown command") {
		t.Errorf("unknown command: %d %s", code, stderr)
	}
}
