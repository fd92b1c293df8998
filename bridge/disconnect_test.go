package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsidecar/wsidecar/config"
)

func flushDisconnects(t *testing.T, wh *Webhooks) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := wh.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
}

func TestDisconnectDelivered(t *testing.T) {
	srv, reqs := startWebhookBackend(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })
	wh, set := newTestWebhooks(t, srv.URL, func(c *config.Backend) { c.SigningSecret = "k" })
	ci := webhookConn()
	info := DisconnectInfo{Code: 1001, Reason: "going away", Clean: true, DurationMS: 1234}

	wh.Disconnect(ci, info)
	ci.User = "changed after the call" // the queued webhook must not see this
	flushDisconnects(t, wh)

	r := nextRequest(t, reqs)
	if r.Path != "/ws/disconnect" || r.Header.Get("Content-Type") != "application/json" {
		t.Errorf("request %s type %q", r.Path, r.Header.Get("Content-Type"))
	}
	var got DisconnectInfo
	if err := json.Unmarshal(r.Body, &got); err != nil || got != info {
		t.Errorf("body %s (%v), want %+v", r.Body, err, info)
	}
	if r.Header.Get("X-Ws-User") != "42" || r.Header.Get("X-Ws-Connection-Id") != "c-1" {
		t.Errorf("identity headers: user %q id %q", r.Header.Get("X-Ws-User"), r.Header.Get("X-Ws-Connection-Id"))
	}
	err := VerifySignature([]byte("k"), r.Header.Get("X-Ws-Signature"), r.Header.Get("X-Ws-Timestamp"), "c-1", r.Body, time.Now(), time.Minute)
	if err != nil {
		t.Errorf("signature: %v", err)
	}
	if v := webhookMetric(t, set, "wsidecar_disconnect_delivered_total"); v != 1 {
		t.Errorf("delivered = %v, want 1", v)
	}
}

func TestDisconnectSkippedWithoutHook(t *testing.T) {
	srv, reqs := startWebhookBackend(t, nil)
	wh, _ := newTestWebhooks(t, srv.URL, nil)
	ci := webhookConn()
	ci.Hooks.Disconnect = ""
	wh.Disconnect(ci, DisconnectInfo{Code: 1000})
	wh.Disconnect(nil, DisconnectInfo{Code: 1000})
	flushDisconnects(t, wh)
	select {
	case r := <-reqs:
		t.Fatalf("backend called: %s", r.Path)
	default:
	}
}

func TestDisconnectRetriedUntilBackendRecovers(t *testing.T) {
	var attempts, delivered atomic.Int64
	srv, _ := startWebhookBackend(t, func(w http.ResponseWriter, r *http.Request) {
		// Down for the first four attempts, as while the backend restarts.
		if attempts.Add(1) <= 4 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		delivered.Add(1)
		w.WriteHeader(http.StatusOK)
	})
	wh, set := newTestWebhooks(t, srv.URL, func(c *config.Backend) {
		c.DisconnectRetryMax = 40 * time.Millisecond
		// The breaker opens during the outage; retries must get through
		// once it lets a probe pass.
		c.Breaker = config.Breaker{Enabled: true, Failures: 2, OpenTimeout: 100 * time.Millisecond, HalfOpenRequests: 1}
	})

	wh.Disconnect(webhookConn(), DisconnectInfo{Code: 1000, Clean: true})
	flushDisconnects(t, wh)

	if n := delivered.Load(); n != 1 {
		t.Fatalf("delivered %d times, want exactly once", n)
	}
	if n := attempts.Load(); n != 5 {
		t.Errorf("backend saw %d attempts, want 5", n)
	}
	if v := webhookMetric(t, set, "wsidecar_disconnect_retries_total"); v < 4 {
		t.Errorf("retries = %v, want at least 4", v)
	}
	if v := webhookMetric(t, set, `wsidecar_webhook_duration_seconds_count{kind="disconnect",status="5xx"}`); v != 4 {
		t.Errorf("disconnect 5xx count = %v, want 4", v)
	}
	if s := wh.BreakerState(); s != "closed" {
		t.Errorf("breaker %s after recovery", s)
	}
}

