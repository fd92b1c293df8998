package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// plan holds what a quick or full run measures and for how long.
type plan struct {
	idleSteps       []int         // idle hold ramp, plain WS
	wssSteps        []int         // idle hold ramp, WSS (wsidecar only)
	settle          time.Duration // wait before reading RSS after a ramp step
	fanSockets      []int         // fan-out channel sizes
	fanSizes        []int         // payload sizes
	pacedRate       float64       // pushes per second, paced mode
	pacedDeliveries float64       // cap on pacedRate × sockets
	pacedDur        time.Duration // paced mode length
	satDur          time.Duration // saturated mode length
	slowAt          []int         // socket counts of the slow-consumer runs
	slowSize        int           // their payload
	slowDur         time.Duration
	echoN           int
	echoSize        int
	echoRate        float64 // paced round trips per second
	echoDur         time.Duration
	pushDur         time.Duration
	drainMax        time.Duration // how long to wait for the last deliveries
	hardLimit       time.Duration // the whole run; everything is killed after it
}

func quickPlan() plan {
	return plan{
		idleSteps: []int{1000, 15000}, wssSteps: []int{1000, 5000}, settle: time.Second,
		fanSockets: []int{15000, 1000}, fanSizes: []int{100, 1024},
		pacedRate: 10, pacedDeliveries: 30000, pacedDur: 2500 * time.Millisecond, satDur: 2 * time.Second,
		slowAt: []int{200}, slowSize: 16 << 10, slowDur: 4 * time.Second,
		echoN: 1000, echoSize: 64, echoRate: 10000, echoDur: 3 * time.Second,
		pushDur: 3 * time.Second, drainMax: 3 * time.Second,
		hardLimit: 5 * time.Minute,
	}
}

func fullPlan() plan {
	return plan{
		idleSteps: []int{1000, 5000, 15000}, wssSteps: []int{1000, 5000, 15000}, settle: 2 * time.Second,
		fanSockets: []int{15000, 5000, 1000}, fanSizes: []int{100, 1024},
		pacedRate: 10, pacedDeliveries: 30000, pacedDur: 10 * time.Second, satDur: 8 * time.Second,
		slowAt: []int{200, 1000}, slowSize: 16 << 10, slowDur: 10 * time.Second,
		echoN: 1000, echoSize: 64, echoRate: 10000, echoDur: 10 * time.Second,
		pushDur: 10 * time.Second, drainMax: 5 * time.Second,
		hardLimit: 30 * time.Minute,
	}
}

// runner drives one benchmark run.
type runner struct {
	plan          plan
	mode          string // "quick" | "full"
	root          string // module root
	tmp           string
	self          string   // this executable, re-run as client and backend
	sidecar       string   // the wsidecar binary under test
	sideEnv       []string // extra environment for the sidecar (experiments)
	listenerAttrs []string // extra listener attributes (experiments)
	nodeDir       string
	perProc       int // sockets per client process
	dialConc      int // dials in flight per client process
	maxSock       int // sockets the server may hold (open-file limit)
	fdLimit       uint64
	wrk           string // path to wrk, "" when missing
	only          map[string]bool
	peersOn       map[string]bool
	profDir       string // profile mode: where pprof output goes

	mu      sync.Mutex
	started []*peer // every process, for cleanup and CPU accounting
	logN    int
	ipNext  uint32

	res results
}

// results is everything a run measured.
type results struct {
	Machine  machineInfo
	Command  string
	Started  time.Time
	Seconds  float64
	Idle     []idleResult
	Fanout   []fanoutResult
	Slow     []slowResult
	Echo     []echoResult
	Push     []pushResult
	Notes    []string
	Profiles []string
}

// note records something the reader of the report must know (a capped
// step, failed handshakes, a missing profile). Profiles are fetched
// concurrently, hence the lock.
func (r *runner) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.res.Notes = append(r.res.Notes, msg)
	r.mu.Unlock()
	logf("note: %s", msg)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench %s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func (r *runner) track(p *peer) {
	r.mu.Lock()
	r.started = append(r.started, p)
	r.mu.Unlock()
}

