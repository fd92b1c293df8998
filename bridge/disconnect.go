package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"

	"github.com/wsidecar/wsidecar/config"
)

const (
	defaultDisconnectQueue = 10000
	defaultDisconnectRetry = 30 * time.Second
	// disconnectWorkers is fixed and small: disconnects are cheap and
	// arrive in bursts (a drain closes every socket), so a few workers
	// behind a queue beat a goroutine per closed socket.
	disconnectWorkers     = 4
	disconnectFirstRetry  = 100 * time.Millisecond
	disconnectGiveUpAfter = 15 * time.Minute // see deliver
	dropLogEvery          = 10 * time.Second
)

// disconnects is the bounded queue and worker pool behind Disconnect.
type disconnects struct {
	queue    chan *disconnectJob
	retryMax time.Duration
	ctx      context.Context // cancelled by Close: stops waits and backoffs
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	once     sync.Once

	// mu guards pending, idle and closed. pending counts queued and
	// in-flight jobs, including ones waiting to retry; idle is closed
	// whenever pending is zero so Flush can wait on it.
	mu      sync.Mutex
	pending int
	idle    chan struct{}
	closed  bool

	dropped   *metrics.Counter // queue full, or abandoned at Close
	retries   *metrics.Counter // attempts after the first
	failed    *metrics.Counter // rejected with 4xx, or given up
	delivered *metrics.Counter

	dropLog   webhookLogLimiter
	failLog   webhookLogLimiter
	droppedBy atomic.Int64 // drops since the last log line
}

// disconnectJob is one disconnect webhook. ci is a copy: the proxy may reuse
// or change its ConnInfo after Disconnect returns.
type disconnectJob struct {
	ci    ConnInfo
	body  []byte
	since time.Time
}

func (w *Webhooks) startDisconnects(cfg config.Backend, set *metrics.Set) {
	d := &w.disc
	size := cfg.DisconnectQueue
	if size <= 0 {
		size = defaultDisconnectQueue
	}
	d.queue = make(chan *disconnectJob, size)
	d.retryMax = cfg.DisconnectRetryMax
	if d.retryMax <= 0 {
		d.retryMax = defaultDisconnectRetry
	}
	d.idle = make(chan struct{})
	close(d.idle)
	d.ctx, d.cancel = context.WithCancel(context.Background())

	d.dropped = set.GetOrCreateCounter(`wsidecar_disconnect_dropped_total`)
	d.retries = set.GetOrCreateCounter(`wsidecar_disconnect_retries_total`)
	d.failed = set.GetOrCreateCounter(`wsidecar_disconnect_failed_total`)
	d.delivered = set.GetOrCreateCounter(`wsidecar_disconnect_delivered_total`)
	set.GetOrCreateGauge(`wsidecar_disconnect_queue_length`, func() float64 {
		return float64(len(d.queue))
	})

	d.wg.Add(disconnectWorkers)
	for range disconnectWorkers {
		go w.disconnectWorker()
	}
}

// Disconnect queues the route's disconnect webhook (body: d as JSON) and
// returns at once. Workers send it, retrying with backoff while the backend
// is down (transport errors, 5xx, breaker open) until it is delivered, the
// backend rejects it with a non-5xx status, or it has waited 15 minutes.
// When the queue is full the webhook is dropped and counted in
// wsidecar_disconnect_dropped_total. The proxy calls it once the
// connection's read loop has ended, so it follows the last message webhook.
// Nothing is sent when the route has no disconnect hook.
func (w *Webhooks) Disconnect(ci *ConnInfo, d DisconnectInfo) {
	if ci == nil || ci.Hooks.Disconnect == "" {
		return
	}
	body, err := json.Marshal(d)
	if err != nil { // cannot happen for this struct; never panic for it
		w.log.Error("encode disconnect webhook", "err", err)
		return
	}
	job := &disconnectJob{ci: *ci, body: body, since: w.now()}

	q := &w.disc
	q.mu.Lock()
	queued := false
	if !q.closed {
		select {
		case q.queue <- job:
			queued = true
			if q.pending++; q.pending == 1 {
				q.idle = make(chan struct{})
			}
		default:
		}
	}
	q.mu.Unlock()
	if !queued {
		w.dropDisconnects(1, "queue full")
	}
}

// Flush waits until every queued disconnect webhook has been delivered or
// given up, for a graceful drain. It returns ctx's error if ctx ends first.
func (w *Webhooks) Flush(ctx context.Context) error {
	q := &w.disc
	q.mu.Lock()
	idle := q.idle
	q.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("flush disconnect webhooks: %w", ctx.Err())
	}
}

