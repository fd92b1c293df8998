package bridge

// The publishing side of RedisBroker: every PUBLISH of a replica goes
// through one goroutine that pipelines what queued up meanwhile.

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// putBuf returns a push buffer to the pool unless it grew too big.
func (b *RedisBroker) putBuf(bp *[]byte, buf []byte) {
	if cap(buf) > redisMaxPooledBuf {
		return
	}
	*bp = buf[:0]
	b.bufs.Put(bp)
}

// publish sends one PUBLISH and returns how many subscribers Redis handed
// it to. The caller may reuse payload once it returns: the command has
// been written to the socket (or failed) by then.
func (b *RedisBroker) publish(ctx context.Context, topic string, payload []byte) (int, error) {
	r := b.reqs.Get().(*redisPub)
	r.topic, r.payload = topic, payload
	select {
	case b.pubq <- r:
	case <-ctx.Done():
		r.topic, r.payload = "", nil
		b.reqs.Put(r)
		b.pubFailures.Inc()
		return 0, fmt.Errorf("redis publish: %w", ctx.Err())
	case <-b.pubDone:
		return 0, ErrBrokerClosed
	}
	// No ctx here: pubLoop finishes every batch within the client's
	// timeouts, and abandoning r would let it reach Redis after the
	// caller reused payload.
	select {
	case <-r.done:
	case <-b.pubDone:
		return 0, ErrBrokerClosed // r may still be queued: not reused
	}
	n, err := r.n, r.err
	r.topic, r.payload, r.err = "", nil, nil
	b.reqs.Put(r)
	if err != nil {
		b.pubFailures.Inc()
		return 0, fmt.Errorf("redis publish: %w", err)
	}
	b.published.Inc()
	return int(n), nil
}

// redisPub is one PUBLISH handed to pubLoop.
type redisPub struct {
	topic   string
	payload []byte
	n       int64
	err     error
	done    chan struct{} // capacity 1, reused with the request
}

// pubLoop sends every PUBLISH of this replica, pipelining the ones that
// queued up while the previous batch was in flight. A lone push costs one
// round trip as before; concurrent pushes share round trips (throughput is
// batch size / RTT instead of 1 / RTT). Each caller waits for its own
// command, so one publisher's messages still reach Redis in order.
func (b *RedisBroker) pubLoop() {
	defer b.wg.Done()
	defer close(b.pubDone)
	batch := make([]*redisPub, 0, redisMaxPipeline)
	cmds := make([]*redis.IntCmd, 0, redisMaxPipeline)
	for {
		select {
		case <-b.ctx.Done():
			return
		case r := <-b.pubq:
			batch = append(batch[:0], r)
		}
	fill:
		for len(batch) < redisMaxPipeline {
			select {
			case r := <-b.pubq:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		if len(batch) == 1 {
			r := batch[0]
			r.n, r.err = b.client.Publish(b.ctx, r.topic, r.payload).Result()
		} else {
			pipe := b.client.Pipeline()
			for _, r := range batch {
				cmds = append(cmds, pipe.Publish(b.ctx, r.topic, r.payload))
			}
			_, _ = pipe.Exec(b.ctx) // each command carries its own error
			for i, r := range batch {
				r.n, r.err = cmds[i].Result()
			}
			clear(cmds)
			cmds = cmds[:0]
		}
		for _, r := range batch {
			r.done <- struct{}{}
		}
		clear(batch)
	}
}
