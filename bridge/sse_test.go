package bridge

import (
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
	"time"
	"unicode/utf8"
)

// sseResult is everything a parser run exposes.
type sseResult struct {
	Events    []Event
	LastID    string
	Retry     time.Duration
	Discarded uint64
	Err       error
}

func parseAll(r io.Reader, o SSEOptions) sseResult {
	p := NewSSEParser(r, o)
	var res sseResult
	for {
		ev, err := p.Next()
		if err != nil {
			res.Err = err
			break
		}
		res.Events = append(res.Events, ev)
	}
	res.LastID, res.Retry, res.Discarded = p.LastEventID(), p.Retry(), p.Discarded()
	return res
}

// ev builds an expected event of type "message" unless typ is given.
func ev(id, data string, typ ...string) Event {
	e := Event{ID: id, Type: "message", Data: data}
	if len(typ) > 0 {
		e.Type = typ[0]
	}
	return e
}

func TestSSEParser(t *testing.T) {
	withRetry := func(e Event, d time.Duration) Event { e.Retry = d; return e }
	tests := []struct {
		name   string
		in     string
		opts   SSEOptions
		want   []Event
		lastID string
		retry  time.Duration
		disc   uint64
	}{
		// The examples of the WHATWG HTML spec, §9.2.4–9.2.6.
		{
			name: "spec: three messages",
			in:   "data: This is the first message.\n\ndata: This is the second message, it\ndata: has two lines.\n\ndata: This is the third message.\n\n",
			want: []Event{ev("", "This is the first message."), ev("", "This is the second message, it\nhas two lines."), ev("", "This is the third message.")},
		},
		{
			name: "spec: event types",
			in:   "event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n",
			want: []Event{ev("", "73857293", "add"), ev("", "2153", "remove"), ev("", "113411", "add")},
		},
		{
			name: "spec: stock ticker",
			in:   "data: YHOO\ndata: +2\ndata: 10\n\n",
			want: []Event{ev("", "YHOO\n+2\n10")},
		},
		{
			name:   "spec: comments, ids and one stripped space",
			in:     ": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
			want:   []Event{ev("1", "first event"), ev("", "second event"), ev("", " third event")},
			lastID: "",
		},
		{
			name: "spec: empty data lines",
			in:   "data\n\ndata\ndata\n\ndata:",
			want: []Event{ev("", ""), ev("", "\n")},
		},
		{
			name: "spec: space after colon is optional",
			in:   "data:test\n\ndata: test\n\n",
			want: []Event{ev("", "test"), ev("", "test")},
		},
		// Line endings.
		{name: "CRLF", in: "data: a\r\ndata: b\r\n\r\n", want: []Event{ev("", "a\nb")}},
		{name: "CR", in: "data: a\rdata: b\r\r", want: []Event{ev("", "a\nb")}},
		{name: "mixed endings", in: "data: a\r\ndata: b\rdata: c\n\r\n", want: []Event{ev("", "a\nb\nc")}},
		{name: "LF CR is two line ends", in: "data: a\n\rdata: b\n\n", want: []Event{ev("", "a"), ev("", "b")}},
		// BOM.
		{name: "BOM stripped", in: "\xEF\xBB\xBFdata: a\n\n", want: []Event{ev("", "a")}},
		{name: "second BOM is data", in: "\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n", want: []Event{ev("", "b")}},
		{name: "BOM alone", in: "\xEF\xBB\xBF", want: nil},
		// Fields.
		{name: "colon in value", in: "data: a: b\n\n", want: []Event{ev("", "a: b")}},
		{name: "only one space stripped", in: "data:   x \n\n", want: []Event{ev("", "  x ")}},
		{name: "tab is not stripped", in: "data:\tx\n\n", want: []Event{ev("", "\tx")}},
		{name: "unknown field ignored", in: "foo: bar\ndata: a\nDATA: b\n\n", want: []Event{ev("", "a")}},
		{name: "field names are case sensitive", in: "Event: x\ndata: a\n\n", want: []Event{ev("", "a")}},
		{name: "event without data not dispatched and type reset", in: "event: x\n\ndata: a\n\n", want: []Event{ev("", "a")}},
		{name: "empty event field means message", in: "event:\ndata: a\n\n", want: []Event{ev("", "a")}},
		{name: "last event type wins", in: "event: a\nevent: b\ndata: x\n\n", want: []Event{ev("", "x", "b")}},
		{name: "comment only", in: ":hi\n:\n\n", want: nil},
		{name: "leading blank lines", in: "\n\n\ndata: a\n\n", want: []Event{ev("", "a")}},
		// ids.
		{
			name:   "id persists across events",
			in:     "id: 7\ndata: a\n\ndata: b\n\nid: 8\ndata: c\n\n",
			want:   []Event{ev("7", "a"), ev("7", "b"), ev("8", "c")},
			lastID: "8",
		},
		{name: "id with NUL ignored", in: "id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n", want: []Event{ev("1", "a"), ev("1", "b")}, lastID: "1"},
		{name: "id without data still commits", in: "id: 9\n\n", lastID: "9"},
		{name: "id of an unfinished event not committed", in: "id: 1\ndata: a\n\nid: 2\ndata: b\n", want: []Event{ev("1", "a")}, lastID: "1"},
		{name: "id with spaces kept", in: "id:  a b \ndata: x\n\n", want: []Event{ev(" a b ", "x")}, lastID: " a b "},
		// retry.
		{name: "retry", in: "retry: 1500\ndata: a\n\n", want: []Event{withRetry(ev("", "a"), 1500*time.Millisecond)}, retry: 1500 * time.Millisecond},
		{name: "retry alone applies", in: "retry: 10\n\n", retry: 10 * time.Millisecond},
		{name: "retry applies without a blank line", in: "retry: 10\n", retry: 10 * time.Millisecond},
		{name: "retry not digits ignored", in: "retry: 10\n\nretry: 1a\nretry: -5\nretry: 1.5\nretry:\nretry:  20\n\n", retry: 10 * time.Millisecond},
		{name: "retry overflow ignored", in: "retry: 7\nretry: 99999999999999999999999\n\n", retry: 7 * time.Millisecond},
		{name: "retry zero", in: "retry: 0\ndata: a\n\n", want: []Event{ev("", "a")}},
		// End of stream.
		{name: "unfinished event dropped", in: "data: a\n\ndata: b", want: []Event{ev("", "a")}},
		{name: "unfinished event with line end dropped", in: "data: a\n\ndata: b\n", want: []Event{ev("", "a")}},
		{name: "empty stream", in: "", want: nil},
		// UTF-8.
		{name: "utf8 kept", in: "data: héllo ✓\n\n", want: []Event{ev("", "héllo ✓")}},
		{name: "invalid utf8 replaced", in: "data: a\xffb\xe2\x82c\n\n", want: []Event{ev("", "a\uFFFDb\uFFFDc")}},
		{name: "invalid utf8 in type replaced", in: "event: \xc0x\ndata: a\n\n", want: []Event{ev("", "a", "\uFFFDx")}},
		// Limits.
		{
			name: "over-long event discarded, next one kept",
			opts: SSEOptions{MaxEvent: 10, MaxLine: 100},
			in:   "data: 12345\ndata: 67890\n\ndata: ok\n\n",
			want: []Event{ev("", "ok")},
			disc: 1,
		},
		{
			name: "event at the limit kept",
			opts: SSEOptions{MaxEvent: 12},
			in:   "data: 12345\ndata: 67890\n\n",
			want: []Event{ev("", "12345\n67890")},
		},
		{
			name: "over-long line discards its event",
			opts: SSEOptions{MaxEvent: 100, MaxLine: 8},
			in:   "id: 1\ndata: 123456789\ndata: x\n\ndata: ok\n\n",
			want: []Event{ev("1", "ok")},
			disc: 1, lastID: "1",
		},
		{
			name: "over-long comment discards its event",
			opts: SSEOptions{MaxLine: 6},
			in:   ":123456\ndata: a\n\ndata:b\n\n",
			want: []Event{ev("", "b")},
			disc: 1,
		},
		{
			name: "over-long line at the end",
			opts: SSEOptions{MaxLine: 6},
			in:   "data:a\n\n:12345678",
			want: []Event{ev("", "a")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := sseResult{Events: tt.want, LastID: tt.lastID, Retry: tt.retry, Discarded: tt.disc, Err: io.EOF}
			for name, r := range map[string]io.Reader{
				"whole":    strings.NewReader(tt.in),
				"bytewise": iotest.OneByteReader(strings.NewReader(tt.in)),
				"halves":   iotest.HalfReader(strings.NewReader(tt.in)),
			} {
				got := parseAll(r, tt.opts)
				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s:\n got %+v\nwant %+v", name, got, want)
				}
			}
		})
	}
}

