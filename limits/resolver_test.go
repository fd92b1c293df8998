package limits

import (
	"net/netip"
	"testing"
)

func mustPrefixes(t testing.TB, ss ...string) []netip.Prefix {
	t.Helper()
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// addr parses s, or returns the zero Addr for "".
func addr(s string) netip.Addr {
	if s == "" {
		return netip.Addr{}
	}
	return netip.MustParseAddr(s)
}

func TestClientIP(t *testing.T) {
	r := NewResolver(mustPrefixes(t,
		"10.0.0.0/8",
		"192.168.1.0/24",
		"2001:db8:ffff::/48",
		"::ffff:172.16.0.0/108", // mapped form of 172.16.0.0/12
	))
	tests := []struct {
		name      string
		peer      string
		xff, xrip string
		want      string
	}{
		{"untrusted peer ignores XFF", "203.0.113.50", "198.51.100.1", "", "203.0.113.50"},
		{"untrusted peer ignores X-Real-IP", "203.0.113.50", "", "198.51.100.1", "203.0.113.50"},
		{"trusted peer without headers", "10.0.0.2", "", "", "10.0.0.2"},
		{"single hop", "10.0.0.2", "203.0.113.7", "", "203.0.113.7"},
		{"chain stops at first untrusted from the right", "10.0.0.2", "198.51.100.1, 203.0.113.7, 10.0.0.3", "", "203.0.113.7"},
		{"spoofed trusted-looking entry left of the real client", "10.0.0.2", "10.0.0.9, 203.0.113.7", "", "203.0.113.7"},
		{"spoof via many entries", "10.0.0.2", "1.1.1.1, 2.2.2.2, 10.9.9.9, 203.0.113.7, 10.0.0.3", "", "203.0.113.7"},
		{"all hops trusted gives leftmost", "10.0.0.2", "10.0.0.5, 192.168.1.4", "", "10.0.0.5"},
		{"garbage rightmost returns peer", "10.0.0.2", "203.0.113.7, unknown", "", "10.0.0.2"},
		{"garbage mid-chain returns last trusted hop", "10.0.0.2", "203.0.113.9, garbage, 10.0.0.4", "", "10.0.0.4"},
		{"empty element stops the walk", "10.0.0.2", "203.0.113.9,,10.0.0.4", "", "10.0.0.4"},
		{"trailing comma stops the walk", "10.0.0.2", "203.0.113.9,", "", "10.0.0.2"},
		{"ipv4 with port", "10.0.0.2", "203.0.113.7:4711", "", "203.0.113.7"},
		{"ipv4 with bad port", "10.0.0.2", "203.0.113.7:123456", "", "10.0.0.2"},
		{"ipv4 with empty port", "10.0.0.2", "203.0.113.7:", "", "10.0.0.2"},
		{"ipv6 bracketed with port", "10.0.0.2", "[2001:db8::7]:443", "", "2001:db8::7"},
		{"ipv6 bracketed without port", "10.0.0.2", "[2001:db8::7]", "", "2001:db8::7"},
		{"ipv6 unterminated bracket", "10.0.0.2", "[2001:db8::7", "", "10.0.0.2"},
		{"ipv6 bare", "10.0.0.2", "2001:db8::7", "", "2001:db8::7"},
		{"ipv6 zone stripped", "10.0.0.2", "fe80::1%eth0", "", "fe80::1"},
		{"ipv6 zone in brackets", "10.0.0.2", "[fe80::1%25eth0]:80", "", "fe80::1"},
		{"mapped entry unmapped", "10.0.0.2", "::ffff:203.0.113.7", "", "203.0.113.7"},
		{"mapped trusted hop skipped", "10.0.0.2", "203.0.113.7, ::ffff:10.1.2.3", "", "203.0.113.7"},
		{"mapped trusted peer", "::ffff:10.0.0.2", "203.0.113.7", "", "203.0.113.7"},
		{"trusted via mapped prefix", "172.16.5.5", "203.0.113.7", "", "203.0.113.7"},
		{"ipv6 trusted proxy chain", "2001:db8:ffff::1", "2001:db8:1::9, 2001:db8:ffff::2", "", "2001:db8:1::9"},
		{"ipv6 peer zone stripped when untrusted", "fe80::1%eth0", "203.0.113.7", "", "fe80::1"},
		{"mapped untrusted peer unmapped", "::ffff:203.0.113.50", "198.51.100.1", "", "203.0.113.50"},
		{"tabs and spaces", "10.0.0.2", "\t198.51.100.1 ,\t203.0.113.7\t", "", "203.0.113.7"},
		{"joined header lines", "10.0.0.2", "198.51.100.1, 203.0.113.7,10.0.0.3,192.168.1.1", "", "203.0.113.7"},
		{"X-Real-IP when XFF absent", "10.0.0.2", "", "203.0.113.7", "203.0.113.7"},
		{"X-Real-IP when XFF blank", "10.0.0.2", "  ", "203.0.113.7", "203.0.113.7"},
		{"X-Real-IP ignored when XFF present", "10.0.0.2", "198.51.100.1", "203.0.113.7", "198.51.100.1"},
		{"X-Real-IP with port", "10.0.0.2", "", "203.0.113.7:80", "203.0.113.7"},
		{"X-Real-IP garbage", "10.0.0.2", "", "not-an-ip", "10.0.0.2"},
		{"X-Real-IP list is garbage", "10.0.0.2", "", "1.2.3.4, 5.6.7.8", "10.0.0.2"},
		{"hostname is garbage", "10.0.0.2", "evil.example.com", "", "10.0.0.2"},
		{"CIDR is garbage", "10.0.0.2", "203.0.113.0/24", "", "10.0.0.2"},
		{"zero peer", "", "203.0.113.7", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := r.ClientIP(addr(tt.peer), tt.xff, tt.xrip)
			if want := addr(tt.want); got != want {
				t.Fatalf("ClientIP(%q, %q, %q) = %v, want %v", tt.peer, tt.xff, tt.xrip, got, want)
			}
		})
	}
}

