package bridge

import (
	"context"
	"errors"
)

// Broker carries pushes, subscription changes and connection commands to
// sockets, wherever they live. The push API and the SSE consumer talk only to
// a Broker, so they work the same on one replica (MemoryBroker, straight into
// the local hub) and in a cluster (Redis pub/sub between replicas).
//
// Cluster rules every implementation follows:
//   - Connection ids carry the id of the node that owns them, so a command
//     for one connection goes to one replica, not to all of them.
//   - Deliveries on other replicas cannot be counted synchronously: results
//     say exactly what happened on this replica and how many other replicas
//     were handed the work (Remote) or could not be reached (Failed).
//   - A failing cluster link never blocks local delivery.
//
// All methods are safe for concurrent use.
type Broker interface {
	// Publish delivers m to every socket t selects, on this replica and,
	// unless o.LocalOnly, on the others. It returns an error only when
	// nothing could be attempted (closed broker, cancelled ctx); a cluster
	// that cannot be reached while local delivery worked shows in
	// PublishResult.Failed instead. Publish does not keep t after it
	// returns (callers reuse it); m.Data may be kept, and callers never
	// modify it after handing it over.
	Publish(ctx context.Context, t *Target, m Message, o PublishOptions) (PublishResult, error)
	// Subscribe adds channels to one connection (conn set) or to every
	// socket of a user (user set), wherever those sockets live.
	Subscribe(ctx context.Context, conn, user string, channels []string) (ChangeResult, error)
	// Unsubscribe is the reverse of Subscribe.
	Unsubscribe(ctx context.Context, conn, user string, channels []string) (ChangeResult, error)
	// Disconnect closes one connection with a close code and reason. It
	// reports false when the connection is known not to exist; a request
	// handed to another replica that cannot confirm it reports true.
	Disconnect(ctx context.Context, id string, code int, reason string) (bool, error)
	// Lookup returns one connection's state; ok is false when it is gone.
	Lookup(ctx context.Context, id string) (ConnState, bool, error)
	// List returns the sockets of a user and/or in a channel (both empty:
	// every socket) that the broker can see. A clustered broker may list
	// only what it can reach within ctx.
	List(ctx context.Context, user, channel string) ([]ConnState, error)
	// ChannelsChanged is called by the hub when channels gain their first
	// local subscriber (added) or lose their last one (removed), so a
	// clustered broker listens to exactly the channels this replica needs.
	// It must not block the hub: implementations queue the change.
	ChannelsChanged(added, removed []string)
	// Ready reports whether the broker can do its job, with a short
	// human-readable detail for /readyz (e.g. "redis: connection refused").
	// A clustered broker that lost its link but still delivers locally may
	// report true with a detail.
	Ready() (ok bool, detail string)
	// Close stops the broker; later calls fail with ErrBrokerClosed.
	Close() error
}

// PublishOptions tune one Publish.
type PublishOptions struct {
	// LocalOnly keeps the message on this replica (SSE streams with
	// scope "local", where every replica consumes the stream itself).
	LocalOnly bool
}

// PublishResult is what is known about one Publish.
type PublishResult struct {
	// Counts are this replica's deliveries, exact.
	Counts
	// Remote is how many other replicas the message was handed to; their
	// deliveries are not in Counts. Zero when there are none (or no cluster).
	Remote int
	// Failed counts cluster publishes that could not be sent (e.g. Redis
	// unreachable): sockets on other replicas may have missed the message.
	Failed int
}

// ChangeResult is what is known about one Subscribe or Unsubscribe.
type ChangeResult struct {
	// Changed is how many sockets on this replica changed, exact.
	Changed int
	// Remote is how many other replicas the change was handed to.
	Remote int
	// Failed counts cluster messages that could not be sent.
	Failed int
}

// ErrBrokerClosed is returned by a Broker after Close.
var ErrBrokerClosed = errors.New("broker closed")
