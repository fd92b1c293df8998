package config

import (
	"errors"
	"strings"
	"testing"
)

// testEnv is the environment the in-memory tests see.
var testEnv = map[string]string{
	"WSIDECAR_ADMIN_TOKEN":    "admin-token-0123456789",
	"WSIDECAR_SIGNING_SECRET": "signing-secret-0123456789abcdef0123456789",
	"JWT_SECRET":              strings.Repeat("s", 64),
	"REDIS_URL":               "redis://:pw@10.0.0.5:6379/0",
}

// testLoader parses with testEnv, a file system in which every file is
// readable, and a fixed node id.
func testLoader() loader {
	return loader{
		lookupEnv: func(k string) (string, bool) { v, ok := testEnv[k]; return v, ok },
		readable:  func(string) error { return nil },
		nodeID:    func() string { return "node-test" },
	}
}

// mustParse parses src with testLoader and fails the test on any diagnostic.
func mustParse(t *testing.T, src string) *Config {
	t.Helper()
	cfg, err := testLoader().parse([]byte(src), "/etc/wsidecar/sidecar.hcl")
	if err != nil {
		t.Fatalf("parse failed:\n%s\nsource:\n%s", diagText(err), src)
	}
	return cfg
}

// diagText renders an error as `wsidecar validate` would.
func diagText(err error) string {
	var d Diagnostics
	if !errors.As(err, &d) {
		return err.Error()
	}
	var b strings.Builder
	if werr := d.Write(&b, false); werr != nil {
		return werr.Error()
	}
	return b.String()
}
