package limits

import (
	"context"
	"log/slog"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"golang.org/x/time/rate"

	"github.com/wsidecar/wsidecar/config"
)

// Reason says why the door turned something away. Each maps to one HTTP
// status (HTTPStatus) before the upgrade or to the route's rate policy after.
type Reason string

// Rejection reasons owned by this package. The proxy adds its own (origin,
// token, …) through Door.Reject.
const (
	ReasonGlobalCap     Reason = "global_cap"     // MaxConnections reached
	ReasonIPCap         Reason = "ip_cap"         // PerIPConnections reached for the client's Key
	ReasonUserCap       Reason = "user_cap"       // PerUserConnections reached
	ReasonHandshakeRate Reason = "handshake_rate" // HandshakeRate exceeded for the client's Key
	ReasonMessageRate   Reason = "message_rate"   // MessageRate exceeded on a connection
	ReasonByteRate      Reason = "byte_rate"      // ByteRate exceeded on a connection
)

// Retry-After hints for the caps. A cap frees up only when someone
// disconnects, so the hint is a guess that spreads retries out rather than a
// promise; the handshake rate returns the limiter's exact delay instead.
const (
	// GlobalCapRetryAfter is the hint sent with 503 when the process is full.
	GlobalCapRetryAfter = 2 * time.Second
	// CapRetryAfter is the hint sent with 429 for per-IP and per-user caps.
	CapRetryAfter = 5 * time.Second
)

// HTTPStatus is the handshake answer for r: 503 for the global cap (the
// server is full, not the client at fault), 429 for per-client caps and the
// handshake rate. Per-connection rates happen after the upgrade, so they and
// unknown reasons return 0.
func (r Reason) HTTPStatus() int {
	switch r {
	case ReasonGlobalCap:
		return 503 // Service Unavailable
	case ReasonIPCap, ReasonUserCap, ReasonHandshakeRate:
		return 429 // Too Many Requests
	}
	return 0
}

// RetryAfter is the Retry-After hint for a cap rejection: GlobalCapRetryAfter
// or CapRetryAfter; 1s for the handshake rate (AllowHandshake returns the
// precise value), 0 for anything else.
func (r Reason) RetryAfter() time.Duration {
	switch r {
	case ReasonGlobalCap:
		return GlobalCapRetryAfter
	case ReasonIPCap, ReasonUserCap:
		return CapRetryAfter
	case ReasonHandshakeRate:
		return time.Second
	}
	return 0
}

// Release gives back what an Acquire call took. It is idempotent: calling it
// twice (say, from a deferred cleanup and an explicit close path) releases
// once. It is safe to call from any goroutine.
type Release func()

// DefaultMaxTrackedIPs is the per-address table cap used when
// Options.MaxTrackedIPs is zero: about 22 MB at worst (≈220 B an entry,
// map slot included, measured by TestFloodIsBounded).
const DefaultMaxTrackedIPs = 100_000

// Options are the Door's dependencies. The zero value is usable.
type Options struct {
	// Now is the clock; nil means time.Now. Tests inject a fake one.
	Now func() time.Time
	// Logger receives table-full warnings and reload notes; nil discards.
	Logger *slog.Logger
	// Metrics is where the door registers its metrics; nil means a private
	// metrics.NewSet(). Names: wsidecar_handshake_rejections_total{reason},
	// wsidecar_message_rejections_total{reason},
	// wsidecar_limits_tracked_addresses, wsidecar_limits_address_evictions_total.
	// Use one Door per Set: the tracked-addresses gauge reports the first.
	Metrics *metrics.Set
	// MaxTrackedIPs caps the number of idle per-address entries (handshake
	// bucket, no open connection). Zero means DefaultMaxTrackedIPs. Entries
	// holding open connections are never evicted and may exceed the cap: each
	// is backed by a real socket, which costs far more than the entry.
	MaxTrackedIPs int
}

