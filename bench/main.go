// Command bench measures wsidecar side by side with the Node.js ws broadcast
// server, in one run, on one machine:
//
//	go run ./bench            # quick mode, under two minutes
//	go run ./bench -full      # every step, longer runs
//
// It builds the sidecar (`go build` from the module root), installs the Node
// peer's dependencies (`npm ci` in bench/node) when they are missing,
// starts the servers and a webhook backend, drives them from separate load
// generator processes (this binary re-run as `bench client`, each holding at
// most -per-proc sockets and dialling from its own loopback source
// addresses), stops everything, prints a Markdown report and writes it to
// -out. Scenarios: idle hold (RSS per socket, handshakes/s; WSS for
// wsidecar), fan-out (paced and saturated; deliveries/s, CPU per delivery,
// push-to-receive latency), slow consumers, webhook round trips and the push
// endpoint alone (wrk). BENCHMARKS.md explains the figures.
//
// Benchmarks report; they never fail a test suite.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "client":
			os.Exit(clientMain())
		case "backend":
			os.Exit(backendMain(os.Args[2:]))
		}
	}
	os.Exit(runnerMain(os.Args[1:]))
}

func runnerMain(args []string) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	full := fs.Bool("full", false, "full mode: 1k, 5k and 15k steps and longer runs (several minutes)")
	out := fs.String("out", "", "write the Markdown report here (default bench/results/<mode>.md under the module root)")
	perProc := fs.Int("per-proc", 8000, "sockets per load-generator process (capped by the open-file limit and 19,000)")
	conc := fs.Int("dial-concurrency", 64, "dials in flight per load-generator process")
	only := fs.String("only", "", "comma-separated scenarios to run: idle,wss,fanout,slow,echo,push (default all)")
	peers := fs.String("peers", "wsidecar,node", "servers to measure: wsidecar,node")
	profDir := fs.String("profile", "", "profile mode: run against wsidecar built with -tags benchprof (adds pprof) and save CPU and heap profiles in this directory")
	keep := fs.Bool("keep", false, "keep the temp dir (configs, logs, binaries)")
	var sideEnv listFlag
	fs.Var(&sideEnv, "sidecar-env", "K=V added to the sidecar's environment (repeatable), e.g. GOMAXPROCS=1 or GOGC=50")
	var lattrs listFlag
	fs.Var(&lattrs, "listener-attr", `an attribute added to the sidecar's listener block (repeatable), e.g. 'read_buffer_size = "256B"'`)
	if err := fs.Parse(args); err != nil {
		return 2
	}

	r := &runner{mode: "quick", plan: quickPlan(), perProc: *perProc, dialConc: *conc,
		only: splitSet(*only), peersOn: splitSet(*peers), sideEnv: sideEnv, listenerAttrs: lattrs}
	r.res.Command = "go run ./bench"
	if *full {
		r.mode, r.plan = "full", fullPlan()
		r.res.Command += " -full"
	}
	if *profDir != "" {
		r.res.Command += " -profile " + *profDir
	}
	for _, e := range sideEnv {
		r.res.Command += " -sidecar-env " + e
	}
	for _, a := range lattrs {
		r.res.Command += " -listener-attr '" + a + "'"
	}
	if err := r.setup(*profDir); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if *keep {
		logf("temp dir kept: %s", r.tmp)
	} else {
		defer os.RemoveAll(r.tmp)
	}

	// Everything stops by itself: a hard limit, and SIGINT/SIGTERM, both
	// kill every process the run started.
	ctx, cancel := context.WithTimeout(context.Background(), r.plan.hardLimit)
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- r.run() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		err = fmt.Errorf("hard time limit (%s) reached", r.plan.hardLimit)
	case s := <-sigs:
		err = fmt.Errorf("stopped by %s", s)
	}
	r.killAll()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		if !*keep {
			fmt.Fprintln(os.Stderr, "bench: run again with -keep to look at the servers' logs")
		}
		return 1
	}

	path := *out
	if path == "" {
		path = filepath.Join(r.root, "bench", "results", r.mode+".md")
	}
	var b strings.Builder
	r.writeReport(&b)
	fmt.Print(b.String())
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
		err = os.WriteFile(path, []byte(b.String()), 0o644)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: writing the report:", err)
			return 1
		}
	}
	logf("report written to %s", path)
	return 0
}

func splitSet(s string) map[string]bool {
	m := map[string]bool{}
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			m[f] = true
		}
	}
	return m
}

// setup checks the machine and prepares binaries.
func (r *runner) setup(profDir string) error {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(gomod)) == "" || strings.TrimSpace(string(gomod)) == os.DevNull {
		return fmt.Errorf("run from inside the wsidecar module (go env GOMOD: %v)", err)
	}
	r.root = filepath.Dir(strings.TrimSpace(string(gomod)))
	r.nodeDir = filepath.Join(r.root, "bench", "node")
	if r.self, err = os.Executable(); err != nil {
		return fmt.Errorf("finding this executable: %w", err)
	}
	if profDir != "" {
		if r.profDir, err = filepath.Abs(profDir); err != nil {
			return err
		}
		if err := os.MkdirAll(r.profDir, 0o755); err != nil {
			return err
		}
	}

	// Open files: raise the soft limit to the hard one (children inherit
	// it), then size everything to fit.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("reading the open-file limit: %w", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	r.fdLimit = lim.Cur
	headroom := uint64(1000)
	if lim.Cur <= 2*headroom {
		headroom = lim.Cur / 4
	}
	r.maxSock = int(min(lim.Cur-headroom, 19000))
	r.perProc = max(min(r.perProc, r.maxSock), 100)
	big := 0
	for _, n := range append(append([]int{}, r.plan.idleSteps...), r.plan.fanSockets...) {
		big = max(big, n)
	}
	if r.maxSock < big {
		logf("open-file limit %d: the server and each client process hold at most %d sockets (steps above that are capped; raise it with `ulimit -n 20000`)", lim.Cur, r.maxSock)
	}

	if w, err := exec.LookPath("wrk"); err == nil {
		r.wrk = w
	} else {
		logf("wrk not found (Debian: apt-get install wrk); the push endpoint is measured with a Go HTTP loop instead")
	}
	if r.tmp, err = os.MkdirTemp("", "wsidecar-bench-"); err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	r.res.Machine = gatherMachine(r.nodeDir)
	r.res.Machine.FDLimit = r.fdLimit
	if r.wrk != "" {
		r.res.Machine.Wrk = cmdLine(r.wrk, "-v")
		if f := strings.Fields(r.res.Machine.Wrk); len(f) >= 2 {
			r.res.Machine.Wrk = f[0] + " " + f[1]
		}
	}
	if err := r.build(); err != nil {
		return err
	}
	if r.peersOn["node"] {
		if err := r.nodeDeps(); err != nil {
			return err
		}
		r.res.Machine = mergeWS(r.res.Machine, gatherMachine(r.nodeDir))
	}
	logf("machine: %d cores, %s, %s, node %s; load average %s; open files %d; %d sockets per client process",
		r.res.Machine.Cores, r.res.Machine.Kernel, r.res.Machine.GoVersion, r.res.Machine.Node, loadAvg(), r.fdLimit, r.perProc)
	return nil
}

// mergeWS takes the ws version known after npm ci.
func mergeWS(m, after machineInfo) machineInfo {
	if m.WS == "" {
		m.WS = after.WS
	}
	return m
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}
