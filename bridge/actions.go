package bridge

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
)

// ErrBadActions is returned (wrapped) when a backend reply carries an actions
// document or X-WS-* control header that cannot be understood. The proxy
// treats it like a failed webhook (the route's on_error policy).
var ErrBadActions = errors.New("malformed actions")

// ActionsContentType is the reply media type that marks an actions document.
const ActionsContentType = "application/vnd.wsidecar+json"

// maxCloseReason is the longest close reason a close frame can carry: 125
// bytes of control-frame payload minus the 2-byte code (RFC 6455 §5.5).
const maxCloseReason = 123

// maxUnixSeconds is the first second of year 10000; later expiries are
// rejected rather than overflowing time arithmetic.
const maxUnixSeconds = 253402300800

// actionsDoc is the wire form of an actions document. Fields that accept more
// than one JSON type are kept raw and decoded by hand.
type actionsDoc struct {
	Frames      []frameDoc                 `json:"frames"`
	Subscribe   []string                   `json:"subscribe"`
	Unsubscribe []string                   `json:"unsubscribe"`
	User        *string                    `json:"user"`
	Meta        map[string]json.RawMessage `json:"meta"`
	Close       *closeDoc                  `json:"close"`
	ExpiresAt   json.RawMessage            `json:"expires_at"`
}

type frameDoc struct {
	Text   *string `json:"text"`
	Binary *string `json:"binary"`
}

type closeDoc struct {
	Code   *int   `json:"code"`
	Reason string `json:"reason"`
}

// ParseActions parses an actions document (see DESIGN.md, "actions
// document"). Unknown fields are ignored so backends can be ahead of the
// sidecar; wrong types, bad base64, an invalid close code or an unparseable
// expires_at are errors wrapping ErrBadActions. A close without a code means
// 1000; a close reason is cut to 123 bytes at a UTF-8 boundary. An empty body
// yields nil actions.
func ParseActions(body []byte) (*Actions, error) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return nil, nil
	}
	if trimmed[0] != '{' {
		return nil, fmt.Errorf("%w: document is not a JSON object", ErrBadActions)
	}
	var doc actionsDoc
	if err := json.Unmarshal(trimmed, &doc); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadActions, err)
	}

	a := &Actions{
		Subscribe:   nonEmptyChannels(doc.Subscribe),
		Unsubscribe: nonEmptyChannels(doc.Unsubscribe),
	}
	if doc.User != nil {
		a.User = *doc.User
	}
	if len(doc.Frames) > 0 {
		a.Frames = make([]Message, 0, len(doc.Frames))
		for i, f := range doc.Frames {
			m, err := f.message()
			if err != nil {
				return nil, fmt.Errorf("%w: frames[%d]: %w", ErrBadActions, i, err)
			}
			a.Frames = append(a.Frames, m)
		}
	}
	if len(doc.Meta) > 0 {
		a.Meta = make(map[string]string, len(doc.Meta))
		for k, raw := range doc.Meta {
			v, ok, err := metaValue(raw)
			if err != nil {
				return nil, fmt.Errorf("%w: meta %q: %w", ErrBadActions, k, err)
			}
			if ok {
				a.Meta[k] = v
			}
		}
	}
	if doc.Close != nil {
		code := 1000
		if doc.Close.Code != nil {
			code = *doc.Close.Code
		}
		c, err := newCloseAction(code, doc.Close.Reason)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadActions, err)
		}
		a.Close = c
	}
	if len(doc.ExpiresAt) > 0 {
		t, err := parseExpiresAt(doc.ExpiresAt)
		if err != nil {
			return nil, fmt.Errorf("%w: expires_at: %w", ErrBadActions, err)
		}
		a.ExpiresAt = t
	}
	return a, nil
}

