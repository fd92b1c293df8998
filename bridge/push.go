package bridge

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
)

// maxNameLen caps channel names, user ids and connection ids.
const maxNameLen = 256

// pushRequest is the body of POST /v1/push.
type pushRequest struct {
	Connections []string `json:"connections"`
	Users       []string `json:"users"`
	Channels    []string `json:"channels"`
	Broadcast   bool     `json:"broadcast"`
	Exclude     []string `json:"exclude"`
	Text        *string  `json:"text"`
	Binary      *string  `json:"binary"` // base64
}

// pushAnswer is the body of a successful push. Remote and Failed appear only
// when a cluster was involved, so a single replica answers exactly
// {"delivered":N,"dropped":N}.
type pushAnswer struct {
	Delivered int `json:"delivered"`
	Dropped   int `json:"dropped"`
	// Remote: replicas the push was handed to; their sockets are not
	// counted in delivered/dropped.
	Remote int `json:"remote,omitempty"`
	// Failed: cluster publishes that could not be sent; sockets on other
	// replicas may have missed the push.
	Failed int `json:"failed,omitempty"`
}

// changeAnswer is the body of a successful subscribe/unsubscribe.
type changeAnswer struct {
	Changed int `json:"changed"`
	Remote  int `json:"remote,omitempty"`
	Failed  int `json:"failed,omitempty"`
}

// subscribeRequest is the body of POST /v1/subscribe and /v1/unsubscribe.
type subscribeRequest struct {
	Connection string   `json:"connection"`
	User       string   `json:"user"`
	Channels   []string `json:"channels"`
}

// pushJSON serves POST /v1/push.
func (a *Admin) pushJSON(ctx *fasthttp.RequestCtx) {
	var req pushRequest
	if !a.decode(ctx, &req) {
		return
	}
	var m Message
	switch {
	case req.Text != nil && req.Binary != nil:
		writeError(ctx, fasthttp.StatusBadRequest, "invalid_message", "set either text or binary, not both")
		return
	case req.Text != nil:
		m.Data = []byte(*req.Text)
	case req.Binary != nil:
		b, err := decodeBase64(*req.Binary)
		if err != nil {
			writeError(ctx, fasthttp.StatusBadRequest, "invalid_message", "binary is not valid base64: "+err.Error())
			return
		}
		m = Message{Binary: true, Data: b}
	default:
		writeError(ctx, fasthttp.StatusBadRequest, "invalid_message", "no message: set text or binary")
		return
	}
	t := &Target{
		Connections: req.Connections,
		Users:       req.Users,
		Channels:    req.Channels,
		Broadcast:   req.Broadcast,
		Exclude:     req.Exclude,
	}
	a.push(ctx, t, m)
}

