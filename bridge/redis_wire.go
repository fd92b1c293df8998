package bridge

import (
	"encoding/binary"
	"errors"
)

// The envelope is what one replica publishes on a Redis topic for the
// others. It is a compact binary record rather than JSON because every
// cross-replica push goes through it twice (encode, decode) and the payload
// is opaque bytes that JSON would have to base64.
//
//	byte 0      version (wireVersion)
//	byte 1      kind (wireDeliver …)
//	byte 2      flags (flagBinary, flagBroadcast, flagFound)
//	bytes 3–10  instance id, big endian: the publishing broker's random id,
//	            so a replica skips the echo of its own publishes even when
//	            two replicas were (wrongly) given the same node id
//	string      origin node id: where replies go
//	…           the kind's fields, below
//
// A string is a uvarint byte length followed by the bytes; a list is a
// uvarint count followed by that many strings; a number is a uvarint.
//
//	wireDeliver      list connections, list users, list channels,
//	                 list exclude, then the message payload: every
//	                 remaining byte (flagBinary: binary frame)
//	wireSubscribe,   string connection, string user, list channels
//	wireUnsubscribe
//	wireDisconnect   number request id (0: no reply wanted), string
//	                 connection, number close code, string reason
//	wireLookup       number request id, string connection
//	wireList         number request id, string user, string channel
//	wireReply        number request id, then the answer: every remaining
//	                 byte (JSON ConnState for a lookup, JSON []ConnState
//	                 for a list, nothing for a disconnect); flagFound says
//	                 whether the connection existed
//
// Decoding never trusts a length: every count and size is checked against
// the bytes left, so a corrupt or hostile message is dropped, never a panic
// or a huge allocation.
const wireVersion = 1

// Envelope kinds.
const (
	wireDeliver byte = iota + 1
	wireSubscribe
	wireUnsubscribe
	wireDisconnect
	wireLookup
	wireList
	wireReply
)

// Envelope flags.
const (
	flagBinary    byte = 1 << 0
	flagBroadcast byte = 1 << 1
	flagFound     byte = 1 << 2
)

// wireHeaderLen is version, kind, flags and the instance id.
const wireHeaderLen = 3 + 8

// redisEnvelope is one decoded message. Its strings alias the received
// payload (a Go string, so nothing is copied); data aliases it too, so
// callers copy it before handing it to sockets.
type redisEnvelope struct {
	kind   byte
	flags  byte
	inst   uint64
	origin string

	target  Target // wireDeliver
	conn    string // wireSubscribe, wireUnsubscribe, wireDisconnect, wireLookup
	user    string // wireSubscribe, wireUnsubscribe, wireList
	channel string // wireList
	chans   []string
	code    int
	reason  string
	req     uint64
	data    string // wireDeliver payload, wireReply answer
}

var errWire = errors.New("bridge: malformed cluster message")

// wireWriter appends redisEnvelope fields to a buffer.
type wireWriter struct{ b []byte }

func (w *wireWriter) header(kind, flags byte, inst uint64, origin string) {
	w.b = append(w.b, wireVersion, kind, flags)
	w.b = binary.BigEndian.AppendUint64(w.b, inst)
	w.str(origin)
}

func (w *wireWriter) num(n uint64) { w.b = binary.AppendUvarint(w.b, n) }

func (w *wireWriter) str(s string) {
	w.b = binary.AppendUvarint(w.b, uint64(len(s)))
	w.b = append(w.b, s...)
}

func (w *wireWriter) list(l []string) {
	w.num(uint64(len(l)))
	for _, s := range l {
		w.str(s)
	}
}

// appendDeliver encodes a push of m to t.
func appendDeliver(dst []byte, inst uint64, origin string, t *Target, m Message) []byte {
	w := wireWriter{dst}
	var flags byte
	if m.Binary {
		flags |= flagBinary
	}
	if t.Broadcast {
		flags |= flagBroadcast
	}
	w.header(wireDeliver, flags, inst, origin)
	w.list(t.Connections)
	w.list(t.Users)
	w.list(t.Channels)
	w.list(t.Exclude)
	w.b = append(w.b, m.Data...)
	return w.b
}

// wireReader consumes a received payload. Any short or inconsistent field
// sets bad; later reads then return zero values.
type wireReader struct {
	s   string
	bad bool
}

func (r *wireReader) num() uint64 {
	var x uint64
	var shift uint
	for i := 0; i < len(r.s); i++ {
		b := r.s[i]
		if i == binary.MaxVarintLen64 || (i == binary.MaxVarintLen64-1 && b > 1) {
			r.bad = true
			return 0
		}
		if b < 0x80 {
			r.s = r.s[i+1:]
			return x | uint64(b)<<shift
		}
		x |= uint64(b&0x7f) << shift
		shift += 7
	}
	r.bad = true
	return 0
}

func (r *wireReader) str() string {
	n := r.num()
	if r.bad || n > uint64(len(r.s)) {
		r.bad = true
		return ""
	}
	s := r.s[:n]
	r.s = r.s[n:]
	return s
}

// list appends a list's strings to dst[:0]. The count is checked against
// the bytes left (each string takes at least one), so a forged count cannot
// make it allocate more than the message's size.
func (r *wireReader) list(dst []string) []string {
	dst = dst[:0]
	n := r.num()
	if r.bad || n > uint64(len(r.s)) {
		r.bad = true
		return dst
	}
	for range n {
		s := r.str()
		if r.bad {
			return dst[:0]
		}
		dst = append(dst, s)
	}
	return dst
}

// decodeEnvelope parses p into e, reusing e's slices. Unknown versions and
// kinds are errors: a newer replica's message is dropped, not misread.
func decodeEnvelope(p string, e *redisEnvelope) error {
	if len(p) < wireHeaderLen || p[0] != wireVersion {
		return errWire
	}
	e.kind, e.flags = p[1], p[2]
	e.inst = uint64(p[3])<<56 | uint64(p[4])<<48 | uint64(p[5])<<40 | uint64(p[6])<<32 |
		uint64(p[7])<<24 | uint64(p[8])<<16 | uint64(p[9])<<8 | uint64(p[10])
	r := wireReader{s: p[wireHeaderLen:]}
	e.origin = r.str()
	e.conn, e.user, e.channel, e.reason, e.data = "", "", "", "", ""
	e.code, e.req = 0, 0
	switch e.kind {
	case wireDeliver:
		t := &e.target
		t.Connections = r.list(t.Connections)
		t.Users = r.list(t.Users)
		t.Channels = r.list(t.Channels)
		t.Exclude = r.list(t.Exclude)
		t.Broadcast = e.flags&flagBroadcast != 0
		e.data = r.s
		r.s = ""
	case wireSubscribe, wireUnsubscribe:
		e.conn = r.str()
		e.user = r.str()
		e.chans = r.list(e.chans)
	case wireDisconnect:
		e.req = r.num()
		e.conn = r.str()
		code := r.num()
		if code > 4999 {
			r.bad = true
		}
		e.code = int(code)
		e.reason = r.str()
	case wireLookup:
		e.req = r.num()
		e.conn = r.str()
	case wireList:
		e.req = r.num()
		e.user = r.str()
		e.channel = r.str()
	case wireReply:
		e.req = r.num()
		e.data = r.s
		r.s = ""
	default:
		return errWire
	}
	if r.bad || len(r.s) != 0 {
		return errWire
	}
	return nil
}
