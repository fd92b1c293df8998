package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/wsidecar/wsidecar/examples/chat"
)

// actionsType marks a reply as an actions document rather than a frame.
const actionsType = "application/vnd.wsidecar+json"

const (
	maxBody   = 64 << 10 // the sidecar's default max_message_size
	maxLog    = 1000     // webhook log entries kept for /log
	maxNick   = 32       // runes
	maxText   = 1000     // runes
	sigMaxAge = 5 * time.Minute
)

var roomName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

type serverConfig struct {
	SidecarAdmin  string // base URL of wsidecar's admin listener
	AdminToken    string // bearer token for the push API; empty: none
	WSURL         string // what the chat page connects to
	SigningSecret string // empty: webhooks are not verified
	Log           *slog.Logger
	Now           func() time.Time
}

// server is the chat service. All chat state is in memory behind one mutex:
// it is a legacy app, and that is the point.
type server struct {
	log     *slog.Logger
	now     func() time.Time
	push    *pusher
	secret  []byte
	wsURL   string
	notices *notices

	mu    sync.Mutex
	conns map[string]*member         // connection id → who and where
	rooms map[string]map[string]bool // room → connection ids in it
	hooks []logEvent                 // recent webhooks, oldest first
}

type member struct {
	nick string
	room string // "" until the first join
}

// logEvent is one webhook as /log reports it.
type logEvent struct {
	Kind         string `json:"kind"` // connect, reject, message, disconnect
	ConnectionID string `json:"connection_id"`
	User         string `json:"user,omitempty"`
	Seq          int64  `json:"seq,omitempty"`
	Type         string `json:"type,omitempty"` // the client message type
	Code         int    `json:"code,omitempty"` // close code of a disconnect
	Status       int    `json:"status"`         // what we answered
}

func newServer(c serverConfig) *server {
	s := &server{
		log:     c.Log,
		now:     c.Now,
		push:    &pusher{base: strings.TrimRight(c.SidecarAdmin, "/"), token: c.AdminToken, client: &http.Client{Timeout: 5 * time.Second}},
		wsURL:   c.WSURL,
		notices: newNotices(100),
		conns:   map[string]*member{},
		rooms:   map[string]map[string]bool{},
	}
	if c.SigningSecret != "" {
		s.secret = []byte(c.SigningSecret)
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /ws/connect", s.webhook("connect", s.connect))
	mux.Handle("POST /ws/message", s.webhook("message", s.message))
	mux.Handle("POST /ws/disconnect", s.webhook("disconnect", s.disconnect))
	mux.HandleFunc("GET /events", s.events)
	mux.HandleFunc("POST /notice", s.postNotice)
	mux.HandleFunc("GET /log", s.getLog)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /config.js", s.configJS)
	mux.Handle("GET /", http.FileServerFS(chat.Files))
	return mux
}

// call is one webhook request from the sidecar.
type call struct {
	r    *http.Request
	id   string // X-WS-Connection-Id
	body []byte
	ev   *logEvent // the handler fills in Type and Code
}

// reply is what a webhook handler answers; the wrapper writes and logs it.
type reply struct {
	status int
	ctype  string
	body   []byte
}

func errorReply(status int, code, msg string) reply {
	b, _ := json.Marshal(map[string]any{"error": map[string]string{"code": code, "message": msg}})
	return reply{status: status, ctype: "application/json", body: b}
}

func jsonReply(v any) reply {
	b, _ := json.Marshal(v)
	return reply{status: http.StatusOK, ctype: "application/json", body: b}
}

// webhook reads and authenticates a sidecar call, runs h and records it.
func (s *server) webhook(kind string, h func(*call) reply) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seq, _ := strconv.ParseInt(r.Header.Get("X-WS-Seq"), 10, 64)
		c := &call{r: r, id: r.Header.Get("X-WS-Connection-Id"), ev: &logEvent{
			Kind: kind, ConnectionID: r.Header.Get("X-WS-Connection-Id"), User: r.Header.Get("X-WS-User"), Seq: seq,
		}}
		rep := s.authenticate(c, w, r)
		if rep.status == 0 {
			rep = h(c)
		}
		c.ev.Status = rep.status
		s.record(*c.ev)
		if rep.ctype != "" {
			w.Header().Set("Content-Type", rep.ctype)
		}
		w.WriteHeader(rep.status)
		w.Write(rep.body)
	})
}

