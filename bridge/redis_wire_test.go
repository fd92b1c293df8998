package bridge

import (
	"encoding/binary"
	"reflect"
	"slices"
	"testing"
)

// Every kind of redisEnvelope decodes to what was encoded.
func TestEnvelopeRoundTrip(t *testing.T) {
	const inst = 0x0102030405060708
	deliver := appendDeliver(nil, inst, "node-1.example", &Target{
		Connections: []string{"b.x", "c.y"},
		Users:       []string{"42", ""},
		Channels:    []string{"room:1", "ü"},
		Broadcast:   true,
		Exclude:     []string{"a.z"},
	}, Message{Binary: true, Data: []byte{0, 1, 2, 0xff}})

	var e redisEnvelope
	if err := decodeEnvelope(string(deliver), &e); err != nil {
		t.Fatal(err)
	}
	if e.kind != wireDeliver || e.inst != inst || e.origin != "node-1.example" || e.flags&flagBinary == 0 ||
		!e.target.Broadcast || e.data != "\x00\x01\x02\xff" ||
		!slices.Equal(e.target.Connections, []string{"b.x", "c.y"}) || !slices.Equal(e.target.Users, []string{"42", ""}) ||
		!slices.Equal(e.target.Channels, []string{"room:1", "ü"}) || !slices.Equal(e.target.Exclude, []string{"a.z"}) {
		t.Errorf("deliver decoded to %+v", e)
	}

	// The same redisEnvelope value decodes a smaller message without leftovers.
	small := appendDeliver(nil, 1, "n", &Target{Channels: []string{"c"}}, Message{Data: []byte("hi")})
	if err := decodeEnvelope(string(small), &e); err != nil {
		t.Fatal(err)
	}
	if len(e.target.Connections)+len(e.target.Users)+len(e.target.Exclude) != 0 || e.target.Broadcast || e.data != "hi" || e.flags != 0 {
		t.Errorf("reused redisEnvelope kept old fields: %+v", e)
	}

	w := wireWriter{}
	w.header(wireSubscribe, 0, 7, "a")
	w.str("a.1")
	w.str("u")
	w.list([]string{"x", "y"})
	if err := decodeEnvelope(string(w.b), &e); err != nil || e.kind != wireSubscribe || e.conn != "a.1" || e.user != "u" || !slices.Equal(e.chans, []string{"x", "y"}) {
		t.Errorf("subscribe decoded to %+v, %v", e, err)
	}

	w = wireWriter{}
	w.header(wireDisconnect, 0, 7, "a")
	w.num(99)
	w.str("b.1")
	w.num(4001)
	w.str("kicked")
	if err := decodeEnvelope(string(w.b), &e); err != nil || e.req != 99 || e.conn != "b.1" || e.code != 4001 || e.reason != "kicked" {
		t.Errorf("disconnect decoded to %+v, %v", e, err)
	}

	w = wireWriter{}
	w.header(wireList, 0, 7, "a")
	w.num(1 << 40)
	w.str("")
	w.str("room")
	if err := decodeEnvelope(string(w.b), &e); err != nil || e.req != 1<<40 || e.user != "" || e.channel != "room" {
		t.Errorf("list decoded to %+v, %v", e, err)
	}

	w = wireWriter{}
	w.header(wireReply, flagFound, 7, "a")
	w.num(5)
	w.b = append(w.b, `{"id":"x"}`...)
	if err := decodeEnvelope(string(w.b), &e); err != nil || e.req != 5 || e.flags&flagFound == 0 || e.data != `{"id":"x"}` {
		t.Errorf("reply decoded to %+v, %v", e, err)
	}
}

// Corrupt and hostile messages are rejected, never a panic.
func TestEnvelopeRejects(t *testing.T) {
	valid := appendDeliver(nil, 1, "a", &Target{Channels: []string{"c"}}, Message{Data: []byte("x")})
	hugeCount := []byte{wireVersion, wireDeliver, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 'a'}
	hugeCount = binary.AppendUvarint(hugeCount, 1<<62)
	overlong := []byte{wireVersion, wireDeliver, 0, 0, 0, 0, 0, 0, 0, 0, 1}
	overlong = append(overlong, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01)
	w := wireWriter{}
	w.header(wireDisconnect, 0, 1, "a")
	w.num(1)
	w.str("b.1")
	w.num(70000)
	w.str("")
	badCode := w.b
	w = wireWriter{}
	w.header(wireLookup, 0, 1, "a")
	w.num(1)
	w.str("b.1")
	trailing := append(w.b, 'x')

	for name, p := range map[string][]byte{
		"empty":            nil,
		"short header":     valid[:5],
		"wrong version":    append([]byte{9}, valid[1:]...),
		"unknown kind":     append([]byte{wireVersion, 200}, valid[2:]...),
		"truncated origin": valid[:wireHeaderLen+1],
		"huge list count":  hugeCount,
		"overlong varint":  overlong,
		"close code":       badCode,
		"trailing bytes":   trailing,
		"string past end":  append(valid[:wireHeaderLen:wireHeaderLen], 0x7f, 'a'),
	} {
		var e redisEnvelope
		if err := decodeEnvelope(string(p), &e); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzRedisEnvelope(f *testing.F) {
	f.Add(appendDeliver(nil, 1, "a", &Target{Channels: []string{"room"}, Exclude: []string{"a.1"}}, Message{Data: []byte("hello")}))
	f.Add(appendDeliver(nil, 2, "b", &Target{Users: []string{"u"}, Broadcast: true}, Message{Binary: true, Data: []byte{0}}))
	w := wireWriter{}
	w.header(wireDisconnect, 0, 3, "c")
	w.num(1)
	w.str("c.x")
	w.num(1000)
	w.str("bye")
	f.Add(w.b)
	f.Fuzz(func(t *testing.T, p []byte) {
		var e redisEnvelope
		if err := decodeEnvelope(string(p), &e); err != nil {
			return
		}
		if e.kind != wireDeliver {
			return
		}
		// What decodes re-encodes to a message that decodes the same.
		again := appendDeliver(nil, e.inst, e.origin, &e.target, Message{Binary: e.flags&flagBinary != 0, Data: []byte(e.data)})
		var e2 redisEnvelope
		if err := decodeEnvelope(string(again), &e2); err != nil {
			t.Fatalf("re-encoded message does not decode: %v", err)
		}
		if e2.data != e.data || e2.origin != e.origin || e2.inst != e.inst || !reflect.DeepEqual(e2.target, e.target) {
			t.Fatalf("round trip changed the message:\n%+v\n%+v", e.target, e2.target)
		}
	})
}
