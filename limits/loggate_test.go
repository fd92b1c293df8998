package limits

import (
	"net/netip"
	"testing"
	"time"
)

func TestLogGate(t *testing.T) {
	clk := newFakeClock()
	g := NewLogGate(time.Minute, 100, clk.Now)
	ip := addr("203.0.113.7")
	steps := []struct {
		advance time.Duration
		reason  string
		ip      netip.Addr
		want    bool
	}{
		{0, "ip_cap", ip, true},
		{0, "ip_cap", ip, false},
		{0, "ip_cap", addr("::ffff:203.0.113.7"), false}, // same key
		{0, "handshake_rate", ip, true},                  // another reason
		{0, "ip_cap", addr("203.0.113.8"), true},         // another address
		{0, "ip_cap", addr("2001:db8:1:2::1"), true},
		{0, "ip_cap", addr("2001:db8:1:2::99"), false}, // same /64
		{59 * time.Second, "ip_cap", ip, false},
		{time.Second, "ip_cap", ip, true},
		{0, "ip_cap", ip, false},
	}
	for i, s := range steps {
		clk.Advance(s.advance)
		if got := g.Allow(s.reason, s.ip); got != s.want {
			t.Fatalf("step %d: Allow(%s, %v) = %v, want %v", i, s.reason, s.ip, got, s.want)
		}
	}
	if got := g.Suppressed(); got != 5 {
		t.Fatalf("Suppressed = %d, want 5", got)
	}
}

func TestLogGateFull(t *testing.T) {
	clk := newFakeClock()
	g := NewLogGate(time.Minute, 10, clk.Now)
	allowed := 0
	for i := range 1000 {
		if g.Allow("handshake_rate", sprayAddr(i)) {
			allowed++
		}
	}
	if allowed != 11 { // ten tracked addresses, then one "and more" line
		t.Fatalf("allowed %d lines in a 1000-address flood with 10 slots, want 11", allowed)
	}
	if !g.Allow("origin", sprayAddr(5000)) {
		t.Fatal("a different reason got no line while full")
	}
	if len(g.until) > 10 {
		t.Fatalf("gate holds %d keys, max 10", len(g.until))
	}
	clk.Advance(time.Minute)
	if !g.Allow("handshake_rate", sprayAddr(2000)) {
		t.Fatal("no line after the entries expired")
	}
	if n := len(g.until); n != 1 {
		t.Fatalf("expired keys not pruned: %d left", n)
	}
}

func TestLogGateZeroInterval(t *testing.T) {
	g := NewLogGate(0, 0, nil)
	for i := range 3 {
		if !g.Allow("x", addr("203.0.113.7")) {
			t.Fatalf("call %d refused with a zero interval", i)
		}
	}
}

func BenchmarkLogGate(b *testing.B) {
	g := NewLogGate(time.Minute, 0, nil)
	reasons := []string{"ip_cap", "handshake_rate", "origin", "token"}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		g.Allow(reasons[i&3], sprayAddr(i&1023))
		i++
	}
}
