package proxy

import (
	"cmp"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/fasthttp/websocket"

	"github.com/wsidecar/wsidecar/bridge"
)

// HubOptions configures a Hub.
type HubOptions struct {
	// Shards is the number of index shards, rounded up to a power of two.
	// More shards mean less lock contention between handshakes, subscribes
	// and deliveries. Default 64.
	Shards int
}

// ChannelWatcher learns when this replica gains its first subscriber to a
// channel or loses its last one, so a cluster broker subscribes to a
// channel's topic only while someone here listens.
type ChannelWatcher interface {
	// ChannelsChanged reports channels whose local subscriber count went
	// 0→1 (added) and 1→0 (removed), batched per hub call. Calls are
	// serialised and always converge on the truth. It must not block and
	// must not call Subscribe, Unsubscribe or Disconnect on the hub.
	ChannelsChanged(added, removed []string)
}

// Hub indexes local sockets by connection id, user and channel, and
// delivers messages to them. It implements bridge.Hub. Indexes are sharded
// maps with per-shard locks; no lock is held while messages are queued.
type Hub struct {
	shards []hubShard
	mask   uint32

	count  atomic.Int64
	serial atomic.Uint64

	watchMu  sync.Mutex
	watcher  ChannelWatcher
	reported map[string]struct{} // channels last reported as present

	lists sync.Pool // *[]*conn, scratch for deliveries
}

var _ bridge.Hub = (*Hub)(nil)

type hubShard struct {
	mu       sync.RWMutex
	conns    map[string]*conn
	users    map[string]map[*conn]struct{}
	channels map[string]map[*conn]struct{}
	_        [64 - 48]byte // keep shard locks on separate cache lines
}

// NewHub returns an empty hub.
func NewHub(opts HubOptions) *Hub {
	n := opts.Shards
	if n <= 0 {
		n = 64
	}
	size := 1
	for size < n {
		size <<= 1
	}
	h := &Hub{shards: make([]hubShard, size), mask: uint32(size - 1)}
	for i := range h.shards {
		s := &h.shards[i]
		s.conns = make(map[string]*conn)
		s.users = make(map[string]map[*conn]struct{})
		s.channels = make(map[string]map[*conn]struct{})
	}
	h.lists.New = func() any { s := make([]*conn, 0, 64); return &s }
	return h
}

// fnv1a hashes a key to pick its shard without allocating.
func fnv1a(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

func (h *Hub) shard(key string) *hubShard { return &h.shards[fnv1a(key)&h.mask] }

// SetWatcher installs w (nil removes it). w is told at once about every
// channel that already has local subscribers.
func (h *Hub) SetWatcher(w ChannelWatcher) {
	h.watchMu.Lock()
	defer h.watchMu.Unlock()
	h.watcher = w
	h.reported = nil
	if w == nil {
		return
	}
	h.reported = make(map[string]struct{})
	var added []string
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.RLock()
		for ch := range s.channels {
			added = append(added, ch)
			h.reported[ch] = struct{}{}
		}
		s.mu.RUnlock()
	}
	if len(added) > 0 {
		sort.Strings(added)
		w.ChannelsChanged(added, nil)
	}
}

// notify reconciles the watcher with the current truth for channels whose
// count just crossed zero. Re-reading the counts under watchMu (instead of
// passing on what the caller saw) keeps concurrent transitions from being
// reported out of order.
func (h *Hub) notify(changed []string) {
	if len(changed) == 0 {
		return
	}
	h.watchMu.Lock()
	defer h.watchMu.Unlock()
	if h.watcher == nil {
		return
	}
	var added, removed []string
	for _, ch := range changed {
		s := h.shard(ch)
		s.mu.RLock()
		_, present := s.channels[ch]
		s.mu.RUnlock()
		_, rep := h.reported[ch]
		switch {
		case present && !rep:
			h.reported[ch] = struct{}{}
			added = append(added, ch)
		case !present && rep:
			delete(h.reported, ch)
			removed = append(removed, ch)
		}
	}
	if len(added) > 0 || len(removed) > 0 {
		slices.Sort(added)
		slices.Sort(removed)
		h.watcher.ChannelsChanged(added, removed)
	}
}