// Door holds the process-wide admission state: connection counts (global,
// per client Key, per user), per-address handshake buckets, and the
// rejection counters. It is safe for concurrent use.
//
// The checks are separate calls so the proxy can run them in the order of the
// handshake pipeline (cheap first). Every rejection a Door call makes is
// counted by the Door itself through Reject; callers count only their own
// reasons.
type Door struct {
	now   func() time.Time
	epoch time.Time // nanos are measured from here, on the monotonic clock
	log   *slog.Logger

	updateMu sync.Mutex // serialises Update
	cfg      atomic.Pointer[doorConfig]

	global atomic.Int64 // open connections admitted by AcquireGlobal
	ips    ipTable
	users  userTable

	set      *metrics.Set
	reasonMu sync.Mutex                                  // serialises adding reasons
	reasons  atomic.Pointer[map[string]*metrics.Counter] // copy-on-write, read lock-free

	msgRejected  *metrics.Counter // ConnLimiter: ReasonMessageRate
	byteRejected *metrics.Counter // ConnLimiter: ReasonByteRate
	evictions    *metrics.Counter // idle entries dropped early because the table was full

	nextFullLog atomic.Int64 // nanos; rate-limits the "table full" warning
}

// maxReasons bounds the distinct reason labels so a caller bug cannot grow the
// metric family without end; extra reasons are counted as "other".
const maxReasons = 64

// doorConfig is config.Limits compiled for the hot paths. It is immutable and
// swapped whole by Update; gen tells per-address limiters to pick it up.
type doorConfig struct {
	gen       uint32
	maxConns  int64
	perIP     int64
	perUser   int64
	hs        bucketRate
	msg       bucketRate
	bytes     bucketRate
	idleEvict int64 // nanos
}

// bucketRate is one token-bucket rate. on is false for an unlimited rate.
type bucketRate struct {
	on      bool
	limit   rate.Limit // tokens per second
	perNano float64    // tokens per nanosecond
	burst   float64    // ≥ 1 when on
}

func compileRate(r config.Rate) bucketRate {
	if r.Unlimited() {
		return bucketRate{}
	}
	ps := r.PerSecond()
	burst := float64(r.Burst)
	if r.Burst <= 0 {
		// No burst configured: allow one window's worth (N), at least one
		// event, so "100/s" does not mean "one every 10ms exactly".
		burst = math.Max(1, math.Ceil(r.N))
	}
	return bucketRate{on: true, limit: rate.Limit(ps), perNano: ps / 1e9, burst: burst}
}

func compile(cfg config.Limits, gen uint32) *doorConfig {
	return &doorConfig{
		gen:       gen,
		maxConns:  int64(cfg.MaxConnections),
		perIP:     int64(cfg.PerIPConnections),
		perUser:   int64(cfg.PerUserConnections),
		hs:        compileRate(cfg.HandshakeRate),
		msg:       compileRate(cfg.MessageRate),
		bytes:     compileRate(cfg.ByteRate),
		idleEvict: int64(max(cfg.IdleEvict, 0)),
	}
}