func TestDisconnectRejectionIsFinal(t *testing.T) {
	var attempts atomic.Int64
	srv, _ := startWebhookBackend(t, func(w http.ResponseWriter, r *http.Request) {
		attempts.Add(1)
		w.WriteHeader(http.StatusNotFound)
	})
	wh, set := newTestWebhooks(t, srv.URL, nil)
	wh.Disconnect(webhookConn(), DisconnectInfo{Code: 1000})
	flushDisconnects(t, wh)
	if n := attempts.Load(); n != 1 {
		t.Errorf("backend saw %d attempts for a 404, want 1", n)
	}
	if v := webhookMetric(t, set, "wsidecar_disconnect_failed_total"); v != 1 {
		t.Errorf("failed = %v, want 1", v)
	}
}

func TestDisconnectQueueOverflowAndFlush(t *testing.T) {
	var inFlight, done atomic.Int64
	release := make(chan struct{})
	srv, _ := startWebhookBackend(t, func(w http.ResponseWriter, r *http.Request) {
		inFlight.Add(1)
		<-release
		done.Add(1)
	})
	unblock := openGateOnCleanup(t, release)
	wh, set := newTestWebhooks(t, srv.URL, func(c *config.Backend) {
		c.DisconnectQueue = 2
		c.Timeout = 10 * time.Second
	})
	ci := webhookConn()

	// The workers take the first disconnects and block in the backend...
	for i := range disconnectWorkers {
		wh.Disconnect(ci, DisconnectInfo{Code: 1000})
		webhookWaitFor(t, "a worker busy", func() bool { return inFlight.Load() == int64(i+1) })
	}
	// ...then two fit in the queue and the rest are dropped, without
	// Disconnect ever blocking the caller.
	start := time.Now()
	for range 5 {
		wh.Disconnect(ci, DisconnectInfo{Code: 1000})
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Disconnect blocked for %v", d)
	}
	if v := webhookMetric(t, set, "wsidecar_disconnect_dropped_total"); v != 3 {
		t.Errorf("dropped = %v, want 3", v)
	}
	if v := webhookMetric(t, set, "wsidecar_disconnect_queue_length"); v != 2 {
		t.Errorf("queue length = %v, want 2", v)
	}

	// Flush waits for the work in flight and in the queue.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	err := wh.Flush(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Flush with busy workers = %v, want deadline exceeded", err)
	}
	flushed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		flushed <- wh.Flush(ctx)
	}()
	unblock()
	if err := <-flushed; err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if n := done.Load(); n != disconnectWorkers+2 {
		t.Errorf("backend completed %d disconnects at Flush, want %d", n, disconnectWorkers+2)
	}
}

func TestDisconnectAfterClose(t *testing.T) {
	srv, reqs := startWebhookBackend(t, nil)
	wh, set := newTestWebhooks(t, srv.URL, nil)
	wh.Close()
	wh.Close() // idempotent
	wh.Disconnect(webhookConn(), DisconnectInfo{Code: 1000})
	flushDisconnects(t, wh)
	if v := webhookMetric(t, set, "wsidecar_disconnect_dropped_total"); v != 1 {
		t.Errorf("dropped after Close = %v, want 1", v)
	}
	select {
	case r := <-reqs:
		t.Fatalf("backend called after Close: %s", r.Path)
	default:
	}
}

func TestDisconnectCloseAbandonsRetries(t *testing.T) {
	srv, _ := startWebhookBackend(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) })
	wh, set := newTestWebhooks(t, srv.URL, func(c *config.Backend) { c.DisconnectRetryMax = time.Hour })
	for range 10 {
		wh.Disconnect(webhookConn(), DisconnectInfo{Code: 1001})
	}
	webhookWaitFor(t, "a retry", func() bool { return webhookMetric(t, set, "wsidecar_disconnect_retries_total") > 0 })
	start := time.Now()
	wh.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v: it must not wait out the backoff", d)
	}
	flushDisconnects(t, wh)
	if v := webhookMetric(t, set, "wsidecar_disconnect_dropped_total"); v != 10 {
		t.Errorf("dropped at Close = %v, want 10", v)
	}
}