// authenticate reads the body and checks the signature; a zero reply means
// the call may proceed.
func (s *server) authenticate(c *call, w http.ResponseWriter, r *http.Request) reply {
	if c.id == "" {
		return errorReply(http.StatusBadRequest, "missing_connection_id", "X-WS-Connection-Id is required")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		return errorReply(http.StatusRequestEntityTooLarge, "body_too_large", "webhook body too large")
	}
	c.body = body
	if s.secret != nil {
		err := verifySignature(s.secret, r.Header.Get("X-WS-Signature"), r.Header.Get("X-WS-Timestamp"), c.id, body, s.now(), sigMaxAge)
		if err != nil {
			s.log.Warn("webhook rejected", "conn", c.id, "err", err)
			return errorReply(http.StatusUnauthorized, "bad_signature", "webhook signature check failed")
		}
	}
	return reply{}
}

func (s *server) record(ev logEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.hooks) == maxLog {
		s.hooks = slices.Delete(s.hooks, 0, 1)
	}
	s.hooks = append(s.hooks, ev)
}

// actions is the wsidecar actions document (the subset this service uses).
type actions struct {
	Frames      []frame  `json:"frames,omitempty"`
	Subscribe   []string `json:"subscribe,omitempty"`
	Unsubscribe []string `json:"unsubscribe,omitempty"`
}

type frame struct {
	Text string `json:"text"`
}

func actionsReply(a actions) reply {
	b, _ := json.Marshal(a)
	return reply{status: http.StatusOK, ctype: actionsType, body: b}
}

func textFrame(v any) frame {
	b, _ := json.Marshal(v)
	return frame{Text: string(b)}
}

// connect accepts every socket except those asking to be rejected, which
// shows how a refusal reaches the client as the handshake's answer.
func (s *server) connect(c *call) reply {
	if u, err := url.Parse(c.r.Header.Get("X-WS-Path")); err == nil && u.Query().Get("reject") == "1" {
		c.ev.Kind = "reject"
		return errorReply(http.StatusForbidden, "rejected", "connection refused by the legacy backend (reject=1)")
	}
	s.mu.Lock()
	if s.conns[c.id] == nil {
		s.conns[c.id] = &member{nick: "anon"}
	}
	rooms := make([]string, 0, len(s.rooms))
	for r := range s.rooms {
		rooms = append(rooms, r)
	}
	s.mu.Unlock()
	slices.Sort(rooms)
	return actionsReply(actions{
		// "notices" is where the sidecar publishes the /events stream
		// (stream "notices" with no fixed channel uses the event name).
		Subscribe: []string{"lobby", "notices"},
		Frames:    []frame{textFrame(map[string]any{"type": "welcome", "id": c.id, "rooms": rooms})},
	})
}

// clientMsg is every client frame; which fields matter depends on Type.
type clientMsg struct {
	Type string          `json:"type"`
	Room string          `json:"room"`
	Text string          `json:"text"`
	Nick string          `json:"nick"`
	T    json.RawMessage `json:"t"`
}

func (s *server) message(c *call) reply {
	if mt, _, _ := mime.ParseMediaType(c.r.Header.Get("Content-Type")); mt == "application/octet-stream" {
		c.ev.Type = "binary"
		return reply{status: http.StatusOK, ctype: "application/octet-stream", body: c.body}
	}
	var m clientMsg
	if err := json.Unmarshal(c.body, &m); err != nil {
		return errorReply(http.StatusBadRequest, "bad_json", "frames must be JSON objects")
	}
	if len(m.Type) <= 16 {
		c.ev.Type = m.Type
	}
	switch m.Type {
	case "join":
		return s.join(c, m)
	case "say":
		return s.say(c, m)
	case "ping":
		return ping(m)
	}
	return errorReply(http.StatusBadRequest, "unknown_type", `type must be "join", "say" or "ping"`)
}

func (s *server) join(c *call, m clientMsg) reply {
	if !roomName.MatchString(m.Room) {
		return errorReply(http.StatusBadRequest, "bad_room", "room must be 1-32 letters, digits, - or _")
	}
	nick := cleanNick(m.Nick)
	s.mu.Lock()
	mb := s.conns[c.id]
	if mb == nil { // we restarted since its connect; adopt it
		mb = &member{}
		s.conns[c.id] = mb
	}
	prev := mb.room
	mb.nick, mb.room = nick, m.Room
	prevCount := s.leaveLocked(c.id, prev)
	if s.rooms[m.Room] == nil {
		s.rooms[m.Room] = map[string]bool{}
	}
	s.rooms[m.Room][c.id] = true
	count := len(s.rooms[m.Room])
	members := make([]string, 0, count)
	for id := range s.rooms[m.Room] {
		if other := s.conns[id]; other != nil {
			members = append(members, other.nick)
		}
	}
	s.mu.Unlock()
	slices.Sort(members)

	a := actions{
		Subscribe: []string{"room:" + m.Room},
		Frames:    []frame{textFrame(map[string]any{"type": "joined", "room": m.Room, "members": members})},
	}
	if prev != m.Room {
		if prev != "" {
			a.Unsubscribe = []string{"room:" + prev}
			s.presence(c, prev, "leave", nick, prevCount)
		}
		s.presence(c, m.Room, "join", nick, count)
	}
	return actionsReply(a)
}

