package limits

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/wsidecar/wsidecar/config"
)

func newTestDoor(t testing.TB, cfg config.Limits, opts Options) (*Door, *fakeClock) {
	t.Helper()
	clk := newFakeClock()
	if opts.Now == nil {
		opts.Now = clk.Now
	}
	return NewDoor(cfg, opts), clk
}

func TestAcquireGlobal(t *testing.T) {
	d, _ := newTestDoor(t, config.Limits{MaxConnections: 2}, Options{})
	r1, ok1 := d.AcquireGlobal()
	r2, ok2 := d.AcquireGlobal()
	if !ok1 || !ok2 {
		t.Fatal("first two connections refused under a cap of 2")
	}
	if _, ok := d.AcquireGlobal(); ok {
		t.Fatal("third connection admitted over a cap of 2")
	}
	r1()
	r1() // idempotent: must not free a second slot
	if got := d.Open(); got != 1 {
		t.Fatalf("Open = %d after one release (called twice), want 1", got)
	}
	r3, ok := d.AcquireGlobal()
	if !ok {
		t.Fatal("slot not freed by release")
	}
	if _, ok := d.AcquireGlobal(); ok {
		t.Fatal("double release freed two slots")
	}
	r2()
	r3()
	if got := d.Open(); got != 0 {
		t.Fatalf("Open = %d after all releases", got)
	}
	if got := d.Rejections()[string(ReasonGlobalCap)]; got != 2 {
		t.Fatalf("global_cap rejections = %d, want 2", got)
	}
}

func TestUnlimitedCaps(t *testing.T) {
	for _, limit := range []int{0, -1} {
		d, _ := newTestDoor(t, config.Limits{MaxConnections: limit, PerIPConnections: limit, PerUserConnections: limit}, Options{})
		ip := addr("203.0.113.7")
		for i := range 1000 {
			_, ok1 := d.AcquireGlobal()
			_, ok2 := d.AcquireIP(ip)
			_, ok3 := d.AcquireUser("alice")
			if !ok1 || !ok2 || !ok3 {
				t.Fatalf("cap %d: acquisition %d refused", limit, i)
			}
		}
		// Still counted, so a reload that turns the caps on sees the truth.
		if d.Open() != 1000 || d.OpenIP(ip) != 1000 || d.OpenUser("alice") != 1000 {
			t.Fatalf("cap %d: counts %d/%d/%d, want 1000 each", limit, d.Open(), d.OpenIP(ip), d.OpenUser("alice"))
		}
	}
}

func TestAcquireIP(t *testing.T) {
	d, _ := newTestDoor(t, config.Limits{PerIPConnections: 2}, Options{})
	tests := []struct {
		name       string
		first, sec string // two addresses that share a key
		other      string // an address with its own key
	}{
		{"ipv4", "203.0.113.7", "::ffff:203.0.113.7", "203.0.113.8"},
		{"ipv6 per /64", "2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:3::1"},
		{"ipv6 zone ignored", "fe80::1%eth0", "fe80::2%eth1", "fe80:0:0:1::1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r1, ok1 := d.AcquireIP(addr(tt.first))
			r2, ok2 := d.AcquireIP(addr(tt.sec))
			if !ok1 || !ok2 {
				t.Fatal("two connections refused under a per-IP cap of 2")
			}
			if _, ok := d.AcquireIP(addr(tt.first)); ok {
				t.Fatalf("third connection from %s's key admitted", tt.first)
			}
			r3, ok := d.AcquireIP(addr(tt.other))
			if !ok {
				t.Fatalf("%s refused: it has its own key", tt.other)
			}
			r1()
			r1()
			if got := d.OpenIP(addr(tt.sec)); got != 1 {
				t.Fatalf("OpenIP = %d after one release, want 1", got)
			}
			r2()
			r3()
			if got := d.OpenIP(addr(tt.first)); got != 0 {
				t.Fatalf("OpenIP = %d after all releases", got)
			}
		})
	}
	if got := d.Rejections()[string(ReasonIPCap)]; got != uint64(len(tests)) {
		t.Fatalf("ip_cap rejections = %d, want %d", got, len(tests))
	}
}

