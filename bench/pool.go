package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// clientProc is one load-generator process (`bench client`).
type clientProc struct {
	p    *peer
	in   io.WriteCloser
	out  *bufio.Scanner
	mu   sync.Mutex
	held int // sockets it holds, as of its last answer
}

// call sends one command and waits up to timeout for the answer; a process
// that does not answer in time is killed.
func (c *clientProc) call(cmd clientCmd, timeout time.Duration) (clientReply, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, _ := json.Marshal(cmd)
	if _, err := c.in.Write(append(b, '\n')); err != nil {
		return clientReply{}, fmt.Errorf("client %d: sending %s: %w", c.p.pid, cmd.Op, err)
	}
	type res struct {
		r   clientReply
		err error
	}
	ch := make(chan res, 1)
	go func() {
		if !c.out.Scan() {
			err := c.out.Err()
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			ch <- res{err: err}
			return
		}
		var r clientReply
		err := json.Unmarshal(c.out.Bytes(), &r)
		ch <- res{r, err}
	}()
	select {
	case x := <-ch:
		if x.err != nil {
			return clientReply{}, fmt.Errorf("client %d: %s: %w; its log:\n%s", c.p.pid, cmd.Op, x.err, tail(c.p.log, 10))
		}
		c.held = x.r.Open
		if x.r.Err != "" {
			return x.r, fmt.Errorf("client %d: %s: %s", c.p.pid, cmd.Op, x.r.Err)
		}
		return x.r, nil
	case <-time.After(timeout):
		_ = c.p.cmd.Process.Kill()
		return clientReply{}, fmt.Errorf("client %d: %s: no answer in %s", c.p.pid, cmd.Op, timeout)
	}
}

// pool is the set of client processes driving one server.
type pool struct {
	r     *runner
	procs []*clientProc
}

// newPool starts enough client processes for maxSockets sockets.
func (r *runner) newPool(maxSockets int) (*pool, error) {
	n := (maxSockets + r.perProc - 1) / r.perProc
	pl := &pool{r: r}
	for i := 0; i < max(n, 1); i++ {
		cmd := exec.Command(r.self, "client")
		in, err := cmd.StdinPipe()
		if err != nil {
			pl.close()
			return nil, fmt.Errorf("client stdin: %w", err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			pl.close()
			return nil, fmt.Errorf("client stdout: %w", err)
		}
		p, err := startProcess("client", cmd, filepath.Join(r.tmp, fmt.Sprintf("client-%d.log", r.nextLog())))
		if err != nil {
			pl.close()
			return nil, err
		}
		r.track(p)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		pl.procs = append(pl.procs, &clientProc{p: p, in: in, out: sc})
	}
	return pl, nil
}

// all sends cmd to every process at once and returns the answers in order.
func (pl *pool) all(cmd clientCmd, timeout time.Duration) ([]clientReply, error) {
	reps := make([]clientReply, len(pl.procs))
	errs := make([]error, len(pl.procs))
	var wg sync.WaitGroup
	for i, c := range pl.procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reps[i], errs[i] = c.call(cmd, timeout)
		}()
	}
	wg.Wait()
	return reps, errors.Join(errs...)
}

// held is the number of sockets the pool holds.
func (pl *pool) held() int {
	n := 0
	for _, c := range pl.procs {
		n += c.held
	}
	return n
}

// connectResult is one ramp step.
type connectResult struct {
	added, failed int
	seconds       float64
	errors        []string
}

// connectTo grows the pool to total sockets on url, filling processes in
// order (each up to perProc), all processes dialling at once.
func (pl *pool) connectTo(url string, total int) (connectResult, error) {
	var res connectResult
	type job struct {
		c *clientProc
		n int
	}
	var jobs []job
	for i, c := range pl.procs {
		want := min(max(total-i*pl.r.perProc, 0), pl.r.perProc)
		if add := want - c.held; add > 0 {
			jobs = append(jobs, job{c, add})
		}
	}
	reps := make([]clientReply, len(jobs))
	errs := make([]error, len(jobs))
	var wg sync.WaitGroup
	start := time.Now()
	for i, j := range jobs {
		cmd := clientCmd{Op: "connect", URL: url, N: j.n, Conc: pl.r.dialConc, IPs: pl.r.allocIPs(j.n), TimeoutMS: 10000}
		wg.Add(1)
		go func() {
			defer wg.Done()
			reps[i], errs[i] = j.c.call(cmd, 5*time.Minute)
		}()
	}
	wg.Wait()
	res.seconds = time.Since(start).Seconds()
	for _, rep := range reps {
		res.added += rep.Connected
		res.failed += rep.Failed
		res.errors = append(res.errors, rep.Errors...)
	}
	return res, errors.Join(errs...)
}

// closeTo closes sockets down to keep (the first ones are kept).
func (pl *pool) closeTo(keep int) error {
	var errs []error
	for i, c := range pl.procs {
		k := min(max(keep-i*pl.r.perProc, 0), pl.r.perProc)
		if c.held > k {
			if _, err := c.call(clientCmd{Op: "close", Keep: k}, time.Minute); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// count sums the processes' frame counters.
func (pl *pool) count() (frames uint64, lastNS int64, err error) {
	reps, err := pl.all(clientCmd{Op: "count"}, 10*time.Second)
	for _, r := range reps {
		frames += r.Frames
		lastNS = max(lastNS, r.LastNS)
	}
	return frames, lastNS, err
}

// close ends every client process.
func (pl *pool) close() {
	for _, c := range pl.procs {
		_, _ = c.call(clientCmd{Op: "quit"}, 20*time.Second)
		_ = c.in.Close()
		select {
		case <-c.p.exited:
		case <-time.After(5 * time.Second):
			_ = c.p.cmd.Process.Signal(syscall.SIGKILL)
			<-c.p.exited
		}
	}
	pl.procs = nil
}

// cpu sums the client processes' CPU seconds.
func (pl *pool) cpu() float64 {
	var t float64
	for _, c := range pl.procs {
		if s, err := cpuSeconds(c.p.pid); err == nil {
			t += s
		}
	}
	return t
}