func (r *runner) nextLog() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logN++
	return r.logN
}

// allocIPs hands out fresh loopback source addresses, one per 1,000
// sockets: every socket of a run gets a source address no earlier socket
// used, so ports never run out and TIME_WAIT from a previous phase never
// collides.
func (r *runner) allocIPs(sockets int) []string {
	n := max((sockets+999)/1000, 1)
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, n)
	for len(out) < n {
		r.ipNext++
		v := r.ipNext + 1 // 127.0.0.2 first
		b2, b3 := byte(v>>8), byte(v)
		if b3 == 0 || b3 == 255 {
			continue
		}
		out = append(out, fmt.Sprintf("127.%d.%d.%d", byte(v>>16), b2, b3))
	}
	return out
}

// killAll stops every process the run started (cleanup path).
func (r *runner) killAll() {
	r.mu.Lock()
	ps := append([]*peer(nil), r.started...)
	r.mu.Unlock()
	for _, p := range ps {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
		}
	}
}

// target is one server under test.
type target struct {
	name string
	p    *peer
	pu   *pusher
}

// run measures everything and fills r.res.
func (r *runner) run() error {
	r.res.Started = time.Now()
	busy0, total0 := cpuBusy()
	load0 := loadAvg()
	self0 := ownCPU()

	backend, err := startBackend(r.self, r.tmp)
	if err != nil {
		return err
	}
	r.track(backend)
	defer backend.stop(2 * time.Second)
	backendURL := backend.admin

	if r.peersOn["wsidecar"] {
		if err := r.runTarget("wsidecar", func() (*peer, error) {
			return startSidecar("wsidecar", r.sidecar, r.sideEnv, r.listenerAttrs, r.tmp, backendURL, "")
		}, backend); err != nil {
			return err
		}
	}
	if r.peersOn["node"] {
		if err := r.runTarget("node ws", func() (*peer, error) { return startNode(r.nodeDir, r.tmp) }, nil); err != nil {
			return err
		}
	}
	// The profiling build serves plain ws:// only.
	if r.peersOn["wsidecar"] && r.want("wss") && r.profDir == "" {
		if err := r.runWSS(backendURL); err != nil {
			return err
		}
	}
	backend.stop(2 * time.Second)

	busy1, total1 := cpuBusy()
	r.res.Seconds = time.Since(r.res.Started).Seconds()
	m := &r.res.Machine
	m.LoadStart, m.LoadEnd = load0, loadAvg()
	if total1 > total0 {
		cores := float64(m.Cores)
		m.BusyCoreSec = (busy1 - busy0) / (total1 - total0) * cores * r.res.Seconds
		m.OursCoreSec = ownCPU() - self0
	}
	return nil
}

func (r *runner) want(s string) bool { return len(r.only) == 0 || r.only[s] }

