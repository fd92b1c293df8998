package bridge

// Connection commands of RedisBroker that need an answer from the replica
// holding the socket: the request carries an id, the owner answers on the
// asker's node topic, and the asker waits at most RequestTimeout.

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// Disconnect closes a connection. For a connection on another replica it
// asks that replica and waits up to RequestTimeout for its answer: false
// when the replica says the connection does not exist or no replica
// listens on that node's topic, true when it closed it or did not answer
// in time (handed over, unconfirmed). An error means Redis could not be
// reached.
func (b *RedisBroker) Disconnect(ctx context.Context, id string, code int, reason string) (bool, error) {
	if err := b.check(ctx); err != nil {
		return false, err
	}
	if b.isLocal(id) {
		return b.hub.Disconnect(id, code, reason), nil
	}
	if code < 0 || code > 4999 {
		code = 1000
	}
	req, replies := b.newRequest(1)
	defer b.endRequest(req)
	w := wireWriter{}
	w.header(wireDisconnect, 0, b.inst, b.node)
	w.num(req)
	w.str(id)
	w.num(uint64(code))
	w.str(reason)
	n, err := b.publish(ctx, b.nodePrefix+NodeOf(id), w.b)
	if err != nil {
		return false, fmt.Errorf("disconnect on node %q: %w", NodeOf(id), err)
	}
	if n == 0 {
		return false, nil
	}
	r, ok := b.await(ctx, replies)
	if !ok {
		return true, nil
	}
	return r.found, nil
}

// Lookup returns one connection's state, asking its replica when it lives
// elsewhere. It fails when that replica does not answer within
// RequestTimeout.
func (b *RedisBroker) Lookup(ctx context.Context, id string) (ConnState, bool, error) {
	if err := b.check(ctx); err != nil {
		return ConnState{}, false, err
	}
	if b.isLocal(id) {
		st, ok := b.hub.Lookup(id)
		return st, ok, nil
	}
	node := NodeOf(id)
	req, replies := b.newRequest(1)
	defer b.endRequest(req)
	w := wireWriter{}
	w.header(wireLookup, 0, b.inst, b.node)
	w.num(req)
	w.str(id)
	n, err := b.publish(ctx, b.nodePrefix+node, w.b)
	if err != nil {
		return ConnState{}, false, fmt.Errorf("lookup on node %q: %w", node, err)
	}
	if n == 0 {
		return ConnState{}, false, nil
	}
	r, ok := b.await(ctx, replies)
	if !ok {
		return ConnState{}, false, fmt.Errorf("lookup on node %q: no answer within %v", node, b.opts.RequestTimeout)
	}
	if !r.found {
		return ConnState{}, false, nil
	}
	var st ConnState
	if err := json.Unmarshal([]byte(r.data), &st); err != nil {
		return ConnState{}, false, fmt.Errorf("lookup on node %q: bad answer: %w", node, err)
	}
	return st, true, nil
}

// List returns the matching sockets of every replica that answers within
// RequestTimeout (at most 10,000 per replica), sorted by id. When Redis
// cannot be reached it returns this replica's sockets alone.
func (b *RedisBroker) List(ctx context.Context, user, channel string) ([]ConnState, error) {
	if err := b.check(ctx); err != nil {
		return nil, err
	}
	out := b.hub.List(user, channel)
	req, replies := b.newRequest(redisMaxListReplies)
	defer b.endRequest(req)
	w := wireWriter{}
	w.header(wireList, 0, b.inst, b.node)
	w.num(req)
	w.str(user)
	w.str(channel)
	n, err := b.publish(ctx, b.topicAll, w.b)
	if err != nil {
		b.log.Debug("list: other replicas not asked", "error", err)
		return out, nil
	}
	expect := min(max(0, n-b.self(b.topicAll)), redisMaxListReplies)
	timer := time.NewTimer(b.opts.RequestTimeout)
	defer timer.Stop()
	for ; expect > 0; expect-- {
		var r redisReply
		select {
		case r = <-replies:
		case <-timer.C:
			b.log.Debug("list: some replicas did not answer", "missing", expect)
			expect = 0
			continue
		case <-ctx.Done():
			expect = 0
			continue
		case <-b.ctx.Done():
			return nil, ErrBrokerClosed
		}
		var part []ConnState
		if err := json.Unmarshal([]byte(r.data), &part); err != nil {
			b.invalid.Inc()
			continue
		}
		out = append(out, part...)
	}
	slices.SortFunc(out, func(a, b ConnState) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

// newRequest registers a request id whose replies arrive on the returned
// channel.
func (b *RedisBroker) newRequest(capacity int) (uint64, chan redisReply) {
	ch := make(chan redisReply, capacity)
	b.reqMu.Lock()
	b.reqSeq++
	id := b.reqSeq
	b.pending[id] = ch
	b.reqMu.Unlock()
	return id, ch
}

func (b *RedisBroker) endRequest(id uint64) {
	b.reqMu.Lock()
	delete(b.pending, id)
	b.reqMu.Unlock()
}

// await waits for one reply, RequestTimeout or ctx, whichever comes first.
func (b *RedisBroker) await(ctx context.Context, replies <-chan redisReply) (redisReply, bool) {
	timer := time.NewTimer(b.opts.RequestTimeout)
	defer timer.Stop()
	select {
	case r := <-replies:
		return r, true
	case <-timer.C:
	case <-ctx.Done():
	case <-b.ctx.Done():
	}
	return redisReply{}, false
}
