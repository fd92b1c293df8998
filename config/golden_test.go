package config

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*/expected.txt and docs/config.md")

// TestGolden runs `wsidecar validate` on every testdata/<case>/sidecar.hcl
// and compares what the user would see with expected.txt.
func TestGolden(t *testing.T) {
	for k, v := range testEnv {
		t.Setenv(k, v)
	}
	unsetenv(t, "WSIDECAR_TEST_UNSET")
	dirs, err := filepath.Glob(filepath.Join("testdata", "*", "sidecar.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) < 12 {
		t.Fatalf("only %d golden cases", len(dirs))
	}
	for _, path := range dirs {
		dir := filepath.Dir(path)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			var out strings.Builder
			err := Validate(path, &out)
			want := filepath.Join(dir, "expected.txt")
			if *update {
				if err := os.WriteFile(want, []byte(out.String()), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			exp, rerr := os.ReadFile(want)
			if rerr != nil {
				t.Fatal(rerr)
			}
			if out.String() != string(exp) {
				t.Errorf("output differs from %s (rerun with -update to accept):\n--- got\n%s\n--- want\n%s", want, out.String(), exp)
			}
			valid := strings.Contains(string(exp), ": valid (")
			if valid != (err == nil) {
				t.Errorf("Validate returned %v for a case whose expected output says valid=%v", err, valid)
			}
		})
	}
}
