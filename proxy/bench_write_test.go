package proxy

import (
	"bufio"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/wsidecar/wsidecar/bridge"
	"github.com/wsidecar/wsidecar/config"
)

// BenchmarkFanoutWindow measures the writer path the way the bench runner's
// saturated fan-out drives it: broadcasts of 100 bytes to 1,000 real
// loopback sockets, with at most `window` broadcasts not yet received by
// every socket. Window 1 leaves one frame per socket per writer start (the
// writer start/exit and per-frame costs dominate); window 8 lets a few
// frames queue per socket. Reported per delivered frame, in wall time and
// in process CPU time (server and in-process readers together; unlike wall
// time it barely moves when other processes share the cores).
func BenchmarkFanoutWindow(b *testing.B) {
	for _, window := range []int{1, 8} {
		b.Run(fmt.Sprintf("window=%d", window), func(b *testing.B) { benchFanoutWindow(b, 1000, 100, window, 256) })
	}
}

// benchFanoutWindow broadcasts size-byte messages to n raw sockets with at
// most window broadcasts in flight (0: no pacing; queue must then hold
// b.N frames or the benchmark waits for frames that were dropped).
func benchFanoutWindow(b *testing.B, n, size, window, queue int) {
	s, conns := rawBenchSockets(b, n, config.Limits{SendQueue: queue, SlowConsumer: "drop"})
	frame := 2 + size // server frames are unmasked; sizes < 126 fit the 7-bit length

	var got, target atomic.Int64 // frames received by all sockets; the pusher's wake-up mark
	wake := make(chan struct{}, 1)
	done := make(chan error, n)
	cpu0 := processCPU()
	b.ResetTimer()
	for _, c := range conns {
		go func(c net.Conn) {
			buf := make([]byte, 64<<10)
			want, have := b.N*frame, 0
			for have < want {
				k, err := c.Read(buf)
				if err != nil {
					done <- err
					return
				}
				frames := (have+k)/frame - have/frame
				have += k
				if frames > 0 && got.Add(int64(frames)) >= target.Load() {
					select {
					case wake <- struct{}{}:
					default:
					}
				}
			}
			done <- nil
		}(c)
	}
	t := &bridge.Target{Broadcast: true}
	msg := make([]byte, size)
	for i := 0; i < b.N; i++ {
		if window > 0 && i >= window {
			need := int64(i-window+1) * int64(n)
			target.Store(need)
			for got.Load() < need {
				<-wake
			}
		}
		s.Hub().Deliver(t, bridge.Message{Data: msg})
	}
	for range conns {
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	perFrame := float64(b.Elapsed().Nanoseconds()) / float64(b.N*n)
	b.ReportMetric(perFrame, "ns/delivery")
	b.ReportMetric(1e9/perFrame, "deliveries/s")
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N*n), "cpu-ns/delivery")
}

// processCPU is the process's user+system CPU time in ns.
func processCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// rawBenchSockets starts a server with one anonymous route "/ws" and the
// given limits, opens n raw TCP WebSockets to it (handshake written by
// hand, frames read as bytes by the caller) and waits until the hub holds
// them all. Everything is closed when the benchmark ends.
func rawBenchSockets(b *testing.B, n int, lim config.Limits) (*Server, []net.Conn) {
	b.Helper()
	s, err := NewServer(Options{Routes: []config.Route{{Path: "/ws", Auth: "none"}}, NodeID: "bench", Metrics: metrics.NewSet(), Limits: lim})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = s.Serve(ln) }()
	b.Cleanup(func() { _ = s.Close() })
	req := []byte("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	conns := make([]net.Conn, 0, n)
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = c.Close() })
		_, _ = c.Write(req)
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				b.Fatal(err)
			}
			if len(line) <= 2 {
				break
			}
		}
		conns = append(conns, c)
	}
	for s.Hub().Count() != n {
		time.Sleep(time.Millisecond)
	}
	return s, conns
}
