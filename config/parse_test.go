package config

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestParseFull loads a realistic file using every block and checks the
// Config a constructor would receive, field by field.
func TestParseFull(t *testing.T) {
	for k, v := range testEnv {
		t.Setenv(k, v)
	}
	path := filepath.Join("testdata", "full", "sidecar.hcl")
	cfg, err := Load(path)
	if err != nil {
		t.Fatalf("Load: %s", diagText(err))
	}
	dir := filepath.Join("testdata", "full")

	// Templates hold HCL expressions; check them by behaviour, then clear.
	channels := cfg.Routes[0].Channels
	inbox := cfg.Streams[1].PathTemplate
	cfg.Routes[0].Channels, cfg.Streams[1].PathTemplate = nil, nil
	if channels == nil || inbox == nil {
		t.Fatal("templates missing")
	}
	got, err := channels.Eval(Scope{
		Claims: map[string]any{"sub": "u42", "org": "ACME"},
		Path:   map[string]string{"room": "lobby"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"room:lobby", "user:u42", "org:acme", "topic:general"}; !reflect.DeepEqual(got, want) {
		t.Errorf("channels = %q, want %q", got, want)
	}
	if p, err := inbox.EvalString(Scope{Claims: map[string]any{"sub": "u42"}}); err != nil || p != "/users/u42/events" {
		t.Errorf("inbox path = %q, %v", p, err)
	}

	want := &Config{
		Path: path,
		Listener: Listener{
			Address:          "0.0.0.0:8443",
			TLS:              &TLS{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key")},
			HandshakeTimeout: 5 * time.Second,
			MaxHeaderBytes:   16 << 10,
			ReadBufferSize:   2 << 10,
			WriteBufferSize:  4 << 10,
			Compression:      true,
		},
		Admin: Admin{Address: "0.0.0.0:9090", Token: testEnv["WSIDECAR_ADMIN_TOKEN"]},
		Backend: Backend{
			URL:                "http://127.0.0.1:3000",
			Timeout:            3 * time.Second,
			MaxConns:           256,
			SigningSecret:      testEnv["WSIDECAR_SIGNING_SECRET"],
			ForwardHeaders:     []string{"Cookie", "Accept-Language"},
			Breaker:            Breaker{Enabled: true, Failures: 3, OpenTimeout: 15 * time.Second, HalfOpenRequests: 2, Interval: 0},
			DisconnectQueue:    5000,
			DisconnectRetryMax: time.Minute,
		},
		Origins: Origins{Allow: []string{"https://app.example.com", "https://*.example.com:8443"}},
		JWT: &JWT{
			Sources:        []string{"cookie:session", "header"},
			Issuer:         "https://idp.example.com/",
			Audience:       []string{"chat", "chat-admin"},
			Leeway:         30 * time.Second,
			RequireExp:     true,
			RequiredClaims: []string{"sub", "org"},
			UserClaim:      "sub",
			Keys: []JWTKey{
				{Name: "idp", Algorithms: []string{"RS256", "PS256"}, JWKSURL: "https://idp.example.com/.well-known/jwks.json", JWKSRefresh: 15 * time.Minute, JWKSUnknownKIDWait: 500 * time.Millisecond},
				{Name: "legacy", Algorithms: []string{"HS256"}, KeyID: "legacy-1", Secret: testEnv["JWT_SECRET"], JWKSRefresh: time.Hour, JWKSUnknownKIDWait: time.Second},
				{Name: "partner", Algorithms: []string{"EdDSA"}, PEMFile: filepath.Join(dir, "jwt.pub"), JWKSRefresh: time.Hour, JWKSUnknownKIDWait: time.Second},
			},
		},
		Limits: Limits{
			MaxConnections:     20000,
			PerIPConnections:   50,
			PerUserConnections: 5,
			HandshakeRate:      Rate{N: 10, Per: time.Second, Burst: 20},
			MessageRate:        Rate{N: 600, Per: time.Minute, Burst: 30},
			ByteRate:           Rate{N: 256 << 10, Per: time.Second, Burst: 512 << 10},
			RatePolicy:         "close",
			MaxMessageSize:     32 << 10,
			MaxInflatedSize:    256 << 10,
			TrustedProxies: []netip.Prefix{
				netip.MustParsePrefix("10.0.0.0/8"),
				netip.MustParsePrefix("192.168.1.7/32"),
				netip.MustParsePrefix("fd00::/8"),
			},
			IdleEvict:    10 * time.Minute,
			SendQueue:    128,
			SlowConsumer: "drop",
		},
		Heartbeat: Heartbeat{Interval: 30 * time.Second, Timeout: 5 * time.Second},
		Drain:     Drain{Window: 10 * time.Second, Timeout: 55 * time.Second},
		Log:       Log{Level: "debug", Format: "json"},
		Routes: []Route{
			{
				Path: "/ws/rooms/{room}", Params: []string{"room"}, Auth: "jwt",
				Subprotocols: []string{"chat.v2", "chat.v1"},
				OnConnect:    "/ws/connect", OnMessage: "/ws/message", OnDisconnect: "/ws/disconnect",
				OnError: "close", MaxInFlight: 4,
			},
			{
				Path: "/public", Auth: "none", OnMessage: "/index.php?action=message",
				OnError: "reply", MaxInFlight: 1,
				Origins: &Origins{AllowMissing: true},
			},
		},
		Streams: []Stream{
			{Name: "news", Path: "/events/news", Channel: "news", Scope: "local", ReconnectMin: time.Second, ReconnectMax: time.Minute},
			{Name: "inbox", Path: `"/users/${claims.sub}/events"`, Scope: "cluster", ReconnectMin: 500 * time.Millisecond, ReconnectMax: 10 * time.Second},
		},
		Cluster: &Cluster{NodeID: "ws-1", Redis: Redis{URL: testEnv["REDIS_URL"], Prefix: "chat-prod"}},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("config mismatch:\n got %+v\nwant %+v", *cfg, *want)
		v1, v2 := reflect.ValueOf(*cfg), reflect.ValueOf(*want)
		for i := range v1.NumField() {
			if !reflect.DeepEqual(v1.Field(i).Interface(), v2.Field(i).Interface()) {
				t.Errorf("%s:\n got %+v\nwant %+v", v1.Type().Field(i).Name, v1.Field(i).Interface(), v2.Field(i).Interface())
			}
		}
	}
}

// TestParseMinimal shows the smallest valid file and the secure defaults a
// user gets without writing them.
func TestParseMinimal(t *testing.T) {
	cfg := mustParse(t, `
backend { url = "http://127.0.0.1:3000" }
route "/ws" { auth = "none" }
`)
	if cfg.JWT != nil || cfg.Cluster != nil || cfg.Listener.TLS != nil {
		t.Errorf("optional blocks should be nil: %+v", cfg)
	}
	if cfg.Admin.Address != "127.0.0.1:9090" {
		t.Errorf("admin must default to loopback, got %q", cfg.Admin.Address)
	}
	if cfg.Listener.Compression || len(cfg.Origins.Allow) != 0 || cfg.Origins.AllowMissing {
		t.Errorf("compression off and no origin allowed by default: %+v %+v", cfg.Listener, cfg.Origins)
	}
	if cfg.Limits.HandshakeRate.Unlimited() || cfg.Limits.MessageRate.Unlimited() || cfg.Limits.PerIPConnections == 0 {
		t.Errorf("limits must be on by default: %+v", cfg.Limits)
	}
}

func TestDefaultNodeID(t *testing.T) {
	cfg, err := Parse([]byte(`
backend { url = "http://127.0.0.1:3000" }
route "/ws" { auth = "none" }
cluster {
  redis { url = "redis://127.0.0.1:6379" }
}
`), "sidecar.hcl")
	if err != nil {
		t.Fatal(diagText(err))
	}
	host, _ := os.Hostname()
	id := cfg.Cluster.NodeID
	if !strings.HasPrefix(id, host+"-") || len(id) != len(host)+9 || !isName(id[len(host)+1:]) {
		t.Errorf("node id %q should be %s-<8 hex digits>", id, host)
	}
}

func TestEnv(t *testing.T) {
	const src = `
backend {
  url            = env("WSIDECAR_TEST_URL", "http://127.0.0.1:3000")
  signing_secret = env("WSIDECAR_TEST_SECRET")
}
route "/ws" { auth = "none" }
`
	t.Run("set", func(t *testing.T) {
		t.Setenv("WSIDECAR_TEST_URL", "http://backend:8080")
		t.Setenv("WSIDECAR_TEST_SECRET", strings.Repeat("x", 32))
		cfg, err := Parse([]byte(src), "sidecar.hcl")
		if err != nil {
			t.Fatal(diagText(err))
		}
		if cfg.Backend.URL != "http://backend:8080" || cfg.Backend.SigningSecret != strings.Repeat("x", 32) {
			t.Errorf("env not applied: %+v", cfg.Backend)
		}
	})
	t.Run("default used when unset", func(t *testing.T) {
		unsetenv(t, "WSIDECAR_TEST_URL")
		t.Setenv("WSIDECAR_TEST_SECRET", strings.Repeat("x", 32))
		cfg, err := Parse([]byte(src), "sidecar.hcl")
		if err != nil {
			t.Fatal(diagText(err))
		}
		if cfg.Backend.URL != "http://127.0.0.1:3000" {
			t.Errorf("default not used: %q", cfg.Backend.URL)
		}
	})
	t.Run("empty counts as set", func(t *testing.T) {
		t.Setenv("WSIDECAR_TEST_URL", "")
		t.Setenv("WSIDECAR_TEST_SECRET", strings.Repeat("x", 32))
		_, err := Parse([]byte(src), "sidecar.hcl")
		if err == nil || !strings.Contains(diagText(err), "Invalid URL") {
			t.Errorf("empty URL should be rejected, not replaced by the default: %v", err)
		}
	})
	t.Run("unset without default fails at the call", func(t *testing.T) {
		unsetenv(t, "WSIDECAR_TEST_SECRET")
		_, err := Parse([]byte(src), "sidecar.hcl")
		var d Diagnostics
		if !errors.As(err, &d) || len(d.Diags) != 1 {
			t.Fatalf("want one diagnostic, got %v", err)
		}
		diag := d.Diags[0]
		if !strings.Contains(diag.Detail, `environment variable "WSIDECAR_TEST_SECRET" is not set`) {
			t.Errorf("detail = %q", diag.Detail)
		}
		if s := diag.Subject; s.Start.Line != 4 || s.Start.Column != 20 {
			t.Errorf("diagnostic at %s, want line 4 column 20 (the env call)", s)
		}
	})
	t.Run("too many arguments", func(t *testing.T) {
		_, err := Parse([]byte(`
backend { url = env("A", "b", "c") }
route "/ws" { auth = "none" }
`), "sidecar.hcl")
		if err == nil || !strings.Contains(err.Error(), "at most one default") {
			t.Errorf("got %v", err)
		}
	})
}

// unsetenv removes a variable for one test and restores it afterwards.
func unsetenv(t *testing.T, name string) {
	t.Helper()
	t.Setenv(name, "") // registers the restore
	os.Unsetenv(name)
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.hcl"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("want fs.ErrNotExist, got %v", err)
	}
	var buf strings.Builder
	if Validate(filepath.Join(t.TempDir(), "nope.hcl"), &buf) == nil || !strings.Contains(buf.String(), "no such file") {
		t.Errorf("Validate should report the read error, wrote %q", buf.String())
	}
}