// Count returns the number of sockets in the hub.
func (h *Hub) Count() int { return int(h.count.Load()) }

// add indexes a new socket by id and user.
func (h *Hub) add(c *conn) {
	c.serial = h.serial.Add(1)
	c.smu.Lock()
	c.inHub = true
	s := h.shard(c.id)
	s.mu.Lock()
	s.conns[c.id] = c
	s.mu.Unlock()
	if c.user != "" {
		h.indexUser(c, c.user)
	}
	c.smu.Unlock()
	h.count.Add(1)
}

// remove drops a socket from every index.
func (h *Hub) remove(c *conn) {
	c.smu.Lock()
	if !c.inHub {
		c.smu.Unlock()
		return
	}
	c.inHub = false
	s := h.shard(c.id)
	s.mu.Lock()
	if s.conns[c.id] == c {
		delete(s.conns, c.id)
	}
	s.mu.Unlock()
	if c.user != "" {
		h.unindexUser(c, c.user)
	}
	var changed []string
	for ch := range c.channels {
		if h.leave(c, ch) {
			changed = append(changed, ch)
		}
	}
	c.channels = nil
	c.smu.Unlock()
	h.count.Add(-1)
	h.notify(changed)
}

func (h *Hub) indexUser(c *conn, user string) {
	s := h.shard(user)
	s.mu.Lock()
	set := s.users[user]
	if set == nil {
		set = make(map[*conn]struct{}, 1)
		s.users[user] = set
	}
	set[c] = struct{}{}
	s.mu.Unlock()
}

func (h *Hub) unindexUser(c *conn, user string) {
	s := h.shard(user)
	s.mu.Lock()
	if set := s.users[user]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(s.users, user)
		}
	}
	s.mu.Unlock()
}

// setUser re-indexes a socket under a new user (actions "user").
func (h *Hub) setUser(c *conn, user string) {
	c.smu.Lock()
	defer c.smu.Unlock()
	if c.user == user {
		return
	}
	if c.inHub && c.user != "" {
		h.unindexUser(c, c.user)
	}
	c.user = user
	if c.inHub && user != "" {
		h.indexUser(c, user)
	}
}

// join adds c to a channel's members (c.smu held); true when the channel
// gained its first local member.
func (h *Hub) join(c *conn, ch string) bool {
	s := h.shard(ch)
	s.mu.Lock()
	set := s.channels[ch]
	first := set == nil
	if first {
		set = make(map[*conn]struct{}, 1)
		s.channels[ch] = set
	}
	set[c] = struct{}{}
	s.mu.Unlock()
	return first
}

// leave removes c from a channel's members (c.smu held); true when the
// channel lost its last local member.
func (h *Hub) leave(c *conn, ch string) bool {
	s := h.shard(ch)
	s.mu.Lock()
	defer s.mu.Unlock()
	set := s.channels[ch]
	if set == nil {
		return false
	}
	delete(set, c)
	if len(set) == 0 {
		delete(s.channels, ch)
		return true
	}
	return false
}

// subscribeConn adds channels to one socket. It reports whether the socket
// changed and appends channels that gained their first member to changed.
func (h *Hub) subscribeConn(c *conn, channels []string, changed []string) (bool, []string) {
	c.smu.Lock()
	defer c.smu.Unlock()
	if !c.inHub {
		return false, changed
	}
	did := false
	for _, ch := range channels {
		if ch == "" {
			continue
		}
		if _, ok := c.channels[ch]; ok {
			continue
		}
		if c.channels == nil {
			c.channels = make(map[string]struct{}, len(channels))
		}
		c.channels[ch] = struct{}{}
		did = true
		if h.join(c, ch) {
			changed = append(changed, ch)
		}
	}
	return did, changed
}

