package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

// machineInfo is the report's machine line.
type machineInfo struct {
	Cores       int
	CPUModel    string
	MemTotal    string
	GoVersion   string
	Kernel      string
	Node        string
	WS          string
	Wrk         string
	FDLimit     uint64
	LoadStart   string
	LoadEnd     string
	BusyCoreSec float64 // machine-wide busy CPU during the run
	OursCoreSec float64 // of which the benchmark's processes
}

func cmdLine(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return "?"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

func gatherMachine(nodeDir string) machineInfo {
	m := machineInfo{Cores: runtime.NumCPU(), CPUModel: "?", MemTotal: "?"}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.Join(strings.Fields(v), " ")
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				var kb float64
				fmt.Sscan(rest, &kb)
				m.MemTotal = fmt.Sprintf("%.0f GiB", kb/(1<<20))
			}
		}
	}
	m.GoVersion = cmdLine("go", "env", "GOVERSION")
	m.Kernel = cmdLine("uname", "-srm")
	m.Node = cmdLine("node", "--version")
	if b, err := os.ReadFile(nodeDir + "/node_modules/ws/package.json"); err == nil {
		if i := strings.Index(string(b), `"version"`); i >= 0 {
			rest := string(b[i+len(`"version"`):])
			if q := strings.Split(rest, `"`); len(q) >= 2 {
				m.WS = q[1]
			}
		}
	}
	return m
}

// The ratio column is wsidecar ÷ Node ws; each header says which way is
// better.

