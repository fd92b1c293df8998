package main

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// hist is a log-linear latency histogram in microseconds: exact below
// 128 µs, then 64 buckets per power of two (under 1.6% error), up to about
// 20 minutes. Recording is one atomic add, so thousands of reader
// goroutines share one without a lock.
type hist struct {
	b [histBuckets]atomic.Uint64
}

const (
	histSub     = 64
	histBuckets = 40 * histSub
)

func histIndex(us uint64) int {
	if us < 2*histSub {
		return int(us)
	}
	shift := bits.Len64(us) - 7 // us>>shift is in [64, 128)
	i := shift*histSub + int(us>>shift)
	if i >= histBuckets {
		return histBuckets - 1
	}
	return i
}

// histLower is the smallest value in bucket i.
func histLower(i int) uint64 {
	if i < 2*histSub {
		return uint64(i)
	}
	shift := i/histSub - 1
	return uint64(i-shift*histSub) << shift
}

func (h *hist) record(d time.Duration) {
	us := d.Microseconds()
	if us < 0 {
		us = 0
	}
	h.b[histIndex(uint64(us))].Add(1)
}

// snapshot returns the non-empty buckets as [index, count] pairs.
func (h *hist) snapshot() [][2]uint64 {
	var out [][2]uint64
	for i := range h.b {
		if n := h.b[i].Load(); n > 0 {
			out = append(out, [2]uint64{uint64(i), n})
		}
	}
	return out
}

func (h *hist) reset() {
	for i := range h.b {
		h.b[i].Store(0)
	}
}

// merged is a histogram summed over the client processes.
type merged struct {
	counts [histBuckets]uint64
	n      uint64
}

func (m *merged) add(pairs [][2]uint64) {
	for _, p := range pairs {
		if p[0] < histBuckets {
			m.counts[p[0]] += p[1]
			m.n += p[1]
		}
	}
}

// quantile returns the q-quantile (0 < q ≤ 1), or -1 with no samples.
func (m *merged) quantile(q float64) time.Duration {
	if m.n == 0 {
		return -1
	}
	rank := uint64(q*float64(m.n) + 0.5)
	rank = max(rank, 1)
	var seen uint64
	for i, c := range m.counts {
		seen += c
		if seen >= rank {
			return time.Duration(histLower(i)) * time.Microsecond
		}
	}
	return time.Duration(histLower(histBuckets-1)) * time.Microsecond
}
