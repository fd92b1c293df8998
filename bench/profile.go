package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Profile mode (-profile DIR) runs the scenarios against wsidecar built with -tags benchprof
// (profiling_on.go: /debug/pprof on the admin listener), and
// saves two profiles: the heap once the largest idle step is held, and the
// CPU during saturated 100 B fan-out to the largest channel. Each is kept as
// a .pprof file and summarised with `go tool pprof -top` next to it.

// profileIdle reports whether to take the idle heap profile at n sockets.
func (r *runner) profileIdle(t *target, n int) bool {
	return r.profDir != "" && t.name == "wsidecar" && n == r.plan.idleSteps[len(r.plan.idleSteps)-1]
}

// profileFanout reports whether to profile this fan-out run.
func (r *runner) profileFanout(t *target, n, size int, saturated bool) bool {
	return r.profDir != "" && t.name == "wsidecar" && saturated && size == r.plan.fanSizes[0] && n == r.plan.fanSockets[0]
}

// fetchProfile saves /debug/pprof/<kind> (a CPU profile over dur) as
// name.pprof and its top functions as name.txt.
func (r *runner) fetchProfile(t *target, kind, name string, dur time.Duration) {
	url := t.p.admin + "/debug/pprof/" + kind
	if kind == "profile" {
		url += fmt.Sprintf("?seconds=%d", max(int(dur.Seconds()), 1))
	} else {
		url += "?gc=1"
	}
	c := &http.Client{Timeout: dur + 30*time.Second}
	resp, err := c.Get(url)
	if err != nil {
		r.note("profile %s: %v", name, err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		r.note("profile %s: status %d (is this the profiling build?)", name, resp.StatusCode)
		return
	}
	path := filepath.Join(r.profDir, name+".pprof")
	f, err := os.Create(path)
	if err != nil {
		r.note("profile %s: %v", name, err)
		return
	}
	_, err = io.Copy(f, resp.Body)
	f.Close()
	if err != nil {
		r.note("profile %s: %v", name, err)
		return
	}
	args := []string{"tool", "pprof", "-top", "-nodecount=30"}
	if kind == "heap" {
		args = append(args, "-sample_index=inuse_space")
	}
	args = append(args, r.sidecar, path)
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		r.note("pprof -top %s: %v", name, err)
	}
	if kind == "heap" {
		// The text form ends with runtime.MemStats: stacks and heap
		// overhead, which the profile itself does not show.
		if resp, err := c.Get(t.p.admin + "/debug/pprof/heap?debug=1"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if i := strings.Index(string(b), "# runtime.MemStats"); i >= 0 {
				out = append(append(out, '\n'), b[i:]...)
			}
		}
		if resp, err := c.Get(t.p.admin + "/debug/pprof/goroutine?debug=1"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			line, _, _ := strings.Cut(string(b), "\n")
			out = append(append(out, '\n'), line...)
		}
	}
	_ = os.WriteFile(filepath.Join(r.profDir, name+".txt"), out, 0o644)
	r.mu.Lock()
	r.res.Profiles = append(r.res.Profiles, path)
	r.mu.Unlock()
	logf("profile saved: %s", path)
}
