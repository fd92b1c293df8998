package limits

import "math"

// ConnLimiter enforces MessageRate and ByteRate on one connection with two
// hand-rolled token buckets sharing one timestamp. It lives on every socket,
// so it is 32 bytes (two rate.Limiter values would be 160), holds no map and
// starts no goroutine. It reads the Door's current rates on every call, so a
// reload applies to open connections at once.
//
// A ConnLimiter is not safe for concurrent use: it belongs to the
// connection's read loop.
type ConnLimiter struct {
	d     *Door
	last  int64   // door nanos of the last refill
	msgs  float64 // message tokens
	bytes float64 // byte tokens; may go negative after an oversized message
}

// NewConnLimiter returns a ConnLimiter with full buckets.
func (d *Door) NewConnLimiter() *ConnLimiter {
	c := new(ConnLimiter)
	c.Init(d)
	return c
}

// Init (re)sets c to full buckets on d. It lets a connection embed a
// ConnLimiter by value instead of allocating one.
func (c *ConnLimiter) Init(d *Door) {
	cfg := d.cfg.Load()
	*c = ConnLimiter{d: d, last: d.nanos(d.now()), msgs: cfg.msg.fullBucket(), bytes: cfg.bytes.fullBucket()}
}

// Allow accounts one message of n bytes. It returns "" when the message may
// pass, else ReasonMessageRate or ReasonByteRate (checked in that order); a
// refused message takes no tokens. A message larger than the byte burst
// passes when the bucket is full and leaves it in debt, so a legal message
// (≤ MaxMessageSize) is never refused forever. Refusals are counted in
// wsidecar_message_rejections_total; what to do (reply, drop, close) is the
// caller's RatePolicy. It does not allocate.
func (c *ConnLimiter) Allow(n int) Reason {
	cfg := c.d.cfg.Load()
	if !cfg.msg.on && !cfg.bytes.on {
		return ""
	}
	now := c.d.nanos(c.d.now())
	elapsed := float64(max(now-c.last, 0))
	c.last = now
	c.msgs = refill(c.msgs, elapsed, cfg.msg)
	c.bytes = refill(c.bytes, elapsed, cfg.bytes)
	if cfg.msg.on && c.msgs < 1 {
		c.d.msgRejected.Inc()
		return ReasonMessageRate
	}
	if cfg.bytes.on && c.bytes < min(float64(n), cfg.bytes.burst) {
		c.d.byteRejected.Inc()
		return ReasonByteRate
	}
	if cfg.msg.on {
		c.msgs--
	}
	if cfg.bytes.on {
		c.bytes -= float64(n)
	}
	return ""
}

// refill adds elapsed nanoseconds' worth of tokens, capped at the burst. An
// unlimited rate keeps its bucket full, so turning the limit on at a reload
// starts from a full bucket.
func refill(tokens, elapsed float64, r bucketRate) float64 {
	if !r.on {
		return r.fullBucket()
	}
	return min(tokens+elapsed*r.perNano, r.burst)
}

// fullBucket is a full bucket for r. An unlimited rate's bucket is +Inf, so
// it stays full through any debt and through a reload that turns it on (the
// next refill caps it at the new burst).
func (r bucketRate) fullBucket() float64 {
	if !r.on {
		return math.Inf(1)
	}
	return r.burst
}
