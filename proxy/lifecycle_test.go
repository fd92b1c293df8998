package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	cws "github.com/coder/websocket"
	fws "github.com/fasthttp/websocket"

	"github.com/wsidecar/wsidecar/bridge"
	"github.com/wsidecar/wsidecar/config"
)

// dialTinyWindow connects a client whose receive buffer is tiny and that
// never reads: the server's writes to it stall after a few KiB, like a peer
// on a dead mobile link.
func dialTinyWindow(t *testing.T, url string) *fws.Conn {
	t.Helper()
	nd := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		}); err != nil {
			return err
		}
		return serr
	}}
	d := fws.Dialer{NetDialContext: nd.DialContext, HandshakeTimeout: 10 * time.Second}
	c, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// fill pushes big frames to one socket until its send queue is full. With
// stuck set it goes on until the queue stays full for a while, i.e. the
// writer is blocked on the peer's closed TCP window.
func fill(t *testing.T, h *Hub, id string, stuck bool) {
	t.Helper()
	big := bridge.Message{Binary: true, Data: make([]byte, 16<<10)}
	drops := 0
	for i := 0; i < 5000; i++ {
		got := h.Deliver(&bridge.Target{Connections: []string{id}}, big)
		switch {
		case got.Dropped == 0:
			drops = 0
		case !stuck || drops == 2:
			return
		default:
			drops++
			time.Sleep(100 * time.Millisecond)
		}
	}
	t.Fatal("send queue never filled")
}

func TestSlowConsumerDoesNotDelayOthers(t *testing.T) {
	be := newFakeBackend()
	r := openRoute("/ws")
	r.OnConnect = ""
	s := startServer(t, Options{Routes: []config.Route{r}, Backend: be,
		Limits: config.Limits{SendQueue: 64, SlowConsumer: "drop"}})
	const readers = 200
	clients := make([]*cws.Conn, readers)
	for i := range clients {
		clients[i] = wsDial(t, s.url+"/ws", nil)
	}
	dialTinyWindow(t, s.url+"/ws")
	eventually(t, 5*time.Second, "all sockets registered", func() bool { return s.Hub().Count() == readers+1 })
	// Sockets join the hub before their 101 is sent, and the slow client
	// dialled last.
	slowID := lastRegistered(s.Hub())
	fill(t, s.Hub(), slowID, true)

	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for _, cl := range clients {
		wg.Add(1)
		go func(cl *cws.Conn) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			for i := 0; i < n; i++ {
				_, b, err := cl.Read(ctx)
				if err != nil {
					errs <- err
					return
				}
				if want := fmt.Sprintf("b%d", i); string(b) != want {
					errs <- fmt.Errorf("got %q, want %q", b, want)
					return
				}
			}
		}(cl)
	}
	start := time.Now()
	for i := 0; i < n; i++ {
		got := s.Hub().Deliver(&bridge.Target{Broadcast: true}, bridge.Message{Data: []byte(fmt.Sprintf("b%d", i))})
		if got != (bridge.Counts{Delivered: readers, Dropped: 1}) {
			t.Fatalf("broadcast %d: %+v", i, got)
		}
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("50 broadcasts took %v with one stuck socket", el)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := metricValue(s.set, "wsidecar_send_queue_dropped_total"); got == "" || got == "0" {
		t.Fatalf("drops not counted: %q", got)
	}
	if _, ok := s.Hub().Lookup(slowID); !ok {
		t.Fatal(`slow socket closed under the "drop" policy`)
	}
}

// lastRegistered returns the id of the socket the hub added last.
func lastRegistered(h *Hub) string {
	var best *conn
	h.each(func(c *conn) {
		if best == nil || c.serial > best.serial {
			best = c
		}
	})
	return best.id
}

func TestSlowConsumerClosed1013(t *testing.T) {
	be := newFakeBackend()
	r := openRoute("/ws")
	r.OnConnect = ""
	s := startServer(t, Options{Routes: []config.Route{r}, Backend: be,
		Limits: config.Limits{SendQueue: 8, SlowConsumer: "close"}, WriteTimeout: time.Second})
	ok := wsDial(t, s.url+"/ws", nil)
	dialTinyWindow(t, s.url+"/ws")
	eventually(t, 5*time.Second, "sockets registered", func() bool { return s.Hub().Count() == 2 })
	slowID := lastRegistered(s.Hub())
	fill(t, s.Hub(), slowID, false)

	d := be.waitDisconnect(t)
	if d.ci.ID != slowID || d.d.Code != 1013 || d.d.Reason != "slow consumer" {
		t.Fatalf("disconnect %+v", d)
	}
	if got := metricValue(s.set, "wsidecar_slow_consumer_closes_total"); got != "1" {
		t.Fatalf("slow consumer closes = %q", got)
	}
	if got := s.Hub().Deliver(&bridge.Target{Broadcast: true}, bridge.Message{Data: []byte("still here")}); got.Delivered != 1 {
		t.Fatalf("broadcast after close %+v", got)
	}
	if _, msg := wsRead(t, ok); msg != "still here" {
		t.Fatalf("got %q", msg)
	}
}

