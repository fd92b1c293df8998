package bridge

// RedisBroker: replicas share fan-out over Redis pub/sub.
//
// Topics, all under the configured prefix P (default "wsidecar"):
//
//	P:ch:<channel>  pushes to one channel. A replica SUBSCRIBEs while it has
//	                at least one local subscriber to the channel.
//	P:node:<node>   everything for one replica: pushes to its connections,
//	                subscribe/unsubscribe/disconnect/lookup requests for
//	                one of its connections, and replies to its requests.
//	P:all           pushes that involve users or broadcast (every replica
//	                checks its own sockets), pushes that mix several
//	                selectors, user subscribe/unsubscribe, list requests.
//
// Every replica listens on P:all and P:node:<its id> for its whole life,
// and on the channel topics its hub asks for. All topics share one
// subscriber connection, so a replica sees messages in the order Redis
// processed the PUBLISHes: per-channel order from one publisher holds on
// every replica, and the reader hands them to the hub in that order on one
// goroutine.
//
// Each message is one redisEnvelope (see redis_wire.go for the byte layout)
// carrying the origin node, an instance id, the kind, the whole target
// (connections, users, channels, broadcast, exclude) and the payload.
//
// One push is published once per replica scope, never once per selector,
// so a socket matched by a channel and by its user gets the message once:
//   - channels only, one channel: one PUBLISH on P:ch:<channel>;
//   - connections only: one PUBLISH per owning node on P:node:<node>
//     (the node is the part of the id before its last "."; ids of this
//     replica are delivered locally only);
//   - anything else (users, broadcast, several channels, a channel plus
//     remote connections): one PUBLISH on P:all with the whole target.
//
// Local sockets are always served straight through the hub first, with
// exact counts; the publishing replica skips the echo of its own messages
// by instance id.
//
// Results: Counts are this replica's deliveries, exact. Remote is the
// number of other replicas Redis handed the message to (PUBLISH's receiver
// count minus this replica's own subscription); their deliveries are not
// counted. Failed counts PUBLISHes that could not reach Redis.
//
// Connection commands go to the owning node's topic. Disconnect and Lookup
// are request/reply: the request carries an id, the owner answers on the
// asker's node topic, and the asker waits up to RequestTimeout. List asks
// every replica on P:all and merges the answers that arrive in time.
// Subscribe and Unsubscribe for a remote connection are fire and forget
// (Remote is 1 when the owning node listens).
//
// Delivery across replicas is at most once, like Redis pub/sub itself: a
// replica whose subscriber connection is down misses what is published
// meanwhile; nothing is queued or replayed. During a Redis outage local
// delivery goes on, PUBLISHes fail fast (bounded by CallTimeout) and are
// counted, and go-redis redials in the background; when Redis is back the
// subscriber connection resubscribes P:all, the node topic and every
// channel topic this replica needs, by itself.
//
// The code: this file (options, routing, the Broker methods),
// redis_publish.go (pipelined PUBLISH), redis_link.go (the subscriber
// connection, incoming messages, batched subscriptions),
// redis_requests.go (commands that wait for another replica's answer),
// redis_wire.go (the envelope's byte layout).

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/wsidecar/wsidecar/config"
)

// RedisOptions tune a RedisBroker. Only Logger and Metrics are usually set;
// the rest have defaults made for a pod-local sidecar.
type RedisOptions struct {
	// Logger receives link state changes and dropped messages. nil: discard.
	Logger *slog.Logger
	// Metrics receives the wsidecar_cluster_* metrics. nil: a private set.
	Metrics *metrics.Set
	// TLSConfig replaces the TLS settings a rediss:// URL implies (e.g. to
	// trust a private CA). nil: system roots, server name from the URL.
	// Ignored for redis:// URLs.
	TLSConfig *tls.Config
	// CallTimeout bounds each Redis command (dial, write, read), so a push
	// during an outage fails fast instead of hanging. Default 1s.
	CallTimeout time.Duration
	// RequestTimeout bounds how long Disconnect, Lookup and List wait for
	// another replica's answer. Default 2s.
	RequestTimeout time.Duration
	// SubscribeBatch is how long channel subscription changes are gathered
	// before they go to Redis as one SUBSCRIBE and one UNSUBSCRIBE; a join
	// and a leave of one channel within it cancel out. Default 25ms.
	SubscribeBatch time.Duration
	// HealthInterval is how long the subscriber connection may be silent
	// before a PING is sent; without an answer within another interval the
	// link counts as dead and is re-established. Default 15s.
	HealthInterval time.Duration
	// Now is the clock for link state timestamps. nil: time.Now.
	Now func() time.Time
}

