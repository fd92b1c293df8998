package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// The runner itself is exercised by `go run ./bench`; these tests cover the
// parts whose mistakes would silently skew the figures: the latency
// histogram, the timestamp, the frame parser, the wrk and metrics readers,
// and the load client against a real WebSocket server.

func TestHistQuantiles(t *testing.T) {
	var h hist
	for us := 1; us <= 10000; us++ { // 1 µs … 10 ms, uniform
		h.record(time.Duration(us) * time.Microsecond)
	}
	var m merged
	m.add(h.snapshot())
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5 * time.Millisecond}, {0.99, 9900 * time.Microsecond}, {0.999, 9990 * time.Microsecond}} {
		got := m.quantile(tc.q)
		if diff := float64(got-tc.want) / float64(tc.want); diff > 0.02 || diff < -0.02 {
			t.Errorf("q%.3f = %v, want %v ± 2%%", tc.q, got, tc.want)
		}
	}
	var empty merged
	if got := empty.quantile(0.5); got != -1 {
		t.Errorf("empty histogram quantile = %v, want -1", got)
	}
}

func TestHistBucketsAreMonotonic(t *testing.T) {
	prev := -1
	for us := uint64(0); us < 1<<30; us = us*9/8 + 1 {
		i := histIndex(us)
		if i < prev {
			t.Fatalf("histIndex(%d) = %d < previous %d", us, i, prev)
		}
		if lo := histLower(i); lo > us {
			t.Fatalf("bucket %d starts at %d, above the value %d it holds", i, lo, us)
		}
		prev = i
	}
}

func TestStampRoundTrip(t *testing.T) {
	now := time.Now()
	for _, size := range []int{20, 100, 1024} {
		p := stampPayload(nil, now, size)
		if len(p) != size {
			t.Errorf("size %d: payload of %d bytes", size, len(p))
		}
		got, ok := parseStamp(p)
		if !ok || got != now.UnixNano() {
			t.Errorf("size %d: parseStamp = %d, %v; want %d", size, got, ok, now.UnixNano())
		}
	}
	for _, bad := range []string{"", "12345", "x234567890123456789 ", "123456789012345678"} {
		if _, ok := parseStamp([]byte(bad)); ok {
			t.Errorf("parseStamp(%q) accepted", bad)
		}
	}
}

