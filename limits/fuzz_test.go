package limits

import (
	"net"
	"net/netip"
	"strings"
	"testing"
)

// FuzzClientIP checks the resolver against hostile headers: it never panics;
// the answer is the peer or an address written in the headers; an untrusted
// peer's headers are ignored; and the answer matches a plain reference walk
// (split, right to left, stop at garbage, first untrusted wins), so a
// trusted-proxy address is never returned when an untrusted hop was reached.
func FuzzClientIP(f *testing.F) {
	f.Add("10.0.0.2", "198.51.100.1, 203.0.113.7, 10.0.0.3", "", "10.0.0.0/8")
	f.Add("203.0.113.50", "10.0.0.1", "10.0.0.1", "10.0.0.0/8")
	f.Add("::ffff:10.0.0.2", "[2001:db8::7]:443, ::ffff:10.1.1.1", "", "10.0.0.0/8,2001:db8:ffff::/48")
	f.Add("10.0.0.2", "", "203.0.113.7:80", "10.0.0.0/8")
	f.Add("fe80::1%eth0", "fe80::2%lo, garbage", "", "fe80::/10")
	f.Fuzz(func(t *testing.T, peerStr, xff, xrip, trustedStr string) {
		var trusted []netip.Prefix
		for _, s := range strings.Split(trustedStr, ",") {
			if p, err := netip.ParsePrefix(strings.TrimSpace(s)); err == nil {
				trusted = append(trusted, p)
			}
		}
		r := NewResolver(trusted)
		peer, _ := netip.ParseAddr(peerStr)
		got := r.ClientIP(peer, xff, xrip)

		np := peer.Unmap().WithZone("")
		if got.Zone() != "" || got.Is4In6() {
			t.Fatalf("result %v not normalised", got)
		}
		if got != np && !inHeaders(got, xff, xrip) {
			t.Fatalf("result %v is neither the peer %v nor in the headers %q / %q", got, np, xff, xrip)
		}
		if !r.Trusted(np) && got != np {
			t.Fatalf("untrusted peer %v, but result %v came from headers", np, got)
		}
		if want := referenceClientIP(r, np, xff, xrip); got != want {
			t.Fatalf("ClientIP = %v, reference walk = %v (peer %v, xff %q, xrip %q, trusted %v)", got, want, np, xff, xrip, trusted)
		}
	})
}

// referenceClientIP is the spec written the obvious way, with allocations.
func referenceClientIP(r *Resolver, peer netip.Addr, xff, xrip string) netip.Addr {
	if !r.Trusted(peer) {
		return peer
	}
	if strings.Trim(xff, " \t") == "" {
		if a, ok := parseHop(xrip); ok {
			return a
		}
		return peer
	}
	parts := strings.Split(xff, ",")
	last := peer
	for i := len(parts) - 1; i >= 0; i-- {
		a, ok := parseHop(parts[i])
		if !ok {
			return last
		}
		if !r.Trusted(a) {
			return a
		}
		last = a
	}
	return last
}

// inHeaders reports whether a appears in xff or xrip, parsed leniently with
// the standard library (a superset of what parseHop accepts).
func inHeaders(a netip.Addr, xff, xrip string) bool {
	for _, part := range append(strings.Split(xff, ","), xrip) {
		s := strings.Trim(part, " \t")
		if host, _, err := net.SplitHostPort(s); err == nil {
			s = host
		}
		s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
		s, _, _ = strings.Cut(s, "%")
		if b, err := netip.ParseAddr(s); err == nil && b.Unmap() == a {
			return true
		}
	}
	return false
}