// message converts one frames[] entry.
func (f frameDoc) message() (Message, error) {
	switch {
	case f.Text != nil && f.Binary != nil:
		return Message{}, errors.New(`both "text" and "binary"`)
	case f.Text != nil:
		// encoding/json already replaced invalid UTF-8, so this is a valid
		// text frame payload.
		return Message{Data: []byte(*f.Text)}, nil
	case f.Binary != nil:
		b, err := decodeBase64(*f.Binary)
		if err != nil {
			return Message{}, fmt.Errorf("binary: %w", err)
		}
		return Message{Binary: true, Data: b}, nil
	default:
		return Message{}, errors.New(`needs "text" or "binary"`)
	}
}

// decodeBase64 accepts standard and URL-safe alphabets, padded or not,
// because backends in different languages default to different ones.
func decodeBase64(s string) ([]byte, error) {
	enc := base64.StdEncoding
	if strings.ContainsAny(s, "-_") {
		enc = base64.URLEncoding
	}
	if !strings.HasSuffix(s, "=") && len(s)%4 != 0 {
		enc = enc.WithPadding(base64.NoPadding)
	}
	return enc.DecodeString(s)
}

// metaValue turns a JSON scalar into a meta string; null is skipped.
func metaValue(raw json.RawMessage) (string, bool, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "", false, nil
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", false, err
		}
		return s, true, nil
	case 'n':
		return "", false, nil
	case '{', '[':
		return "", false, errors.New("must be a string, number or boolean")
	default:
		// Numbers and booleans are kept as their JSON text; json.Unmarshal
		// has already validated the whole document.
		return string(raw), true, nil
	}
}

// newCloseAction validates a close code a backend may ask for: 1000 or the
// application range 3000–4999. Codes such as 1006 or 1015 must never be sent
// on the wire, and 1001–1014 belong to the sidecar itself.
func newCloseAction(code int, reason string) (*CloseAction, error) {
	if code != 1000 && (code < 3000 || code > 4999) {
		return nil, fmt.Errorf("close code %d not allowed (1000 or 3000-4999)", code)
	}
	return &CloseAction{Code: code, Reason: truncateReason(reason)}, nil
}

// truncateReason makes s a valid close reason: valid UTF-8 and at most 123
// bytes, cut at a rune boundary so the client can decode it.
func truncateReason(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "")
	}
	if len(s) <= maxCloseReason {
		return s
	}
	i := maxCloseReason
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i]
}

// parseExpiresAt accepts an RFC 3339 string, unix seconds as a number
// (fractions allowed) or as a string of digits; null means unset.
func parseExpiresAt(raw json.RawMessage) (time.Time, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return time.Time{}, nil
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return time.Time{}, err
		}
		s = strings.TrimSpace(s)
		if s == "" {
			return time.Time{}, nil
		}
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			if u := t.Unix(); u <= 0 || u >= maxUnixSeconds {
				return time.Time{}, fmt.Errorf("%q out of range", s)
			}
			return t, nil
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("%q is neither RFC 3339 nor unix seconds", s)
		}
		return unixSeconds(float64(n))
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil {
		return time.Time{}, errors.New("must be an RFC 3339 string or unix seconds")
	}
	return unixSeconds(f)
}

func unixSeconds(f float64) (time.Time, error) {
	if math.IsNaN(f) || f <= 0 || f >= maxUnixSeconds {
		return time.Time{}, fmt.Errorf("unix time %v out of range", f)
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)).UTC(), nil
}