// TestSSEParserCRAtBufferBoundary puts a CRLF exactly across the parser's
// read buffer edge: the LF must not start an extra (dispatching) line.
func TestSSEParserCRAtBufferBoundary(t *testing.T) {
	for _, pad := range []int{sseReadBuffer - 1, sseReadBuffer - 2, sseReadBuffer} {
		// "data: " + pad-6 bytes puts the CR at index pad-1..pad.
		line := "data: " + strings.Repeat("x", pad-len("data: ")-1)
		in := line + "\r\ndata: y\r\n\r\n"
		got := parseAll(strings.NewReader(in), SSEOptions{})
		want := []Event{ev("", strings.Repeat("x", len(line)-len("data: "))+"\ny")}
		if !reflect.DeepEqual(got.Events, want) {
			t.Fatalf("pad %d: got %d events %q", pad, len(got.Events), got.Events)
		}
	}
	// Reader returns exactly up to and including the CR, then the LF.
	r := &chunkReader{chunks: []string{"data: a\r", "\ndata: b\r", "\n\r", "\n"}}
	got := parseAll(r, SSEOptions{})
	if want := []Event{ev("", "a\nb")}; !reflect.DeepEqual(got.Events, want) {
		t.Fatalf("chunked CRLF: got %q", got.Events)
	}
}

