package limits

import (
	"net/netip"
	"strings"
)

// Resolver works out the client address of a request from its TCP peer and
// its forwarding headers. Headers are believed only when the peer is a trusted
// proxy, and X-Forwarded-For is walked right to left past trusted hops to the
// first untrusted address, the way Caddy does it: everything left of the
// first untrusted hop was written by the client and may be spoofed.
//
// A Resolver is immutable and safe for concurrent use; build a new one when
// the trusted list changes at reload.
type Resolver struct {
	trusted []netip.Prefix
}

// NewResolver returns a Resolver that trusts forwarding headers from peers
// inside the given prefixes. IPv4-mapped IPv6 prefixes (::ffff:10.0.0.0/104)
// are turned into their IPv4 form, so they match unmapped peers. An empty
// list trusts no one: the client address is always the TCP peer.
func NewResolver(trusted []netip.Prefix) *Resolver {
	r := &Resolver{trusted: make([]netip.Prefix, 0, len(trusted))}
	for _, p := range trusted {
		if !p.IsValid() {
			continue
		}
		a := p.Addr().WithZone("")
		bits := p.Bits()
		if a.Is4In6() && bits >= 96 {
			a, bits = a.Unmap(), bits-96
		}
		p = netip.PrefixFrom(a, bits).Masked()
		if p.IsValid() {
			r.trusted = append(r.trusted, p)
		}
	}
	return r
}

// Trusted reports whether ip (normalised: unmapped, zone dropped) is inside a
// trusted prefix.
func (r *Resolver) Trusted(ip netip.Addr) bool {
	ip = normalize(ip)
	if !ip.IsValid() {
		return false
	}
	for _, p := range r.trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// ClientIP returns the address to account a request to.
//
// peer is the TCP peer; xForwardedFor is the X-Forwarded-For value (several
// header lines may be passed joined with commas, in order); xRealIP is the
// X-Real-IP value. Both headers are ignored unless the peer is trusted.
//
// X-Forwarded-For is walked from the right: trusted hops are skipped and the
// first untrusted address is the client. When every hop is trusted the
// leftmost one is the client (an internal caller). An entry that does not
// parse (garbage, "unknown", empty) stops the walk and the last address
// already vouched for (the trusted hop to its right, or the peer) is
// returned, so a client can never smuggle a value past a hop nobody checked.
// X-Real-IP is used only when X-Forwarded-For is absent.
//
// Entries may carry a port ("1.2.3.4:5678", "[2001:db8::1]:443") and an IPv6
// zone, both dropped. The result is never IPv4-mapped and never has a zone;
// it is the zero Addr only when peer is.
func (r *Resolver) ClientIP(peer netip.Addr, xForwardedFor, xRealIP string) netip.Addr {
	peer = normalize(peer)
	if !r.Trusted(peer) {
		return peer
	}
	xff := trimSpace(xForwardedFor)
	if xff == "" {
		if a, ok := parseHop(xRealIP); ok {
			return a
		}
		return peer
	}
	last := peer
	for s := xff; ; {
		i := strings.LastIndexByte(s, ',')
		a, ok := parseHop(s[i+1:])
		if !ok {
			return last
		}
		if !r.Trusted(a) {
			return a
		}
		last = a
		if i < 0 {
			return last
		}
		s = s[:i]
	}
}

// Key returns the accounting unit for ip: the address itself (/32) for IPv4
// and its /64 for IPv6, because one IPv6 subscriber is routinely handed a
// whole /64 and could otherwise mint fresh addresses for free.
func Key(ip netip.Addr) netip.Prefix {
	ip = normalize(ip)
	if !ip.IsValid() {
		return netip.Prefix{}
	}
	bits := 64
	if ip.Is4() {
		bits = 32
	}
	p, _ := ip.Prefix(bits)
	return p
}

// normalize drops the zone and unmaps IPv4-mapped IPv6 so one client is one
// key whichever socket family it arrived on.
func normalize(a netip.Addr) netip.Addr {
	return a.Unmap().WithZone("")
}

// parseHop parses one X-Forwarded-For entry or an X-Real-IP value: an
// address, optionally with a port ("1.2.3.4:80", "[::1]:80", "[::1]") and an
// IPv6 zone. It does not allocate.
func parseHop(s string) (netip.Addr, bool) {
	s = trimSpace(s)
	if s == "" {
		return netip.Addr{}, false
	}
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return netip.Addr{}, false
		}
		if rest := s[end+1:]; rest != "" && !isPort(rest) {
			return netip.Addr{}, false
		}
		s = s[1:end]
	} else if i := strings.IndexByte(s, ':'); i >= 0 && strings.IndexByte(s[i+1:], ':') < 0 {
		// Exactly one colon: IPv4 with a port (IPv6 has at least two).
		if !isPort(s[i:]) {
			return netip.Addr{}, false
		}
		s = s[:i]
	}
	if i := strings.IndexByte(s, '%'); i >= 0 {
		s = s[:i]
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, false
	}
	return normalize(a), true
}

// isPort reports whether s is ":" followed by 1–5 decimal digits.
func isPort(s string) bool {
	if len(s) < 2 || len(s) > 6 || s[0] != ':' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// trimSpace trims the optional whitespace (SP, HTAB) RFC 9110 allows around
// list elements.
func trimSpace(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}