// Limits of the cluster protocol.
const (
	// redisSubscribeChunk caps the topics in one SUBSCRIBE/UNSUBSCRIBE command.
	redisSubscribeChunk = 512
	// redisMaxListReply caps the sockets one replica returns to a List request,
	// so one answer stays a Redis message of a couple of megabytes at most.
	redisMaxListReply = 10000
	// redisMaxListReplies caps the replica answers a List waits for.
	redisMaxListReplies = 256
	// redisMaxPipeline caps the PUBLISHes sent in one pipeline.
	redisMaxPipeline = 128
	// redisPublishQueue bounds PUBLISHes waiting for the pipeline; callers wait
	// (bounded by their ctx) when it is full.
	redisPublishQueue = 1024
	// redisReplyQueue bounds replies waiting to be published; when full (Redis
	// slow or down) further replies are dropped and the asker times out.
	redisReplyQueue = 64
	// redisMaxPooledBuf keeps huge pushes from pinning their buffers in the pool.
	redisMaxPooledBuf = 64 << 10
	// Backoff bounds between attempts to re-establish the subscriber link.
	redisMinBackoff = 50 * time.Millisecond
	redisMaxBackoff = 2 * time.Second
)

// RedisBroker is the clustered Broker: local sockets through the hub, other
// replicas through Redis pub/sub. See the file comment for topics and
// guarantees.
type RedisBroker struct {
	hub  Hub
	log  *slog.Logger
	opts RedisOptions
	node string
	inst uint64 // random per broker: tells our own echoes apart

	topicAll, topicNode  string
	chPrefix, nodePrefix string

	client *redis.Client
	ps     *redis.PubSub // the one subscriber connection

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool

	// Channel subscriptions. ChannelsChanged records the latest wanted
	// state per channel in want and kicks subLoop, which alone owns active
	// (what go-redis has been asked to subscribe).
	subMu   sync.Mutex
	want    map[string]bool
	kick    chan struct{}
	active  map[string]struct{}
	activeN atomic.Int64

	// Link state, owned by the reader.
	upFlag    atomic.Bool
	linkMu    sync.Mutex
	since     time.Time // of the last up/down transition
	lastErr   string
	confMu    sync.RWMutex
	confirmed map[string]struct{} // topics Redis confirmed on the current link

	// Requests awaiting another replica's reply.
	reqMu   sync.Mutex
	reqSeq  uint64
	pending map[uint64]chan redisReply

	replies chan redisOut

	pubq    chan *redisPub // PUBLISHes waiting for pubLoop
	pubDone chan struct{}  // closed when pubLoop has stopped
	reqs    sync.Pool      // *redisPub

	bufs sync.Pool // *[]byte

	published      *metrics.Counter // PUBLISH commands Redis accepted
	pubFailures    *metrics.Counter // PUBLISH commands that could not reach Redis
	received       *metrics.Counter // messages from other replicas handled
	invalid        *metrics.Counter // messages that could not be decoded
	disconnects    *metrics.Counter // times the subscriber link went down
	repliesDropped *metrics.Counter // replies dropped because the reply queue was full
}

var _ Broker = (*RedisBroker)(nil)

// redisReply is one answer to a request.
type redisReply struct {
	found bool
	data  string
}

// redisOut is a reply waiting to be published.
type redisOut struct {
	topic   string
	payload []byte
}