// NewDoor returns a Door enforcing cfg. Zero or negative caps are unlimited;
// a zero Rate is unlimited.
func NewDoor(cfg config.Limits, opts Options) *Door {
	d := &Door{now: opts.Now, log: opts.Logger, set: opts.Metrics}
	if d.now == nil {
		d.now = time.Now
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.set == nil {
		d.set = metrics.NewSet()
	}
	d.epoch = d.now()
	d.cfg.Store(compile(cfg, 1))
	maxIPs := opts.MaxTrackedIPs
	if maxIPs <= 0 {
		maxIPs = DefaultMaxTrackedIPs
	}
	d.ips.init(maxIPs)
	d.users.init()

	empty := map[string]*metrics.Counter{}
	d.reasons.Store(&empty)
	for _, r := range []Reason{ReasonGlobalCap, ReasonIPCap, ReasonUserCap, ReasonHandshakeRate} {
		d.counter(string(r)) // pre-register so the family shows zeros from the start
	}
	d.msgRejected = d.set.GetOrCreateCounter(`wsidecar_message_rejections_total{reason="message_rate"}`)
	d.byteRejected = d.set.GetOrCreateCounter(`wsidecar_message_rejections_total{reason="byte_rate"}`)
	d.evictions = d.set.GetOrCreateCounter(`wsidecar_limits_address_evictions_total`)
	d.set.GetOrCreateGauge(`wsidecar_limits_tracked_addresses`, func() float64 {
		return float64(d.ips.size.Load())
	})
	return d
}

// nanos is t on the door's monotonic timeline.
func (d *Door) nanos(t time.Time) int64 { return int64(t.Sub(d.epoch)) }

// Update applies new limits (at SIGHUP) without touching the counts: open
// connections stay counted, and lowering a cap below the current count only
// refuses new ones. Per-address handshake buckets adopt the new rate the next
// time they are used, keeping their tokens; ConnLimiters read it on every
// Allow. Trusted proxies are not the Door's business: build a new Resolver.
func (d *Door) Update(cfg config.Limits) {
	d.updateMu.Lock()
	defer d.updateMu.Unlock()
	gen := d.cfg.Load().gen + 1
	if gen == 0 { // wrapped: 0 means "never configured" on entries
		gen = 1
	}
	d.cfg.Store(compile(cfg, gen))
	d.log.Info("limits updated",
		"max_connections", cfg.MaxConnections,
		"per_ip_connections", cfg.PerIPConnections,
		"per_user_connections", cfg.PerUserConnections,
		"open_connections", d.global.Load())
}

// AcquireGlobal takes one slot of MaxConnections. On false the process is
// full: answer 503 with Retry-After GlobalCapRetryAfter. The rejection is
// already counted.
func (d *Door) AcquireGlobal() (Release, bool) {
	limit := d.cfg.Load().maxConns
	// Add first, then check: racing acquirers may briefly see each other's
	// increments and refuse near the cap, which errs on the safe side.
	if n := d.global.Add(1); limit > 0 && n > limit {
		d.global.Add(-1)
		d.Reject(string(ReasonGlobalCap))
		return nil, false
	}
	var done atomic.Bool
	return func() {
		if done.CompareAndSwap(false, true) {
			d.global.Add(-1)
		}
	}, true
}

// AllowHandshake spends one token of the handshake bucket of ip's Key. On
// false, retryAfter is how long until a token is available, rounded up to
// whole seconds (at least 1s), for the 429's Retry-After. The rejection is
// already counted. An unlimited HandshakeRate keeps no per-address state.
func (d *Door) AllowHandshake(ip netip.Addr) (retryAfter time.Duration, ok bool) {
	cfg := d.cfg.Load()
	if !cfg.hs.on {
		return 0, true
	}
	now := d.now()
	ns := d.nanos(now)
	k := keyOf(ip)
	s := d.ips.shard(k)
	s.mu.Lock()
	e, evicted := d.ips.getLocked(s, k, now, ns, cfg)
	e.adopt(now, cfg)
	ok = e.lim.AllowN(now, 1)
	var wait time.Duration
	if !ok {
		need := 1 - e.lim.TokensAt(now)
		wait = time.Duration(math.Min(need/float64(cfg.hs.limit), 86400) * 1e9)
	}
	e.seen = ns
	if e.open == 0 {
		s.moveFront(e)
	}
	s.mu.Unlock()
	d.noteEvicted(evicted, ns)
	if !ok {
		d.Reject(string(ReasonHandshakeRate))
		return roundUpSecond(wait), false
	}
	return 0, true
}

// roundUpSecond rounds d up to whole seconds, at least one: Retry-After
// carries integer seconds and 0 would invite an immediate retry.
func roundUpSecond(d time.Duration) time.Duration {
	d = (d + time.Second - 1) / time.Second * time.Second
	return max(d, time.Second)
}

// AcquireIP takes one of the PerIPConnections slots of ip's Key (IPv6 is
// counted per /64). On false answer 429 with Retry-After CapRetryAfter; the
// rejection is already counted. Connections are counted even when the cap is
// off, so a reload that turns it on sees the true numbers.
func (d *Door) AcquireIP(ip netip.Addr) (Release, bool) {
	cfg := d.cfg.Load()
	now := d.now()
	ns := d.nanos(now)
	k := keyOf(ip)
	s := d.ips.shard(k)
	s.mu.Lock()
	e, evicted := d.ips.getLocked(s, k, now, ns, cfg)
	if cfg.perIP > 0 && int64(e.open) >= cfg.perIP {
		s.mu.Unlock()
		d.noteEvicted(evicted, ns)
		d.Reject(string(ReasonIPCap))
		return nil, false
	}
	if e.open == 0 {
		s.unlink(e) // busy entries leave the idle list: they are never evicted
	}
	e.open++
	s.mu.Unlock()
	d.noteEvicted(evicted, ns)

	var done atomic.Bool
	return func() {
		if !done.CompareAndSwap(false, true) {
			return
		}
		ns := d.nanos(d.now())
		s.mu.Lock()
		e.open--
		if e.open == 0 {
			e.seen = ns
			s.pushFront(e)
		}
		s.mu.Unlock()
	}, true
}

// AcquireUser takes one of the PerUserConnections slots of user. The empty
// user (anonymous route) is not counted and always succeeds. On false answer
// 429 with Retry-After CapRetryAfter; the rejection is already counted.
func (d *Door) AcquireUser(user string) (Release, bool) {
	if user == "" {
		return func() {}, true
	}
	if !d.users.acquire(user, d.cfg.Load().perUser) {
		d.Reject(string(ReasonUserCap))
		return nil, false
	}
	var done atomic.Bool
	return func() {
		if done.CompareAndSwap(false, true) {
			d.users.release(user)
		}
	}, true
}

// Open returns the number of connections holding a global slot.
func (d *Door) Open() int64 { return d.global.Load() }

// OpenIP returns the number of connections counted against ip's Key.
func (d *Door) OpenIP(ip netip.Addr) int {
	k := keyOf(ip)
	s := d.ips.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.m[k]; e != nil {
		return int(e.open)
	}
	return 0
}

// OpenUser returns the number of connections counted against user.
func (d *Door) OpenUser(user string) int { return d.users.count(user) }

// TrackedIPs returns the number of per-address entries held (idle or busy).
func (d *Door) TrackedIPs() int { return int(d.ips.size.Load()) }

// Sweep retires per-address entries that have had no open connection and no
// handshake for IdleEvict and whose bucket has refilled (dropping them loses
// nothing: a fresh entry is identical), and gives map memory back after a
// flood. Inserts already retire a few expired entries each, so the table
// stays trimmed under load; Sweep is what empties it once a flood stops. The
// caller runs it periodically, or runs Run.
func (d *Door) Sweep() {
	now := d.now()
	d.ips.sweep(now, d.nanos(now), d.cfg.Load())
}

// Run calls Sweep every IdleEvict/4 (clamped to 1s–1m) until ctx is done.
// Start it once in its own goroutine next to the Door.
func (d *Door) Run(ctx context.Context) {
	t := time.NewTicker(d.sweepEvery())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.Sweep()
			t.Reset(d.sweepEvery())
		}
	}
}

