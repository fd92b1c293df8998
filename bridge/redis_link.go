package bridge

// The subscriber side of RedisBroker: the one Redis subscriber connection,
// its health and state, the messages that arrive on it, the replies they
// cause, and the batched channel subscriptions.

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
)

// readLoop is the only reader of the subscriber connection. It hands every
// message to the hub on this goroutine, in arrival order (that is what
// keeps per-channel order), and keeps the link alive: go-redis reconnects
// and resubscribes every topic it was asked for; this loop adds backoff,
// a health check and the up/down state.
func (b *RedisBroker) readLoop() {
	defer b.wg.Done()
	// go-redis remembers these topics even when the subscribe fails, and
	// subscribes them again on every new connection.
	if err := b.ps.Subscribe(b.ctx, b.topicAll, b.topicNode); err != nil && b.ctx.Err() == nil {
		b.linkDown(err)
	}
	var e redisEnvelope
	backoff := redisMinBackoff
	wait := time.NewTimer(time.Hour)
	wait.Stop()
	pinged := false
	for {
		var msg any
		var err error
		if pinged {
			// A read deadline from ctx (not a timeout argument) makes
			// go-redis treat silence as a broken connection and redial.
			rctx, cancel := context.WithTimeout(b.ctx, b.opts.HealthInterval)
			msg, err = b.ps.ReceiveTimeout(rctx, 0)
			cancel()
		} else {
			msg, err = b.ps.ReceiveTimeout(b.ctx, b.opts.HealthInterval)
		}
		if err != nil {
			if b.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if !pinged && errors.As(err, &ne) && ne.Timeout() {
				// A quiet link: ask Redis to prove it is still there.
				if err = b.ps.Ping(b.ctx); err == nil {
					pinged = true
					continue
				}
			}
			pinged = false
			b.linkDown(err)
			wait.Reset(backoff)
			select {
			case <-b.ctx.Done():
				return
			case <-wait.C:
			}
			backoff = min(2*backoff, redisMaxBackoff)
			continue
		}
		backoff, pinged = redisMinBackoff, false
		b.linkUp()
		switch m := msg.(type) {
		case *redis.Message:
			b.handle(m.Payload, &e)
		case *redis.Subscription:
			b.confMu.Lock()
			switch m.Kind {
			case "subscribe":
				b.confirmed[m.Channel] = struct{}{}
			case "unsubscribe":
				delete(b.confirmed, m.Channel)
			}
			b.confMu.Unlock()
		}
	}
}

// linkUp marks the link up (cheap when it already is).
func (b *RedisBroker) linkUp() {
	if b.upFlag.Load() {
		return
	}
	b.linkMu.Lock()
	now := b.opts.Now()
	down := now.Sub(b.since)
	b.since, b.lastErr = now, ""
	b.upFlag.Store(true)
	b.linkMu.Unlock()
	b.log.Info("redis link up", "was_down", down.Round(time.Millisecond).String())
}

// linkDown marks the link down; only the transition is logged.
func (b *RedisBroker) linkDown(err error) {
	b.confMu.Lock()
	clear(b.confirmed)
	b.confMu.Unlock()
	b.linkMu.Lock()
	b.lastErr = err.Error()
	wasUp := b.upFlag.Swap(false)
	if wasUp {
		b.since = b.opts.Now()
	}
	b.linkMu.Unlock()
	if wasUp {
		b.disconnects.Inc()
		b.log.Warn("redis link down; delivering to local sockets only until it is back", "error", err)
	}
}