// pushRaw serves the shortcuts POST /v1/push/{kind}/{name} and
// /v1/push/broadcast, whose body is the message itself.
func (a *Admin) pushRaw(ctx *fasthttp.RequestCtx, kind, name string) {
	body := ctx.PostBody()
	if len(body) > a.opts.MaxBody {
		writeError(ctx, fasthttp.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body over %d bytes", a.opts.MaxBody))
		return
	}
	if len(body) == 0 {
		writeError(ctx, fasthttp.StatusBadRequest, "invalid_message", "no message: the body is empty")
		return
	}
	t := &Target{}
	switch kind {
	case "channel":
		t.Channels = []string{name}
	case "user":
		t.Users = []string{name}
	case "connection":
		t.Connections = []string{name}
	case "broadcast":
		t.Broadcast = true
	}
	if ex := ctx.QueryArgs().Peek("exclude"); len(ex) > 0 {
		for id := range strings.SplitSeq(string(ex), ",") {
			if id = strings.TrimSpace(id); id != "" {
				t.Exclude = append(t.Exclude, id)
			}
		}
	}
	m := Message{Binary: !isTextContentType(ctx.Request.Header.ContentType())}
	if !m.Binary && !utf8.Valid(body) {
		writeError(ctx, fasthttp.StatusBadRequest, "invalid_message", "a text body must be valid UTF-8 (send binary as application/octet-stream)")
		return
	}
	// The body dies with the request; sockets may still be sending it.
	m.Data = bytes.Clone(body)
	a.push(ctx, t, m)
}

// push validates t, publishes m and answers with the counts.
func (a *Admin) push(ctx *fasthttp.RequestCtx, t *Target, m Message) {
	if t.Empty() {
		writeError(ctx, fasthttp.StatusBadRequest, "invalid_target", "no target: set connections, users, channels or broadcast")
		return
	}
	if !a.validTarget(ctx, t) {
		return
	}
	a.pushRequests[targetKind(t)].Inc()
	bctx, cancel := a.brokerCtx()
	res, err := a.opts.Broker.Publish(bctx, t, m, PublishOptions{})
	cancel()
	if err != nil {
		a.unavailable(ctx, "push", err)
		return
	}
	a.deliveries.Add(res.Delivered)
	a.dropped.Add(res.Dropped)
	a.remote.Add(res.Remote)
	a.failed.Add(res.Failed)
	if res.Delivered+res.Dropped+res.Remote == 0 {
		if res.Failed > 0 {
			writeError(ctx, fasthttp.StatusServiceUnavailable, "cluster_unavailable",
				"no local socket matched and the other replicas could not be reached")
			return
		}
		if connectionsOnly(t) && !allExcluded(t) {
			writeError(ctx, fasthttp.StatusNotFound, "not_found", "no such connection")
			return
		}
	}
	writePushAnswer(ctx, pushAnswer{res.Delivered, res.Dropped, res.Remote, res.Failed})
}

// writePushAnswer encodes the push answer by hand: it is the one answer on
// a hot path, and it is all integers.
func writePushAnswer(ctx *fasthttp.RequestCtx, p pushAnswer) {
	var buf [96]byte
	out := append(buf[:0], `{"delivered":`...)
	out = strconv.AppendInt(out, int64(p.Delivered), 10)
	out = append(out, `,"dropped":`...)
	out = strconv.AppendInt(out, int64(p.Dropped), 10)
	if p.Remote != 0 {
		out = append(out, `,"remote":`...)
		out = strconv.AppendInt(out, int64(p.Remote), 10)
	}
	if p.Failed != 0 {
		out = append(out, `,"failed":`...)
		out = strconv.AppendInt(out, int64(p.Failed), 10)
	}
	out = append(out, "}\n"...)
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType("application/json")
	ctx.SetBody(out)
}

// validTarget checks every name in t, answering 400 for the first bad one.
func (a *Admin) validTarget(ctx *fasthttp.RequestCtx, t *Target) bool {
	for _, l := range []struct {
		what  string
		names []string
	}{{"connection id", t.Connections}, {"user id", t.Users}, {"channel", t.Channels}, {"excluded connection id", t.Exclude}} {
		for _, n := range l.names {
			if err := validName(l.what, n); err != nil {
				writeError(ctx, fasthttp.StatusBadRequest, "invalid_name", err.Error())
				return false
			}
		}
	}
	return true
}

// subscribe serves POST /v1/subscribe (add) and /v1/unsubscribe.
func (a *Admin) subscribe(ctx *fasthttp.RequestCtx, add bool) {
	var req subscribeRequest
	if !a.decode(ctx, &req) {
		return
	}
	if (req.Connection == "") == (req.User == "") {
		writeError(ctx, fasthttp.StatusBadRequest, "invalid_target", `set exactly one of "connection" and "user"`)
		return
	}
	if len(req.Channels) == 0 {
		writeError(ctx, fasthttp.StatusBadRequest, "invalid_target", "no channels")
		return
	}
	what, name := "connection id", req.Connection
	if req.User != "" {
		what, name = "user id", req.User
	}
	if err := validName(what, name); err != nil {
		writeError(ctx, fasthttp.StatusBadRequest, "invalid_name", err.Error())
		return
	}
	for _, c := range req.Channels {
		if err := validName("channel", c); err != nil {
			writeError(ctx, fasthttp.StatusBadRequest, "invalid_name", err.Error())
			return
		}
	}
	bctx, cancel := a.brokerCtx()
	defer cancel()
	var res ChangeResult
	var err error
	if add {
		res, err = a.opts.Broker.Subscribe(bctx, req.Connection, req.User, req.Channels)
	} else {
		res, err = a.opts.Broker.Unsubscribe(bctx, req.Connection, req.User, req.Channels)
	}
	if err != nil {
		a.unavailable(ctx, "subscription change", err)
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, changeAnswer{res.Changed, res.Remote, res.Failed})
}

// getConnection serves GET /v1/connections/{id}.
func (a *Admin) getConnection(ctx *fasthttp.RequestCtx, id string) {
	if err := validName("connection id", id); err != nil {
		writeError(ctx, fasthttp.StatusBadRequest, "invalid_name", err.Error())
		return
	}
	bctx, cancel := a.brokerCtx()
	defer cancel()
	st, ok, err := a.opts.Broker.Lookup(bctx, id)
	if err != nil {
		a.unavailable(ctx, "lookup", err)
		return
	}
	if !ok {
		writeError(ctx, fasthttp.StatusNotFound, "not_found", "no such connection")
		return
	}
	if st.Channels == nil {
		st.Channels = []string{}
	}
	writeJSON(ctx, fasthttp.StatusOK, st)
}

// listConnections serves GET /v1/connections?user=&channel=.
func (a *Admin) listConnections(ctx *fasthttp.RequestCtx) {
	args := ctx.QueryArgs()
	user, channel := string(args.Peek("user")), string(args.Peek("channel"))
	if args.Has("user") {
		if err := validName("user id", user); err != nil {
			writeError(ctx, fasthttp.StatusBadRequest, "invalid_name", err.Error())
			return
		}
	}
	if args.Has("channel") {
		if err := validName("channel", channel); err != nil {
			writeError(ctx, fasthttp.StatusBadRequest, "invalid_name", err.Error())
			return
		}
	}
	bctx, cancel := a.brokerCtx()
	defer cancel()
	list, err := a.opts.Broker.List(bctx, user, channel)
	if err != nil {
		a.unavailable(ctx, "list", err)
		return
	}
	if list == nil {
		list = []ConnState{}
	}
	for i := range list {
		if list[i].Channels == nil {
			list[i].Channels = []string{}
		}
	}
	writeJSON(ctx, fasthttp.StatusOK, struct {
		Connections []ConnState `json:"connections"`
	}{list})
}

// deleteConnection serves DELETE /v1/connections/{id}?code=&reason=.
func (a *Admin) deleteConnection(ctx *fasthttp.RequestCtx, id string) {
	if err := validName("connection id", id); err != nil {
		writeError(ctx, fasthttp.StatusBadRequest, "invalid_name", err.Error())
		return
	}
	args := ctx.QueryArgs()
	code := 1000
	if v := args.Peek("code"); len(v) > 0 {
		n, err := strconv.Atoi(string(v))
		// RFC 6455 §7.4: 1000 is the only standard code an application
		// may send for this; 3000–4999 are for libraries and applications.
		if err != nil || (n != 1000 && (n < 3000 || n > 4999)) {
			writeError(ctx, fasthttp.StatusBadRequest, "invalid_close", "code must be 1000 or 3000-4999")
			return
		}
		code = n
	}
	reason := string(args.Peek("reason"))
	// A close frame's payload is at most 125 bytes, 2 of them the code.
	if len(reason) > 123 || !utf8.ValidString(reason) {
		writeError(ctx, fasthttp.StatusBadRequest, "invalid_close", "reason must be valid UTF-8 of at most 123 bytes")
		return
	}
	bctx, cancel := a.brokerCtx()
	defer cancel()
	ok, err := a.opts.Broker.Disconnect(bctx, id, code, reason)
	if err != nil {
		a.unavailable(ctx, "disconnect", err)
		return
	}
	if !ok {
		writeError(ctx, fasthttp.StatusNotFound, "not_found", "no such connection")
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]bool{"closed": true})
}