func TestClientIPNoTrustedProxies(t *testing.T) {
	r := NewResolver(nil)
	peer := netip.MustParseAddr("10.0.0.2")
	if got := r.ClientIP(peer, "203.0.113.7", "203.0.113.8"); got != peer {
		t.Fatalf("got %v, want the peer %v: no proxy is trusted", got, peer)
	}
}

func TestKey(t *testing.T) {
	tests := []struct{ in, want string }{
		{"203.0.113.7", "203.0.113.7/32"},
		{"::ffff:203.0.113.7", "203.0.113.7/32"},
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"},
		{"fe80::1%eth0", "fe80::/64"},
	}
	for _, tt := range tests {
		if got := Key(netip.MustParseAddr(tt.in)); got != netip.MustParsePrefix(tt.want) {
			t.Errorf("Key(%s) = %v, want %s", tt.in, got, tt.want)
		}
	}
	if got := Key(netip.Addr{}); got.IsValid() {
		t.Errorf("Key(zero) = %v, want the zero Prefix", got)
	}
	// Same /64, different hosts: one key. Different /64: different keys.
	a, b, c := keyOf(addr("2001:db8:1:2::1")), keyOf(addr("2001:db8:1:2::ffff")), keyOf(addr("2001:db8:1:3::1"))
	if a != b || a == c {
		t.Errorf("ipKey /64 grouping wrong: %x %x %x", a, b, c)
	}
	// An IPv4 key never equals an IPv6 /64 key.
	if keyOf(addr("0.0.0.0")) == keyOf(addr("::")) {
		t.Error("IPv4 0.0.0.0 and IPv6 ::/64 share a key")
	}
}

func TestClientIPDoesNotAllocate(t *testing.T) {
	r := NewResolver(mustPrefixes(t, "10.0.0.0/8"))
	peer := addr("10.0.0.2")
	n := testing.AllocsPerRun(100, func() {
		r.ClientIP(peer, "198.51.100.1, [2001:db8::1]:443, 10.0.0.3:80", "")
	})
	if n != 0 {
		t.Fatalf("ClientIP allocates %.0f times per call", n)
	}
}

func BenchmarkClientIP(b *testing.B) {
	r := NewResolver(mustPrefixes(b, "10.0.0.0/8", "192.168.0.0/16"))
	peer := addr("10.0.0.2")
	b.ReportAllocs()
	for b.Loop() {
		r.ClientIP(peer, "198.51.100.1, 203.0.113.7, 10.0.0.3", "")
	}
}
