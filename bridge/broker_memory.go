package bridge

import (
	"context"
	"sync/atomic"
)

// MemoryBroker is the single-replica Broker: every call goes straight to the
// local hub, so counts are exact and nothing is ever remote.
type MemoryBroker struct {
	hub    Hub
	closed atomic.Bool
}

var _ Broker = (*MemoryBroker)(nil)

// NewMemoryBroker returns a broker that delivers to h.
func NewMemoryBroker(h Hub) *MemoryBroker {
	return &MemoryBroker{hub: h}
}

func (b *MemoryBroker) check(ctx context.Context) error {
	if b.closed.Load() {
		return ErrBrokerClosed
	}
	return ctx.Err()
}

// Publish delivers m to the local sockets t selects.
func (b *MemoryBroker) Publish(ctx context.Context, t *Target, m Message, _ PublishOptions) (PublishResult, error) {
	if err := b.check(ctx); err != nil {
		return PublishResult{}, err
	}
	if t == nil || t.Empty() {
		return PublishResult{}, nil
	}
	return PublishResult{Counts: b.hub.Deliver(t, m)}, nil
}

// Subscribe adds channels to a local connection or to a user's local sockets.
func (b *MemoryBroker) Subscribe(ctx context.Context, conn, user string, channels []string) (ChangeResult, error) {
	if err := b.check(ctx); err != nil {
		return ChangeResult{}, err
	}
	return ChangeResult{Changed: b.hub.Subscribe(conn, user, channels)}, nil
}

// Unsubscribe removes channels from a local connection or a user's local sockets.
func (b *MemoryBroker) Unsubscribe(ctx context.Context, conn, user string, channels []string) (ChangeResult, error) {
	if err := b.check(ctx); err != nil {
		return ChangeResult{}, err
	}
	return ChangeResult{Changed: b.hub.Unsubscribe(conn, user, channels)}, nil
}

// Disconnect closes a local connection.
func (b *MemoryBroker) Disconnect(ctx context.Context, id string, code int, reason string) (bool, error) {
	if err := b.check(ctx); err != nil {
		return false, err
	}
	return b.hub.Disconnect(id, code, reason), nil
}

// Lookup returns a local connection's state.
func (b *MemoryBroker) Lookup(ctx context.Context, id string) (ConnState, bool, error) {
	if err := b.check(ctx); err != nil {
		return ConnState{}, false, err
	}
	st, ok := b.hub.Lookup(id)
	return st, ok, nil
}

// List returns local sockets of a user and/or in a channel.
func (b *MemoryBroker) List(ctx context.Context, user, channel string) ([]ConnState, error) {
	if err := b.check(ctx); err != nil {
		return nil, err
	}
	return b.hub.List(user, channel), nil
}

// ChannelsChanged does nothing: one replica needs no channel listeners.
func (b *MemoryBroker) ChannelsChanged(added, removed []string) {}

// Ready always reports true: there is no link that could be down.
func (b *MemoryBroker) Ready() (bool, string) {
	if b.closed.Load() {
		return false, "broker closed"
	}
	return true, ""
}

// Close makes later calls fail with ErrBrokerClosed.
func (b *MemoryBroker) Close() error {
	b.closed.Store(true)
	return nil
}