// unsubscribeConn is the reverse of subscribeConn.
func (h *Hub) unsubscribeConn(c *conn, channels []string, changed []string) (bool, []string) {
	c.smu.Lock()
	defer c.smu.Unlock()
	if !c.inHub {
		return false, changed
	}
	did := false
	for _, ch := range channels {
		if _, ok := c.channels[ch]; !ok {
			continue
		}
		delete(c.channels, ch)
		did = true
		if h.leave(c, ch) {
			changed = append(changed, ch)
		}
	}
	if len(c.channels) == 0 {
		c.channels = nil
	}
	return did, changed
}

// Subscribe adds channels to one connection (when conn is set) or to every
// socket of user. It returns how many sockets changed.
func (h *Hub) Subscribe(conn, user string, channels []string) int {
	return h.change(conn, user, channels, h.subscribeConn)
}

// Unsubscribe removes channels from one connection (when conn is set) or
// from every socket of user. It returns how many sockets changed.
func (h *Hub) Unsubscribe(conn, user string, channels []string) int {
	return h.change(conn, user, channels, h.unsubscribeConn)
}

func (h *Hub) change(id, user string, channels []string, f func(*conn, []string, []string) (bool, []string)) int {
	if len(channels) == 0 {
		return 0
	}
	var targets []*conn
	switch {
	case id != "":
		if c := h.get(id); c != nil {
			targets = append(targets, c)
		}
	case user != "":
		targets = h.appendUser(nil, user)
	}
	n := 0
	var changed []string
	for _, c := range targets {
		var did bool
		did, changed = f(c, channels, changed)
		if did {
			n++
		}
	}
	h.notify(changed)
	return n
}

func (h *Hub) get(id string) *conn {
	s := h.shard(id)
	s.mu.RLock()
	c := s.conns[id]
	s.mu.RUnlock()
	return c
}

func (h *Hub) appendUser(dst []*conn, user string) []*conn {
	return h.appendIndexed(dst, user, func(s *hubShard) map[string]map[*conn]struct{} { return s.users })
}

func (h *Hub) appendChannel(dst []*conn, ch string) []*conn {
	return h.appendIndexed(dst, ch, func(s *hubShard) map[string]map[*conn]struct{} { return s.channels })
}

// appendIndexed appends the sockets one shard index (users or channels)
// holds under key.
func (h *Hub) appendIndexed(dst []*conn, key string, index func(*hubShard) map[string]map[*conn]struct{}) []*conn {
	s := h.shard(key)
	s.mu.RLock()
	for c := range index(s)[key] {
		dst = append(dst, c)
	}
	s.mu.RUnlock()
	return dst
}

func (h *Hub) appendAll(dst []*conn) []*conn {
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.RLock()
		for _, c := range s.conns {
			dst = append(dst, c)
		}
		s.mu.RUnlock()
	}
	return dst
}

// each calls f for every socket, one shard at a time, with no hub lock held
// during f.
func (h *Hub) each(f func(c *conn)) {
	lp := h.lists.Get().(*[]*conn)
	for i := range h.shards {
		s := &h.shards[i]
		list := (*lp)[:0]
		s.mu.RLock()
		for _, c := range s.conns {
			list = append(list, c)
		}
		s.mu.RUnlock()
		for _, c := range list {
			f(c)
		}
		clear(list)
		*lp = list
	}
	h.lists.Put(lp)
}