// serverFrame encodes an unmasked frame as a server sends it.
func serverFrame(op byte, payload []byte) []byte {
	b := []byte{0x80 | op}
	switch n := len(payload); {
	case n < 126:
		b = append(b, byte(n))
	case n <= 0xffff:
		b = append(b, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(b, payload...)
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestFrameParserAcrossReadBoundaries(t *testing.T) {
	now := time.Now()
	small := stampPayload(nil, now, 100)
	medium := stampPayload(nil, now, 1000) // 16-bit length
	large := stampPayload(nil, now, 70000) // 64-bit length
	var stream []byte
	stream = append(stream, serverFrame(opText, small)...)
	stream = append(stream, serverFrame(opPing, []byte("hb"))...)
	stream = append(stream, serverFrame(opText, medium)...)
	stream = append(stream, serverFrame(opPong, nil)...)
	stream = append(stream, serverFrame(opBin, large)...)
	stream = append(stream, serverFrame(opText, nil)...)

	type got struct {
		op    byte
		size  int
		stamp int64
	}
	want := []got{{opText, 100, now.UnixNano()}, {opText, 1000, now.UnixNano()}, {opBin, 70000, now.UnixNano()}, {opText, 0, 0}}
	for _, chunk := range []int{1, 2, 3, 7, 13, 64, 4096, len(stream)} {
		client, server := tcpPair(t)
		var frames []got
		es := &esock{s: &sock{c: &wsConn{nc: client, efd: -1}}, need: 2,
			on: func(op byte, prefix []byte, n int) {
				ts, _ := parseStamp(prefix)
				frames = append(frames, got{op, n, ts})
			}}
		for b := stream; len(b) > 0; {
			k := min(chunk, len(b))
			if err := es.parse(b[:k]); err != nil {
				t.Fatalf("chunk %d: %v", chunk, err)
			}
			b = b[k:]
		}
		if len(frames) != len(want) {
			t.Fatalf("chunk %d: %d data frames, want %d: %+v", chunk, len(frames), len(want), frames)
		}
		for i := range want {
			if frames[i] != want[i] {
				t.Errorf("chunk %d: frame %d = %+v, want %+v", chunk, i, frames[i], want[i])
			}
		}
		// The ping was answered with a masked pong carrying its payload.
		_ = server.SetReadDeadline(time.Now().Add(2 * time.Second))
		hdr := make([]byte, 2+4+2)
		if _, err := io.ReadFull(server, hdr); err != nil {
			t.Fatalf("chunk %d: no pong: %v", chunk, err)
		}
		if hdr[0] != 0x80|opPong || hdr[1] != 0x80|2 {
			t.Fatalf("chunk %d: pong header %x", chunk, hdr[:2])
		}
		mask := hdr[2:6]
		if p := []byte{hdr[6] ^ mask[0], hdr[7] ^ mask[1]}; string(p) != "hb" {
			t.Errorf("chunk %d: pong payload %q, want %q", chunk, p, "hb")
		}
	}
}

func TestFrameParserRefusals(t *testing.T) {
	client, server := tcpPair(t)
	es := &esock{s: &sock{c: &wsConn{nc: client, efd: -1}}, need: 2, on: func(byte, []byte, int) {}}
	masked := []byte{0x81, 0x80 | 1, 1, 2, 3, 4, 'x'}
	if err := es.parse(masked); err == nil {
		t.Error("a masked server frame was accepted")
	}
	es = &esock{s: &sock{c: &wsConn{nc: client, efd: -1}}, need: 2, on: func(byte, []byte, int) {}}
	closeFrame := serverFrame(opClose, []byte{0x03, 0xE9, 'b', 'y', 'e'}) // 1001
	if err := es.parse(closeFrame); !errors.Is(err, errPeerClosed) {
		t.Fatalf("close frame: err = %v, want errPeerClosed", err)
	}
	// The close is echoed with the code only.
	_ = server.SetReadDeadline(time.Now().Add(2 * time.Second))
	echo := make([]byte, 2+4+2)
	if _, err := io.ReadFull(server, echo); err != nil {
		t.Fatalf("no close echo: %v", err)
	}
	if code := binary.BigEndian.Uint16([]byte{echo[6] ^ echo[2], echo[7] ^ echo[3]}); code != 1001 {
		t.Errorf("close echo code %d, want 1001", code)
	}
}

const wrkSample = `Running 3s test @ http://127.0.0.1:9090/v1/push/channel/bench
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   307.51us  456.12us  12.21ms   95.12%
    Req/Sec    52.95k     3.21k   57.11k    80.00%
  Latency Distribution
     50%  242.00us
     75%  301.00us
     90%  402.00us
     99%    5.95ms
  158802 requests in 3.00s, 19.99MB read
  Non-2xx or 3xx responses: 7
Requests/sec:  52934.12
Transfer/sec:      6.66MB
`

func TestParseWrk(t *testing.T) {
	var res pushResult
	parseWrk(wrkSample, &res)
	if res.Err != "" {
		t.Fatal(res.Err)
	}
	if res.ReqPerSec != 52934.12 || res.Requests != 158802 || res.Non2xx != 7 {
		t.Errorf("got %.2f req/s, %d requests, %d non-2xx", res.ReqPerSec, res.Requests, res.Non2xx)
	}
	if res.P50 != 242*time.Microsecond || res.P99 != 5950*time.Microsecond {
		t.Errorf("p50 %v p99 %v", res.P50, res.P99)
	}
	var bad pushResult
	parseWrk("unable to connect to 127.0.0.1:1 Connection refused", &bad)
	if bad.Err == "" {
		t.Error("wrk failure output was read as a result")
	}
}

func TestReadMetric(t *testing.T) {
	page := "# HELP x\nwsidecar_send_queue_dropped_total 12\nwsidecar_send_queue_dropped_total_other 3\n" +
		`wsidecar_push_requests_total{kind="channel"} 5` + "\nwsidecar_slow_consumer_closes_total 2.5e+01\n"
	for name, want := range map[string]float64{
		"wsidecar_send_queue_dropped_total":   12,
		"wsidecar_slow_consumer_closes_total": 25,
		"wsidecar_absent_total":               -1,
	} {
		if got := readMetric(page, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

// TestClientAgainstRealServer drives the load client through its command
// protocol against a fasthttp/websocket server that sends stamped frames
// and a ping to every socket, as the runner would.
func TestClientAgainstRealServer(t *testing.T) {
	const sockets, perSocket = 6, 3
	pongs := make(chan struct{}, sockets)
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		ws.SetPongHandler(func(string) error { pongs <- struct{}{}; return nil })
		go func() { // the read loop answers control frames
			for {
				if _, _, err := ws.NextReader(); err != nil {
					return
				}
			}
		}()
		_ = ws.WriteControl(websocket.PingMessage, []byte("p"), time.Now().Add(time.Second))
		for i := 0; i < perSocket; i++ {
			if err := ws.WriteMessage(websocket.TextMessage, stampPayload(nil, time.Now(), 100)); err != nil {
				return
			}
		}
		time.Sleep(2 * time.Second)
	}))
	defer srv.Close()

	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- runClient(inR, outW) }()
	dec := json.NewDecoder(bufio.NewReader(outR))
	call := func(cmd clientCmd) clientReply {
		t.Helper()
		b, _ := json.Marshal(cmd)
		if _, err := inW.Write(append(b, '\n')); err != nil {
			t.Fatal(err)
		}
		var rep clientReply
		if err := dec.Decode(&rep); err != nil {
			t.Fatal(err)
		}
		return rep
	}
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"
	rep := call(clientCmd{Op: "connect", URL: url, N: sockets, Conc: 3, IPs: []string{"127.0.0.2", "127.0.0.3"}})
	if rep.Connected != sockets || rep.Failed != 0 || rep.Open != sockets {
		t.Fatalf("connect: %+v", rep)
	}
	deadline := time.Now().Add(5 * time.Second)
	for rep.Frames < sockets*perSocket && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		rep = call(clientCmd{Op: "count"})
	}
	if rep.Frames != sockets*perSocket || rep.Bytes != sockets*perSocket*100 {
		t.Fatalf("received %d frames, %d bytes; want %d, %d", rep.Frames, rep.Bytes, sockets*perSocket, sockets*perSocket*100)
	}
	stats := call(clientCmd{Op: "stats"})
	var m merged
	m.add(stats.Hist)
	if m.n != sockets*perSocket {
		t.Errorf("latency samples %d, want %d", m.n, sockets*perSocket)
	}
	if q := m.quantile(1); q < 0 || q > 5*time.Second {
		t.Errorf("max latency %v: the timestamps were not read", q)
	}
	for i := 0; i < sockets; i++ {
		select {
		case <-pongs:
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d sockets answered the ping", i, sockets)
		}
	}
	if rep := call(clientCmd{Op: "close", Keep: 2}); rep.Open != 2 {
		t.Errorf("after close keep=2: %d open", rep.Open)
	}
	call(clientCmd{Op: "quit"})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