// decode reads a JSON body strictly into v, answering 413/400 on failure.
func (a *Admin) decode(ctx *fasthttp.RequestCtx, v any) bool {
	body := ctx.PostBody()
	if len(body) > a.opts.MaxBody {
		writeError(ctx, fasthttp.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body over %d bytes", a.opts.MaxBody))
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	// Unknown fields are refused: a misspelt "channel" must not turn into
	// a silent no-op push.
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = errors.New("unexpected data after the JSON value")
		}
	}
	if err != nil {
		msg := "malformed JSON: " + err.Error()
		if errors.Is(err, io.EOF) {
			msg = "malformed JSON: the body is empty"
		}
		var se *json.SyntaxError
		if errors.As(err, &se) {
			msg += fmt.Sprintf(" (at byte %d)", se.Offset)
		}
		writeError(ctx, fasthttp.StatusBadRequest, "invalid_json", msg)
		return false
	}
	return true
}

func (a *Admin) unavailable(ctx *fasthttp.RequestCtx, op string, err error) {
	a.log.Warn("admin request failed", "op", op, "error", err)
	writeError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", op+" failed: "+err.Error())
}

// validName checks a channel name or id: non-empty, at most 256 bytes,
// valid UTF-8, no control characters (they would end up in logs, headers
// and Redis topics).
func validName(what, s string) error {
	if s == "" {
		return fmt.Errorf("%s is empty", what)
	}
	if len(s) > maxNameLen {
		return fmt.Errorf("%s is longer than %d bytes", what, maxNameLen)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s is not valid UTF-8", what)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("%s contains a control character", what)
		}
	}
	return nil
}

// isTextContentType reports whether a raw push body is a text message: the
// same rule as backend replies (text/*, JSON); everything else is binary.
func isTextContentType(ct []byte) bool {
	return isTextReplyType(replyMediaType(ct))
}

// targetKind names a target for the push metrics.
func targetKind(t *Target) string {
	if t.Broadcast {
		return "broadcast"
	}
	kind, n := "", 0
	if len(t.Connections) > 0 {
		kind, n = "connection", n+1
	}
	if len(t.Users) > 0 {
		kind, n = "user", n+1
	}
	if len(t.Channels) > 0 {
		kind, n = "channel", n+1
	}
	if n > 1 {
		return "mixed"
	}
	return kind
}

func connectionsOnly(t *Target) bool {
	return !t.Broadcast && len(t.Users) == 0 && len(t.Channels) == 0 && len(t.Connections) > 0
}

// allExcluded reports whether every targeted connection is also excluded
// (nothing to deliver, but nothing missing either).
func allExcluded(t *Target) bool {
	for _, c := range t.Connections {
		found := false
		for _, e := range t.Exclude {
			if c == e {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