// runTarget runs every scenario against one server.
func (r *runner) runTarget(name string, start func() (*peer, error), backend *peer) error {
	logf("%s: starting", name)
	p, err := start()
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	r.track(p)
	defer p.stop(5 * time.Second)
	t := &target{name: name, p: p, pu: newPusher(p.push)}
	pl, err := r.newPool(r.maxSock)
	if err != nil {
		return err
	}
	defer pl.close()
	fanURL := p.wsURL + "/ws"

	if r.want("idle") || r.want("fanout") {
		steps := r.plan.idleSteps
		if !r.want("idle") {
			steps = []int{r.plan.fanSockets[0]}
		}
		r.res.Idle = append(r.res.Idle, r.idleRamp(t, pl, fanURL, steps)...)
	}
	for _, n := range r.plan.fanSockets {
		n = min(n, r.maxSock)
		if !r.want("fanout") {
			break
		}
		if pl.held() != n {
			if err := pl.closeTo(0); err != nil {
				return err
			}
			if res, err := pl.connectTo(fanURL, n); err != nil || res.failed > 0 {
				r.note("%s: reconnecting %d sockets for fan-out: %d failed %v %v", name, n, res.failed, err, res.errors)
			}
			time.Sleep(300 * time.Millisecond)
		}
		readers := pl.held()
		for _, sat := range []bool{false, true} {
			for _, size := range r.plan.fanSizes {
				res := r.fanout(t, pl, readers, size, sat, r.plan.satDur, r.profileFanout(t, n, size, sat))
				r.res.Fanout = append(r.res.Fanout, res)
			}
		}
	}
	if err := pl.closeTo(0); err != nil {
		return err
	}
	if r.want("slow") {
		for _, n := range r.plan.slowAt {
			if res, err := pl.connectTo(fanURL, n); err != nil || res.failed > 0 {
				r.note("%s: connecting %d sockets for the slow-consumer run: %d failed %v %v", name, n, res.failed, err, res.errors)
			}
			time.Sleep(300 * time.Millisecond)
			r.res.Slow = append(r.res.Slow, r.slow(t, pl, pl.held()))
			if err := pl.closeTo(0); err != nil {
				return err
			}
		}
	}
	if r.want("echo") {
		r.res.Echo = append(r.res.Echo, r.echo(t, pl, backend)...)
		if err := pl.closeTo(0); err != nil {
			return err
		}
	}
	if r.want("push") {
		time.Sleep(200 * time.Millisecond)
		r.res.Push = append(r.res.Push, r.pushBench(t))
	}
	logf("%s: done", name)
	return nil
}

// runWSS runs the idle ramp against a wsidecar serving wss://.
func (r *runner) runWSS(backendURL string) error {
	certDir := filepath.Join(r.tmp, "tls")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", certDir, err)
	}
	if err := writeSelfSigned(certDir); err != nil {
		return err
	}
	name := "wsidecar (wss)"
	logf("%s: starting", name)
	p, err := startSidecar("wsidecar-wss", r.sidecar, r.sideEnv, r.listenerAttrs, r.tmp, backendURL, certDir)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	r.track(p)
	defer p.stop(5 * time.Second)
	pl, err := r.newPool(r.maxSock)
	if err != nil {
		return err
	}
	defer pl.close()
	t := &target{name: name, p: p}
	r.res.Idle = append(r.res.Idle, r.idleRamp(t, pl, p.wsURL+"/ws", r.plan.wssSteps)...)
	return nil
}

// idleResult is one idle-hold step.
type idleResult struct {
	Target           string
	Sockets          int // held after the step
	Added, Failed    int
	HandshakesPerSec float64
	RSSBefore, RSS   int64
	PerSocket        float64 // bytes
	Errors           []string
}

// idleRamp connects up to each step and reads the server's RSS.
func (r *runner) idleRamp(t *target, pl *pool, url string, steps []int) []idleResult {
	time.Sleep(r.plan.settle / 2)
	rss0, err := rssBytes(t.p.pid)
	if err != nil {
		r.note("%s: %v", t.name, err)
	}
	var out []idleResult
	for _, n := range steps {
		if n > r.maxSock {
			r.note("%s: %d sockets is over the open-file limit (%d): capped", t.name, n, r.maxSock)
			n = r.maxSock
		}
		logf("%s: idle hold, connecting to %d sockets", t.name, n)
		res, err := pl.connectTo(url, n)
		ir := idleResult{Target: t.name, Sockets: pl.held(), Added: res.added, Failed: res.failed, RSSBefore: rss0, Errors: res.errors}
		if err != nil {
			ir.Errors = append(ir.Errors, err.Error())
		}
		if res.seconds > 0 {
			ir.HandshakesPerSec = float64(res.added) / res.seconds
		}
		time.Sleep(r.plan.settle)
		ir.RSS, _ = rssBytes(t.p.pid)
		if r.profileIdle(t, n) {
			// After the RSS reading: the heap profile runs a GC first.
			r.fetchProfile(t, "heap", fmt.Sprintf("heap-idle-%d", n), 0)
		}
		if ir.Sockets > 0 {
			ir.PerSocket = float64(ir.RSS-rss0) / float64(ir.Sockets)
		}
		logf("%s: %d sockets, %d failed, %.0f handshakes/s, RSS %.1f MiB, %.2f KiB/socket",
			t.name, ir.Sockets, ir.Failed, ir.HandshakesPerSec, float64(ir.RSS)/(1<<20), ir.PerSocket/1024)
		out = append(out, ir)
	}
	return out
}