// chunkReader returns its chunks one Read at a time.
type chunkReader struct{ chunks []string }

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.chunks[0])
	r.chunks[0] = r.chunks[0][n:]
	if r.chunks[0] == "" {
		r.chunks = r.chunks[1:]
	}
	return n, nil
}

func TestSSEParserResetKeepsIDAndRetry(t *testing.T) {
	p := NewSSEParser(strings.NewReader("retry: 250\nid: 41\ndata: a\n\nid: 42\ndata: cut"), SSEOptions{})
	if e, err := p.Next(); err != nil || e.ID != "41" {
		t.Fatalf("first event %+v %v", e, err)
	}
	if _, err := p.Next(); err != io.EOF {
		t.Fatalf("want EOF, got %v", err)
	}
	if p.LastEventID() != "41" {
		t.Fatalf("LastEventID %q after a cut event", p.LastEventID())
	}
	// A reconnection: events without id keep the id, the cut data is gone.
	p.Reset(strings.NewReader("data: b\n\n"))
	e, err := p.Next()
	if err != nil || e != (Event{ID: "41", Type: "message", Data: "b", Retry: 250 * time.Millisecond}) {
		t.Fatalf("after Reset: %+v %v", e, err)
	}
}

func TestSSEParserReadError(t *testing.T) {
	boom := errors.New("boom")
	r := io.MultiReader(strings.NewReader("data: a\n\ndata: b\n"), iotest.ErrReader(boom))
	got := parseAll(r, SSEOptions{})
	if len(got.Events) != 1 || !errors.Is(got.Err, boom) {
		t.Fatalf("got %+v", got)
	}
	// A reader that never makes progress must not spin forever.
	got = parseAll(zeroReader{}, SSEOptions{})
	if !errors.Is(got.Err, io.ErrNoProgress) {
		t.Fatalf("zero reader: %v", got.Err)
	}
}

type zeroReader struct{}