// nonEmptyChannels drops empty channel names (a trailing comma, an empty
// string) and returns nil for an empty result, so "nothing to do" is nil.
func nonEmptyChannels(names []string) []string {
	out := names[:0]
	for _, n := range names {
		if n != "" {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// ParseControlHeaders parses the header shortcuts of a reply: subscribe and
// unsubscribe are the values of every X-WS-Subscribe / X-WS-Unsubscribe
// line (each a comma-separated list of channels), closeHeader the
// X-WS-Close value ("4001 kicked": a code, then an optional reason). It
// returns nil when no header asks for anything, and an error wrapping
// ErrBadActions for an invalid close header.
func ParseControlHeaders(subscribe, unsubscribe []string, closeHeader string) (*Actions, error) {
	if len(subscribe) == 0 && len(unsubscribe) == 0 && closeHeader == "" {
		return nil, nil // the common case, without allocating
	}
	a := &Actions{
		Subscribe:   splitChannels(subscribe),
		Unsubscribe: splitChannels(unsubscribe),
	}
	if closeHeader = strings.TrimSpace(closeHeader); closeHeader != "" {
		codeText, reason, _ := strings.Cut(closeHeader, " ")
		code, err := strconv.Atoi(codeText)
		if err != nil {
			return nil, fmt.Errorf("%w: X-WS-Close: code %q is not a number", ErrBadActions, codeText)
		}
		c, err := newCloseAction(code, strings.TrimSpace(reason))
		if err != nil {
			return nil, fmt.Errorf("%w: X-WS-Close: %w", ErrBadActions, err)
		}
		a.Close = c
	}
	if a.Empty() {
		return nil, nil
	}
	return a, nil
}

// splitChannels splits comma lists, trimming blanks around names.
func splitChannels(values []string) []string {
	var out []string
	for _, v := range values {
		for name := range strings.SplitSeq(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				out = append(out, name)
			}
		}
	}
	return out
}

// mergeActions adds the header shortcuts to a parsed document; a close in
// the document wins over X-WS-Close. Either may be nil.
func mergeActions(doc, hdr *Actions) *Actions {
	if hdr == nil {
		return doc
	}
	if doc == nil {
		return hdr
	}
	doc.Subscribe = append(doc.Subscribe, hdr.Subscribe...)
	doc.Unsubscribe = append(doc.Unsubscribe, hdr.Unsubscribe...)
	if doc.Close == nil {
		doc.Close = hdr.Close
	}
	return doc
}

// replyActions interprets a 2xx reply. withFrames turns a plain body into a
// frame (message replies); otherwise it is ignored (connect replies).
func replyActions(resp *fasthttp.Response, withFrames bool) (*Actions, error) {
	hdr, err := ParseControlHeaders(
		replyHeaderValues(resp, "X-WS-Subscribe"),
		replyHeaderValues(resp, "X-WS-Unsubscribe"),
		string(resp.Header.Peek("X-WS-Close")),
	)
	if err != nil {
		return nil, err
	}
	body := resp.Body()
	if resp.StatusCode() == fasthttp.StatusNoContent || len(body) == 0 {
		return hdr, nil
	}
	// Without this fasthttp reports text/plain for a reply that had no
	// Content-Type; RFC 9110 §8.3 says to treat it as octets.
	resp.Header.SetNoDefaultContentType(true)
	mt := replyMediaType(resp.Header.ContentType())

	var doc *Actions
	switch {
	case bytes.EqualFold(mt, []byte(ActionsContentType)):
		doc, err = ParseActions(body)
		if err != nil {
			return nil, err
		}
	case withFrames:
		// A text frame must be valid UTF-8 or the client closes with 1007,
		// so text-typed bodies that are not fall back to binary.
		text := isTextReplyType(mt) && utf8.Valid(body)
		doc = &Actions{Frames: []Message{{Binary: !text, Data: append([]byte(nil), body...)}}}
	}
	a := mergeActions(doc, hdr)
	if a.Empty() {
		return nil, nil
	}
	return a, nil
}

func replyHeaderValues(resp *fasthttp.Response, name string) []string {
	vals := resp.Header.PeekAll(name)
	if len(vals) == 0 {
		return nil
	}
	out := make([]string, len(vals))
	for i, v := range vals {
		out[i] = string(v)
	}
	return out
}

// replyMediaType returns the type/subtype of a Content-Type value, trimmed.
func replyMediaType(ct []byte) []byte {
	if i := bytes.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return bytes.TrimSpace(ct)
}

// isTextReplyType reports whether replies of media type mt are sent as text
// frames: text/*, application/json and any +json suffix.
func isTextReplyType(mt []byte) bool {
	if len(mt) >= 5 && bytes.EqualFold(mt[:5], []byte("text/")) {
		return true
	}
	if bytes.EqualFold(mt, []byte(hdrContentTypeJSON)) {
		return true
	}
	return len(mt) >= 5 && bytes.EqualFold(mt[len(mt)-5:], []byte("+json"))
}
