// Package bridge owns everything that talks to the backend: the webhook
// client and its circuit breaker, the push API, the SSE consumer and the
// broker that carries pushes to sockets (in memory or over Redis).
//
// The bridge reaches sockets only through the Hub interface below, which
// the proxy's hub satisfies; it never imports the proxy.
package bridge

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Message is one WebSocket message to send to clients.
type Message struct {
	Binary bool   // binary frame when true, text otherwise
	Data   []byte // payload; never modified after it is handed over
}

// Target selects sockets. A socket matched several ways receives the
// message once.
type Target struct {
	Connections []string
	Users       []string
	Channels    []string
	Broadcast   bool
	Exclude     []string // connection ids that never receive it
}

// Empty reports whether the target selects nothing.
func (t *Target) Empty() bool {
	return !t.Broadcast && len(t.Connections) == 0 && len(t.Users) == 0 && len(t.Channels) == 0
}

// Counts is the outcome of a delivery.
type Counts struct {
	Delivered int // sockets the message was queued to
	Dropped   int // matched sockets whose send queue was full
}

// Add returns the sum of two counts.
func (c Counts) Add(o Counts) Counts {
	return Counts{Delivered: c.Delivered + o.Delivered, Dropped: c.Dropped + o.Dropped}
}

// ConnState describes one socket for the connection endpoints.
type ConnState struct {
	ID          string            `json:"id"`
	Route       string            `json:"route"`
	User        string            `json:"user,omitempty"`
	ClientIP    string            `json:"client_ip"`
	Protocol    string            `json:"protocol,omitempty"`
	Channels    []string          `json:"channels"`
	Meta        map[string]string `json:"meta,omitempty"`
	ConnectedAt time.Time         `json:"connected_at"`
}

// Hub is the local socket registry the bridge delivers through. The proxy's
// hub implements it. Every method acts on this replica's sockets only.
type Hub interface {
	// Deliver queues m to every local socket selected by t.
	Deliver(t *Target, m Message) Counts
	// Subscribe adds channels to one connection (when conn is set) or to
	// every socket of a user. It returns how many sockets changed.
	Subscribe(conn, user string, channels []string) int
	// Unsubscribe is the reverse of Subscribe.
	Unsubscribe(conn, user string, channels []string) int
	// Lookup returns one connection's state.
	Lookup(id string) (ConnState, bool)
	// List returns the sockets of a user and/or in a channel; both empty
	// lists every socket.
	List(user, channel string) []ConnState
	// Disconnect closes a connection with a close code and reason.
	Disconnect(id string, code int, reason string) bool
}

// RouteHooks are the backend paths of one route's webhooks (empty: not called).
type RouteHooks struct {
	Connect    string
	Message    string
	Disconnect string
}

// ConnInfo is what the backend is told about a connection on every call.
// The proxy fills it at handshake time and never changes it afterwards,
// except User, which an actions document may set (guarded by the proxy).
type ConnInfo struct {
	ID       string
	Route    string // route pattern, e.g. "/ws/{room}"
	Path     string // request path with query, as the client sent it
	User     string
	Claims   []byte // verified JWT claims as JSON; nil without a token
	ClientIP string
	Protocol string      // negotiated subprotocol
	Headers  [][2]string // forwarded handshake headers (name, value)
	Hooks    RouteHooks
}

// CloseAction asks the proxy to close a socket.
type CloseAction struct {
	Code   int    `json:"code"`
	Reason string `json:"reason"`
}

// Actions is a parsed backend reply: frames to send and changes to apply.
// A plain reply body becomes one entry in Frames.
type Actions struct {
	Frames      []Message
	Subscribe   []string
	Unsubscribe []string
	User        string            // non-empty: set the connection's user
	Meta        map[string]string // merged into the connection's meta
	Close       *CloseAction
	ExpiresAt   time.Time // non-zero: extends the token's expiry
}

// Empty reports whether the actions do nothing.
func (a *Actions) Empty() bool {
	return a == nil || (len(a.Frames) == 0 && len(a.Subscribe) == 0 && len(a.Unsubscribe) == 0 &&
		a.User == "" && len(a.Meta) == 0 && a.Close == nil && a.ExpiresAt.IsZero())
}

// ConnectResult is the backend's answer to a connect webhook.
type ConnectResult struct {
	Accepted bool        // 2xx
	Status   int         // the backend's status code
	Body     []byte      // relayed to the client when rejected
	Header   [][2]string // Content-Type, Retry-After and WWW-Authenticate of a rejection, relayed
	Actions  *Actions    // on 2xx; may be nil
}

// DisconnectInfo is the body of a disconnect webhook.
type DisconnectInfo struct {
	Code       int    `json:"code"`
	Reason     string `json:"reason"`
	Clean      bool   `json:"clean"`
	DurationMS int64  `json:"duration_ms"`
}

// ErrBackendUnavailable is returned (wrapped) when the breaker is open or the
// concurrent request cap is reached; the proxy answers 503 / 1013.
var ErrBackendUnavailable = errors.New("backend unavailable")

// StatusError is a non-2xx backend reply to a message webhook.
type StatusError struct {
	Status int
	Body   []byte
}

func (e *StatusError) Error() string { return fmt.Sprintf("backend answered %d", e.Status) }

// ErrorFrame builds the JSON error frame sent to a client under the "reply"
// policies: {"error":{"code":"…","message":"…"}}.
func ErrorFrame(code, message string) Message {
	b, _ := json.Marshal(map[string]any{"error": map[string]string{"code": code, "message": message}})
	return Message{Data: b}
}

// Connection ids are "<node>.<random>": the proxy makes them, and a cluster
// broker routes a connection-targeted push to the replica named by the node
// part. The random part is base64url and never holds a dot, so node ids may
// (host names).

// NodeOf returns the node part of a connection id ("" when it has none).
func NodeOf(id string) string {
	i := strings.LastIndexByte(id, '.')
	if i <= 0 {
		return ""
	}
	return id[:i]
}

// CheckNodeID reports whether node is a valid node id: 1-64 letters,
// digits, '-', '_' or '.', safe in headers, log lines and Redis topics.
func CheckNodeID(node string) error {
	if node == "" || len(node) > 64 {
		return fmt.Errorf("node id %q must be 1-64 characters", node)
	}
	for i := 0; i < len(node); i++ {
		switch c := node[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return fmt.Errorf("node id %q may hold only letters, digits, '-', '_' and '.'", node)
		}
	}
	return nil
}
