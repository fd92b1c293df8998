package main

// End-to-end stories of scaling out: three sidecars in this process, one
// real redis-server, real WebSocket clients. A push sent to any replica's
// admin API reaches the right sockets wherever they are connected.

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// testRedis is a throwaway redis-server on a free loopback port that can
// be killed and started again on the same port (a Redis outage).
type testRedis struct {
	t    *testing.T
	bin  string
	port int
	Addr string

	mu   sync.Mutex
	stop func()
}

// startRedis starts a redis-server; the test is skipped when redis-server
// is missing.
func startRedis(t *testing.T) *testRedis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it): skipping the cluster test")
	}
	for range 5 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		r := &testRedis{t: t, bin: bin, port: port, Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
		if r.start() {
			t.Cleanup(r.kill)
			return r
		}
	}
	t.Fatal("redis-server did not start")
	return nil
}

// start runs redis-server on r.port; false when it did not come up (the
// port was taken).
func (r *testRedis) start() bool {
	cmd := exec.Command(r.bin, "--save", "", "--appendonly", "no", "--port", strconv.Itoa(r.port),
		"--bind", "127.0.0.1", "--daemonize", "no", "--loglevel", "warning")
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("starting redis-server: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() { _ = cmd.Process.Kill(); <-exited }
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		select {
		case <-exited:
			return false
		default:
		}
		if redisPing(r.Addr) {
			r.mu.Lock()
			r.stop = stop
			r.mu.Unlock()
			return true
		}
	}
	stop()
	return false
}