func TestHeartbeat(t *testing.T) {
	be := newFakeBackend()
	s := startServer(t, Options{Routes: []config.Route{openRoute("/ws")}, Backend: be,
		Heartbeat: config.Heartbeat{Interval: 100 * time.Millisecond, Timeout: 200 * time.Millisecond}})

	// A reads but never answers pings.
	mute, _, err := (&fws.Dialer{}).Dial(s.url+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	var pings atomic.Int32
	mute.SetPingHandler(func(string) error { pings.Add(1); return nil })
	muteClosed := make(chan error, 1)
	go func() {
		for {
			if _, _, err := mute.ReadMessage(); err != nil {
				muteClosed <- err
				return
			}
		}
	}()
	// B reads and answers pings (coder/websocket does while reading).
	alive := wsDial(t, s.url+"/ws", nil)
	aliveMsgs := make(chan string, 10)
	go func() {
		for {
			_, b, err := alive.Read(context.Background())
			if err != nil {
				close(aliveMsgs)
				return
			}
			aliveMsgs <- string(b)
		}
	}()
	start := time.Now()
	select {
	case err := <-muteClosed:
		var ce *fws.CloseError
		if !errors.As(err, &ce) || ce.Code != 1001 || ce.Text != "heartbeat timeout" {
			t.Fatalf("mute client ended with %v", err)
		}
		if el := time.Since(start); el < 250*time.Millisecond {
			t.Fatalf("closed after %v, before interval+timeout", el)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("silent client not closed")
	}
	if pings.Load() == 0 {
		t.Fatal("no pings were sent")
	}
	if d := be.waitDisconnect(t); d.d.Code != 1001 || d.d.Reason != "heartbeat timeout" {
		t.Fatalf("disconnect %+v", d.d)
	}
	// B outlived several intervals and still gets messages.
	time.Sleep(400 * time.Millisecond) // let several ping rounds pass
	if got := s.Hub().Deliver(&bridge.Target{Broadcast: true}, bridge.Message{Data: []byte("alive?")}); got.Delivered != 1 {
		t.Fatalf("deliver %+v", got)
	}
	select {
	case m := <-aliveMsgs:
		if m != "alive?" {
			t.Fatalf("got %q", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("answering client lost")
	}
}

func TestHeartbeatFindsPeerThatNeverReads(t *testing.T) {
	be := newFakeBackend()
	s := startServer(t, Options{Routes: []config.Route{openRoute("/ws")}, Backend: be,
		Heartbeat: config.Heartbeat{Interval: 100 * time.Millisecond, Timeout: 100 * time.Millisecond}})
	wsDial(t, s.url+"/ws", nil) // never reads, so never pongs: a half-open peer to the server
	if d := be.waitDisconnect(t); d.d.Code != 1001 || d.d.Reason != "heartbeat timeout" || d.d.Clean {
		t.Fatalf("disconnect %+v", d.d)
	}
}

func TestDrain(t *testing.T) {
	be := newFakeBackend()
	s := startServer(t, Options{Routes: []config.Route{openRoute("/ws")}, Backend: be,
		Drain: config.Drain{Window: 300 * time.Millisecond, Timeout: 10 * time.Second}})
	const n = 20
	type closed struct {
		code cws.StatusCode
		at   time.Time
	}
	results := make(chan closed, n)
	for i := 0; i < n; i++ {
		c := wsDial(t, s.url+"/ws", nil)
		go func() {
			_, _, err := c.Read(context.Background())
			results <- closed{cws.CloseStatus(err), time.Now()}
		}()
	}
	eventually(t, 5*time.Second, "sockets registered", func() bool { return s.Hub().Count() == n })
	if err := s.Drain(context.Background()); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	if s.Hub().Count() != 0 {
		t.Fatalf("%d sockets left after Drain", s.Hub().Count())
	}
	var first, last time.Time
	for i := 0; i < n; i++ {
		r := <-results
		if r.code != cws.StatusGoingAway {
			t.Fatalf("close code %d, want 1001", r.code)
		}
		if first.IsZero() || r.at.Before(first) {
			first = r.at
		}
		if r.at.After(last) {
			last = r.at
		}
	}
	if spread := last.Sub(first); spread < 100*time.Millisecond {
		t.Fatalf("closes spread over %v, want most of the 300ms window", spread)
	}
	for i := 0; i < n; i++ {
		if d := be.waitDisconnect(t); d.d.Code != 1001 || !d.d.Clean {
			t.Fatalf("disconnect %+v", d.d)
		}
	}
	if !s.Draining() {
		t.Fatal("Draining() = false after Drain")
	}
	status, hdr, _ := wsDialFail(t, s.url+"/ws", nil)
	if status != 503 || hdr.Get("Retry-After") != "5" {
		t.Fatalf("handshake while draining: %d Retry-After=%q", status, hdr.Get("Retry-After"))
	}
	if got := metricValue(s.set, "wsidecar_draining"); got != "1" {
		t.Fatalf("wsidecar_draining = %q", got)
	}
}

// goroutinesIn counts live goroutines whose stack mentions fn.
func goroutinesIn(fn string) int {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, fn) {
			n++
		}
	}
	return n
}

// ownGoroutines counts goroutines minus fasthttp's process-wide date
// updater, which starts with the first server and never exits.
func ownGoroutines() int {
	return runtime.NumGoroutine() - goroutinesIn("fasthttp.updateServerDate")
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	base := ownGoroutines()
	be := newFakeBackend()
	s, err := NewServer(Options{Routes: []config.Route{openRoute("/ws")}, Backend: be, NodeID: "n1", Metrics: metrics.NewSet()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	url := "ws://" + ln.Addr().String() + "/ws"
	const n = 50
	var clients []*cws.Conn
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, _, err := cws.Dial(ctx, url, nil)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		wsWrite(t, c, cws.MessageText, "hi")
		wsRead(t, c)
	}
	s.Hub().Deliver(&bridge.Target{Broadcast: true}, bridge.Message{Data: []byte("all")})
	for _, c := range clients {
		wsRead(t, c)
	}
	// Idle sockets: one read loop each, no writer goroutines.
	eventually(t, 5*time.Second, "writers to exit", func() bool { return goroutinesIn("proxy.(*conn).writeLoop") == 0 })
	if got := goroutinesIn("proxy.(*conn).readLoop"); got != n {
		t.Fatalf("%d read loops for %d sockets", got, n)
	}

	closeStart := time.Now()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	t.Logf("Close took %v", time.Since(closeStart))
	defer func(start time.Time) { t.Logf("goroutines settled after %v", time.Since(start)) }(time.Now())
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if got := len(be.disconnects()); got != n {
		t.Fatalf("%d disconnects after Close, want %d", got, n)
	}
	for _, d := range be.disconnects() {
		if d.d.Code != 1001 || d.d.Reason != "server closed" {
			t.Fatalf("disconnect %+v", d.d)
		}
	}
	for _, c := range clients {
		_ = c.CloseNow()
	}
	eventually(t, 10*time.Second, fmt.Sprintf("goroutines back to %d", base), func() bool { return ownGoroutines() <= base })
	if got := goroutinesIn("wsidecar/proxy.(*"); got != 0 {
		t.Fatalf("%d proxy goroutines after Close", got)
	}
}

func TestCompressionCapsInflatedSize(t *testing.T) {
	be := newFakeBackend()
	s := startServer(t, Options{Routes: []config.Route{openRoute("/ws")}, Backend: be,
		Listener: config.Listener{Compression: true},
		Limits:   config.Limits{MaxMessageSize: 64 << 10, MaxInflatedSize: 8 << 10}})
	c, resp, err := (&fws.Dialer{EnableCompression: true}).Dial(s.url+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !strings.Contains(resp.Header.Get("Sec-WebSocket-Extensions"), "permessage-deflate") {
		t.Fatalf("compression not negotiated: %q", resp.Header.Get("Sec-WebSocket-Extensions"))
	}
	msg := strings.Repeat("compress me ", 500) // 6000 bytes inflated
	if err := c.WriteMessage(fws.TextMessage, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	if _, got, err := c.ReadMessage(); err != nil || string(got) != msg {
		t.Fatalf("echo: %v (%d bytes)", err, len(got))
	}
	// 1 MiB of zeros deflates to about 1 KiB: under MaxMessageSize on the
	// wire, far over MaxInflatedSize once inflated.
	if err := c.WriteMessage(fws.BinaryMessage, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	_, _, err = c.ReadMessage()
	var ce *fws.CloseError
	if !errors.As(err, &ce) || ce.Code != 1009 {
		t.Fatalf("after the bomb: %v", err)
	}
	if d := be.waitDisconnect(t); d.d.Code != 1009 {
		t.Fatalf("disconnect %+v", d.d)
	}
}

func TestTLS(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	cfg := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}

	s := startServer(t, Options{Routes: []config.Route{openRoute("/ws")}, Backend: newFakeBackend(), TLSConfig: cfg})
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	c := wsDial(t, strings.Replace(s.url, "ws://", "wss://", 1)+"/ws", &cws.DialOptions{HTTPClient: hc})
	wsWrite(t, c, cws.MessageText, "secret")
	if _, got := wsRead(t, c); got != "secret" {
		t.Fatalf("got %q", got)
	}
}
