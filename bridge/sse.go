package bridge

import (
	"bytes"
	"errors"
	"io"
	"time"
	"unicode/utf8"
)

// Event is one dispatched server-sent event.
type Event struct {
	// ID is the stream's last event id at dispatch: the latest "id" field
	// seen, in this event or an earlier one (it persists, per the spec).
	ID string
	// Type is the "event" field, or "message" when the event had none.
	Type string
	// Data is the "data" lines joined with "\n".
	Data string
	// Retry is the reconnection time the stream asked for so far (0: never).
	Retry time.Duration
}

// SSEOptions bound what a backend can make the parser hold in memory.
type SSEOptions struct {
	// MaxEvent caps an event's data in bytes; bigger events are discarded
	// (and counted) instead of buffered. Default 1 MiB.
	MaxEvent int
	// MaxLine caps one line in bytes; an over-long line discards its event.
	// Default MaxEvent.
	MaxLine int
}

const (
	defaultSSEMaxEvent = 1 << 20
	sseReadBuffer      = 4 << 10
	// sseKeepCap is the buffer capacity kept across events; a single large
	// event must not pin its memory for the life of the stream.
	sseKeepCap = 64 << 10
	// maxRetryMS keeps retry in time.Duration range (about 292 years).
	maxRetryMS = int64(1<<63-1) / int64(time.Millisecond)
)

var (
	errLineTooLong = errors.New("sse: line too long")
	utf8BOM        = []byte{0xEF, 0xBB, 0xBF}
)

// SSEParser parses a text/event-stream per the WHATWG HTML "Server-sent
// events" parsing rules
// (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).
// It reads its io.Reader in chunks and holds at most MaxLine + MaxEvent
// bytes plus a small read buffer, whatever the backend sends.
//
// An SSEParser is not safe for concurrent use.
type SSEParser struct {
	r       io.Reader
	buf     []byte // read buffer; buf[rpos:wpos] is unread
	rpos    int
	wpos    int
	err     error // sticky read error, returned once buf is drained
	started bool  // BOM check done

	skipLF  bool   // the last line ended in CR: a following LF belongs to it
	line    []byte // a line split across reads
	tooLong bool   // the line being carried is over MaxLine

	data    []byte // data buffer, each line followed by "\n"
	typ     []byte // event type buffer
	idBuf   []byte // last event ID buffer
	discard bool   // the current event overflowed: drop it at dispatch

	lastType  string // last dispatched type, reused while it repeats
	lastID    string // last event ID string (committed at dispatch)
	retry     time.Duration
	discarded uint64

	maxLine, maxEvent int
}

// NewSSEParser returns a parser reading the stream from r.
func NewSSEParser(r io.Reader, o SSEOptions) *SSEParser {
	if o.MaxEvent <= 0 {
		o.MaxEvent = defaultSSEMaxEvent
	}
	if o.MaxLine <= 0 {
		o.MaxLine = o.MaxEvent
	}
	return &SSEParser{
		r:        r,
		buf:      make([]byte, sseReadBuffer),
		maxLine:  o.MaxLine,
		maxEvent: o.MaxEvent,
	}
}

// Reset starts a new stream (a reconnection) read from r. The last event id
// and the reconnection time survive, as they do for an EventSource; buffers
// are reused.
func (p *SSEParser) Reset(r io.Reader) {
	p.r = r
	p.rpos, p.wpos, p.err = 0, 0, nil
	p.started, p.skipLF, p.tooLong, p.discard = false, false, false, false
	p.line = p.line[:0]
	p.resetEvent()
	// The spec starts a new connection's ID buffer empty, so an event
	// without "id" would clear the id sent on the next reconnect; browsers
	// (Chromium) seed it with the last id instead, which is what a
	// replaying backend expects.
	p.idBuf = append(p.idBuf[:0], p.lastID...)
}

// LastEventID returns the id to send as Last-Event-ID when reconnecting.
func (p *SSEParser) LastEventID() string { return p.lastID }

// Retry returns the reconnection time the stream asked for (0: never).
func (p *SSEParser) Retry() time.Duration { return p.retry }

// Discarded returns how many events were dropped for exceeding the limits.
func (p *SSEParser) Discarded() uint64 { return p.discarded }

// Next returns the next dispatched event. At the end of the stream it
// returns the reader's error (io.EOF for a clean end); an event cut off by
// the end is not dispatched, per the spec.
func (p *SSEParser) Next() (Event, error) {
	for {
		line, err := p.readLine()
		if err == errLineTooLong {
			p.discard = true
			continue
		}
		if err != nil {
			p.resetEvent()
			return Event{}, err
		}
		if len(line) == 0 {
			if ev, ok := p.dispatch(); ok {
				return ev, nil
			}
			continue
		}
		p.field(line)
	}
}

