package limits

import (
	"testing"
	"time"
	"unsafe"

	"golang.org/x/time/rate"

	"github.com/wsidecar/wsidecar/config"
)

func TestConnLimiterMessageRate(t *testing.T) {
	d, clk := newTestDoor(t, config.Limits{MessageRate: config.Rate{N: 10, Per: time.Second}}, Options{})
	c := d.NewConnLimiter()
	for i := range 10 { // burst defaults to N
		if r := c.Allow(1); r != "" {
			t.Fatalf("message %d refused (%s) within the default burst of 10", i, r)
		}
	}
	if r := c.Allow(1); r != ReasonMessageRate {
		t.Fatalf("11th message: %q, want %q", r, ReasonMessageRate)
	}
	clk.Advance(99 * time.Millisecond)
	if r := c.Allow(1); r != ReasonMessageRate {
		t.Fatalf("after 99ms: %q, want still limited", r)
	}
	clk.Advance(time.Millisecond)
	if r := c.Allow(1); r != "" {
		t.Fatalf("after 100ms at 10/s: %q, want allowed", r)
	}
	if got := d.msgRejected.Get(); got != 2 {
		t.Fatalf("message_rate counter = %d, want 2", got)
	}
}

func TestConnLimiterByteRate(t *testing.T) {
	d, clk := newTestDoor(t, config.Limits{
		MessageRate: config.Rate{N: 2, Per: time.Second, Burst: 2},
		ByteRate:    config.Rate{N: 1000, Per: time.Second, Burst: 1000},
	}, Options{})
	c := d.NewConnLimiter()
	if r := c.Allow(600); r != "" {
		t.Fatalf("600 B of 1000: %q", r)
	}
	if r := c.Allow(600); r != ReasonByteRate {
		t.Fatalf("1200 B of 1000: %q, want %q", r, ReasonByteRate)
	}
	// The refused message took no message token: one more fits.
	if r := c.Allow(400); r != "" {
		t.Fatalf("400 B with 400 left and one message token left: %q", r)
	}
	if r := c.Allow(0); r != ReasonMessageRate {
		t.Fatalf("third message at 2/s burst 2: %q, want %q", r, ReasonMessageRate)
	}
	clk.Advance(time.Second)
	if r := c.Allow(1000); r != "" {
		t.Fatalf("after a second: %q", r)
	}
	if d.byteRejected.Get() != 1 || d.msgRejected.Get() != 1 {
		t.Fatalf("counters byte=%d msg=%d, want 1 and 1", d.byteRejected.Get(), d.msgRejected.Get())
	}
}

func TestConnLimiterOversizedMessage(t *testing.T) {
	d, clk := newTestDoor(t, config.Limits{ByteRate: config.Rate{N: 1000, Per: time.Second, Burst: 1000}}, Options{})
	c := d.NewConnLimiter()
	if r := c.Allow(5000); r != "" {
		t.Fatalf("5000 B message with a full 1000 B bucket: %q, want allowed (into debt)", r)
	}
	clk.Advance(4 * time.Second) // repays 4000 of the 4000 debt, leaving 0
	if r := c.Allow(1); r != ReasonByteRate {
		t.Fatalf("still at 0 tokens: %q, want %q", r, ReasonByteRate)
	}
	clk.Advance(5 * time.Second)
	if r := c.Allow(5000); r != "" {
		t.Fatalf("full again: %q", r)
	}
}

func TestConnLimiterUnlimitedAndReload(t *testing.T) {
	d, clk := newTestDoor(t, config.Limits{}, Options{})
	var c ConnLimiter // embedded by value, as a connection struct would
	c.Init(d)
	for range 10_000 {
		if r := c.Allow(1 << 20); r != "" {
			t.Fatalf("unlimited: %q", r)
		}
	}
	// Turning limits on applies to the open connection, from a full bucket.
	d.Update(config.Limits{MessageRate: config.Rate{N: 3, Per: time.Second}})
	clk.Advance(time.Millisecond)
	for i := range 3 {
		if r := c.Allow(10); r != "" {
			t.Fatalf("message %d after reload: %q, want the new bucket to start full", i, r)
		}
	}
	if r := c.Allow(10); r != ReasonMessageRate {
		t.Fatalf("4th message after reload to 3/s: %q", r)
	}
	d.Update(config.Limits{})
	if r := c.Allow(10); r != "" {
		t.Fatalf("after reload to unlimited: %q", r)
	}
}

// TestConnLimiterSize pins the per-connection cost. At 100k connections,
// 32 B is 3 MB; two rate.Limiter values (2×80 B plus pointers) would be 16 MB.
func TestConnLimiterSize(t *testing.T) {
	if got := unsafe.Sizeof(ConnLimiter{}); got != 32 {
		t.Fatalf("ConnLimiter is %d bytes, want 32", got)
	}
	t.Logf("ConnLimiter %d B; rate.Limiter %d B each", unsafe.Sizeof(ConnLimiter{}), unsafe.Sizeof(rate.Limiter{}))
}

func BenchmarkConnLimiterAllow(b *testing.B) {
	d := NewDoor(config.Limits{
		MessageRate: config.Rate{N: 1e9, Per: time.Second},
		ByteRate:    config.Rate{N: 1e12, Per: time.Second},
	}, Options{})
	c := d.NewConnLimiter()
	b.ReportAllocs()
	for b.Loop() {
		c.Allow(512)
	}
}