// fanoutResult is one fan-out run.
type fanoutResult struct {
	Target              string
	Sockets, Size       int
	Mode                string
	Pushes              int
	Expected, Received  uint64
	Dropped             int // as the server reported
	Seconds             float64
	PerSec              float64
	CPUPerM             float64 // server CPU-seconds per 1M deliveries
	ClientCPUPerM       float64 // the load generators', for comparison
	P50, P99, P999, Max time.Duration
	Err                 string
}

// pacedRate is the paced mode's pushes per second for a channel of n
// sockets: plan.pacedRate, lowered so that the deliveries asked for stay
// under plan.pacedDeliveries — paced mode measures latency below
// saturation, and a 2-core box saturates well below 10 pushes/s to 15,000.
func (r *runner) pacedRate(n int) float64 {
	rate := r.plan.pacedRate
	if n > 0 && rate*float64(n) > r.plan.pacedDeliveries {
		rate = max(r.plan.pacedDeliveries/float64(n), 0.5)
		rate = float64(int(rate*2)) / 2 // a round number for the table
	}
	return rate
}

// fanout pushes size-byte messages to the channel every socket joined.
// Paced mode pushes at plan.pacedRate. Saturated mode pushes as fast as
// the clients receive, keeping up to window pushes in flight (pushed but not
// yet received everywhere): the server's sustained throughput, without
// letting a server that buffers without bound run away with memory.
func (r *runner) fanout(t *target, pl *pool, readers, size int, saturated bool, satDur time.Duration, profile bool) fanoutResult {
	rate := r.pacedRate(readers)
	mode := fmt.Sprintf("paced %g/s", rate)
	window := max(8, 32000/max(readers, 1))
	if saturated {
		mode = fmt.Sprintf("saturated (window %d)", window)
	}
	res := fanoutResult{Target: t.name, Sockets: readers, Size: size, Mode: mode}
	logf("%s: fan-out %d B to %d sockets, %s", t.name, size, readers, mode)
	if _, err := pl.all(clientCmd{Op: "reset"}, 10*time.Second); err != nil {
		res.Err = err.Error()
		return res
	}
	var progress atomic.Uint64
	stopPoll := make(chan struct{})
	pollDone := make(chan struct{})
	go func() {
		defer close(pollDone)
		for {
			if f, _, err := pl.count(); err == nil {
				progress.Store(f)
			}
			select {
			case <-stopPoll:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	if profile {
		go r.fetchProfile(t, "profile", fmt.Sprintf("cpu-fanout-%d-%dB", readers, size), satDur)
	}
	cpu0, _ := cpuSeconds(t.p.pid)
	ccpu0 := pl.cpu()
	t0 := time.Now()
	var perr error
	nerr := 0
	push := func() {
		_, dropped, err := t.pu.push(size)
		if err != nil {
			nerr++
			perr = err
			return
		}
		res.Pushes++
		res.Dropped += dropped
	}
	if !saturated {
		interval := time.Duration(float64(time.Second) / rate)
		pushes := max(int(rate*r.plan.pacedDur.Seconds()+0.5), 3)
		for i := 0; i < pushes && nerr < 10; i++ {
			time.Sleep(time.Until(t0.Add(time.Duration(i) * interval)))
			push()
		}
	} else {
		end := t0.Add(satDur)
		for time.Now().Before(end) && nerr < 10 {
			if res.Pushes-int(progress.Load()/uint64(readers)) >= window {
				time.Sleep(time.Millisecond)
				continue
			}
			push()
		}
	}
	res.Expected = uint64(res.Pushes) * uint64(readers)
	close(stopPoll)
	<-pollDone
	lastPush := time.Now()
	var lastNS int64
	for {
		f, l, err := pl.count()
		if err != nil {
			res.Err = err.Error()
			break
		}
		res.Received, lastNS = f, l
		if f >= res.Expected || time.Since(lastPush) > r.plan.drainMax {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cpu1, _ := cpuSeconds(t.p.pid)
	ccpu1 := pl.cpu()
	if perr != nil {
		res.Err = fmt.Sprintf("%d push errors, last: %v", nerr, perr)
	}
	if lastNS > t0.UnixNano() {
		res.Seconds = float64(lastNS-t0.UnixNano()) / 1e9
		res.PerSec = float64(res.Received) / res.Seconds
	}
	if res.Received > 0 {
		res.CPUPerM = (cpu1 - cpu0) / float64(res.Received) * 1e6
		res.ClientCPUPerM = (ccpu1 - ccpu0) / float64(res.Received) * 1e6
	}
	reps, err := pl.all(clientCmd{Op: "stats"}, 30*time.Second)
	if err != nil && res.Err == "" {
		res.Err = err.Error()
	}
	var m merged
	for _, rep := range reps {
		m.add(rep.Hist)
	}
	res.P50, res.P99, res.P999, res.Max = m.quantile(0.50), m.quantile(0.99), m.quantile(0.999), m.quantile(1)
	logf("%s:   %d pushes, %d/%d received, %.0f deliveries/s, %.2f CPU-s/1M (clients %.2f), p50 %v p99 %v p999 %v",
		t.name, res.Pushes, res.Received, res.Expected, res.PerSec, res.CPUPerM, res.ClientCPUPerM, res.P50, res.P99, res.P999)
	return res
}

// slowResult is one slow-consumer run.
type slowResult struct {
	Target                        string
	Sockets, Slow, Size, Pushes   int
	Seconds                       float64
	RSSBefore, RSSMax, RSSAfter   int64
	TCPMemMax                     int64
	Received, Expected            uint64
	Dropped, Closed, DroppedReply float64 // -1: the server has no such counter
	Ended                         uint64  // reading sockets the server cut
	Err                           string
}

// slow makes every tenth socket stop reading (its receive buffer shrunk to
// 4 KiB) and runs saturated fan-out of plan.slowSize messages to the
// others, sampling the server's RSS. On loopback the 64 KiB MTU gives every
// socket a send buffer of several MiB from its first byte, so a stalled
// reader is noticed by the server only after megabytes: hence big messages
// to a small channel, which reach that point within seconds.
func (r *runner) slow(t *target, pl *pool, sockets int) slowResult {
	size := r.plan.slowSize
	res := slowResult{Target: t.name, Sockets: sockets, Size: size, Dropped: -1, Closed: -1, DroppedReply: 0}
	logf("%s: slow consumers at %d sockets", t.name, sockets)
	page0 := ""
	if t.p.admin != "" {
		page0 = fetchMetrics(t.p.admin)
	}
	res.RSSBefore, _ = rssBytes(t.p.pid)
	reps, err := pl.all(clientCmd{Op: "slow", Every: 10, RecvBuf: 4096}, 30*time.Second)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	var ended0 uint64
	for _, rep := range reps {
		res.Slow += rep.Paused
		ended0 += rep.Ended
	}
	readers := sockets - res.Slow
	s := sampleRSS(t.p.pid, 50*time.Millisecond)
	fr := r.fanout(t, pl, readers, size, true, r.plan.slowDur, false)
	// Let the server notice (write timeouts, queue overflows) for a moment.
	time.Sleep(500 * time.Millisecond)
	res.RSSMax, res.TCPMemMax = s.end()
	res.RSSAfter, _ = rssBytes(t.p.pid)
	res.Pushes, res.Received, res.Expected, res.Seconds = fr.Pushes, fr.Received, fr.Expected, fr.Seconds
	res.DroppedReply = float64(fr.Dropped)
	if fr.Err != "" {
		res.Err = fr.Err
	}
	if page0 != "" {
		page1 := fetchMetrics(t.p.admin)
		for _, x := range []struct {
			name string
			dst  *float64
		}{{"wsidecar_send_queue_dropped_total", &res.Dropped}, {"wsidecar_slow_consumer_closes_total", &res.Closed}} {
			a, b := readMetric(page0, x.name), readMetric(page1, x.name)
			if a >= 0 && b >= 0 {
				*x.dst = b - a
			}
		}
	}
	if reps, err := pl.all(clientCmd{Op: "count"}, 10*time.Second); err == nil {
		var ended uint64
		for _, rep := range reps {
			ended += rep.Ended
		}
		res.Ended = ended - ended0
	}
	logf("%s:   %d slow of %d, RSS %.1f → max %.1f MiB, dropped %v, closed %v",
		t.name, res.Slow, sockets, float64(res.RSSBefore)/(1<<20), float64(res.RSSMax)/(1<<20), res.Dropped, res.Closed)
	return res
}

// echoResult is one round-trip run.
type echoResult struct {
	Target              string
	Mode                string
	Path                string
	Sockets, Size       int
	Failed              int
	Sent, RoundTrips    uint64
	Seconds, PerSec     float64
	P50, P99, P999, Max time.Duration
	CPUPerM             float64 // server CPU-seconds per 1M round trips
	BackendCPUPerM      float64 // the echo backend's, when there is one
	Err                 string
}

// echo connects plan.echoN sockets to /echo and runs round trips twice:
// closed loop (each socket sends, waits for the answer, sends again: the
// most the server sustains) and paced at plan.echoRate (latency below
// saturation; in a closed loop of N sockets latency is just N ÷ rate).
func (r *runner) echo(t *target, pl *pool, backend *peer) []echoResult {
	logf("%s: round trips from %d sockets", t.name, r.plan.echoN)
	cr, err := pl.connectTo(t.p.wsURL+"/echo", r.plan.echoN)
	if err != nil || cr.failed > 0 {
		r.note("%s: connecting %d round-trip sockets: %d failed %v %v", t.name, r.plan.echoN, cr.failed, err, cr.errors)
	}
	time.Sleep(200 * time.Millisecond)
	var out []echoResult
	for _, rate := range []float64{0, r.plan.echoRate} {
		res := r.echoRun(t, pl, backend, rate)
		res.Failed = cr.failed
		out = append(out, res)
	}
	return out
}

func (r *runner) echoRun(t *target, pl *pool, backend *peer, rate float64) echoResult {
	res := echoResult{Target: t.name, Sockets: pl.held(), Size: r.plan.echoSize, Mode: "closed loop"}
	if rate > 0 {
		res.Mode = fmt.Sprintf("paced %s/s", fmtInt(rate))
	}
	if backend != nil {
		res.Path = "client → wsidecar → POST to the echo backend → reply frame"
	} else {
		res.Path = "client → ws server echoes in process (no backend hop)"
	}
	if _, err := pl.all(clientCmd{Op: "reset"}, 10*time.Second); err != nil {
		res.Err = err.Error()
		return res
	}
	cpu0, _ := cpuSeconds(t.p.pid)
	var b0 float64
	if backend != nil {
		b0, _ = cpuSeconds(backend.pid)
	}
	if r.profDir != "" && t.name == nameSidecar && rate == 0 {
		go r.fetchProfile(t, "profile", "cpu-echo-closed-loop", r.plan.echoDur)
	}
	t0 := time.Now()
	held := max(pl.held(), 1)
	reps := make([]clientReply, len(pl.procs))
	errs := make([]error, len(pl.procs))
	var wg sync.WaitGroup
	for i, c := range pl.procs {
		if c.held == 0 {
			continue
		}
		cmd := clientCmd{Op: "echo", Seconds: r.plan.echoDur.Seconds(), Size: r.plan.echoSize,
			Rate: rate * float64(c.held) / float64(held)}
		wg.Add(1)
		go func() {
			defer wg.Done()
			reps[i], errs[i] = c.call(cmd, r.plan.echoDur+time.Minute)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		res.Err = err.Error()
	}
	cpu1, _ := cpuSeconds(t.p.pid)
	var lastNS int64
	for _, rep := range reps {
		res.RoundTrips += rep.Frames
		res.Sent += rep.Sent
		lastNS = max(lastNS, rep.LastNS)
		if len(rep.Errors) > 0 && res.Err == "" {
			res.Err = strings.Join(rep.Errors, "; ")
		}
	}
	if lastNS > t0.UnixNano() {
		res.Seconds = float64(lastNS-t0.UnixNano()) / 1e9
		res.PerSec = float64(res.RoundTrips) / res.Seconds
	}
	if res.RoundTrips > 0 {
		res.CPUPerM = (cpu1 - cpu0) / float64(res.RoundTrips) * 1e6
		if backend != nil {
			b1, _ := cpuSeconds(backend.pid)
			res.BackendCPUPerM = (b1 - b0) / float64(res.RoundTrips) * 1e6
		}
	}
	sreps, _ := pl.all(clientCmd{Op: "stats"}, 30*time.Second)
	var m merged
	for _, rep := range sreps {
		m.add(rep.Hist)
	}
	res.P50, res.P99, res.P999, res.Max = m.quantile(0.50), m.quantile(0.99), m.quantile(0.999), m.quantile(1)
	logf("%s:   %s: %d/%d round trips, %.0f/s, p50 %v p99 %v, %.1f CPU-s/1M (backend %.1f)",
		t.name, res.Mode, res.RoundTrips, res.Sent, res.PerSec, res.P50, res.P99, res.CPUPerM, res.BackendCPUPerM)
	return res
}

// pusher POSTs fan-out messages to a server.
type pusher struct {
	url string
	c   *http.Client
	buf []byte
}

func newPusher(url string) *pusher {
	return &pusher{url: url, c: &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 4, DisableCompression: true},
	}}
}

// push sends one size-byte message stamped with the current time.
func (p *pusher) push(size int) (delivered, dropped int, err error) {
	p.buf = stampPayload(p.buf[:0], time.Now(), size)
	req, err := http.NewRequest(http.MethodPost, p.url, bytes.NewReader(p.buf))
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Content-Type", "text/plain; charset=utf-8")
	resp, err := p.c.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("push answered %d: %s", resp.StatusCode, bytes.TrimSpace(body))
	}
	var a struct{ Delivered, Dropped int }
	if err := json.Unmarshal(body, &a); err != nil {
		return 0, 0, fmt.Errorf("push answer %q: %w", body, err)
	}
	return a.Delivered, a.Dropped, nil
}

// ownCPU is the CPU time of this process and of every child it has waited
// for (servers, backend, load generators, wrk): by the end of a run all of
// them have exited and been waited for.
func ownCPU() float64 {
	var t time.Duration
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if err := syscall.Getrusage(who, &ru); err == nil {
			t += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	return t.Seconds()
}

// build compiles the sidecar (or the profiling build) into the temp dir.
func (r *runner) build() error {
	r.sidecar = filepath.Join(r.tmp, "wsidecar")
	args := []string{"build", "-o", r.sidecar, "."}
	if r.profDir != "" {
		args = []string{"build", "-tags", "benchprof", "-o", r.sidecar, "."}
	}
	pkg := args[len(args)-1]
	logf("building %s", pkg)
	cmd := exec.Command("go", args...)
	cmd.Dir = r.root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build %s failed (is another change half-done?):\n%s", pkg, out)
	}
	return nil
}

// nodeDeps installs the ws package into bench/node when it is missing.
func (r *runner) nodeDeps() error {
	if _, err := exec.LookPath("node"); err != nil {
		return errors.New("node is not installed: apt-get install nodejs npm (Node 18+), or run with -peers wsidecar")
	}
	if _, err := os.Stat(filepath.Join(r.nodeDir, "node_modules", "ws", "package.json")); err == nil {
		return nil
	}
	if _, err := exec.LookPath("npm"); err != nil {
		return errors.New("npm is not installed: apt-get install npm, or run with -peers wsidecar")
	}
	logf("installing the ws package (npm ci in bench/node)")
	cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
	cmd.Dir = r.nodeDir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("npm ci in %s failed:\n%s", r.nodeDir, out)
	}
	return nil
}