// leaveLocked removes a connection from a room and returns how many remain.
func (s *server) leaveLocked(id, room string) int {
	if room == "" {
		return 0
	}
	delete(s.rooms[room], id)
	n := len(s.rooms[room])
	if n == 0 {
		delete(s.rooms, room)
	}
	return n
}

// presence tells the rest of a room that someone came or went. The socket
// itself is excluded: its subscription changes only after this reply.
func (s *server) presence(c *call, room, event, nick string, count int) {
	msg, _ := json.Marshal(map[string]any{"type": "presence", "room": room, "event": event, "id": c.id, "nick": nick, "count": count})
	err := s.push.send(c.r.Context(), pushRequest{Channels: []string{"room:" + room}, Exclude: []string{c.id}, Text: string(msg)})
	if err != nil {
		s.log.Warn("presence push failed", "room", room, "err", err)
	}
}

func (s *server) say(c *call, m clientMsg) reply {
	if !roomName.MatchString(m.Room) {
		return errorReply(http.StatusBadRequest, "bad_room", "room must be 1-32 letters, digits, - or _")
	}
	text := strings.TrimSpace(m.Text)
	if text == "" || utf8.RuneCountInString(text) > maxText {
		return errorReply(http.StatusBadRequest, "bad_text", fmt.Sprintf("text must be 1-%d characters", maxText))
	}
	nick := cleanNick(m.Nick)
	if m.Nick == "" {
		s.mu.Lock()
		if mb := s.conns[c.id]; mb != nil {
			nick = mb.nick
		}
		s.mu.Unlock()
	}
	msg, _ := json.Marshal(map[string]any{"type": "chat", "room": m.Room, "from": nick, "text": text, "ts": s.now().UnixMilli()})
	if err := s.push.channel(c.r.Context(), "room:"+m.Room, "application/json", msg); err != nil {
		s.log.Warn("chat push failed", "room", m.Room, "err", err)
		return errorReply(http.StatusBadGateway, "push_failed", "message could not be delivered")
	}
	return reply{status: http.StatusNoContent}
}

// ping answers at once so the client can measure the whole round trip:
// browser → sidecar → webhook → sidecar → browser.
func ping(m clientMsg) reply {
	var t float64
	if err := json.Unmarshal(m.T, &t); err != nil || string(m.T) == "null" {
		return errorReply(http.StatusBadRequest, "bad_ping", "t must be a number")
	}
	return jsonReply(map[string]any{"type": "pong", "t": m.T})
}

func (s *server) disconnect(c *call) reply {
	var d struct {
		Code       int    `json:"code"`
		Reason     string `json:"reason"`
		Clean      bool   `json:"clean"`
		DurationMS int64  `json:"duration_ms"`
	}
	// A malformed body is still a disconnect: answering 4xx would only make
	// the sidecar retry it.
	if err := json.Unmarshal(c.body, &d); err != nil {
		s.log.Warn("disconnect body unreadable", "conn", c.id, "err", err)
	}
	c.ev.Code = d.Code
	s.mu.Lock()
	var room, nick string
	var left int
	if mb := s.conns[c.id]; mb != nil {
		room, nick = mb.room, mb.nick
		left = s.leaveLocked(c.id, room)
	}
	delete(s.conns, c.id)
	s.mu.Unlock()
	s.log.Info("disconnected", "conn", c.id, "code", d.Code, "clean", d.Clean, "duration_ms", d.DurationMS)
	if room != "" {
		s.presence(c, room, "leave", nick, left)
	}
	return reply{status: http.StatusNoContent}
}

func cleanNick(n string) string {
	n = strings.TrimSpace(n)
	if utf8.RuneCountInString(n) > maxNick {
		n = string([]rune(n)[:maxNick])
	}
	if n == "" || !utf8.ValidString(n) {
		return "anon"
	}
	return n
}

func (s *server) getLog(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	b, _ := json.Marshal(s.hooks)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}

// configJS hands the page its WebSocket URL; JSON encoding keeps it a
// plain string whatever the flag holds.
func (s *server) configJS(w http.ResponseWriter, _ *http.Request) {
	b, _ := json.Marshal(map[string]string{"wsUrl": s.wsURL})
	w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	fmt.Fprintf(w, "window.WSIDECAR = %s;\n", b)
}
