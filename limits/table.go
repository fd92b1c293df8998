package limits

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Shard counts: enough to keep lock contention low on a few cores without
// making a full Sweep expensive.
const (
	ipShards   = 64
	userShards = 32
)

// ipKey is Key(ip) in 16 bytes: IPv4 as its IPv4-mapped form, IPv6 as the
// /64 with the host half zeroed. The two never collide: a mapped address has
// 0xffff in its low half, a /64 key has zeros.
type ipKey [16]byte

func keyOf(ip netip.Addr) ipKey { return Key(ip).Addr().As16() }

// ipEntry is the state for one client Key. It is on its shard's idle list
// exactly when open == 0; busy entries are never evicted, so a Release can
// hold a pointer to its entry.
type ipEntry struct {
	lim        rate.Limiter // handshake bucket; configured lazily (gen)
	key        ipKey
	prev, next *ipEntry // idle list links, most recently used at head
	seen       int64    // nanos of the last handshake or last close
	open       int32    // connections counted by AcquireIP
	gen        uint32   // doorConfig.gen lim was set for; 0 = never
}

// adopt points the handshake bucket at the current rate. A never-configured
// bucket is set at the zero time so it starts full; an existing one keeps its
// tokens across a reload.
func (e *ipEntry) adopt(now time.Time, cfg *doorConfig) {
	if e.gen == cfg.gen {
		return
	}
	at := now
	if e.gen == 0 {
		at = time.Time{}
	}
	e.lim.SetBurstAt(at, int(cfg.hs.burst))
	e.lim.SetLimitAt(at, cfg.hs.limit)
	e.gen = cfg.gen
}

// full reports whether dropping e would lose nothing: no connections and a
// full (or unused) handshake bucket.
func (e *ipEntry) full(now time.Time) bool {
	return e.open == 0 && e.lim.TokensAt(now) >= float64(e.lim.Burst())
}

type ipShard struct {
	mu         sync.Mutex
	m          map[ipKey]*ipEntry
	head, tail *ipEntry // idle entries (open == 0), newest first
	peak       int      // largest len(m) since m was last rebuilt
	_          [24]byte // keep neighbouring shards' locks off this cache line
}

// ipTable is the sharded per-address table. Its size is bounded: inserting
// into a full shard evicts that shard's least recently used idle entry.
type ipTable struct {
	seed     maphash.Seed
	perShard int
	size     atomic.Int64
	shards   [ipShards]ipShard
}

func (t *ipTable) init(maxEntries int) {
	// A random seed: shard choice an attacker cannot aim at.
	t.seed = maphash.MakeSeed()
	t.perShard = max(1, maxEntries/ipShards)
	for i := range t.shards {
		t.shards[i].m = make(map[ipKey]*ipEntry)
	}
}

func (t *ipTable) shard(k ipKey) *ipShard {
	return &t.shards[maphash.Bytes(t.seed, k[:])%ipShards]
}

// retireBatch is how many expired entries an insert retires from its shard:
// more than one, so lazy trimming outpaces a steady trickle of new addresses.
const retireBatch = 2

// getLocked returns the entry for k, inserting an idle one if needed. s.mu
// must be held. evicted reports that a live idle entry was dropped early to
// make room (the table is full).
func (t *ipTable) getLocked(s *ipShard, k ipKey, now time.Time, ns int64, cfg *doorConfig) (e *ipEntry, evicted bool) {
	if e = s.m[k]; e != nil {
		return e, false
	}
	t.retireLocked(s, now, ns, cfg.idleEvict, retireBatch)
	if len(s.m) >= t.perShard && s.tail != nil {
		// Full: drop the least recently used idle entry. If it still had
		// handshake debt, that address gets a fresh bucket when it returns;
		// it lost the slot by being the quietest. With no idle entry at all
		// (every entry holds connections) we go over the cap instead: those
		// entries are bounded by open sockets.
		old := s.tail
		evicted = !old.full(now)
		t.deleteLocked(s, old)
	}
	e = &ipEntry{key: k, seen: ns}
	s.m[k] = e
	s.pushFront(e)
	s.peak = max(s.peak, len(s.m))
	t.size.Add(1)
	return e, evicted
}

// retireLocked walks the idle list from its oldest end, at most limit
// entries: expired entries with a full bucket are deleted; expired entries
// still owing tokens (a very slow rate) are re-armed for another idleEvict.
// It stops at the first entry that has not expired: the list is in seen order.
func (t *ipTable) retireLocked(s *ipShard, now time.Time, ns, idleEvict int64, limit int) {
	for ; limit > 0 && s.tail != nil; limit-- {
		e := s.tail
		if ns-e.seen < idleEvict {
			return
		}
		if e.full(now) {
			t.deleteLocked(s, e)
		} else {
			e.seen = ns
			s.moveFront(e)
		}
	}
}

func (t *ipTable) deleteLocked(s *ipShard, e *ipEntry) {
	s.unlink(e)
	delete(s.m, e.key)
	t.size.Add(-1)
}

// sweep retires every expired idle entry and rebuilds maps that shrank to a
// quarter of their peak: Go maps never give bucket memory back on delete.
func (t *ipTable) sweep(now time.Time, ns int64, cfg *doorConfig) {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		t.retireLocked(s, now, ns, cfg.idleEvict, len(s.m))
		if s.peak >= 256 && len(s.m) < s.peak/4 {
			m := make(map[ipKey]*ipEntry, len(s.m))
			for k, e := range s.m {
				m[k] = e
			}
			s.m = m
			s.peak = len(m)
		}
		s.mu.Unlock()
	}
}

func (s *ipShard) pushFront(e *ipEntry) {
	e.prev, e.next = nil, s.head
	if s.head != nil {
		s.head.prev = e
	} else {
		s.tail = e
	}
	s.head = e
}

// unlink removes e from the idle list; a no-op if it is not on it.
func (s *ipShard) unlink(e *ipEntry) {
	if e.prev == nil && s.head != e {
		return
	}
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		s.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		s.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

func (s *ipShard) moveFront(e *ipEntry) {
	if s.head == e {
		return
	}
	s.unlink(e)
	s.pushFront(e)
}

// userTable counts open connections per user. Only users with open
// connections have an entry, so it is bounded by the connection count.
type userTable struct {
	seed   maphash.Seed
	shards [userShards]userShard
}

type userShard struct {
	mu sync.Mutex
	m  map[string]int32
	_  [48]byte // keep neighbouring shards' locks off this cache line
}

func (t *userTable) init() {
	t.seed = maphash.MakeSeed()
	for i := range t.shards {
		t.shards[i].m = make(map[string]int32)
	}
}

func (t *userTable) shard(user string) *userShard {
	return &t.shards[maphash.String(t.seed, user)%userShards]
}

// acquire counts one connection for user unless limit > 0 and it is reached.
func (t *userTable) acquire(user string, limit int64) bool {
	s := t.shard(user)
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.m[user]
	if limit > 0 && int64(n) >= limit {
		return false
	}
	if n == 0 {
		// The map outlives the handshake; don't pin a caller's larger buffer.
		user = cloneString(user)
	}
	s.m[user] = n + 1
	return true
}

func (t *userTable) release(user string) {
	s := t.shard(user)
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := s.m[user]; n > 1 {
		s.m[user] = n - 1
	} else {
		delete(s.m, user)
	}
}

func (t *userTable) count(user string) int {
	s := t.shard(user)
	s.mu.Lock()
	defer s.mu.Unlock()
	return int(s.m[user])
}

func cloneString(s string) string { return string(append([]byte(nil), s...)) }
