package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// pushResult is one push-endpoint run.
type pushResult struct {
	Target    string
	Tool      string
	Conns     int
	Requests  int64
	ReqPerSec float64
	P50, P99  time.Duration
	Non2xx    int64
	CPUPerM   float64 // server CPU-seconds per 1M requests
	Err       string
}

// pushConns is the number of keep-alive connections the load uses.
const pushConns = 16

// pushLua makes wrk POST a 100-byte text message.
const pushLua = `-- Written by go run ./bench: POST a 100-byte text message.
wrk.method = "POST"
wrk.body = string.rep("x", 100)
wrk.headers["Content-Type"] = "text/plain; charset=utf-8"
`

// pushBench measures the fan-out trigger alone, with no socket connected:
// wsidecar's POST /v1/push/channel/bench against the Node peer's POST
// /broadcast.
func (r *runner) pushBench(t *target) pushResult {
	res := pushResult{Target: t.name, Conns: pushConns}
	logf("%s: push endpoint, %d connections, %s", t.name, pushConns, r.plan.pushDur)
	cpu0, _ := cpuSeconds(t.p.pid)
	if r.wrk != "" {
		res.Tool = "wrk"
		r.runWrk(t, &res)
	} else {
		res.Tool = "Go HTTP loop (wrk missing)"
		r.runGoLoad(t, &res)
	}
	cpu1, _ := cpuSeconds(t.p.pid)
	if res.Requests > 0 {
		res.CPUPerM = (cpu1 - cpu0) / float64(res.Requests) * 1e6
	}
	logf("%s:   %.0f requests/s, p50 %v p99 %v, non-2xx %d", t.name, res.ReqPerSec, res.P50, res.P99, res.Non2xx)
	return res
}

func (r *runner) runWrk(t *target, res *pushResult) {
	script := filepath.Join(r.tmp, "push.lua")
	if err := os.WriteFile(script, []byte(pushLua), 0o644); err != nil {
		res.Err = err.Error()
		return
	}
	secs := max(int(r.plan.pushDur.Seconds()), 1)
	out, err := exec.Command(r.wrk, "-t1", fmt.Sprintf("-c%d", pushConns), fmt.Sprintf("-d%ds", secs),
		"--latency", "-s", script, t.p.push).CombinedOutput()
	if err != nil {
		res.Err = fmt.Sprintf("wrk: %v: %s", err, out)
		return
	}
	parseWrk(string(out), res)
}

// parseWrk reads wrk's summary.
func parseWrk(out string, res *pushResult) {
	inDist := false
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
		case strings.HasPrefix(line, "Requests/sec:") && len(f) == 2:
			res.ReqPerSec, _ = strconv.ParseFloat(f[1], 64)
		case strings.Contains(line, "Latency Distribution"):
			inDist = true
		case inDist && len(f) == 2 && strings.HasSuffix(f[0], "%"):
			d := parseWrkDuration(f[1])
			switch f[0] {
			case "50%":
				res.P50 = d
			case "99%":
				res.P99 = d
			}
		case strings.Contains(line, "requests in"):
			inDist = false
			res.Requests, _ = strconv.ParseInt(f[0], 10, 64)
		case strings.HasPrefix(strings.TrimSpace(line), "Non-2xx or 3xx responses:"):
			res.Non2xx, _ = strconv.ParseInt(f[len(f)-1], 10, 64)
		}
	}
	if res.ReqPerSec == 0 {
		res.Err = "could not read wrk's output: " + strings.TrimSpace(out)
	}
}

// parseWrkDuration reads "245.12us", "1.20ms", "2.00s", "1.00m".
func parseWrkDuration(s string) time.Duration {
	for _, u := range []struct {
		suffix string
		unit   time.Duration
	}{{"us", time.Microsecond}, {"ms", time.Millisecond}, {"s", time.Second}, {"m", time.Minute}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return -1
			}
			return time.Duration(f * float64(u.unit))
		}
	}
	return -1
}

// runGoLoad is the fallback when wrk is missing: pushConns goroutines, each
// a keep-alive connection POSTing back to back.
func (r *runner) runGoLoad(t *target, res *pushResult) {
	tr := &http.Transport{MaxIdleConnsPerHost: pushConns, MaxConnsPerHost: pushConns, DisableCompression: true}
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	body := bytes.Repeat([]byte("x"), 100)
	var h hist
	var n, bad atomic.Int64
	var firstErr atomic.Value
	end := time.Now().Add(r.plan.pushDur)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < pushConns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				t0 := time.Now()
				resp, err := c.Post(t.p.push, "text/plain; charset=utf-8", bytes.NewReader(body))
				if err != nil {
					firstErr.CompareAndSwap(nil, err.Error())
					bad.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				h.record(time.Since(t0))
				n.Add(1)
				if resp.StatusCode/100 != 2 {
					bad.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	res.Requests, res.Non2xx = n.Load(), bad.Load()
	res.ReqPerSec = float64(n.Load()) / el
	var m merged
	m.add(h.snapshot())
	res.P50, res.P99 = m.quantile(0.5), m.quantile(0.99)
	if e, ok := firstErr.Load().(string); ok {
		res.Err = e
	}
}