func TestAcquireUser(t *testing.T) {
	d, _ := newTestDoor(t, config.Limits{PerUserConnections: 1}, Options{})
	rel, ok := d.AcquireUser("alice")
	if !ok {
		t.Fatal("first connection for alice refused")
	}
	if _, ok := d.AcquireUser("alice"); ok {
		t.Fatal("second connection for alice admitted over a cap of 1")
	}
	if _, ok := d.AcquireUser("bob"); !ok {
		t.Fatal("bob refused because of alice")
	}
	for range 3 {
		if _, ok := d.AcquireUser(""); !ok {
			t.Fatal("anonymous connection refused: the empty user is not counted")
		}
	}
	rel()
	rel()
	if got := d.OpenUser("alice"); got != 0 {
		t.Fatalf("OpenUser(alice) = %d after release", got)
	}
	if _, ok := d.AcquireUser("alice"); !ok {
		t.Fatal("alice refused after her connection was released")
	}
}

func TestAllowHandshake(t *testing.T) {
	d, clk := newTestDoor(t, config.Limits{HandshakeRate: config.Rate{N: 2, Per: time.Second, Burst: 3}}, Options{})
	ip := addr("203.0.113.7")
	for i := range 3 {
		if _, ok := d.AllowHandshake(ip); !ok {
			t.Fatalf("handshake %d refused within the burst of 3", i)
		}
	}
	wait, ok := d.AllowHandshake(ip)
	if ok {
		t.Fatal("fourth handshake admitted past the burst")
	}
	if wait != time.Second {
		t.Fatalf("retryAfter = %v, want 1s (0.5s rounded up)", wait)
	}
	if _, ok := d.AllowHandshake(addr("203.0.113.8")); !ok {
		t.Fatal("another address refused: buckets are per address")
	}
	clk.Advance(499 * time.Millisecond)
	if _, ok := d.AllowHandshake(ip); ok {
		t.Fatal("admitted before a token refilled (2/s = one per 500ms)")
	}
	clk.Advance(time.Millisecond)
	if _, ok := d.AllowHandshake(ip); !ok {
		t.Fatal("refused after a token refilled")
	}
	if got := d.Rejections()[string(ReasonHandshakeRate)]; got != 2 {
		t.Fatalf("handshake_rate rejections = %d, want 2", got)
	}
}

func TestAllowHandshakeRetryAfter(t *testing.T) {
	tests := []struct {
		rate config.Rate
		want time.Duration
	}{
		{config.Rate{N: 1, Per: time.Minute, Burst: 1}, time.Minute},
		{config.Rate{N: 100, Per: time.Second, Burst: 1}, time.Second},       // 10ms → at least 1s
		{config.Rate{N: 2, Per: 5 * time.Second, Burst: 1}, 3 * time.Second}, // 2.5s → 3s
	}
	for _, tt := range tests {
		d, _ := newTestDoor(t, config.Limits{HandshakeRate: tt.rate}, Options{})
		ip := addr("198.51.100.1")
		d.AllowHandshake(ip)
		wait, ok := d.AllowHandshake(ip)
		if ok || wait != tt.want {
			t.Errorf("rate %+v: second handshake = (%v, %v), want (%v, false)", tt.rate, wait, ok, tt.want)
		}
	}
}

func TestUnlimitedHandshakeKeepsNoState(t *testing.T) {
	d, _ := newTestDoor(t, config.Limits{}, Options{})
	for i := range 1000 {
		if _, ok := d.AllowHandshake(netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})); !ok {
			t.Fatal("unlimited handshake rate refused a handshake")
		}
	}
	if n := d.TrackedIPs(); n != 0 {
		t.Fatalf("TrackedIPs = %d, want 0 with no handshake rate", n)
	}
}

