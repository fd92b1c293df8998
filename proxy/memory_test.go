package proxy

import (
	"bufio"
	"bytes"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/wsidecar/wsidecar/config"
)

// BenchmarkIdleSocketMemory opens idle sockets and reports the Go heap and
// stack they hold, per socket. Clients are raw TCP connections in the same
// process (their few hundred bytes are included, so the figure is a slight
// overestimate). Run with -benchtime=1x; IDLE_SOCKETS sockets per run.
func BenchmarkIdleSocketMemory(b *testing.B) {
	for _, mode := range []struct {
		name   string
		inline bool
	}{{"handoff", false}, {"inline_hijack_goroutine", true}} {
		b.Run(mode.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				perSocket := measureIdle(b, 2000, mode.inline)
				b.ReportMetric(perSocket, "bytes/socket")
			}
		})
	}
}

func measureIdle(b *testing.B, n int, inline bool) float64 {
	r := config.Route{Path: "/ws", Auth: "none"}
	opts := Options{Routes: []config.Route{r}, NodeID: "mem", Metrics: metrics.NewSet(), inlineReadLoop: inline}
	s, err := NewServer(opts)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = s.Serve(ln) }()
	defer s.Close()
	addr := ln.Addr().String()
	req := []byte("GET /ws HTTP/1.1\r\nHost: " + addr + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	dialOne := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		br := bufio.NewReaderSize(c, 512)
		var resp []byte
		for !bytes.HasSuffix(resp, []byte("\r\n\r\n")) {
			line, err := br.ReadSlice('\n')
			if err != nil {
				b.Fatal(err)
			}
			resp = append(resp, line...)
		}
		if !bytes.HasPrefix(resp, []byte("HTTP/1.1 101")) {
			b.Fatalf("handshake: %q", resp)
		}
		return c
	}
	// Warm pools and the runtime with a first batch, then measure a second.
	warm := make([]net.Conn, 0, 200)
	for i := 0; i < 200; i++ {
		warm = append(warm, dialOne())
	}
	settle := func() (heap, stack uint64) {
		time.Sleep(200 * time.Millisecond)
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse, ms.StackInuse
	}
	h0, s0 := settle()
	conns := make([]net.Conn, 0, n)
	for i := 0; i < n; i++ {
		conns = append(conns, dialOne())
	}
	h1, s1 := settle()
	b.Logf("%s: heap %.0f B/socket, stack %.0f B/socket, sockets %d",
		map[bool]string{false: "handoff", true: "inline"}[inline],
		float64(h1-h0)/float64(n), float64(s1-s0)/float64(n), s.Hub().Count())
	for _, c := range append(conns, warm...) {
		_ = c.Close()
	}
	return float64(h1+s1-h0-s0) / float64(n)
}

// BenchmarkBroadcastLoopback measures end-to-end fan-out: Deliver
// broadcasts of a 64-byte text message to 1,000 real loopback sockets, all
// queued at once, whose clients read and count raw frame bytes. Reported
// per delivered message.
func BenchmarkBroadcastLoopback(b *testing.B) {
	benchFanoutWindow(b, 1000, 64, 0, 1024)
}
