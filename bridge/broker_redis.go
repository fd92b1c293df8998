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
// Each message is one envelope (see redis_wire.go for the byte layout)
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
// Delivery across replicas is at most once, like Redis pub/sub itself: a
// replica whose subscriber connection is down misses what is published
// meanwhile; nothing is queued or replayed.

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
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
	// subscribeChunk caps the topics in one SUBSCRIBE/UNSUBSCRIBE command.
	subscribeChunk = 512
	// maxListReply caps the sockets one replica returns to a List request,
	// so one request cannot make a multi-megabyte Redis message.
	maxListReply = 10000
	// maxListReplies caps the replica answers a List waits for.
	maxListReplies = 256
	// replyQueue bounds replies waiting to be published; when full (Redis
	// slow or down) further replies are dropped and the asker times out.
	replyQueue = 64
	// maxPooledBuf keeps huge pushes from pinning their buffers in the pool.
	maxPooledBuf = 64 << 10
	// link reconnect backoff bounds.
	minBackoff = 50 * time.Millisecond
	maxBackoff = 2 * time.Second
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
	pending map[uint64]chan envelopeReply

	replies chan outMsg

	bufs sync.Pool // *[]byte

	published      *metrics.Counter // PUBLISH commands Redis accepted
	pubFailures    *metrics.Counter // PUBLISH commands that could not reach Redis
	received       *metrics.Counter // messages from other replicas handled
	invalid        *metrics.Counter // messages that could not be decoded
	disconnects    *metrics.Counter // times the subscriber link went down
	repliesDropped *metrics.Counter // replies dropped because the reply queue was full
}

var _ Broker = (*RedisBroker)(nil)

// envelopeReply is one answer to a request.
type envelopeReply struct {
	found bool
	data  string
}

// outMsg is a reply waiting to be published.
type outMsg struct {
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
	if err := checkNodeID(cfg.NodeID); err != nil {
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
		pending:    make(map[uint64]chan envelopeReply),
		replies:    make(chan outMsg, replyQueue),
		since:      opts.Now(),
		lastErr:    "not connected yet",
	}
	b.bufs.New = func() any { s := make([]byte, 0, 512); return &s }

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
	b.wg.Add(3)
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

// checkNodeID applies the proxy's rules for node ids (they end up in topic
// names and connection ids).
func checkNodeID(node string) error {
	if node == "" || len(node) > 64 {
		return fmt.Errorf("node id %q must be 1-64 characters", node)
	}
	for i := 0; i < len(node); i++ {
		switch c := node[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return fmt.Errorf("node id %q may hold only letters, digits, '-', '_' and '.'", node)
		}
	}
	return nil
}

// nodeOf returns the node part of a connection id: everything before the
// last "." (the random part never holds one; node ids may). "" when the
// id has no node part.
func nodeOf(id string) string {
	i := strings.LastIndexByte(id, '.')
	if i <= 0 {
		return ""
	}
	return id[:i]
}

// isLocal reports whether a connection id can only live on this replica
// (its node is ours, or it names no node at all and cannot be routed).
func (b *RedisBroker) isLocal(id string) bool {
	n := nodeOf(id)
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

// publishConnections sends one envelope per node owning a targeted remote
// connection.
func (b *RedisBroker) publishConnections(ctx context.Context, t *Target, m Message, res *PublishResult) {
	if len(t.Connections) == 1 {
		if id := t.Connections[0]; !b.isLocal(id) {
			sub := Target{Connections: t.Connections, Exclude: t.Exclude}
			b.publishDeliver(ctx, b.nodePrefix+nodeOf(id), &sub, m, res)
		}
		return
	}
	groups := make(map[string][]string)
	for _, id := range t.Connections {
		if !b.isLocal(id) {
			n := nodeOf(id)
			groups[n] = append(groups[n], id)
		}
	}
	for n, ids := range groups {
		sub := Target{Connections: ids, Exclude: t.Exclude}
		b.publishDeliver(ctx, b.nodePrefix+n, &sub, m, res)
	}
}

// publishDeliver encodes and publishes one push envelope.
func (b *RedisBroker) publishDeliver(ctx context.Context, topic string, t *Target, m Message, res *PublishResult) {
	bp := b.bufs.Get().(*[]byte)
	buf := appendDeliver((*bp)[:0], b.inst, b.node, t, m)
	n, err := b.publish(ctx, topic, buf)
	b.putBuf(bp, buf)
	if err != nil {
		res.Failed++
		return
	}
	res.Remote += n - b.self(topic)
}

func (b *RedisBroker) putBuf(bp *[]byte, buf []byte) {
	if cap(buf) > maxPooledBuf {
		return
	}
	*bp = buf[:0]
	b.bufs.Put(bp)
}

// publish sends one PUBLISH and returns how many subscribers Redis handed
// it to. go-redis has written payload to the socket when it returns, so
// the caller may reuse it.
func (b *RedisBroker) publish(ctx context.Context, topic string, payload []byte) (int, error) {
	n, err := b.client.Publish(ctx, topic, payload).Result()
	if err != nil {
		b.pubFailures.Inc()
		return 0, fmt.Errorf("redis publish: %w", err)
	}
	b.published.Inc()
	return int(n), nil
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
		topic = b.nodePrefix + nodeOf(conn)
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
	res.Remote = n - b.self(topic)
	return res, nil
}

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
	n, err := b.publish(ctx, b.nodePrefix+nodeOf(id), w.b)
	if err != nil {
		return false, fmt.Errorf("disconnect on node %q: %w", nodeOf(id), err)
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
	node := nodeOf(id)
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
	req, replies := b.newRequest(maxListReplies)
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
	expect := min(n-b.self(b.topicAll), maxListReplies)
	timer := time.NewTimer(b.opts.RequestTimeout)
	defer timer.Stop()
	for ; expect > 0; expect-- {
		var r envelopeReply
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
func (b *RedisBroker) newRequest(capacity int) (uint64, chan envelopeReply) {
	ch := make(chan envelopeReply, capacity)
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
func (b *RedisBroker) await(ctx context.Context, replies <-chan envelopeReply) (envelopeReply, bool) {
	timer := time.NewTimer(b.opts.RequestTimeout)
	defer timer.Stop()
	select {
	case r := <-replies:
		return r, true
	case <-timer.C:
	case <-ctx.Done():
	case <-b.ctx.Done():
	}
	return envelopeReply{}, false
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
	var e envelope
	backoff := minBackoff
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
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff, pinged = minBackoff, false
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
func (b *RedisBroker) handle(payload string, e *envelope) {
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
		if len(list) > maxListReply {
			list = list[:maxListReply]
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
			case ch <- envelopeReply{found: e.flags&flagFound != 0, data: e.data}:
			default:
			}
		}
	}
}

// reply queues an answer to the requesting node without blocking the
// reader: a full queue drops it and the requester times out.
func (b *RedisBroker) reply(e *envelope, found bool, data []byte) {
	if checkNodeID(e.origin) != nil {
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
	case b.replies <- outMsg{topic: b.nodePrefix + e.origin, payload: w.b}:
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
		for c := range slices.Chunk(del, subscribeChunk) {
			if err := b.ps.Unsubscribe(b.ctx, c...); err != nil && b.ctx.Err() == nil {
				b.log.Debug("redis unsubscribe deferred to reconnect", "topics", len(c), "error", err)
			}
		}
		for c := range slices.Chunk(add, subscribeChunk) {
			if err := b.ps.Subscribe(b.ctx, c...); err != nil && b.ctx.Err() == nil {
				b.log.Debug("redis subscribe deferred to reconnect", "topics", len(c), "error", err)
			}
		}
	}
}
