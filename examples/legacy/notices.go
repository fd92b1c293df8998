package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// notice is one event of the /events feed.
type notice struct {
	Type string `json:"type"` // always "notice"
	Text string `json:"text"`
	ID   int64  `json:"id"`
}

// notices is the feed: a bounded history, so a reader that was cut off can
// come back with Last-Event-ID and miss nothing that is still kept.
type notices struct {
	mu      sync.Mutex
	max     int
	history []notice      // oldest first, ids ascending
	last    int64         // id of the newest notice
	changed chan struct{} // closed and replaced by every add
}

func newNotices(size int) *notices {
	return &notices{max: size, changed: make(chan struct{})}
}

func (n *notices) add(text string) notice {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.last++
	ev := notice{Type: "notice", Text: text, ID: n.last}
	if len(n.history) == n.max {
		n.history = append(n.history[:0], n.history[1:]...)
	}
	n.history = append(n.history, ev)
	close(n.changed)
	n.changed = make(chan struct{})
	return ev
}

// since returns the kept notices after id, the id to continue from, and a
// channel closed by the next add. An id from the future means this process
// restarted and counts from 1 again, so everything kept is new to the reader.
func (n *notices) since(id int64) ([]notice, int64, <-chan struct{}) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if id > n.last {
		id = 0
	}
	var out []notice
	for _, ev := range n.history {
		if ev.ID > id {
			out = append(out, ev)
		}
	}
	if len(out) > 0 {
		id = out[len(out)-1].ID
	}
	return out, id, n.changed
}

func (n *notices) latest() int64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.last
}

// run adds a notice every interval until ctx ends; interval <= 0 disables it.
func (n *notices) run(ctx context.Context, every time.Duration, now func() time.Time) {
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n.add(fmt.Sprintf("the legacy backend says hello; its clock reads %s", now().UTC().Format(time.TimeOnly)))
		}
	}
}

// keepAlive is how often an idle stream gets a comment line, so that dead
// readers are noticed and idle timeouts in between stay quiet.
const keepAlive = 15 * time.Second

// events streams the notices as server-sent events. With Last-Event-ID it
// first replays what the reader missed; without, it starts from now.
func (s *server) events(w http.ResponseWriter, r *http.Request) {
	after := s.notices.latest()
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		if id, err := strconv.ParseInt(v, 10, 64); err == nil && id >= 0 {
			after = id
		}
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if rc.Flush() != nil {
		return
	}
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	for {
		evs, next, changed := s.notices.since(after)
		after = next
		for _, ev := range evs {
			if writeEvent(w, ev) != nil {
				return
			}
		}
		if len(evs) > 0 && rc.Flush() != nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-changed:
		case <-tick.C:
			if _, err := io.WriteString(w, ": keep-alive\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		}
	}
}

func writeEvent(w io.Writer, ev notice) error {
	data, _ := json.Marshal(ev) // one line: JSON escapes newlines
	_, err := fmt.Fprintf(w, "event: notices\nid: %d\ndata: %s\n\n", ev.ID, data)
	return err
}

// postNotice adds a notice now, for demos and tests.
func (s *server) postNotice(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Text string `json:"text"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10)).Decode(&body); err != nil || body.Text == "" {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"error":{"code":"bad_notice","message":"body must be {\"text\":\"…\"}"}}`)
		return
	}
	ev := s.notices.add(body.Text)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(ev)
}
