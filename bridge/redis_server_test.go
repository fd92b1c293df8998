package bridge

// A real redis-server per test, on a free loopback port, for the cluster
// tests. Nothing about Redis is faked.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisServer is one redis-server process that can be killed and started
// again on the same port (a Redis outage).
type redisServer struct {
	t     testing.TB
	bin   string
	port  int
	extra []string
	Addr  string // 127.0.0.1:port
	URL   string // redis://127.0.0.1:port/0

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	out    *bytes.Buffer
}

// startRedisServer starts redis-server with extra arguments, skipping the
// test when the binary is not installed.
func startRedisServer(t testing.TB, extra ...string) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it): skipping the Redis cluster test")
	}
	var lastErr error
	for range 5 {
		r := &redisServer{t: t, bin: bin, port: redisFreePort(t), extra: extra}
		r.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port))
		r.URL = "redis://" + r.Addr + "/0"
		if lastErr = r.start(); lastErr == nil {
			t.Cleanup(r.kill)
			return r
		}
	}
	t.Fatalf("starting redis-server: %v", lastErr)
	return nil
}

func redisFreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// start runs a fresh redis-server on r.port and waits until it answers PING.
func (r *redisServer) start() error {
	args := []string{"--save", "", "--appendonly", "no", "--port", strconv.Itoa(r.port),
		"--bind", "127.0.0.1", "--daemonize", "no", "--loglevel", "warning"}
	args = append(args, r.extra...)
	cmd := exec.Command(r.bin, args...)
	out := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = &redisOutput{w: out}, &redisOutput{w: out}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	r.mu.Lock()
	r.cmd, r.exited, r.out = cmd, exited, out
	r.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("redis-server on port %d exited: %s", r.port, out.String())
		default:
		}
		if r.ping() == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.kill()
	return fmt.Errorf("redis-server on port %d did not answer", r.port)
}

// ping speaks RESP by hand, so the readiness check needs no client.
func (r *redisServer) ping() error {
	c, err := net.DialTimeout("tcp", r.Addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	// +PONG, or -NOAUTH when a password is required: either way it is up.
	if !strings.HasPrefix(line, "+PONG") && !strings.HasPrefix(line, "-NOAUTH") {
		return fmt.Errorf("unexpected answer %q", line)
	}
	return nil
}

// kill stops the server at once (SIGKILL: no goodbye to clients).
func (r *redisServer) kill() {
	r.mu.Lock()
	cmd, exited := r.cmd, r.exited
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-exited
}

// restart starts a new, empty server on the same port.
func (r *redisServer) restart() {
	r.t.Helper()
	var err error
	for range 20 {
		if err = r.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.t.Fatalf("restarting redis-server: %v", err)
}

// client returns a plain go-redis client for assertions about the server.
func (r *redisServer) client(password string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: r.Addr, Password: password, Protocol: 2, DisableIdentity: true})
	r.t.Cleanup(func() { _ = c.Close() })
	return c
}

// redisNumSub returns PUBSUB NUMSUB for one topic.
func redisNumSub(t testing.TB, c *redis.Client, topic string) int64 {
	t.Helper()
	m, err := c.PubSubNumSub(context.Background(), topic).Result()
	if err != nil {
		t.Fatalf("PUBSUB NUMSUB: %v", err)
	}
	return m[topic]
}

// redisCommandCalls returns how many times Redis ran a command, from INFO
// commandstats (0 when it never ran).
func redisCommandCalls(t testing.TB, c *redis.Client, command string) int {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatalf("INFO commandstats: %v", err)
	}
	prefix := "cmdstat_" + command + ":calls="
	for line := range strings.SplitSeq(info, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), prefix); ok {
			n, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
			return n
		}
	}
	return 0
}

type redisOutput struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *redisOutput) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// tcpRelay forwards loopback TCP to Redis and can freeze: bytes are then
// swallowed in both directions while every connection stays open, as when
// a node or a network path dies without a FIN or RST.
type tcpRelay struct {
	ln     net.Listener
	target string
	frozen atomic.Bool
	Addr   string
}

func startFreezableRelay(t testing.TB, target string) *tcpRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &tcpRelay{ln: ln, target: target, Addr: ln.Addr().String()}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			open = append(open, c, up)
			mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); r.pipe(up, c) }()
			go func() { defer wg.Done(); r.pipe(c, up) }()
		}
	}()
	return r
}

func (r *tcpRelay) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		if r.frozen.Load() {
			continue // swallowed
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}