// field processes one non-empty line.
func (p *SSEParser) field(line []byte) {
	if line[0] == ':' {
		return // comment
	}
	name, value := line, []byte(nil)
	if i := bytes.IndexByte(line, ':'); i >= 0 {
		name, value = line[:i], line[i+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	}
	switch string(name) {
	case "event":
		p.typ = append(p.typ[:0], value...)
	case "data":
		if p.discard {
			return
		}
		if len(p.data)+len(value)+1 > p.maxEvent {
			p.discard = true
			p.data = p.data[:0]
			return
		}
		p.data = append(p.data, value...)
		p.data = append(p.data, '\n')
	case "id":
		if bytes.IndexByte(value, 0) < 0 {
			p.idBuf = append(p.idBuf[:0], value...)
		}
	case "retry":
		if ms, ok := parseDigits(value); ok {
			p.retry = time.Duration(ms) * time.Millisecond
		}
	}
}

// dispatch ends the current event (a blank line).
func (p *SSEParser) dispatch() (Event, bool) {
	if string(p.idBuf) != p.lastID {
		p.lastID = decodeUTF8(p.idBuf)
	}
	defer p.resetEvent()
	if p.discard {
		p.discarded++
		return Event{}, false
	}
	if len(p.data) == 0 {
		return Event{}, false
	}
	ev := Event{
		ID:    p.lastID,
		Type:  "message",
		Data:  decodeUTF8(p.data[:len(p.data)-1]),
		Retry: p.retry,
	}
	if len(p.typ) > 0 {
		if string(p.typ) != p.lastType {
			p.lastType = decodeUTF8(p.typ)
		}
		ev.Type = p.lastType
	}
	return ev, true
}

func (p *SSEParser) resetEvent() {
	p.discard = false
	if cap(p.data) > sseKeepCap {
		p.data = nil
	}
	p.data = p.data[:0]
	if cap(p.typ) > sseKeepCap {
		p.typ = nil
	}
	p.typ = p.typ[:0]
	if cap(p.line) > sseKeepCap {
		p.line = nil
	}
}

// readLine returns the next line without its terminator (CR, LF or CRLF).
// The slice is valid until the next call. A line over MaxLine is skipped
// whole and reported as errLineTooLong; a line cut off by the end of the
// stream is dropped.
func (p *SSEParser) readLine() ([]byte, error) {
	if !p.started {
		p.started = true
		p.fillAtLeast(len(utf8BOM))
		if bytes.HasPrefix(p.buf[p.rpos:p.wpos], utf8BOM) {
			p.rpos += len(utf8BOM)
		}
	}
	for {
		if p.rpos < p.wpos {
			b := p.buf[p.rpos:p.wpos]
			if p.skipLF {
				p.skipLF = false
				if b[0] == '\n' {
					p.rpos++
					continue
				}
			}
			if i := indexEOL(b); i >= 0 {
				seg := b[:i]
				p.rpos += i + 1
				p.skipLF = b[i] == '\r'
				if p.tooLong || len(p.line)+len(seg) > p.maxLine {
					p.tooLong = false
					p.line = p.line[:0]
					return nil, errLineTooLong
				}
				if len(p.line) == 0 {
					return seg, nil
				}
				p.line = append(p.line, seg...)
				l := p.line
				p.line = p.line[:0]
				return l, nil
			}
			if !p.tooLong {
				if len(p.line)+len(b) > p.maxLine {
					p.tooLong = true
					p.line = p.line[:0]
				} else {
					p.line = append(p.line, b...)
				}
			}
			p.rpos = p.wpos
		}
		if p.err != nil {
			return nil, p.err
		}
		p.rpos, p.wpos = 0, 0
		p.read()
	}
}

// read appends one Read to buf[wpos:].
func (p *SSEParser) read() {
	// Like bufio, give up on a reader that keeps returning nothing.
	for range 100 {
		n, err := p.r.Read(p.buf[p.wpos:])
		if n < 0 || n > len(p.buf)-p.wpos {
			p.err = errors.New("sse: reader returned an invalid count")
			return
		}
		p.wpos += n
		if err != nil {
			p.err = err
			return
		}
		if n > 0 {
			return
		}
	}
	p.err = io.ErrNoProgress
}

// fillAtLeast reads until n bytes are buffered or the reader fails.
func (p *SSEParser) fillAtLeast(n int) {
	for p.wpos-p.rpos < n && p.err == nil {
		p.read()
	}
}

// indexEOL returns the index of the first CR or LF in b, or -1.
func indexEOL(b []byte) int {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return bytes.IndexByte(b, '\r')
	}
	if j := bytes.IndexByte(b[:i], '\r'); j >= 0 {
		return j
	}
	return i
}

// parseDigits parses a non-empty run of ASCII digits (the spec's rule for
// "retry"); anything else, or a value out of range, is rejected.
func parseDigits(b []byte) (int64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := int64(c - '0')
		if n > (maxRetryMS-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

// decodeUTF8 converts b to a string the way the spec's "UTF-8 decode"
// does: each maximal ill-formed subsequence becomes one U+FFFD. The result
// is always valid UTF-8, which WebSocket text frames require.
func decodeUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	out := make([]byte, 0, len(b)+8)
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		if r != utf8.RuneError || size > 1 {
			out = append(out, b[:size]...)
			b = b[size:]
			continue
		}
		out = utf8.AppendRune(out, utf8.RuneError)
		b = b[maximalSubpart(b):]
	}
	return string(out)
}

// maximalSubpart returns the length of the ill-formed sequence at the start
// of b (at least 1): a lead byte plus the continuation bytes that were still
// valid for it (Unicode 3.9, "U+FFFD Substitution of Maximal Subparts").
func maximalSubpart(b []byte) int {
	c := b[0]
	var need int
	lo, hi := byte(0x80), byte(0xBF)
	switch {
	case c >= 0xC2 && c <= 0xDF:
		need = 1
	case c == 0xE0:
		need, lo = 2, 0xA0
	case c == 0xED:
		need, hi = 2, 0x9F
	case c >= 0xE1 && c <= 0xEF:
		need = 2
	case c == 0xF0:
		need, lo = 3, 0x90
	case c == 0xF4:
		need, hi = 3, 0x8F
	case c >= 0xF1 && c <= 0xF3:
		need = 3
	default:
		return 1
	}
	n := 1
	for ; n <= need && n < len(b); n++ {
		if b[n] < lo || b[n] > hi {
			break
		}
		lo, hi = 0x80, 0xBF
	}
	return n
}