// NewRedisBroker returns a broker that delivers to h and shares pushes with
// the other replicas through the Redis at cfg.Redis.URL. It does not wait
// for Redis: the link is established (and re-established) in the
// background, and local delivery works meanwhile. Call Close to stop it.
func NewRedisBroker(cfg config.Cluster, h Hub, opts RedisOptions) (*RedisBroker, error) {
	if h == nil {
		return nil, errors.New("bridge: redis broker: nil hub")
	}
	if err := CheckNodeID(cfg.NodeID); err != nil {
		return nil, fmt.Errorf("bridge: redis broker: %w", err)
	}
	ropt, err := redisClientOptions(cfg, opts)
	if err != nil {
		return nil, fmt.Errorf("bridge: redis broker: %w", err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.NewSet()
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 2 * time.Second
	}
	if opts.SubscribeBatch <= 0 {
		opts.SubscribeBatch = 25 * time.Millisecond
	}
	if opts.HealthInterval <= 0 {
		opts.HealthInterval = 15 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	var ib [8]byte
	if _, err := rand.Read(ib[:]); err != nil {
		return nil, fmt.Errorf("bridge: redis broker: reading random instance id: %w", err)
	}
	prefix := cfg.Redis.Prefix
	if prefix == "" {
		prefix = "wsidecar"
	}
	b := &RedisBroker{
		hub:        h,
		log:        opts.Logger.With("component", "cluster", "node", cfg.NodeID),
		opts:       opts,
		node:       cfg.NodeID,
		inst:       binary.BigEndian.Uint64(ib[:]),
		topicAll:   prefix + ":all",
		topicNode:  prefix + ":node:" + cfg.NodeID,
		chPrefix:   prefix + ":ch:",
		nodePrefix: prefix + ":node:",
		want:       make(map[string]bool),
		kick:       make(chan struct{}, 1),
		active:     make(map[string]struct{}),
		confirmed:  make(map[string]struct{}),
		pending:    make(map[uint64]chan redisReply),
		replies:    make(chan redisOut, redisReplyQueue),
		pubq:       make(chan *redisPub, redisPublishQueue),
		pubDone:    make(chan struct{}),
		since:      opts.Now(),
		lastErr:    "not connected yet",
	}
	b.bufs.New = func() any { s := make([]byte, 0, 512); return &s }
	b.reqs.New = func() any { return &redisPub{done: make(chan struct{}, 1)} }

	set := opts.Metrics
	set.GetOrCreateGauge(`wsidecar_cluster_redis_up`, func() float64 {
		if b.upFlag.Load() {
			return 1
		}
		return 0
	})
	set.GetOrCreateGauge(`wsidecar_cluster_subscriptions`, func() float64 { return float64(b.activeN.Load()) })
	b.published = set.GetOrCreateCounter(`wsidecar_cluster_published_total`)
	b.pubFailures = set.GetOrCreateCounter(`wsidecar_cluster_publish_failures_total`)
	b.received = set.GetOrCreateCounter(`wsidecar_cluster_received_total`)
	b.invalid = set.GetOrCreateCounter(`wsidecar_cluster_invalid_messages_total`)
	b.disconnects = set.GetOrCreateCounter(`wsidecar_cluster_redis_disconnects_total`)
	b.repliesDropped = set.GetOrCreateCounter(`wsidecar_cluster_replies_dropped_total`)

	b.ctx, b.cancel = context.WithCancel(context.Background())
	b.client = redis.NewClient(ropt)
	b.ps = b.client.Subscribe(b.ctx) // no topics yet: connects lazily, in readLoop
	b.wg.Add(4)
	go b.pubLoop()
	go b.readLoop()
	go b.subLoop()
	go b.replyLoop()
	return b, nil
}

// redisClientOptions turns the URL into go-redis options tuned for pub/sub
// in a sidecar: short timeouts, no retries, RESP2.
func redisClientOptions(cfg config.Cluster, opts RedisOptions) (*redis.Options, error) {
	if cfg.Redis.URL == "" {
		return nil, errors.New("redis url is empty")
	}
	ro, err := redis.ParseURL(cfg.Redis.URL)
	if err != nil {
		// go-redis errors do not repeat the URL, so the password stays out
		// of logs.
		return nil, fmt.Errorf("redis url: %w", err)
	}
	if ro.Network != "tcp" {
		return nil, errors.New("redis url: only redis:// and rediss:// are supported")
	}
	if ro.TLSConfig != nil && opts.TLSConfig != nil {
		tc := opts.TLSConfig.Clone()
		if tc.ServerName == "" {
			tc.ServerName = ro.TLSConfig.ServerName
		}
		ro.TLSConfig = tc
	}
	ct := opts.CallTimeout
	if ct <= 0 {
		ct = time.Second
	}
	// Settings from the URL's query (dial_timeout=…, protocol=…) win.
	if ro.DialTimeout == 0 {
		ro.DialTimeout = ct
	}
	if ro.ReadTimeout == 0 {
		ro.ReadTimeout = ct
	}
	if ro.WriteTimeout == 0 {
		ro.WriteTimeout = ct
	}
	if ro.PoolTimeout == 0 {
		ro.PoolTimeout = ct
	}
	if ro.MaxRetries == 0 {
		// A PUBLISH retried after Redis processed it would deliver twice.
		ro.MaxRetries = -1
	}
	if ro.DialerRetries == 0 {
		// One dial per attempt: the reader has its own backoff, and a push
		// must not sit through five dial retries while Redis is down.
		ro.DialerRetries = 1
	}
	if ro.Protocol == 0 {
		// RESP2: plain pub/sub replies, no server push machinery.
		ro.Protocol = 2
	}
	if ro.ClientName == "" {
		ro.ClientName = "wsidecar-" + cfg.NodeID
	}
	ro.ContextTimeoutEnabled = true
	ro.DisableIdentity = true
	ro.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	return ro, nil
}

// RedisLogger adapts a *slog.Logger to go-redis's own logging, which is
// process-wide: go-redis reports every failed dial while Redis is down on
// its global logger (stderr by default). main may install it once with
// redis.SetLogger(bridge.RedisLogger{Logger: l}); lines go out at debug
// level, since the broker already logs each link change at warn/info.
type RedisLogger struct{ Logger *slog.Logger }

// Printf implements go-redis's internal logging interface.
func (l RedisLogger) Printf(ctx context.Context, format string, v ...any) {
	if l.Logger != nil && l.Logger.Enabled(ctx, slog.LevelDebug) {
		l.Logger.DebugContext(ctx, fmt.Sprintf(format, v...), "component", "go-redis")
	}
}

// isLocal reports whether a connection id can only live on this replica
// (its node is ours, or it names no node at all and cannot be routed).
func (b *RedisBroker) isLocal(id string) bool {
	n := NodeOf(id)
	return n == "" || n == b.node
}

func (b *RedisBroker) check(ctx context.Context) error {
	if b.closed.Load() {
		return ErrBrokerClosed
	}
	return ctx.Err()
}

// Publish delivers m to the local sockets t selects (exact counts) and
// publishes it once per replica scope for the others; see the file
// comment. Remote is the number of other replicas Redis handed it to;
// Failed the PUBLISHes that could not reach Redis.
func (b *RedisBroker) Publish(ctx context.Context, t *Target, m Message, o PublishOptions) (PublishResult, error) {
	if err := b.check(ctx); err != nil {
		return PublishResult{}, err
	}
	if t == nil || t.Empty() {
		return PublishResult{}, nil
	}
	var res PublishResult
	res.Counts = b.hub.Deliver(t, m)
	if o.LocalOnly {
		return res, nil
	}
	switch {
	case t.Broadcast || len(t.Users) > 0 || len(t.Channels) > 1 ||
		(len(t.Channels) == 1 && slices.ContainsFunc(t.Connections, func(id string) bool { return !b.isLocal(id) })):
		b.publishDeliver(ctx, b.topicAll, t, m, &res)
	case len(t.Channels) == 1:
		sub := Target{Channels: t.Channels, Exclude: t.Exclude}
		b.publishDeliver(ctx, b.chPrefix+t.Channels[0], &sub, m, &res)
	default:
		b.publishConnections(ctx, t, m, &res)
	}
	return res, nil
}

// publishConnections sends one redisEnvelope per node owning a targeted remote
// connection.
func (b *RedisBroker) publishConnections(ctx context.Context, t *Target, m Message, res *PublishResult) {
	if len(t.Connections) == 1 {
		if id := t.Connections[0]; !b.isLocal(id) {
			sub := Target{Connections: t.Connections, Exclude: t.Exclude}
			b.publishDeliver(ctx, b.nodePrefix+NodeOf(id), &sub, m, res)
		}
		return
	}
	groups := make(map[string][]string)
	for _, id := range t.Connections {
		if !b.isLocal(id) {
			n := NodeOf(id)
			groups[n] = append(groups[n], id)
		}
	}
	for n, ids := range groups {
		sub := Target{Connections: ids, Exclude: t.Exclude}
		b.publishDeliver(ctx, b.nodePrefix+n, &sub, m, res)
	}
}

// publishDeliver encodes and publishes one push redisEnvelope.
func (b *RedisBroker) publishDeliver(ctx context.Context, topic string, t *Target, m Message, res *PublishResult) {
	bp := b.bufs.Get().(*[]byte)
	buf := appendDeliver((*bp)[:0], b.inst, b.node, t, m)
	n, err := b.publish(ctx, topic, buf)
	b.putBuf(bp, buf)
	if err != nil {
		res.Failed++
		return
	}
	res.Remote += max(0, n-b.self(topic))
}

// self is 1 when this replica's own subscriber is among a topic's
// receivers, so Remote counts only the others.
func (b *RedisBroker) self(topic string) int {
	b.confMu.RLock()
	_, ok := b.confirmed[topic]
	b.confMu.RUnlock()
	if ok {
		return 1
	}
	return 0
}

// Subscribe adds channels to one connection (handed to its node when it
// lives elsewhere: Remote is 1 when that node listens, fire and forget) or
// to every socket of a user on every replica (Changed counts this
// replica's sockets; Remote the other replicas it was handed to).
func (b *RedisBroker) Subscribe(ctx context.Context, conn, user string, channels []string) (ChangeResult, error) {
	return b.change(ctx, wireSubscribe, conn, user, channels)
}

// Unsubscribe is the reverse of Subscribe.
func (b *RedisBroker) Unsubscribe(ctx context.Context, conn, user string, channels []string) (ChangeResult, error) {
	return b.change(ctx, wireUnsubscribe, conn, user, channels)
}

func (b *RedisBroker) change(ctx context.Context, kind byte, conn, user string, channels []string) (ChangeResult, error) {
	if err := b.check(ctx); err != nil {
		return ChangeResult{}, err
	}
	local := b.hub.Subscribe
	if kind == wireUnsubscribe {
		local = b.hub.Unsubscribe
	}
	var res ChangeResult
	topic := b.topicAll
	switch {
	case conn != "" && b.isLocal(conn):
		res.Changed = local(conn, "", channels)
		return res, nil
	case conn != "":
		topic = b.nodePrefix + NodeOf(conn)
		user = ""
	case user != "":
		res.Changed = local("", user, channels)
	default:
		return res, nil
	}
	w := wireWriter{}
	w.header(kind, 0, b.inst, b.node)
	w.str(conn)
	w.str(user)
	w.list(channels)
	n, err := b.publish(ctx, topic, w.b)
	if err != nil {
		res.Failed = 1
		return res, nil
	}
	res.Remote = max(0, n-b.self(topic))
	return res, nil
}

// ChannelsChanged records channels that gained their first or lost their
// last local subscriber. It never blocks on Redis: the latest wanted state
// per channel is kept in a set and subLoop turns a whole batch into one
// SUBSCRIBE and one UNSUBSCRIBE, so a join and a leave of one channel
// within a batch cost nothing.
func (b *RedisBroker) ChannelsChanged(added, removed []string) {
	if b.closed.Load() || len(added)+len(removed) == 0 {
		return
	}
	b.subMu.Lock()
	for _, ch := range removed {
		b.want[ch] = false
	}
	for _, ch := range added {
		b.want[ch] = true
	}
	b.subMu.Unlock()
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// Ready is always true while the broker is open: during a Redis outage
// local delivery still works, and failing readiness on every replica at
// once would turn a Redis outage into a total one. The detail says whether
// the Redis link is up ("redis: up") or since when it is down, and why.
func (b *RedisBroker) Ready() (bool, string) {
	if b.closed.Load() {
		return false, "broker closed"
	}
	if b.upFlag.Load() {
		return true, "redis: up"
	}
	b.linkMu.Lock()
	defer b.linkMu.Unlock()
	return true, fmt.Sprintf("redis: down since %s (%s); delivering to local sockets only",
		b.since.UTC().Format(time.RFC3339), b.lastErr)
}

// Close stops the broker: the subscriber connection is closed, background
// goroutines end, and later calls fail with ErrBrokerClosed.
func (b *RedisBroker) Close() error {
	if !b.closed.CompareAndSwap(false, true) {
		return nil
	}
	b.cancel()
	_ = b.ps.Close()
	b.wg.Wait()
	if err := b.client.Close(); err != nil {
		return fmt.Errorf("bridge: closing redis client: %w", err)
	}
	return nil
}