// kill stops the server at once (SIGKILL: clients get no goodbye).
func (r *testRedis) kill() {
	r.mu.Lock()
	stop := r.stop
	r.stop = nil
	r.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// restart starts a new, empty server on the same port.
func (r *testRedis) restart() {
	r.t.Helper()
	for range 20 {
		if r.start() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.t.Fatal("redis-server did not restart")
}

func redisPing(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}

// clusterConfig is one replica: anonymous sockets on /ws/{room}, whose
// connect webhook may name the user (?user=).
func clusterConfig(node, redisAddr string) string {
	return fmt.Sprintf(`
backend { url = "%%BACKEND%%" }
origins { allow_missing = true }
route "/ws/{room}" {
  auth       = "none"
  on_connect = "/connect"
  channels   = ["room:${path.room}"]
}
cluster {
  node_id = %q
  redis { url = "redis://%s/0" }
}
`, node, redisAddr)
}

// clusterSocket is one client and the id its sidecar gave it.
type clusterSocket struct {
	name string
	id   string
	ws   *client
}

// clusterBackend answers connect webhooks with the user from ?user= and
// remembers each socket's connection id by its ?tag=.
type clusterBackend struct {
	*backend
	mu  sync.Mutex
	ids map[string]string // tag → connection id
}

func newClusterBackend(t *testing.T) *clusterBackend {
	cb := &clusterBackend{backend: newBackend(t), ids: map[string]string{}}
	cb.setReply(func(w http.ResponseWriter, h hook) {
		if h.Path != "/connect" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		u, _ := url.Parse(h.Header.Get("X-WS-Path"))
		q := u.Query()
		cb.mu.Lock()
		cb.ids[q.Get("tag")] = h.Header.Get("X-WS-Connection-Id")
		cb.mu.Unlock()
		if user := q.Get("user"); user != "" {
			actions(w, map[string]any{"user": user})
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	return cb
}

func (cb *clusterBackend) connect(t *testing.T, sc *sidecar, name, room, user string) *clusterSocket {
	t.Helper()
	ws := dial(t, sc.WS+"/ws/"+room+"?tag="+name+"&user="+user, nil)
	cb.mu.Lock()
	id := cb.ids[name]
	cb.mu.Unlock()
	if id == "" {
		t.Fatalf("no connect webhook seen for %s", name)
	}
	return &clusterSocket{name: name, id: id, ws: ws}
}

// clusterPushAnswer is the push API's reply with the cluster fields.
type clusterPushAnswer struct {
	Delivered int `json:"delivered"`
	Dropped   int `json:"dropped"`
	Remote    int `json:"remote"`
	Failed    int `json:"failed"`
}

func clusterPush(t *testing.T, sc *sidecar, body map[string]any) clusterPushAnswer {
	t.Helper()
	var ans clusterPushAnswer
	status, raw := httpDo(t, "POST", sc.Admin+"/v1/push", "application/json", jsonBody(body), &ans)
	if status != http.StatusOK {
		t.Fatalf("push %v: %d %s", body, status, raw)
	}
	return ans
}

// expectNext reads the next messages of every socket: those in want must
// get text and then the marker, the others the marker alone. Since one
// replica's pushes arrive in order, a duplicate or a stray push would show
// up before the marker.
func expectNext(t *testing.T, from *sidecar, text string, want []*clusterSocket, all []*clusterSocket) {
	t.Helper()
	marker := fmt.Sprintf("marker-%d", time.Now().UnixNano())
	if ans := clusterPush(t, from, map[string]any{"broadcast": true, "text": marker}); ans.Failed != 0 {
		t.Fatalf("marker push failed: %+v", ans)
	}
	for _, s := range all {
		expect := []string{marker}
		for _, w := range want {
			if w == s {
				expect = []string{text, marker}
			}
		}
		for _, e := range expect {
			if got := readText(t, s.ws); got != e {
				t.Errorf("%s got %q, want %q", s.name, got, e)
				break
			}
		}
	}
}

// waitTopic waits until Redis reports n subscribers of a topic.
func waitTopic(t *testing.T, rc *redis.Client, topic string, n int64) {
	t.Helper()
	eventually(t, 10*time.Second, func() bool {
		m, err := rc.PubSubNumSub(context.Background(), topic).Result()
		return err == nil && m[topic] == n
	}, "Redis never saw %d subscribers of %s", n, topic)
}

func TestClusterThreeReplicas(t *testing.T) {
	redisAddr := startRedis(t).Addr
	rc := redis.NewClient(&redis.Options{Addr: redisAddr, Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { rc.Close() })
	be := newClusterBackend(t)
	a := startSidecar(t, be.URL, clusterConfig("a", redisAddr))
	b := startSidecar(t, be.URL, clusterConfig("b", redisAddr))
	c := startSidecar(t, be.URL, clusterConfig("c", redisAddr))

	a1 := be.connect(t, a, "a1", "lobby", "u1")
	a2 := be.connect(t, a, "a2", "other", "u2")
	b1 := be.connect(t, b, "b1", "lobby", "u1")
	c1 := be.connect(t, c, "c1", "lobby", "u2")
	c2 := be.connect(t, c, "c2", "other", "u1")
	all := []*clusterSocket{a1, a2, b1, c1, c2}
	for _, s := range all {
		node := s.name[:1]
		if !strings.HasPrefix(s.id, node+".") {
			t.Fatalf("%s has connection id %q; ids must carry the node id (%q)", s.name, s.id, node)
		}
	}
	waitTopic(t, rc, "wsidecar:all", 3)
	waitTopic(t, rc, "wsidecar:ch:room:lobby", 3)
	waitTopic(t, rc, "wsidecar:ch:room:other", 2)

	t.Run("channel push on A reaches A, B and C once", func(t *testing.T) {
		ans := clusterPush(t, a, map[string]any{"channels": []string{"room:lobby"}, "text": "hello lobby"})
		if ans.Delivered != 1 || ans.Remote != 2 || ans.Failed != 0 {
			t.Errorf("answer %+v, want delivered 1 (a1), remote 2", ans)
		}
		expectNext(t, a, "hello lobby", []*clusterSocket{a1, b1, c1}, all)
	})

	t.Run("user push reaches every socket of the user", func(t *testing.T) {
		ans := clusterPush(t, b, map[string]any{"users": []string{"u1"}, "text": "hi u1"})
		if ans.Delivered != 1 || ans.Remote != 2 {
			t.Errorf("answer %+v, want delivered 1 (b1), remote 2", ans)
		}
		expectNext(t, b, "hi u1", []*clusterSocket{a1, b1, c2}, all)
	})

	t.Run("channel and user overlap: once per socket", func(t *testing.T) {
		clusterPush(t, c, map[string]any{"channels": []string{"room:lobby"}, "users": []string{"u1"}, "text": "both"})
		expectNext(t, c, "both", []*clusterSocket{a1, b1, c1, c2}, all)
	})

	t.Run("connection push from A reaches a socket on C", func(t *testing.T) {
		var ans clusterPushAnswer
		status, raw := httpDo(t, "POST", a.Admin+"/v1/push/connection/"+c1.id, "text/plain", []byte("just you"), &ans)
		if status != http.StatusOK || ans.Delivered != 0 || ans.Remote != 1 {
			t.Errorf("raw connection push: %d %s", status, raw)
		}
		expectNext(t, a, "just you", []*clusterSocket{c1}, all)
	})

	t.Run("lookup on A of a socket on C", func(t *testing.T) {
		var st struct {
			ID       string   `json:"id"`
			User     string   `json:"user"`
			Channels []string `json:"channels"`
		}
		status, raw := httpDo(t, "GET", a.Admin+"/v1/connections/"+c2.id, "", nil, &st)
		if status != http.StatusOK || st.ID != c2.id || st.User != "u1" || len(st.Channels) != 1 || st.Channels[0] != "room:other" {
			t.Errorf("GET /v1/connections/%s on A: %d %s", c2.id, status, raw)
		}
		status, _ = httpDo(t, "GET", a.Admin+"/v1/connections/c.nosuchsocket", "", nil, nil)
		if status != http.StatusNotFound {
			t.Errorf("GET of an unknown id on C = %d, want 404", status)
		}
	})

	t.Run("readiness and metrics show the Redis link", func(t *testing.T) {
		status, raw := httpDo(t, "GET", b.Admin+"/readyz", "", nil, nil)
		if status != http.StatusOK || !strings.Contains(string(raw), "redis: up") {
			t.Errorf("/readyz = %d %s", status, raw)
		}
		_, raw = httpDo(t, "GET", b.Admin+"/metrics", "", nil, nil)
		if !strings.Contains(string(raw), "wsidecar_cluster_redis_up 1") {
			t.Errorf("/metrics lacks wsidecar_cluster_redis_up 1")
		}
	})

	t.Run("DELETE on A closes a socket on C", func(t *testing.T) {
		status, raw := httpDo(t, "DELETE", a.Admin+"/v1/connections/"+c2.id+"?code=4001&reason=kicked", "", nil, nil)
		if status != http.StatusOK {
			t.Fatalf("DELETE on A: %d %s", status, raw)
		}
		code, reason := closeStatus(t, c2.ws, 10*time.Second)
		if code != 4001 || reason != "kicked" {
			t.Errorf("c2 closed with %d %q, want 4001 kicked", code, reason)
		}
		// Gone now: C says so through A.
		eventually(t, 5*time.Second, func() bool {
			status, _ := httpDo(t, "DELETE", a.Admin+"/v1/connections/"+c2.id, "", nil, nil)
			return status == http.StatusNotFound
		}, "a second DELETE of %s never answered 404", c2.id)
		// C had the last room:other socket: it stops listening.
		waitTopic(t, rc, "wsidecar:ch:room:other", 1)
	})
}

// Redis goes away for five seconds: pushes keep reaching local sockets and
// say that other replicas were not reached; when a new Redis listens on the
// same address, cross-replica delivery comes back by itself.
func TestClusterRedisOutage(t *testing.T) {
	rs := startRedis(t)
	rc := redis.NewClient(&redis.Options{Addr: rs.Addr, Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { rc.Close() })
	be := newClusterBackend(t)
	a := startSidecar(t, be.URL, clusterConfig("a", rs.Addr))
	b := startSidecar(t, be.URL, clusterConfig("b", rs.Addr))
	a1 := be.connect(t, a, "a1", "lobby", "")
	b1 := be.connect(t, b, "b1", "lobby", "")
	waitTopic(t, rc, "wsidecar:ch:room:lobby", 2)

	rs.kill()
	down := time.Now()
	eventually(t, 10*time.Second, func() bool {
		status, raw := httpDo(t, "GET", a.Admin+"/readyz", "", nil, nil)
		return status == http.StatusOK && strings.Contains(string(raw), "redis: down since")
	}, "/readyz on A never reported Redis down (while staying ready)")

	ans := clusterPush(t, a, map[string]any{"channels": []string{"room:lobby"}, "text": "during"})
	if ans.Delivered != 1 || ans.Remote != 0 || ans.Failed != 1 {
		t.Errorf("push during the outage answered %+v, want delivered 1, failed 1", ans)
	}
	if got := readText(t, a1.ws); got != "during" {
		t.Errorf("a1 got %q during the outage", got)
	}
	var e apiError
	status, raw := httpDo(t, "POST", a.Admin+"/v1/push/connection/"+b1.id, "text/plain", []byte("x"), &e)
	if status != http.StatusServiceUnavailable || e.Error.Code != "cluster_unavailable" {
		t.Errorf("push to a socket on B during the outage: %d %s, want 503 cluster_unavailable", status, raw)
	}

	time.Sleep(time.Until(down.Add(5 * time.Second)))
	rs.restart()
	waitTopic(t, rc, "wsidecar:ch:room:lobby", 2)
	// The first pushes after the restart may still fail fast while the
	// client's connection pool notices Redis is back.
	n := 0
	eventually(t, 10*time.Second, func() bool {
		n++
		ans := clusterPush(t, a, map[string]any{"channels": []string{"room:lobby"}, "text": fmt.Sprintf("after-%d", n)})
		return ans.Remote == 1 && ans.Failed == 0
	}, "pushes on A never reached B again after Redis came back")
	if got := readText(t, b1.ws); !strings.HasPrefix(got, "after-") {
		t.Errorf("b1's first message after the outage is %q; pushes are not queued while Redis is down", got)
	}
	_, raw = httpDo(t, "GET", a.Admin+"/metrics", "", nil, nil)
	if !strings.Contains(string(raw), "wsidecar_cluster_publish_failures_total ") || strings.Contains(string(raw), "wsidecar_cluster_publish_failures_total 0\n") {
		t.Errorf("/metrics on A does not count the failed publishes")
	}
}
