package auth

import (
	"strings"
	"testing"

	"github.com/wsidecar/wsidecar/config"
)

func TestOriginPolicy(t *testing.T) {
	p, err := NewOriginPolicy(config.Origins{Allow: []string{
		"https://app.example.com",
		"https://*.example.com",
		"http://localhost:3000",
		"https://Admin.Example.ORG:443", // normalised: case, default port
		"http://[::1]:8080",
		"chrome-extension://abcdefghijklmnop",
		"https://*.preview.example.net:8443",
	}})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		origin string
		want   bool
	}{
		// exact
		{"https://app.example.com", true},
		{"https://APP.Example.COM", true},
		{"HTTPS://app.example.com", true},
		{"https://app.example.com:443", true},
		{"https://admin.example.org", true},
		{"https://admin.example.org:443", true},
		{"http://localhost:3000", true},
		{"http://[::1]:8080", true},
		{"chrome-extension://abcdefghijklmnop", true},
		// ports and schemes must match exactly
		{"http://app.example.com", false},
		{"https://app.example.com:8443", false},
		{"http://localhost", false},
		{"http://localhost:3001", false},
		{"https://localhost:3000", false},
		{"http://[::1]", false},
		{"wss://app.example.com", false},
		{"https://admin.example.org:0443", false}, // not what a browser sends
		// wildcard: one or more labels
		{"https://a.example.com", true},
		{"https://a.b.example.com", true},
		{"https://A-1.Example.Com", true},
		{"https://x.example.com:443", true},
		{"https://example.com", false}, // the apex is not a subdomain
		{"http://a.example.com", false},
		{"https://a.example.com:8443", false},
		{"https://a.preview.example.net:8443", true},
		{"https://a.preview.example.net", false},
		// look-alikes and smuggling
		{"https://example.com.evil.io", false},
		{"https://app.example.com.evil.io", false},
		{"https://evilexample.com", false},
		{"https://evil-app.example.com.", false},
		{"https://app.example.com.", false},
		{"https://x.example.com@evil.io", false},
		{"https://evil.io#.example.com", false},
		{"https://evil.io/.example.com", false},
		{"https://evil.io?.example.com", false},
		{"https://evil.io\\.example.com", false},
		{"https://.example.com", false},
		{"https://a..example.com", false},
		{"https://%61.example.com", false},
		{"https://a.example.com/", false},
		{"https://a.example.com:", false},
		{"https://a.example.com:99999", false},
		{"https://a.example.com:443:443", false},
		{"https://a.example.com ", false},
		{" https://app.example.com", false},
		{"https://\u212aexample.com", false}, // Kelvin sign folds to "k" under Unicode rules
		{"https://app.examplе.com", false},   // Cyrillic "е"
		{"https://[::1].example.com", false},
		{"https://*.example.com", false},
		{"null", false},
		{"", false},
		{"https://", false},
		{"://app.example.com", false},
		{"app.example.com", false},
		{"file://", false},
		{strings.Repeat("a", 300) + "://app.example.com", false},
		{"https://" + strings.Repeat("a.", 200) + "example.com", false},
	}
	for _, c := range cases {
		if got := p.Allowed(c.origin, true); got != c.want {
			t.Errorf("Allowed(%q) = %v, want %v", c.origin, got, c.want)
		}
	}
	if p.Allowed("", false) {
		t.Error("missing Origin allowed without AllowMissing")
	}
}

func TestOriginPolicyMissing(t *testing.T) {
	p, err := NewOriginPolicy(config.Origins{AllowMissing: true})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Allowed("", false) {
		t.Error("absent Origin refused with AllowMissing")
	}
	// AllowMissing is about absent headers, not about anything goes.
	for _, o := range []string{"", "null", "https://app.example.com"} {
		if p.Allowed(o, true) {
			t.Errorf("Allowed(%q, present) = true with an empty allowlist", o)
		}
	}
}

func TestNewOriginPolicyRefusesMalformed(t *testing.T) {
	for _, c := range []struct{ pattern, want string }{
		{"", "empty"},
		{"*", "not supported"},
		{"null", "cannot be trusted"},
		{"app.example.com", "scheme://host"},
		{"https://app.example.com/", "no path"},
		{"https://app.example.com/path", "no path"},
		{"https://user@app.example.com", "userinfo"},
		{"https://*example.com", "first label"},
		{"https://a.*.example.com", "first label"},
		{"https://*.*.example.com", "first label"},
		{"https://*", "first label"},
		{"https://*.com", "top-level domain"},
		{"https://*.10.0.0.1", "IP address"},
		{"https://*.[::1]", "IP address"},
		{"https://app.example.com:0", "malformed"},
		{"https://app.example.com:https", "malformed"},
		{"https://bücher.example", "punycode"},
		{"1http://a.com", "scheme://host"},
	} {
		_, err := NewOriginPolicy(config.Origins{Allow: []string{c.pattern}})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewOriginPolicy(%q): err = %v, want it to mention %q", c.pattern, err, c.want)
		}
	}
	// Every mistake is reported at once.
	_, err := NewOriginPolicy(config.Origins{Allow: []string{"*", "https://ok.example.com", "https://x.com/"}})
	if err == nil || !strings.Contains(err.Error(), `"*"`) || !strings.Contains(err.Error(), `"https://x.com/"`) {
		t.Errorf("joined error = %v", err)
	}
	// Leading zeros and surrounding spaces in the config are tolerated.
	p, err := NewOriginPolicy(config.Origins{Allow: []string{" https://a.example.com:08443 ", "http://*.localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Allowed("https://a.example.com:8443", true) || !p.Allowed("http://app.localhost", true) {
		t.Error("normalised patterns do not match")
	}
}

func TestOriginAllowedDoesNotAllocate(t *testing.T) {
	p, err := NewOriginPolicy(config.Origins{Allow: []string{"https://app.example.com", "https://*.example.net"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []string{"https://app.example.com", "https://APP.example.com:443", "https://a.b.example.net", "https://evil.io"} {
		if n := testing.AllocsPerRun(100, func() { p.Allowed(o, true) }); n != 0 {
			t.Errorf("Allowed(%q) allocates %v times", o, n)
		}
	}
}

func BenchmarkOriginAllowed(b *testing.B) {
	allow := []string{"https://*.example.com"}
	for i := range 50 {
		allow = append(allow, "https://app"+strings.Repeat("x", i)+".example.org")
	}
	p, err := NewOriginPolicy(config.Origins{Allow: allow})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		p.Allowed("https://appxxx.example.org", true)
		p.Allowed("https://tenant.example.com", true)
	}
}
