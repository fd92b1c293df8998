package limits

import (
	"net/netip"
	"sync"
	"time"
)

// DefaultLogGateEntries is the LogGate size used when max ≤ 0.
const DefaultLogGateEntries = 10_000

// LogGate rate-limits log lines about rejected clients so a flood cannot turn
// into a log flood: one line per (reason, Key(ip)) per interval. It is safe
// for concurrent use.
//
// Memory is bounded by max entries. When the table is full of live entries
// (an address-spraying flood), Allow returns true at most once per reason per
// interval for addresses it cannot track, so operators still see that the
// reason is happening; every refused line is counted in Suppressed, which the
// caller can log or export.
type LogGate struct {
	interval time.Duration
	max      int
	now      func() time.Time

	mu         sync.Mutex
	until      map[gateKey]time.Time // next time a line may pass for the key
	overflow   map[string]time.Time  // per reason, used while until is full
	nextPrune  time.Time
	suppressed uint64
}

type gateKey struct {
	reason string
	key    ipKey
}

// NewLogGate returns a gate letting one line per (reason, Key(ip)) through
// every interval, tracking at most max keys (≤ 0: DefaultLogGateEntries).
// now is the clock (nil: time.Now). An interval ≤ 0 lets everything through.
func NewLogGate(interval time.Duration, max int, now func() time.Time) *LogGate {
	if max <= 0 {
		max = DefaultLogGateEntries
	}
	if now == nil {
		now = time.Now
	}
	return &LogGate{
		interval: interval,
		max:      max,
		now:      now,
		until:    make(map[gateKey]time.Time),
		overflow: make(map[string]time.Time),
	}
}

// Allow reports whether a line about reason for ip may be logged now.
func (g *LogGate) Allow(reason string, ip netip.Addr) bool {
	if g.interval <= 0 {
		return true
	}
	now := g.now()
	k := gateKey{reason: reason, key: keyOf(ip)}
	g.mu.Lock()
	defer g.mu.Unlock()
	if t, ok := g.until[k]; ok {
		if now.Before(t) {
			g.suppressed++
			return false
		}
		g.until[k] = now.Add(g.interval)
		return true
	}
	if len(g.until) >= g.max {
		g.prune(now)
	}
	if len(g.until) < g.max {
		g.until[k] = now.Add(g.interval)
		return true
	}
	// Full of live keys: fall back to one line per reason.
	t, ok := g.overflow[reason]
	if (ok && now.Before(t)) || (!ok && len(g.overflow) >= maxReasons) {
		g.suppressed++
		return false
	}
	g.overflow[reason] = now.Add(g.interval)
	return true
}

// Suppressed returns how many lines Allow has refused so far.
func (g *LogGate) Suppressed() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.suppressed
}

// prune drops expired keys. A full scan costs O(max), so under a flood that
// keeps the table full it runs at most eight times per interval.
func (g *LogGate) prune(now time.Time) {
	if now.Before(g.nextPrune) {
		return
	}
	g.nextPrune = now.Add(g.interval / 8)
	for k, t := range g.until {
		if !now.Before(t) {
			delete(g.until, k)
		}
	}
	for r, t := range g.overflow {
		if !now.Before(t) {
			delete(g.overflow, r)
		}
	}
}