func TestUpdateKeepsCounts(t *testing.T) {
	d, clk := newTestDoor(t, config.Limits{
		MaxConnections: 10, PerIPConnections: 5, PerUserConnections: 5,
		HandshakeRate: config.Rate{N: 1, Per: time.Hour, Burst: 1},
	}, Options{})
	ip := addr("203.0.113.7")
	var rels []Release
	for range 3 {
		g, ok1 := d.AcquireGlobal()
		i, ok2 := d.AcquireIP(ip)
		u, ok3 := d.AcquireUser("alice")
		if !ok1 || !ok2 || !ok3 {
			t.Fatal("acquisition refused under the first limits")
		}
		rels = append(rels, g, i, u)
	}
	if _, ok := d.AllowHandshake(ip); !ok {
		t.Fatal("first handshake refused")
	}
	if _, ok := d.AllowHandshake(ip); ok {
		t.Fatal("second handshake admitted at 1/h")
	}

	d.Update(config.Limits{
		MaxConnections: 2, PerIPConnections: 2, PerUserConnections: 2,
		HandshakeRate: config.Rate{N: 10, Per: time.Second, Burst: 1},
	})
	if _, ok := d.AcquireGlobal(); ok {
		t.Fatal("global: admitted with 3 open under a new cap of 2")
	}
	if _, ok := d.AcquireIP(ip); ok {
		t.Fatal("per-IP: admitted with 3 open under a new cap of 2")
	}
	if _, ok := d.AcquireUser("alice"); ok {
		t.Fatal("per-user: admitted with 3 open under a new cap of 2")
	}
	for _, r := range rels[:6] { // two of each
		r()
	}
	if _, ok := d.AcquireGlobal(); !ok {
		t.Fatal("global: refused with 1 open under a cap of 2")
	}
	if _, ok := d.AcquireIP(ip); !ok {
		t.Fatal("per-IP: refused with 1 open under a cap of 2")
	}
	if _, ok := d.AcquireUser("alice"); !ok {
		t.Fatal("per-user: refused with 1 open under a cap of 2")
	}
	// The exhausted bucket keeps its debt but refills at the new rate.
	if _, ok := d.AllowHandshake(ip); ok {
		t.Fatal("handshake admitted right after reload: tokens must carry over")
	}
	clk.Advance(100 * time.Millisecond)
	if _, ok := d.AllowHandshake(ip); !ok {
		t.Fatal("handshake refused 100ms after reload to 10/s")
	}
}

func TestRejectMetrics(t *testing.T) {
	set := metrics.NewSet()
	d, _ := newTestDoor(t, config.Limits{PerIPConnections: 1}, Options{Metrics: set})
	ip := addr("203.0.113.7")
	d.AcquireIP(ip)
	d.AcquireIP(ip)
	d.Reject("origin")
	d.Reject("origin")
	d.Reject(`bad"} label`)
	for i := range maxReasons + 10 {
		d.Reject(fmt.Sprintf("r%d", i))
	}
	var buf bytes.Buffer
	set.WritePrometheus(&buf)
	text := buf.String()
	for _, want := range []string{
		`wsidecar_handshake_rejections_total{reason="ip_cap"} 1`,
		`wsidecar_handshake_rejections_total{reason="global_cap"} 0`,
		`wsidecar_handshake_rejections_total{reason="origin"} 2`,
		`wsidecar_message_rejections_total{reason="message_rate"} 0`,
		`wsidecar_limits_tracked_addresses 1`,
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("metrics lack %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "bad") {
		t.Errorf("an invalid reason reached a label:\n%s", text)
	}
	if n := strings.Count(text, "wsidecar_handshake_rejections_total{"); n > maxReasons {
		t.Errorf("%d reason labels, want at most %d", n, maxReasons)
	}
	if got := d.Rejections()["other"]; got < 11 {
		t.Errorf("other = %d, want the invalid and overflow reasons counted there", got)
	}
}

func TestReasonAnswers(t *testing.T) {
	tests := []struct {
		r      Reason
		status int
		retry  time.Duration
	}{
		{ReasonGlobalCap, 503, GlobalCapRetryAfter},
		{ReasonIPCap, 429, CapRetryAfter},
		{ReasonUserCap, 429, CapRetryAfter},
		{ReasonHandshakeRate, 429, time.Second},
		{ReasonMessageRate, 0, 0},
		{ReasonByteRate, 0, 0},
	}
	for _, tt := range tests {
		if s, r := tt.r.HTTPStatus(), tt.r.RetryAfter(); s != tt.status || r != tt.retry {
			t.Errorf("%s: status %d retry %v, want %d %v", tt.r, s, r, tt.status, tt.retry)
		}
	}
}

// sprayAddr is the i-th address of a flood: IPv4 and IPv6 /64s mixed.
func sprayAddr(i int) netip.Addr {
	if i%2 == 0 {
		return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	}
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(i >> 16), byte(i >> 8), byte(i), 15: 1})
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestFloodIsBounded sprays 200k distinct addresses at the handshake limiter:
// the table stays under its cap, a client holding connections keeps its
// count, and once the flood stops a sweep empties the table and gives the
// memory back.
func TestFloodIsBounded(t *testing.T) {
	const (
		flood   = 200_000
		maxIPs  = 50_000
		idle    = 5 * time.Minute
		maxHeap = 40 << 20 // loose: ~150 B × 50k entries is ~8 MB
	)
	d, clk := newTestDoor(t, config.Limits{
		PerIPConnections: 2,
		HandshakeRate:    config.Rate{N: 20, Per: time.Second, Burst: 40},
		IdleEvict:        idle,
	}, Options{MaxTrackedIPs: maxIPs})

	loyal := addr("203.0.113.7")
	_, _ = d.AcquireIP(loyal)
	_, _ = d.AcquireIP(loyal)

	before := heapInUse()
	for i := range flood {
		if i%1000 == 0 {
			clk.Advance(time.Millisecond)
		}
		if _, ok := d.AllowHandshake(sprayAddr(i)); !ok {
			t.Fatalf("address %d refused on its first handshake", i)
		}
	}
	peak := heapInUse()
	if n := d.TrackedIPs(); n > maxIPs+1 {
		t.Fatalf("TrackedIPs = %d after the flood, cap %d", n, maxIPs)
	}
	if grew := int64(peak) - int64(before); grew > maxHeap {
		t.Fatalf("heap grew %d MB during the flood, want < %d MB", grew>>20, maxHeap>>20)
	}
	if d.OpenIP(loyal) != 2 {
		t.Fatalf("loyal client's count lost in the flood: %d", d.OpenIP(loyal))
	}
	if _, ok := d.AcquireIP(loyal); ok {
		t.Fatal("loyal client's cap not enforced after the flood")
	}

	clk.Advance(idle + time.Second)
	d.Sweep()
	if n := d.TrackedIPs(); n != 1 {
		t.Fatalf("TrackedIPs = %d after the sweep, want 1 (the client with connections)", n)
	}
	after := heapInUse()
	t.Logf("heap: before %d KB, flood peak %d KB, after sweep %d KB", before>>10, peak>>10, after>>10)
	if after > before+(4<<20) {
		t.Fatalf("heap after sweep %d KB, not back near %d KB", after>>10, before>>10)
	}
}

