package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// docker build cannot run on our machines, so this checks the Dockerfile's
// shape and runs its exact go build line.
func TestDockerfile(t *testing.T) {
	raw, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	src := string(raw)
	froms := regexp.MustCompile(`(?m)^FROM\s+(\S+)`).FindAllStringSubmatch(src, -1)
	if len(froms) < 2 {
		t.Fatalf("want a multi-stage build, found %d FROM lines", len(froms))
	}
	final := froms[len(froms)-1][1]
	if !strings.Contains(final, "distroless/static") || !strings.Contains(final, "nonroot") {
		t.Errorf("final stage %q is not distroless static nonroot", final)
	}
	user := regexp.MustCompile(`(?m)^USER\s+(\S+)`).FindAllStringSubmatch(src, -1)
	if len(user) == 0 || !regexp.MustCompile(`^[1-9][0-9]*(:[1-9][0-9]*)?$`).MatchString(user[len(user)-1][1]) {
		t.Errorf("want a numeric non-zero USER, got %v", user)
	}
	if regexp.MustCompile(`(?m)^(ENTRYPOINT|CMD)\s+[^\[]`).MatchString(src) {
		t.Error("ENTRYPOINT/CMD in shell form needs a shell the image does not have")
	}
	m := regexp.MustCompile(`(?m)^RUN\s+(CGO_ENABLED=0\s+go build .*)$`).FindStringSubmatch(src)
	if m == nil {
		t.Fatal("no `RUN CGO_ENABLED=0 go build` line")
	}
	build := m[1]
	for _, flag := range []string{"-trimpath", "-ldflags"} {
		if !strings.Contains(build, flag) {
			t.Errorf("go build line lacks %s: %s", flag, build)
		}
	}
	if testing.Short() {
		return
	}
	out := filepath.Join(t.TempDir(), "wsidecar")
	build = strings.ReplaceAll(build, "${VERSION}", "test")
	build = strings.ReplaceAll(build, "/out/wsidecar", out)
	cmd := exec.Command("sh", "-c", build)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", build, err, b)
	}
	v, err := exec.Command(out, "version").Output()
	if err != nil || !strings.Contains(string(v), "wsidecar test") {
		t.Errorf("built binary: version %q, %v", v, err)
	}
	// A static binary has no dynamic interpreter.
	if b, _ := os.ReadFile(out); strings.Contains(string(b[:min(len(b), 4096)]), "ld-linux") {
		t.Error("binary is dynamically linked")
	}
}