// Close stops the disconnect workers; call Flush first. A webhook in flight
// finishes (bounded by the backend timeout); queued ones are dropped and
// counted. Later Disconnect calls are dropped. Close is idempotent.
func (w *Webhooks) Close() {
	q := &w.disc
	q.once.Do(func() {
		q.mu.Lock()
		q.closed = true
		q.mu.Unlock()
		q.cancel()
		q.wg.Wait()

		n := 0
		for drained := false; !drained; {
			select {
			case <-q.queue:
				n++
				q.finish()
			default:
				drained = true
			}
		}
		if n > 0 {
			w.dropDisconnects(n, "shutting down")
		}
		// The drop log is rate-limited; the process may be about to exit,
		// so say now what the limiter held back.
		if held := q.droppedBy.Swap(0); held > 0 {
			w.log.Warn("disconnect webhooks dropped", "reason", "shutting down", "count", held)
		}
		w.settings.Load().client.CloseIdleConnections()
	})
}

func (q *disconnects) finish() {
	q.mu.Lock()
	if q.pending--; q.pending == 0 {
		close(q.idle)
	}
	q.mu.Unlock()
}

func (w *Webhooks) disconnectWorker() {
	q := &w.disc
	defer q.wg.Done()
	for {
		select {
		case <-q.ctx.Done():
			return
		case job := <-q.queue:
			w.deliver(job)
			q.finish()
		}
	}
}

// deliver sends one disconnect webhook, retrying while the backend is down.
// It gives up after disconnectGiveUpAfter so that a request the backend
// always fails (a bug on its side, with the breaker closed because other
// calls succeed) cannot occupy a worker forever.
func (w *Webhooks) deliver(job *disconnectJob) {
	q := &w.disc
	backoff := min(disconnectFirstRetry, q.retryMax)
	for {
		err := w.sendDisconnect(job)
		if err == nil {
			q.delivered.Inc()
			return
		}
		if q.ctx.Err() != nil {
			w.dropDisconnects(1, "shutting down")
			return
		}
		if !disconnectRetryable(err) {
			q.failed.Inc()
			w.logFailure(job, "disconnect webhook not accepted", err)
			return
		}
		if w.now().Sub(job.since) > disconnectGiveUpAfter {
			q.failed.Inc()
			w.logFailure(job, "disconnect webhook given up", err)
			return
		}
		q.retries.Inc()
		// Full backoff plus up to the same again as jitter, so sockets
		// closed together (a drain) do not retry in lockstep.
		wait := backoff/2 + rand.N(backoff/2+1)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-q.ctx.Done():
			t.Stop()
			w.dropDisconnects(1, "shutting down")
			return
		}
		backoff = min(backoff*2, q.retryMax)
	}
}

// disconnectRetryable reports whether a failed disconnect may succeed later.
func disconnectRetryable(err error) bool {
	if errors.Is(err, ErrBackendUnavailable) {
		return true
	}
	var se *StatusError
	return errors.As(err, &se) && se.Status >= 500
}

func (w *Webhooks) sendDisconnect(job *disconnectJob) error {
	resp, err := w.do(w.disc.ctx, kindDisconnect, &job.ci, job.ci.Hooks.Disconnect, job.body, hdrContentTypeJSON, 0)
	if err != nil {
		return err
	}
	status := resp.StatusCode()
	fasthttp.ReleaseResponse(resp)
	if status < 200 || status >= 300 {
		return &StatusError{Status: status}
	}
	return nil
}

func (w *Webhooks) dropDisconnects(n int, why string) {
	q := &w.disc
	q.dropped.Add(n)
	total := q.droppedBy.Add(int64(n))
	if q.dropLog.allow(w.now()) {
		q.droppedBy.Add(-total)
		w.log.Warn("disconnect webhooks dropped", "reason", why, "count", total)
	}
}

func (w *Webhooks) logFailure(job *disconnectJob, msg string, err error) {
	if w.disc.failLog.allow(w.now()) {
		w.log.Warn(msg, "conn", job.ci.ID, "err", err)
	}
}

// webhookLogLimiter lets one log line through per dropLogEvery, so an outage
// cannot flood the log.
type webhookLogLimiter struct {
	last atomic.Int64 // unix nanos of the last line
}

func (l *webhookLogLimiter) allow(now time.Time) bool {
	n := now.UnixNano()
	last := l.last.Load()
	if last != 0 && n-last < int64(dropLogEvery) {
		return false
	}
	return l.last.CompareAndSwap(last, n)
}