func TestLazyRetireWithoutSweep(t *testing.T) {
	d, clk := newTestDoor(t, config.Limits{
		HandshakeRate: config.Rate{N: 10, Per: time.Second, Burst: 10},
		IdleEvict:     time.Minute,
	}, Options{})
	for i := range 5000 {
		d.AllowHandshake(sprayAddr(i))
	}
	clk.Advance(2 * time.Minute)
	// New addresses each retire up to two expired ones from their shard.
	for i := range 5000 {
		d.AllowHandshake(sprayAddr(100_000 + i))
	}
	if n := d.TrackedIPs(); n > 6000 {
		t.Fatalf("TrackedIPs = %d: inserts did not retire expired entries", n)
	}
}

func TestSweepKeepsDebtAndBusyEntries(t *testing.T) {
	d, clk := newTestDoor(t, config.Limits{
		HandshakeRate: config.Rate{N: 1, Per: time.Hour, Burst: 1},
		IdleEvict:     time.Minute,
	}, Options{})
	slow, busy := addr("203.0.113.7"), addr("203.0.113.8")
	d.AllowHandshake(slow)
	rel, _ := d.AcquireIP(busy)
	clk.Advance(2 * time.Minute)
	d.Sweep()
	if n := d.TrackedIPs(); n != 2 {
		t.Fatalf("TrackedIPs = %d, want 2: one still owes tokens, one holds a connection", n)
	}
	if _, ok := d.AllowHandshake(slow); ok {
		t.Fatal("sweeping forgave an address its handshake debt")
	}
	rel()
	clk.Advance(2 * time.Hour)
	d.Sweep()
	if n := d.TrackedIPs(); n != 0 {
		t.Fatalf("TrackedIPs = %d after both went quiet and refilled, want 0", n)
	}
}

func TestTableFullEvictsOldestIdle(t *testing.T) {
	// One entry per shard: the next address in a shard evicts the previous.
	d, _ := newTestDoor(t, config.Limits{
		HandshakeRate: config.Rate{N: 1, Per: time.Hour, Burst: 1},
		IdleEvict:     time.Hour,
	}, Options{MaxTrackedIPs: ipShards})
	busy := addr("198.51.100.1")
	if _, ok := d.AcquireIP(busy); !ok {
		t.Fatal("refused")
	}
	for i := range 10_000 {
		if _, ok := d.AllowHandshake(sprayAddr(i)); !ok {
			t.Fatalf("new address %d refused: a full table must evict, not fail", i)
		}
	}
	if n := d.TrackedIPs(); n > ipShards+1 {
		t.Fatalf("TrackedIPs = %d, cap %d (+1 busy)", n, ipShards)
	}
	if d.OpenIP(busy) != 1 {
		t.Fatal("an entry holding a connection was evicted")
	}
	if d.evictions.Get() == 0 {
		t.Fatal("early evictions not counted")
	}
}