func (d *Door) sweepEvery() time.Duration {
	return min(max(time.Duration(d.cfg.Load().idleEvict)/4, time.Second), time.Minute)
}

// noteEvicted counts (and at most once a minute logs) live idle entries that
// were dropped before IdleEvict because the table was full: a sign of an
// address-spraying flood or of MaxTrackedIPs set too low.
func (d *Door) noteEvicted(evicted bool, ns int64) {
	if !evicted {
		return
	}
	d.evictions.Inc()
	next := d.nextFullLog.Load()
	if ns >= next && d.nextFullLog.CompareAndSwap(next, ns+int64(time.Minute)) {
		d.log.Warn("client address table full; evicting least recently used idle entries",
			"tracked", d.ips.size.Load(), "evicted_total", d.evictions.Get())
	}
}

// Reject counts one handshake rejection in
// wsidecar_handshake_rejections_total{reason=…}. It is the single entry point
// for rejection counting: the Door calls it for its own reasons; the proxy
// calls it for the rest ("origin", "token", "route", …) and must not call it
// again for a rejection a Door method returned. Reasons must be short
// [a-z0-9_] constants; anything else, and any reason past the 64th distinct
// one, is counted as "other".
func (d *Door) Reject(reason string) {
	if c := (*d.reasons.Load())[reason]; c != nil {
		c.Inc()
		return
	}
	d.counter(reason).Inc()
}

// counter returns (creating on first use) the rejection counter for reason.
func (d *Door) counter(reason string) *metrics.Counter {
	if !validReason(reason) {
		reason = "other"
	}
	d.reasonMu.Lock()
	defer d.reasonMu.Unlock()
	old := *d.reasons.Load()
	if c := old[reason]; c != nil {
		return c
	}
	if len(old) >= maxReasons && reason != "other" {
		reason = "other"
		if c := old[reason]; c != nil {
			return c
		}
	}
	c := d.set.GetOrCreateCounter(`wsidecar_handshake_rejections_total{reason="` + reason + `"}`)
	m := make(map[string]*metrics.Counter, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	m[reason] = c
	d.reasons.Store(&m)
	return c
}

func validReason(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// Rejections returns a snapshot of the handshake rejection counts by reason
// (for tests and the admin API; /metrics reads the Set).
func (d *Door) Rejections() map[string]uint64 {
	m := *d.reasons.Load()
	out := make(map[string]uint64, len(m))
	for k, c := range m {
		out[k] = c.Get()
	}
	return out
}
