package proxy

import (
	"sync"

	"github.com/wsidecar/wsidecar/bridge"
)

// pipeline lets a socket have up to n message webhooks in flight (route
// MaxInFlight > 1) while replies are still applied in seq order. Workers
// are started on demand and exit when no job waits, like the writer; the
// read loop blocks once n messages are outstanding, which pushes back on
// the client through TCP.
type pipeline struct {
	c   *conn
	n   int
	sem chan struct{} // one slot per message between submit and apply

	mu       sync.Mutex
	jobs     []pjob // submitted, not yet picked by a worker (FIFO)
	workers  int
	results  []presult // ring indexed by seq % n
	next     uint64    // next seq to apply
	applying bool      // one goroutine applies at a time, in order
}

type pjob struct {
	seq uint64
	m   bridge.Message
}

type presult struct {
	done bool
	a    *bridge.Actions
	err  error
}

func newPipeline(c *conn, n int, first uint64) *pipeline {
	return &pipeline{c: c, n: n, sem: make(chan struct{}, n), results: make([]presult, n), next: first}
}

// submit queues one message; it blocks while n messages are outstanding.
// Called from the read goroutine only.
func (p *pipeline) submit(seq uint64, m bridge.Message) {
	p.sem <- struct{}{}
	p.c.calls.Add(1)
	p.mu.Lock()
	p.jobs = append(p.jobs, pjob{seq: seq, m: m})
	start := p.workers < p.n
	if start {
		p.workers++
		p.c.bg.Add(1)
	}
	p.mu.Unlock()
	if start {
		go p.work()
	}
}

func (p *pipeline) work() {
	defer p.c.bg.Done()
	for {
		p.mu.Lock()
		if len(p.jobs) == 0 {
			p.workers--
			p.mu.Unlock()
			return
		}
		j := p.jobs[0]
		copy(p.jobs, p.jobs[1:])
		p.jobs[len(p.jobs)-1] = pjob{}
		p.jobs = p.jobs[:len(p.jobs)-1]
		p.mu.Unlock()

		a, err := p.c.callMessage(j.seq, j.m)
		p.c.calls.Add(-1)
		p.c.touch()
		p.finish(j.seq, a, err)
	}
}

// finish records a reply and applies every reply that is now next in line.
func (p *pipeline) finish(seq uint64, a *bridge.Actions, err error) {
	p.mu.Lock()
	p.results[seq%uint64(p.n)] = presult{done: true, a: a, err: err}
	if p.applying {
		p.mu.Unlock()
		return
	}
	p.applying = true
	for {
		r := &p.results[p.next%uint64(p.n)]
		if !r.done {
			break
		}
		res := *r
		*r = presult{}
		p.next++
		p.mu.Unlock()
		p.c.handleReply(res.a, res.err)
		<-p.sem
		p.mu.Lock()
	}
	p.applying = false
	p.mu.Unlock()
}