func TestDoorConcurrent(t *testing.T) {
	d := NewDoor(config.Limits{
		MaxConnections: 50, PerIPConnections: 3, PerUserConnections: 4,
		HandshakeRate: config.Rate{N: 1000, Per: time.Second, Burst: 1000},
	}, Options{MaxTrackedIPs: 128})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				ip := sprayAddr(g*7 + i%23)
				user := fmt.Sprintf("u%d", i%5)
				d.AllowHandshake(ip)
				rg, ok := d.AcquireGlobal()
				if !ok {
					continue
				}
				ri, ok := d.AcquireIP(ip)
				if !ok {
					rg()
					continue
				}
				ru, ok := d.AcquireUser(user)
				if !ok {
					ri()
					rg()
					continue
				}
				if i%100 == 0 {
					d.Sweep()
				}
				ru()
				ri()
				rg()
				ri() // double release from a racing cleanup path
			}
		})
	}
	wg.Wait()
	if d.Open() != 0 {
		t.Fatalf("Open = %d after everyone left", d.Open())
	}
	for i := range 100 {
		if n := d.OpenIP(sprayAddr(i)); n != 0 {
			t.Fatalf("OpenIP(%v) = %d after everyone left", sprayAddr(i), n)
		}
	}
	for i := range 5 {
		if n := d.OpenUser(fmt.Sprintf("u%d", i)); n != 0 {
			t.Fatalf("OpenUser(u%d) = %d after everyone left", i, n)
		}
	}
}

func TestRunSweeps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := NewDoor(config.Limits{
			HandshakeRate: config.Rate{N: 10, Per: time.Second, Burst: 10},
			IdleEvict:     time.Minute,
		}, Options{})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			d.Run(ctx)
			close(done)
		}()
		for i := range 100 {
			d.AllowHandshake(sprayAddr(i))
		}
		time.Sleep(time.Minute + 20*time.Second) // fake time: a sweep at 15s steps
		synctest.Wait()
		if n := d.TrackedIPs(); n != 0 {
			t.Fatalf("TrackedIPs = %d after IdleEvict with Run going", n)
		}
		cancel()
		<-done
	})
}

func TestAllocs(t *testing.T) {
	d, _ := newTestDoor(t, config.Limits{
		HandshakeRate: config.Rate{N: 1e9, Per: time.Second, Burst: 1e9},
		MessageRate:   config.Rate{N: 1e9, Per: time.Second},
		ByteRate:      config.Rate{N: 1e12, Per: time.Second},
	}, Options{})
	ip := addr("203.0.113.7")
	d.AllowHandshake(ip)
	if n := testing.AllocsPerRun(100, func() { d.AllowHandshake(ip) }); n != 0 {
		t.Errorf("AllowHandshake (known address) allocates %.0f times", n)
	}
	c := d.NewConnLimiter()
	if n := testing.AllocsPerRun(100, func() { c.Allow(100) }); n != 0 {
		t.Errorf("ConnLimiter.Allow allocates %.0f times", n)
	}
	d.Reject("origin")
	if n := testing.AllocsPerRun(100, func() { d.Reject("origin") }); n != 0 {
		t.Errorf("Reject allocates %.0f times", n)
	}
}

func BenchmarkAllowHandshake(b *testing.B) {
	d := NewDoor(config.Limits{HandshakeRate: config.Rate{N: 1e9, Per: time.Second, Burst: 1e9}, IdleEvict: time.Minute}, Options{})
	ips := make([]netip.Addr, 1024)
	for i := range ips {
		ips[i] = sprayAddr(i)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		d.AllowHandshake(ips[i&1023])
		i++
	}
}

func BenchmarkAcquireIPRelease(b *testing.B) {
	d := NewDoor(config.Limits{PerIPConnections: 100}, Options{})
	ip := addr("203.0.113.7")
	b.ReportAllocs()
	for b.Loop() {
		rel, _ := d.AcquireIP(ip)
		rel()
	}
}