// handle acts on one message from Redis.
func (b *RedisBroker) handle(payload string, e *redisEnvelope) {
	if err := decodeEnvelope(payload, e); err != nil {
		b.invalid.Inc()
		b.log.Debug("dropping undecodable cluster message", "bytes", len(payload))
		return
	}
	if e.inst == b.inst {
		return // our own publish, already delivered locally
	}
	b.received.Inc()
	switch e.kind {
	case wireDeliver:
		// Sockets keep the bytes after this returns; the payload string
		// must not be aliased as a mutable slice.
		b.hub.Deliver(&e.target, Message{Binary: e.flags&flagBinary != 0, Data: []byte(e.data)})
	case wireSubscribe:
		b.hub.Subscribe(e.conn, e.user, e.chans)
	case wireUnsubscribe:
		b.hub.Unsubscribe(e.conn, e.user, e.chans)
	case wireDisconnect:
		found := b.hub.Disconnect(e.conn, e.code, e.reason)
		if e.req != 0 {
			b.reply(e, found, nil)
		}
	case wireLookup:
		st, found := b.hub.Lookup(e.conn)
		var data []byte
		if found {
			var err error
			if data, err = json.Marshal(st); err != nil {
				found = false
			}
		}
		b.reply(e, found, data)
	case wireList:
		list := b.hub.List(e.user, e.channel)
		if len(list) > redisMaxListReply {
			list = list[:redisMaxListReply]
		}
		if list == nil {
			list = []ConnState{}
		}
		data, err := json.Marshal(list)
		if err == nil {
			b.reply(e, true, data)
		}
	case wireReply:
		b.reqMu.Lock()
		ch := b.pending[e.req]
		b.reqMu.Unlock()
		if ch != nil {
			select {
			case ch <- redisReply{found: e.flags&flagFound != 0, data: e.data}:
			default:
			}
		}
	}
}

// reply queues an answer to the requesting node without blocking the
// reader: a full queue drops it and the requester times out.
func (b *RedisBroker) reply(e *redisEnvelope, found bool, data []byte) {
	if CheckNodeID(e.origin) != nil {
		b.invalid.Inc()
		return
	}
	var flags byte
	if found {
		flags = flagFound
	}
	w := wireWriter{b: make([]byte, 0, wireHeaderLen+len(b.node)+12+len(data))}
	w.header(wireReply, flags, b.inst, b.node)
	w.num(e.req)
	w.b = append(w.b, data...)
	select {
	case b.replies <- redisOut{topic: b.nodePrefix + e.origin, payload: w.b}:
	default:
		b.repliesDropped.Inc()
	}
}

// replyLoop publishes replies, so a slow Redis never stalls the reader.
func (b *RedisBroker) replyLoop() {
	defer b.wg.Done()
	for {
		select {
		case <-b.ctx.Done():
			return
		case r := <-b.replies:
			if _, err := b.publish(b.ctx, r.topic, r.payload); err != nil {
				b.log.Debug("cluster reply not sent", "error", err)
			}
		}
	}
}

// subLoop turns batches of wanted channel changes into SUBSCRIBE and
// UNSUBSCRIBE commands on the subscriber connection.
func (b *RedisBroker) subLoop() {
	defer b.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-b.kick:
		}
		// Let a burst of joins and leaves settle into one batch.
		timer.Reset(b.opts.SubscribeBatch)
		select {
		case <-b.ctx.Done():
			return
		case <-timer.C:
		}
		b.subMu.Lock()
		want := b.want
		b.want = make(map[string]bool, len(want))
		b.subMu.Unlock()
		var add, del []string
		for ch, on := range want {
			_, have := b.active[ch]
			switch {
			case on && !have:
				b.active[ch] = struct{}{}
				add = append(add, b.chPrefix+ch)
			case !on && have:
				delete(b.active, ch)
				del = append(del, b.chPrefix+ch)
			}
		}
		b.activeN.Store(int64(len(b.active)))
		// go-redis updates its own topic set even when the command fails
		// (Redis down), and subscribes that set on every reconnect, so a
		// failure here needs no retry.
		for c := range slices.Chunk(del, redisSubscribeChunk) {
			if err := b.ps.Unsubscribe(b.ctx, c...); err != nil && b.ctx.Err() == nil {
				b.log.Debug("redis unsubscribe deferred to reconnect", "topics", len(c), "error", err)
			}
		}
		for c := range slices.Chunk(add, redisSubscribeChunk) {
			if err := b.ps.Subscribe(b.ctx, c...); err != nil && b.ctx.Err() == nil {
				b.log.Debug("redis subscribe deferred to reconnect", "topics", len(c), "error", err)
			}
		}
	}
}