// Deliver queues m to every local socket selected by t, once per socket even
// when several selectors match it. The frame is encoded once for all of
// them. Queuing never blocks: a socket whose queue is full counts as
// dropped (and, under the "close" slow-consumer policy, is closed with
// 1013); a socket already closing counts as neither. m.Data must not be
// modified afterwards.
func (h *Hub) Deliver(t *bridge.Target, m bridge.Message) bridge.Counts {
	if t == nil || t.Empty() {
		return bridge.Counts{}
	}
	lp := h.lists.Get().(*[]*conn)
	list := (*lp)[:0]
	selectors := 0
	if t.Broadcast {
		list = h.appendAll(list)
		selectors = 1
	} else {
		for _, id := range t.Connections {
			if c := h.get(id); c != nil {
				list = append(list, c)
			}
		}
		for _, u := range t.Users {
			list = h.appendUser(list, u)
		}
		for _, ch := range t.Channels {
			list = h.appendChannel(list, ch)
		}
		selectors = len(t.Connections) + len(t.Users) + len(t.Channels)
	}
	if selectors > 1 && len(list) > 1 {
		// Dedupe by sorting on the hub serial: no map, no allocation.
		slices.SortFunc(list, func(a, b *conn) int { return cmp.Compare(a.serial, b.serial) })
		list = slices.CompactFunc(list, func(a, b *conn) bool { return a == b })
	}
	switch n := len(t.Exclude); {
	case n == 0:
	case n <= 8:
		list = slices.DeleteFunc(list, func(c *conn) bool { return slices.Contains(t.Exclude, c.id) })
	default:
		ex := make(map[string]struct{}, n)
		for _, id := range t.Exclude {
			ex[id] = struct{}{}
		}
		list = slices.DeleteFunc(list, func(c *conn) bool { _, skip := ex[c.id]; return skip })
	}

	var counts bridge.Counts
	if len(list) > 0 {
		typ := int8(websocket.TextMessage)
		if m.Binary {
			typ = websocket.BinaryMessage
		}
		f := outFrame{typ: typ, data: m.Data, size: int32(len(m.Data))}
		if len(list) > 1 && anyCompressed(list) {
			// One compressed encoding shared by every socket that
			// negotiated permessage-deflate. Uncompressed sockets frame
			// the shared raw bytes themselves (a header of 2-10 bytes,
			// written together with the payload: conn.writeLoop).
			pm, err := websocket.NewPreparedMessage(int(typ), m.Data)
			if err == nil {
				f.pm = pm
			}
		}
		for _, c := range list {
			switch c.enqueue(f) {
			case enqQueued:
				counts.Delivered++
			case enqFull:
				counts.Dropped++
			}
		}
	}
	clear(list)
	*lp = list[:0]
	h.lists.Put(lp)
	return counts
}

// anyCompressed reports whether a socket in list belongs to a server with
// permessage-deflate on; only those write through a PreparedMessage.
func anyCompressed(list []*conn) bool {
	for _, c := range list {
		if c.srv != nil && c.srv.compression {
			return true
		}
	}
	return false
}

// Lookup returns one connection's state.
func (h *Hub) Lookup(id string) (bridge.ConnState, bool) {
	c := h.get(id)
	if c == nil {
		return bridge.ConnState{}, false
	}
	return c.state(), true
}

// List returns the sockets of a user and/or in a channel, sorted by id;
// both empty lists every socket.
func (h *Hub) List(user, channel string) []bridge.ConnState {
	var cs []*conn
	switch {
	case channel != "":
		cs = h.appendChannel(nil, channel)
		if user != "" {
			cs = slices.DeleteFunc(cs, func(c *conn) bool { return c.currentUser() != user })
		}
	case user != "":
		cs = h.appendUser(nil, user)
	default:
		cs = h.appendAll(nil)
	}
	out := make([]bridge.ConnState, 0, len(cs))
	for _, c := range cs {
		out = append(out, c.state())
	}
	slices.SortFunc(out, func(a, b bridge.ConnState) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Disconnect closes a connection with a close code and reason, after the
// frames already queued to it. Codes a server may not send become 1000.
func (h *Hub) Disconnect(id string, code int, reason string) bool {
	c := h.get(id)
	if c == nil {
		return false
	}
	c.close(sendableCode(code), truncateReason(reason), true)
	return true
}