func ratio(a, b float64) string {
	if a <= 0 || b <= 0 || math.IsNaN(a) || math.IsNaN(b) {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func fmtInt(v float64) string {
	if v < 0 || math.IsNaN(v) {
		return "–"
	}
	s := fmt.Sprintf("%.0f", v)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func fmtDur(d time.Duration) string {
	if d < 0 {
		return "–"
	}
	ms := d.Seconds() * 1000
	switch {
	case ms < 10:
		return fmt.Sprintf("%.2f ms", ms)
	case ms < 100:
		return fmt.Sprintf("%.1f ms", ms)
	}
	return fmt.Sprintf("%.0f ms", ms)
}

func fmtMiB(b int64) string {
	if b < 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

func fmtKiB(b float64) string { return fmt.Sprintf("%.2f KiB", b/1024) }

func fmtSize(n int) string {
	if n >= 1024 && n%1024 == 0 {
		return fmt.Sprintf("%d KiB", n/1024)
	}
	return fmt.Sprintf("%d B", n)
}

func fmtF(v float64, prec int) string {
	if v < 0 || math.IsNaN(v) {
		return "–"
	}
	return fmt.Sprintf("%.*f", prec, v)
}

const (
	nameSidecar = "wsidecar"
	nameNode    = "node ws"
	nameWSS     = "wsidecar (wss)"
)

// writeReport renders the run as Markdown.
func (r *runner) writeReport(w io.Writer) {
	res := &r.res
	m := res.Machine
	fmt.Fprintf(w, "## Run: %s mode, %s\n\n", r.mode, res.Started.UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(w, "- **Command:** `%s` (from the module root), %.0f s in all\n", res.Command, res.Seconds)
	fmt.Fprintf(w, "- **Machine:** %d cores (%s), %s RAM, %s, %s, node %s, ws %s, %s; open-file limit %d\n",
		m.Cores, m.CPUModel, m.MemTotal, m.Kernel, m.GoVersion, m.Node, orQ(m.WS), orQ(m.Wrk), m.FDLimit)
	fmt.Fprintf(w, "- **Load generators:** `bench client` processes of at most %d sockets each, dialling from 127.0.0.2, 127.0.0.3, … (1,000 sockets per source address); same machine, same loopback\n", r.perProc)
	fmt.Fprintf(w, "- **Other load:** load average %s at the start, %s at the end", m.LoadStart, m.LoadEnd)
	if m.BusyCoreSec > 0 {
		other := max(m.BusyCoreSec-m.OursCoreSec, 0)
		fmt.Fprintf(w, "; during the run the machine was busy %.0f core-seconds of %.0f, the benchmark's own processes %.0f, so other processes took about %.0f core-seconds (%.0f%% of the machine)",
			m.BusyCoreSec, float64(m.Cores)*res.Seconds, m.OursCoreSec, other, other/(float64(m.Cores)*res.Seconds)*100)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "- **Ratio** = wsidecar ÷ node ws: above 1 is better for throughput, below 1 is better for RSS, CPU and latency.")
	fmt.Fprintln(w)

	r.writeIdle(w)
	r.writeFanout(w)
	r.writeSlow(w)
	r.writeEcho(w)
	r.writePush(w)
	r.writeTargets(w)
	if len(res.Notes) > 0 {
		fmt.Fprintf(w, "### Notes from the run\n\n")
		for _, n := range res.Notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
		fmt.Fprintln(w)
	}
	if len(res.Profiles) > 0 {
		fmt.Fprintf(w, "### Profiles\n\n")
		for _, p := range res.Profiles {
			fmt.Fprintf(w, "- `%s` (summary: `%s`)\n", p, strings.TrimSuffix(p, ".pprof")+".txt")
		}
		fmt.Fprintln(w)
	}
}

func orQ(s string) string {
	if s == "" {
		return "?"
	}
	return s
}

func (r *runner) writeIdle(w io.Writer) {
	if len(r.res.Idle) == 0 {
		return
	}
	fmt.Fprintf(w, "### Idle hold\n\n")
	fmt.Fprintf(w, "Server RSS per socket = (VmRSS with N sockets held − VmRSS before the first) ÷ N, read %s after the step; handshakes/s = sockets added ÷ wall time of the step (all client processes dialling at once).\n\n", r.plan.settle)
	fmt.Fprintln(w, "| sockets | server | RSS per socket (lower is better) | handshakes/s (higher is better) | failed handshakes | RSS before → after |")
	fmt.Fprintln(w, "|---:|---|---:|---:|---:|---|")
	byN := map[int]map[string]idleResult{}
	var order []int
	for _, ir := range r.res.Idle {
		n := ir.Sockets + ir.Failed
		if byN[n] == nil {
			byN[n] = map[string]idleResult{}
			order = append(order, n)
		}
		byN[n][ir.Target] = ir
	}
	slices.Sort(order)
	for _, n := range order {
		row := byN[n]
		for _, name := range []string{nameSidecar, nameWSS, nameNode} {
			ir, ok := row[name]
			if !ok {
				continue
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %d | %s → %s |\n", fmtInt(float64(n)), name, fmtKiB(ir.PerSocket),
				fmtInt(ir.HandshakesPerSec), ir.Failed, fmtMiB(ir.RSSBefore), fmtMiB(ir.RSS))
		}
		a, okA := row[nameSidecar]
		b, okB := row[nameNode]
		if okA && okB {
			fmt.Fprintf(w, "| | **ratio** wsidecar ÷ node | **%s** | **%s** | | |\n", ratio(a.PerSocket, b.PerSocket), ratio(a.HandshakesPerSec, b.HandshakesPerSec))
		}
	}
	fmt.Fprintln(w)
	for _, ir := range r.res.Idle {
		if len(ir.Errors) > 0 {
			fmt.Fprintf(w, "- %s at %d: %s\n", ir.Target, ir.Sockets+ir.Failed, strings.Join(ir.Errors, "; "))
		}
	}
	fmt.Fprintln(w)
}

func (r *runner) writeFanout(w io.Writer) {
	if len(r.res.Fanout) == 0 {
		return
	}
	fmt.Fprintf(w, "### Fan-out\n\n")
	fmt.Fprintf(w, "One push to a channel every socket joined: wsidecar `POST /v1/push/channel/bench` on the admin listener, node `POST /broadcast` (the README's broadcast loop). The payload starts with the send time; each client records receive time − send time. Paced: %g pushes/s (fewer for big channels, so that at most %s deliveries/s are asked for: paced mode measures latency below saturation) for %s. Saturated: pushes as fast as the clients receive them, at most `window` pushes not yet received by every socket, for %s. Deliveries/s = frames received ÷ (last receive − first push). CPU = server utime+stime over the run ÷ deliveries × 1M.\n\n",
		r.plan.pacedRate, fmtInt(r.plan.pacedDeliveries), r.plan.pacedDur, r.plan.satDur)
	fmt.Fprintln(w, "| sockets | payload | mode | server | deliveries/s (higher is better) | server CPU-s per 1M deliveries (lower) | p50 (lower) | p99 | p999 | received / expected | load generators' CPU-s per 1M |")
	fmt.Fprintln(w, "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
	type key struct {
		n, size int
		sat     bool
	}
	rows := map[key]map[string]fanoutResult{}
	var order []key
	for _, f := range r.res.Fanout {
		k := key{f.Sockets, f.Size, strings.HasPrefix(f.Mode, "saturated")}
		if rows[k] == nil {
			rows[k] = map[string]fanoutResult{}
			order = append(order, k)
		}
		rows[k][f.Target] = f
	}
	for _, k := range order {
		for _, name := range []string{nameSidecar, nameNode} {
			f, ok := rows[k][name]
			if !ok {
				continue
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s |\n", fmtInt(float64(f.Sockets)), fmtSize(f.Size), f.Mode, name,
				fmtInt(f.PerSec), fmtF(f.CPUPerM, 2), fmtDur(f.P50), fmtDur(f.P99), fmtDur(f.P999), fmtInt(float64(f.Received)), fmtInt(float64(f.Expected)), fmtF(f.ClientCPUPerM, 2))
		}
		a, okA := rows[k][nameSidecar]
		b, okB := rows[k][nameNode]
		if okA && okB {
			fmt.Fprintf(w, "| | | | **ratio** | **%s** | **%s** | %s | %s | %s | | |\n", ratio(a.PerSec, b.PerSec), ratio(a.CPUPerM, b.CPUPerM),
				ratio(a.P50.Seconds(), b.P50.Seconds()), ratio(a.P99.Seconds(), b.P99.Seconds()), ratio(a.P999.Seconds(), b.P999.Seconds()))
		}
	}
	fmt.Fprintln(w)
	for _, f := range r.res.Fanout {
		if f.Err != "" || f.Dropped > 0 {
			fmt.Fprintf(w, "- %s, %d sockets, %s, %s: dropped %d (server's count) %s\n", f.Target, f.Sockets, fmtSize(f.Size), f.Mode, f.Dropped, f.Err)
		}
	}
	fmt.Fprintln(w)
}

func (r *runner) writeSlow(w io.Writer) {
	if len(r.res.Slow) == 0 {
		return
	}
	fmt.Fprintf(w, "### Slow consumers\n\n")
	fmt.Fprintf(w, "Every tenth socket stops reading (its receive buffer shrunk to 4 KiB) while saturated %s fan-out runs to all for %s, paced by what the reading sockets receive. On loopback (64 KiB MTU) the kernel gives every socket a send buffer of several MiB, so a server notices a stalled reader only after megabytes: hence big messages to a small channel. Server RSS is sampled every 50 ms; kernel TCP memory (/proc/net/sockstat, machine-wide) is what sits in socket buffers, outside any RSS. wsidecar runs its defaults: send queue 256 messages, `slow_consumer = \"close\"` (1013). The Node peer has no bound: ws queues in user space without limit.\n\n", fmtSize(r.plan.slowSize), r.plan.slowDur)
	fmt.Fprintln(w, "| sockets | server | stopped reading | pushes | RSS before | max RSS | RSS after | max kernel TCP mem | received / expected by readers | send-queue drops | slow-consumer closes | readers cut |")
	fmt.Fprintln(w, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, s := range r.res.Slow {
		fmt.Fprintf(w, "| %s | %s | %d | %d | %s | %s | %s | %s | %s / %s | %s | %s | %d |\n", fmtInt(float64(s.Sockets)), s.Target, s.Slow, s.Pushes,
			fmtMiB(s.RSSBefore), fmtMiB(s.RSSMax), fmtMiB(s.RSSAfter), fmtMiB(s.TCPMemMax), fmtInt(float64(s.Received)), fmtInt(float64(s.Expected)),
			naMetric(s.Dropped), naMetric(s.Closed), s.Ended)
	}
	fmt.Fprintln(w)
	for _, s := range r.res.Slow {
		if s.Err != "" {
			fmt.Fprintf(w, "- %s: %s\n", s.Target, s.Err)
		}
	}
	fmt.Fprintln(w)
}

func naMetric(v float64) string {
	if v < 0 {
		return "n/a (no bound)"
	}
	return fmtInt(v)
}

func (r *runner) writeEcho(w io.Writer) {
	if len(r.res.Echo) == 0 {
		return
	}
	fmt.Fprintf(w, "### Webhook round trip\n\n")
	fmt.Fprintf(w, "%s sockets send %d B text messages, %s each. Closed loop: each socket sends, waits for the answer, sends the next — the most the server sustains; its latency is only sockets ÷ rate (Little's law). Paced: the clients send %s messages/s in all, round robin, whatever the answers do — latency below saturation. Not the same work on both sides: wsidecar turns every message into an HTTP POST to a separate backend process (fasthttp, answers 200 with the body) and the answer into a frame; the Node peer echoes inside the ws server, with no backend hop.\n\n",
		fmtInt(float64(r.plan.echoN)), r.plan.echoSize, r.plan.echoDur, fmtInt(r.plan.echoRate))
	fmt.Fprintln(w, "| sockets | mode | server | path | round trips/s (higher is better) | p50 (lower) | p99 | p999 | answered / sent | server CPU-s per 1M (lower) | backend CPU-s per 1M |")
	fmt.Fprintln(w, "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
	byMode := map[string]map[string]*echoResult{}
	var order []string
	for i := range r.res.Echo {
		e := &r.res.Echo[i]
		if byMode[e.Mode] == nil {
			byMode[e.Mode] = map[string]*echoResult{}
			order = append(order, e.Mode)
		}
		byMode[e.Mode][e.Target] = e
	}
	for _, mode := range order {
		for _, name := range []string{nameSidecar, nameNode} {
			e := byMode[mode][name]
			if e == nil {
				continue
			}
			bcpu := "–"
			if e.BackendCPUPerM > 0 {
				bcpu = fmtF(e.BackendCPUPerM, 2)
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s | %s |\n", fmtInt(float64(e.Sockets)), e.Mode, e.Target, e.Path, fmtInt(e.PerSec),
				fmtDur(e.P50), fmtDur(e.P99), fmtDur(e.P999), fmtInt(float64(e.RoundTrips)), fmtInt(float64(e.Sent)), fmtF(e.CPUPerM, 2), bcpu)
		}
		a, b := byMode[mode][nameSidecar], byMode[mode][nameNode]
		if a != nil && b != nil {
			fmt.Fprintf(w, "| | | **ratio** | | **%s** | %s | %s | %s | | %s | |\n", ratio(a.PerSec, b.PerSec), ratio(a.P50.Seconds(), b.P50.Seconds()),
				ratio(a.P99.Seconds(), b.P99.Seconds()), ratio(a.P999.Seconds(), b.P999.Seconds()), ratio(a.CPUPerM, b.CPUPerM))
		}
	}
	fmt.Fprintln(w)
	for _, e := range r.res.Echo {
		if e.Err != "" || e.Failed > 0 {
			fmt.Fprintf(w, "- %s, %s: %d failed handshakes %s\n", e.Target, e.Mode, e.Failed, e.Err)
		}
	}
	fmt.Fprintln(w)
}

func (r *runner) writePush(w io.Writer) {
	if len(r.res.Push) == 0 {
		return
	}
	fmt.Fprintf(w, "### Push endpoint alone\n\n")
	fmt.Fprintf(w, "POST of a 100 B text body with no socket connected, %d keep-alive connections, %s: wsidecar `/v1/push/channel/bench` (admin listener), node `/broadcast`.\n\n", pushConns, r.plan.pushDur)
	fmt.Fprintln(w, "| server | tool | requests/s (higher is better) | p50 (lower) | p99 | non-2xx | server CPU-s per 1M requests (lower) |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|")
	var a, b *pushResult
	for i := range r.res.Push {
		p := &r.res.Push[i]
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %d | %s |\n", p.Target, p.Tool, fmtInt(p.ReqPerSec), fmtDur(p.P50), fmtDur(p.P99), p.Non2xx, fmtF(p.CPUPerM, 2))
		switch p.Target {
		case nameSidecar:
			a = p
		case nameNode:
			b = p
		}
	}
	if a != nil && b != nil {
		fmt.Fprintf(w, "| **ratio** | | **%s** | %s | %s | | %s |\n", ratio(a.ReqPerSec, b.ReqPerSec), ratio(a.P50.Seconds(), b.P50.Seconds()),
			ratio(a.P99.Seconds(), b.P99.Seconds()), ratio(a.CPUPerM, b.CPUPerM))
	}
	fmt.Fprintln(w)
	for _, p := range r.res.Push {
		if p.Err != "" {
			fmt.Fprintf(w, "- %s: %s\n", p.Target, p.Err)
		}
	}
	fmt.Fprintln(w)
}

// writeTargets checks the targets against this run.
func (r *runner) writeTargets(w io.Writer) {
	type row struct{ target, measured, verdict string }
	var rows []row
	idle := func(name string, n int) *idleResult {
		for i := range r.res.Idle {
			ir := &r.res.Idle[i]
			if ir.Target == name && ir.Sockets+ir.Failed == n {
				return ir
			}
		}
		return nil
	}
	big := r.plan.idleSteps[len(r.plan.idleSteps)-1]
	if a, b := idle(nameSidecar, big), idle(nameNode, big); a != nil {
		v := verdictLE(a.PerSocket, 5*1024, "5 KiB")
		if b != nil {
			v += "; vs node: " + verdictLE(a.PerSocket, b.PerSocket, fmtKiB(b.PerSocket))
		}
		rows = append(rows, row{"idle plain-WS RSS per socket ≤ node's, aim ≤ 5 KiB", fmtKiB(a.PerSocket) + fmt.Sprintf(" at %s", fmtInt(float64(big))), v})
		v2 := "met"
		if a.Failed > 0 || a.Sockets < 15000 {
			v2 = fmt.Sprintf("missed: %d failed, %d held", a.Failed, a.Sockets)
		}
		rows = append(rows, row{"15,000 sockets, zero failed handshakes", fmt.Sprintf("%s held, %d failed", fmtInt(float64(a.Sockets)), a.Failed), v2})
	}
	fan := func(name string, n, size int, sat bool) *fanoutResult {
		for i := range r.res.Fanout {
			f := &r.res.Fanout[i]
			if f.Target == name && f.Sockets == n && f.Size == size && strings.HasPrefix(f.Mode, "saturated") == sat {
				return f
			}
		}
		return nil
	}
	if a := fan(nameSidecar, r.plan.fanSockets[0], 100, true); a != nil {
		v := verdictGE(a.PerSec, 200000, "200k/s")
		if b := fan(nameNode, r.plan.fanSockets[0], 100, true); b != nil {
			v += "; vs 2× node: " + verdictGE(a.PerSec, 2*b.PerSec, fmtInt(2*b.PerSec)+"/s")
		}
		rows = append(rows, row{fmt.Sprintf("fan-out at %s sockets ≥ 2× node and ≥ 200k deliveries/s (saturated, 100 B)", fmtInt(float64(a.Sockets))), fmtInt(a.PerSec) + "/s", v})
	}
	if a := fan(nameSidecar, 1000, 100, false); a != nil {
		rows = append(rows, row{"p99 push-to-receive ≤ 5 ms at 1k sockets (paced, 100 B)", fmtDur(a.P99), verdictLE(a.P99.Seconds(), 0.005, "5 ms")})
	}
	for _, e := range r.res.Echo {
		if e.Target != nameSidecar {
			continue
		}
		if e.Mode == "closed loop" {
			rows = append(rows, row{fmt.Sprintf("webhook round trips ≥ 25k/s at %s sockets (closed loop)", fmtInt(float64(e.Sockets))), fmtInt(e.PerSec) + "/s", verdictGE(e.PerSec, 25000, "25k/s")})
		} else {
			rows = append(rows, row{fmt.Sprintf("webhook p99 ≤ 10 ms at %s sockets (%s)", fmtInt(float64(e.Sockets)), e.Mode), fmtDur(e.P99), verdictLE(e.P99.Seconds(), 0.010, "10 ms")})
		}
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "### Targets (issue 7)\n\n| target | measured | verdict |\n|---|---:|---|\n")
	for _, x := range rows {
		fmt.Fprintf(w, "| %s | %s | %s |\n", x.target, x.measured, x.verdict)
	}
	fmt.Fprintln(w)
}

func verdictLE(v, limit float64, what string) string {
	if v <= 0 {
		return "not measured"
	}
	if v <= limit {
		return "met (≤ " + what + ")"
	}
	return fmt.Sprintf("**missed** by %.0f%% (limit %s)", (v/limit-1)*100, what)
}

func verdictGE(v, limit float64, what string) string {
	if v <= 0 {
		return "not measured"
	}
	if v >= limit {
		return "met (≥ " + what + ")"
	}
	return fmt.Sprintf("**missed**: %.0f%% of %s", v/limit*100, what)
}
