package config

import (
	"strings"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"512B": 512, "64KiB": 64 << 10, "1MiB": 1 << 20, "2GiB": 2 << 30,
		"1KB": 1000, "1MB": 1000000, "1GB": 1000000000, "64 KiB": 64 << 10,
		"64kib": 64 << 10, "4096": 4096, "0": 0, " 1MiB ": 1 << 20,
	}
	for in, want := range good {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	bad := map[string]string{
		"":                     "a size is",
		"KiB":                  "a size is",
		"1.5MiB":               "a size is",
		"64 kilobytes":         "a size is",
		"-1MiB":                "negative",
		"9223372036854775807G": "a size is",
		"99999999999999999999": "too large",
		"9000000000GiB":        "too large",
		"1Mb/s":                "a size is",
	}
	for in, want := range bad {
		if _, err := parseSize(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseSize(%q) err = %v, want %q", in, err, want)
		}
	}
}

func TestParseRate(t *testing.T) {
	good := []struct {
		in    string
		bytes bool
		want  Rate
	}{
		{"10/s", false, Rate{N: 10, Per: time.Second}},
		{"600/m", false, Rate{N: 600, Per: time.Minute}},
		{"0.5/s", false, Rate{N: 0.5, Per: time.Second}},
		{"1000 / h", false, Rate{N: 1000, Per: time.Hour}},
		{"unlimited", false, Rate{}},
		{"1MiB/s", true, Rate{N: 1 << 20, Per: time.Second}},
		{"64KiB/m", true, Rate{N: 64 << 10, Per: time.Minute}},
		{"unlimited", true, Rate{}},
	}
	for _, tc := range good {
		if got, err := parseRate(tc.in, tc.bytes); err != nil || got != tc.want {
			t.Errorf("parseRate(%q, %v) = %+v, %v; want %+v", tc.in, tc.bytes, got, err, tc.want)
		}
	}
	bad := []struct {
		in    string
		bytes bool
		want  string
	}{
		{"10", false, "a rate is"},
		{"10/d", false, "a rate is"},
		{"/s", false, "a rate is"},
		{"ten/s", false, "a rate is"},
		{"NaN/s", false, "a rate is"},
		{"Inf/s", false, "a rate is"},
		{"-1/s", false, "negative"},
		{"0/s", false, "unlimited"},
		{"1MiB/s", false, "a rate is"},
		{"1MiB", true, "a byte rate is"},
		{"-1KiB/s", true, "negative"},
		{"0B/s", true, "unlimited"},
	}
	for _, tc := range bad {
		if _, err := parseRate(tc.in, tc.bytes); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseRate(%q, %v) err = %v, want %q", tc.in, tc.bytes, err, tc.want)
		}
	}
}

func TestParseDuration(t *testing.T) {
	good := map[string]time.Duration{"30s": 30 * time.Second, "500ms": 500 * time.Millisecond, "1m30s": 90 * time.Second, "0": 0, "0s": 0}
	for in, want := range good {
		if got, err := parseDuration(in); err != nil || got != want {
			t.Errorf("parseDuration(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "30", "ten", "-5s", "1d", "9999999999h"} {
		if _, err := parseDuration(in); err == nil {
			t.Errorf("parseDuration(%q) should fail", in)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 64: "64B", 1024: "1KiB", 1536: "1536B", 1 << 20: "1MiB", 3 << 30: "3GiB"} {
		if got := formatSize(n); got != want {
			t.Errorf("formatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestCheckOrigin(t *testing.T) {
	good := map[string]string{
		"https://app.example.com":       "https://app.example.com",
		"HTTPS://App.Example.COM":       "https://app.example.com",
		"http://localhost:3000":         "http://localhost:3000",
		"https://*.example.com":         "https://*.example.com",
		"https://[::1]:8443":            "https://[::1]:8443",
		"chrome-extension://abcdefghij": "chrome-extension://abcdefghij",
	}
	for in, want := range good {
		if got, err := checkOrigin(in); err != nil || got != want {
			t.Errorf("checkOrigin(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "*", "null", "app.example.com", "https://", "https://a.com/", "https://a.com/x", "https://*.com",
		"https://a.*.com", "https://*", "https://a.com:http", "https://user@a.com", "1http://a.com", "https://a_b.com"} {
		if _, err := checkOrigin(in); err == nil {
			t.Errorf("checkOrigin(%q) should fail", in)
		}
	}
}

func TestParseRoutePath(t *testing.T) {
	good := map[string][]string{
		"/": nil, "/ws": nil, "/rooms/{room}": {"room"}, "/a/{x}/b/{y_2}": {"x", "y_2"}, "/v1/chat:join": nil,
	}
	for in, want := range good {
		got, err := parseRoutePath(in)
		if err != nil || strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("parseRoutePath(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "ws", "/ws/", "//", "/a//b", "/{}", "/{1a}", "/x{a}", "/{a}/{a}", "/a b", "/a?b", "/a#b", "/%20", "/{a-b}"} {
		if _, err := parseRoutePath(in); err == nil {
			t.Errorf("parseRoutePath(%q) should fail", in)
		}
	}
	if routeShape("/rooms/{a}/x") != routeShape("/rooms/{b}/x") || routeShape("/rooms/{a}") == routeShape("/rooms/a") {
		t.Error("routeShape should ignore parameter names only")
	}
}