func (zeroReader) Read([]byte) (int, error) { return 0, nil }

// TestSSEParserBoundedMemory feeds a hostile stream (one endless line, then
// an endless event) and checks the parser never holds more than its limits.
func TestSSEParserBoundedMemory(t *testing.T) {
	const limit = 64 << 10
	endless := io.LimitReader(repeatReader('x'), 8<<20)
	p := NewSSEParser(io.MultiReader(strings.NewReader("data: "), endless, strings.NewReader("\n\ndata: ok\n\n")), SSEOptions{MaxEvent: limit})
	e, err := p.Next()
	if err != nil || e.Data != "ok" || p.Discarded() != 1 {
		t.Fatalf("got %+v %v discarded %d", e, err, p.Discarded())
	}
	if c := cap(p.line) + cap(p.data); c > 2*limit {
		t.Fatalf("parser holds %d bytes of buffers", c)
	}
}

type repeatReader byte

func (r repeatReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r)
	}
	return len(p), nil
}

func TestDecodeUTF8MaximalSubparts(t *testing.T) {
	// Unicode 15 table 3-8: one U+FFFD per maximal subpart.
	in := "\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64"
	want := "a\uFFFD\uFFFD\uFFFDb\uFFFDc\uFFFD\uFFFDd"
	if got := decodeUTF8([]byte(in)); got != want {
		t.Fatalf("got %q want %q", got, want)
	}
	if got := decodeUTF8([]byte("\xED\xA0\x80")); got != "\uFFFD\uFFFD\uFFFD" { // surrogate
		t.Fatalf("surrogate: %q", got)
	}
}

func FuzzSSE(f *testing.F) {
	f.Add([]byte("data: a\n\n"))
	f.Add([]byte("\xEF\xBB\xBFid: 1\r\nevent: x\r\ndata: a\r\ndata\r\n\r\nretry: 10\r\r"))
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, o := range []SSEOptions{{}, {MaxEvent: 16, MaxLine: 8}} {
			whole := parseAll(strings.NewReader(string(in)), o)
			bytewise := parseAll(iotest.OneByteReader(strings.NewReader(string(in))), o)
			odd := parseAll(&chunkReader{chunks: chunksOf(string(in))}, o)
			if !reflect.DeepEqual(whole, bytewise) || !reflect.DeepEqual(whole, odd) {
				t.Fatalf("chunking changed the result (opts %+v):\n whole    %+v\n bytewise %+v\n odd      %+v", o, whole, bytewise, odd)
			}
			for _, e := range whole.Events {
				if !utf8.ValidString(e.Data) || !utf8.ValidString(e.ID) || !utf8.ValidString(e.Type) {
					t.Fatalf("invalid UTF-8 in %+v", e)
				}
				if strings.ContainsAny(e.Data, "\r") || strings.ContainsAny(e.ID, "\r\n\x00") || strings.ContainsAny(e.Type, "\r\n") || e.Type == "" {
					t.Fatalf("bad event %+v", e)
				}
				if o.MaxEvent > 0 && len(e.Data) > o.MaxEvent*3 {
					t.Fatalf("event over the limit: %d bytes", len(e.Data))
				}
			}
		}
	})
}

// chunksOf splits s into chunks of sizes 1, 2, 3, … derived from s itself,
// so the fuzzer explores many boundaries.
func chunksOf(s string) []string {
	var out []string
	for n := 1; s != ""; n = n%7 + 1 {
		k := min(n+len(s)%3, len(s))
		out = append(out, s[:k])
		s = s[k:]
	}
	return out
}

func BenchmarkSSEParser(b *testing.B) {
	var sb strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&sb, "id: %d\nevent: tick\ndata: {\"n\":%d,\"payload\":\"abcdefghijklmnopqrstuvwxyz\"}\n\n", i, i)
	}
	in := sb.String()
	r := strings.NewReader(in)
	p := NewSSEParser(r, SSEOptions{})
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(in)
		p.Reset(r)
		for {
			if _, err := p.Next(); err != nil {
				break
			}
		}
	}
}
