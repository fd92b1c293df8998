package config

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// The configuration reference is kept here as data, next to the schema, and
// docs/config.md is generated from it by WriteReference. reference_test.go
// keeps the three in step: every attribute in schema.go is documented here
// (and nothing else), every documented default is what Parse fills in, every
// example parses, and docs/config.md is the current output.

// refBlock documents one block.
type refBlock struct {
	Path   string // block types from the top, dotted: "listener.tls", "jwt.key"
	Header string // how the block opens: `route "PATH"`
	Doc    string
	Attrs  []refAttr
}

// refAttr documents one attribute.
type refAttr struct {
	Name     string
	Type     string
	Required bool
	// Default is the default as an HCL literal ("10s" is written `"10s"`);
	// empty means unset. DefaultNote replaces it for computed defaults.
	Default     string
	DefaultNote string
	Doc         string
	Example     string // an HCL expression that is valid for this attribute
}

const (
	tDuration = "duration"
	tSize     = "size"
	tRate     = "rate"
	tByteRate = "byte rate"
	tString   = "string"
	tBool     = "bool"
	tNumber   = "number"
	tList     = "list(string)"
)

// referenceIntro opens docs/config.md.
const referenceIntro = `wsidecar reads one HCL file (native syntax), usually ` + "`sidecar.hcl`" + `.
Check a file with ` + "`wsidecar validate sidecar.hcl`" + `: it prints every problem with its
file:line:col and the offending line, and exits non-zero.

Every block is optional except ` + "`backend`" + ` (its ` + "`url`" + `) and at least one ` + "`route`" + `.
Unknown attributes and blocks are errors. Setting an attribute to ` + "`null`" + ` is the same
as leaving it out.

## Values

| type | written as |
|---|---|
| duration | a string with a unit: ` + "`\"500ms\"`, `\"30s\"`, `\"5m\"`, `\"1h\"`, `\"1m30s\"`" + `; never negative |
| size | a string: ` + "`\"512B\"`, `\"64KiB\"`, `\"1MiB\"`, `\"1MB\"`" + ` (KB/MB/GB are 1000-based, KiB/MiB/GiB 1024-based); a bare number is bytes |
| rate | a count per ` + "`s`, `m` or `h`: `\"10/s\"`, `\"600/m\"`, `\"0.5/s\"`, or `\"unlimited\"`" + `; the burst is a separate ` + "`*_burst`" + ` attribute |
| byte rate | a size per period: ` + "`\"1MiB/s\"`, `\"64KiB/s\"`, or `\"unlimited\"`" + ` |
| list(string) | ` + "`[\"a\", \"b\"]`" + ` |

## Functions

- ` + "`env(\"NAME\")`" + ` reads an environment variable and fails, pointing at the call, when it is
  unset. ` + "`env(\"NAME\", \"default\")`" + ` returns the default instead. A variable set to the
  empty string counts as set. Use it for every secret.

## Per-connection expressions

A route's ` + "`channels`" + ` and a stream's ` + "`path`" + ` are evaluated for each connection, with
these variables in scope:

| variable | holds |
|---|---|
| ` + "`claims`" + ` | the verified JWT claims (` + "`claims.sub`, `claims.org.id`" + `) |
| ` + "`path`" + ` | the route's ` + "`{param}`" + ` values (` + "`path.room`" + ` for ` + "`route \"/rooms/{room}\"`" + `) |
| ` + "`query`" + ` | the handshake's query parameters (` + "`query.topic`" + `) |
| ` + "`header`" + ` | the handshake's headers, names lower-case (` + "`header[\"x-tenant\"]`" + `) |

They may call ` + "`lower`, `upper`, `lookup`, `coalesce` and `concat`" + `, e.g.
` + "`lookup(query, \"topic\", \"general\")`" + ` for an optional parameter. Loading checks the
variables, ` + "`path`" + ` parameters, functions and result type; what can still fail at
run time is a claim or query parameter that a connection lacks (use ` + "`lookup`" + ` where it
is optional). A stream's ` + "`path`" + ` has no ` + "`path`" + ` variable (a stream belongs to no
route), and its interpolated values are percent-encoded.

## Files

Relative paths (` + "`cert_file`, `key_file`, `pem_file`" + `) start at the config file's
directory, and the files must be readable when the config is loaded.`

// referenceExample is a complete, realistic sidecar.hcl; the reference test
// parses it.
const referenceExample = `listener {
  address           = "0.0.0.0:8443"
  handshake_timeout = "5s"
  tls {
    cert_file = "/etc/wsidecar/tls.crt"
    key_file  = "/etc/wsidecar/tls.key"
  }
}

admin {
  address = "127.0.0.1:9090"
  token   = env("WSIDECAR_ADMIN_TOKEN")
}

backend {
  url             = "http://127.0.0.1:3000"
  timeout         = "5s"
  signing_secret  = env("WSIDECAR_SIGNING_SECRET")
  forward_headers = ["Cookie"]
}

origins {
  allow = ["https://app.example.com", "https://*.example.com"]
}

jwt {
  issuer   = "https://idp.example.com/"
  audience = ["chat"]
  leeway   = "30s"
  key "idp" {
    algorithms = ["RS256"]
    jwks_url   = "https://idp.example.com/.well-known/jwks.json"
  }
}

limits {
  per_ip_connections = 50
  message_rate       = "20/s"
  message_burst      = 40
  rate_policy        = "close"
  trusted_proxies    = ["10.0.0.0/8"]
}

route "/ws/rooms/{room}" {
  on_connect    = "/ws/connect"
  on_message    = "/ws/message"
  on_disconnect = "/ws/disconnect"
  channels      = ["room:${path.room}", "user:${claims.sub}"]
}

route "/public" {
  auth       = "none"
  on_message = "/public/message"
  origins {
    allow_missing = true
  }
}

stream "events" {
  path   = "/events"
  prefix = "feed:"
}

cluster {
  redis {
    url = env("REDIS_URL")
  }
}
`

// reference is the documentation of every block and attribute, in the order
// docs/config.md shows them.
var reference = []refBlock{
	{Path: "listener", Header: "listener", Doc: "The client-facing WebSocket listener.", Attrs: []refAttr{
		{Name: "address", Type: tString, Default: `"0.0.0.0:8080"`, Doc: "host:port to listen on.", Example: `"0.0.0.0:8443"`},
		{Name: "handshake_timeout", Type: tDuration, Default: `"10s"`, Doc: "How long a client may take to send its handshake request (slowloris guard).", Example: `"5s"`},
		{Name: "max_header_size", Type: tSize, Default: `"8KiB"`, Doc: "Largest handshake request head; 1KiB to 1MiB.", Example: `"16KiB"`},
		{Name: "read_buffer_size", Type: tSize, Default: `"1KiB"`, Doc: "Per-connection read buffer; small buffers keep idle sockets cheap. 64B to 1MiB.", Example: `"4KiB"`},
		{Name: "write_buffer_size", Type: tSize, Default: `"1KiB"`, Doc: "Per-connection write buffer. 64B to 1MiB.", Example: `"4KiB"`},
		{Name: "compression", Type: tBool, Default: `false`, Doc: "Negotiate permessage-deflate. Inflated messages are capped by `limits.max_inflated_size`.", Example: `true`},
	}},
	{Path: "listener.tls", Header: "tls", Doc: "Serve wss:// with this certificate pair. Both files must be readable at load.", Attrs: []refAttr{
		{Name: "cert_file", Type: tString, Required: true, Doc: "Certificate chain, PEM.", Example: `"/etc/wsidecar/tls.crt"`},
		{Name: "key_file", Type: tString, Required: true, Doc: "Private key, PEM.", Example: `"/etc/wsidecar/tls.key"`},
	}},
	{Path: "admin", Header: "admin", Doc: "The pod-local listener for the push API, `/metrics`, `/healthz`, `/readyz` and `/v1/drain`.", Attrs: []refAttr{
		{Name: "address", Type: tString, Default: `"127.0.0.1:9090"`, Doc: "host:port. A non-loopback address needs `token`.", Example: `"127.0.0.1:9090"`},
		{Name: "token", Type: tString, Doc: "When set, the push API (`/v1/*`) requires `Authorization: Bearer <token>`. At least 16 bytes.", Example: `env("WSIDECAR_ADMIN_TOKEN")`},
	}},
	{Path: "backend", Header: "backend", Doc: "The plain-HTTP service wsidecar calls. Required.", Attrs: []refAttr{
		{Name: "url", Type: tString, Required: true, Doc: "Base URL, `http://` or `https://`, no query; webhook paths are appended.", Example: `"http://127.0.0.1:3000"`},
		{Name: "timeout", Type: tDuration, Default: `"10s"`, Doc: "Per call.", Example: `"5s"`},
		{Name: "max_conns", Type: tNumber, Default: `512`, Doc: "Keep-alive pool size and cap on concurrent calls; 1 to 100000.", Example: `1024`},
		{Name: "signing_secret", Type: tString, Doc: "When set, every call carries `X-WS-Signature` (HMAC over body, connection id and timestamp). At least 32 bytes.", Example: `env("WSIDECAR_SIGNING_SECRET")`},
		{Name: "forward_headers", Type: tList, Default: `[]`, Doc: "Handshake headers copied to every call. `X-WS-*`, `X-Forwarded-For`, `X-Real-IP`, `Host` and framing headers are refused.", Example: `["Cookie", "Accept-Language"]`},
		{Name: "disconnect_queue", Type: tNumber, Default: `10000`, Doc: "Disconnect webhooks that may wait for retry while the backend is down.", Example: `50000`},
		{Name: "disconnect_retry_max", Type: tDuration, Default: `"30s"`, Doc: "Longest backoff between disconnect retries.", Example: `"1m"`},
	}},
	{Path: "backend.breaker", Header: "breaker", Doc: "Circuit breaker around backend calls; while open, handshakes that need a connect webhook get 503 and messages follow `on_error`.", Attrs: []refAttr{
		{Name: "enabled", Type: tBool, Default: `true`, Doc: "Turn the breaker on or off.", Example: `false`},
		{Name: "failures", Type: tNumber, Default: `5`, Doc: "Consecutive failures that open it.", Example: `10`},
		{Name: "open_timeout", Type: tDuration, Default: `"10s"`, Doc: "How long it stays open before letting probes through.", Example: `"30s"`},
		{Name: "half_open_requests", Type: tNumber, Default: `1`, Doc: "Probes allowed while half-open.", Example: `3`},
		{Name: "interval", Type: tDuration, Default: `"60s"`, Doc: "Clears failure counts while closed; `\"0s\"` never clears.", Example: `"0s"`},
	}},
	{Path: "origins", Header: "origins", Doc: "Browser Origin allow-list for every route (a route's own `origins` block replaces it). With no block, no browser origin is allowed.", Attrs: originAttrs},
	{Path: "jwt", Header: "jwt", Doc: "Token verification. Routes use it unless they say `auth = \"none\"`.", Attrs: []refAttr{
		{Name: "sources", Type: tList, Default: `["header", "protocol", "query:access_token"]`, Doc: "Where to look for the token, in order: `header` (Authorization: Bearer), `protocol` (Sec-WebSocket-Protocol `bearer, <token>`), `cookie:NAME`, `query:NAME`.", Example: `["cookie:session", "header"]`},
		{Name: "issuer", Type: tString, Doc: "Required `iss` when set.", Example: `"https://idp.example.com/"`},
		{Name: "audience", Type: tList, Default: `[]`, Doc: "When set, `aud` must contain one of these.", Example: `["chat"]`},
		{Name: "leeway", Type: tDuration, Default: `"0s"`, Doc: "Clock skew allowed on `exp`, `nbf` and `iat`; at most 5m.", Example: `"30s"`},
		{Name: "require_exp", Type: tBool, Default: `true`, Doc: "Reject tokens without `exp`.", Example: `false`},
		{Name: "required_claims", Type: tList, Default: `[]`, Doc: "Claims every token must carry.", Example: `["sub", "org"]`},
		{Name: "user_claim", Type: tString, Default: `"sub"`, Doc: "Claim that becomes `X-WS-User` and the per-user identity.", Example: `"email"`},
	}},
	{Path: "jwt.key", Header: `key "NAME"`, Doc: "One verification key or key set; repeatable, at least one. Exactly one of `secret`, `pem_file`, `jwks_url`.", Attrs: []refAttr{
		{Name: "algorithms", Type: tList, Required: true, Doc: "Algorithms this key verifies: HS256/384/512 (only with `secret`), RS256/384/512, PS256/384/512, ES256/384/512, EdDSA. `none` never is.", Example: `["RS256", "PS256"]`},
		{Name: "kid", Type: tString, Doc: "The `kid` header this key answers to; unset answers to any.", Example: `"2024-01"`},
		{Name: "secret", Type: tString, Doc: "HMAC secret, at least as long as the hash (32 bytes for HS256, RFC 7518 §3.2).", Example: `env("JWT_SECRET")`},
		{Name: "pem_file", Type: tString, Doc: "Public key (RSA, ECDSA or Ed25519) in PEM.", Example: `"/etc/wsidecar/jwt.pub"`},
		{Name: "jwks_url", Type: tString, Doc: "JWKS endpoint; `https://` except on localhost.", Example: `"https://idp.example.com/.well-known/jwks.json"`},
		{Name: "jwks_refresh", Type: tDuration, Default: `"1h"`, Doc: "How often the JWKS is fetched; at least 1s. Only with `jwks_url`.", Example: `"15m"`},
		{Name: "jwks_unknown_kid_wait", Type: tDuration, Default: `"1s"`, Doc: "Longest a handshake waits for a refresh triggered by an unknown `kid`. Only with `jwks_url`.", Example: `"500ms"`},
	}},
	{Path: "limits", Header: "limits", Doc: "Caps and rates at the door and per connection.", Attrs: []refAttr{
		{Name: "max_connections", Type: tNumber, Default: `100000`, Doc: "Global cap; beyond it handshakes get 503.", Example: `20000`},
		{Name: "per_ip_connections", Type: tNumber, Default: `100`, Doc: "Per client IP; 0 disables.", Example: `20`},
		{Name: "per_user_connections", Type: tNumber, Default: `0`, Doc: "Per user; 0 disables.", Example: `5`},
		{Name: "handshake_rate", Type: tRate, Default: `"20/s"`, Doc: "Handshakes per client IP.", Example: `"5/s"`},
		{Name: "handshake_burst", Type: tNumber, Default: `40`, Doc: "Burst for `handshake_rate`.", Example: `10`},
		{Name: "message_rate", Type: tRate, Default: `"100/s"`, Doc: "Messages per connection.", Example: `"600/m"`},
		{Name: "message_burst", Type: tNumber, Default: `100`, Doc: "Burst for `message_rate`.", Example: `20`},
		{Name: "byte_rate", Type: tByteRate, Default: `"1MiB/s"`, Doc: "Bytes per connection.", Example: `"256KiB/s"`},
		{Name: "byte_burst", Type: tSize, Default: `"1MiB"`, Doc: "Burst for `byte_rate`; at least `max_message_size`.", Example: `"512KiB"`},
		{Name: "rate_policy", Type: "reply, drop or close", Default: `"reply"`, Doc: "Over `message_rate` or `byte_rate`: `reply` sends an error frame, `drop` drops silently, `close` closes with 1008.", Example: `"close"`},
		{Name: "max_message_size", Type: tSize, Default: `"64KiB"`, Doc: "Largest message; bigger ones close with 1009.", Example: `"16KiB"`},
		{Name: "max_inflated_size", Type: tSize, Default: `"1MiB"`, Doc: "Largest message after decompression; at least `max_message_size`.", Example: `"256KiB"`},
		{Name: "trusted_proxies", Type: tList, Default: `[]`, Doc: "CIDRs (or addresses) whose `X-Forwarded-For`/`X-Real-IP` are believed.", Example: `["10.0.0.0/8", "fd00::/8"]`},
		{Name: "idle_evict", Type: tDuration, Default: `"5m"`, Doc: "How long limiter state of a quiet IP is kept; at least 1s.", Example: `"10m"`},
		{Name: "send_queue", Type: tNumber, Default: `256`, Doc: "Outbound messages queued per connection; 1 to 65536.", Example: `64`},
		{Name: "slow_consumer", Type: "drop or close", Default: `"close"`, Doc: "When a send queue is full: `drop` the message (counted) or `close` with 1013.", Example: `"drop"`},
	}},
	{Path: "heartbeat", Header: "heartbeat", Doc: "Pings that find dead connections.", Attrs: []refAttr{
		{Name: "interval", Type: tDuration, Default: `"25s"`, Doc: "Between pings; at least 1s.", Example: `"30s"`},
		{Name: "timeout", Type: tDuration, Default: `"10s"`, Doc: "Wait for the pong; at least 1s.", Example: `"5s"`},
	}},
	{Path: "drain", Header: "drain", Doc: "Graceful shutdown (SIGTERM or `POST /v1/drain`).", Attrs: []refAttr{
		{Name: "window", Type: tDuration, Default: `"5s"`, Doc: "1001 closes are spread over this, so clients do not reconnect all at once; at most `timeout`.", Example: `"10s"`},
		{Name: "timeout", Type: tDuration, Default: `"25s"`, Doc: "Hard deadline for the drain.", Example: `"55s"`},
	}},
	{Path: "log", Header: "log", Doc: "Logging.", Attrs: []refAttr{
		{Name: "level", Type: "debug, info, warn or error", Default: `"info"`, Doc: "Lowest level logged.", Example: `"debug"`},
		{Name: "format", Type: "text or json", Default: `"text"`, Doc: "Output format.", Example: `"json"`},
	}},
	{Path: "route", Header: `route "PATH"`, Doc: "A WebSocket endpoint; repeatable, at least one, matched in file order. PATH starts with `/`; a segment may be a `{name}` parameter (`/rooms/{room}`). Two routes may not match the same paths.", Attrs: []refAttr{
		{Name: "auth", Type: "jwt or none", Default: `"jwt"`, Doc: "`jwt` needs a `jwt` block; `none` lets anyone in (secure by default: say so explicitly).", Example: `"none"`},
		{Name: "subprotocols", Type: tList, Default: `[]`, Doc: "Sec-WebSocket-Protocol values offered, in preference order.", Example: `["chat.v2", "chat.v1"]`},
		{Name: "on_connect", Type: tString, Doc: "Backend path called before the upgrade; 2xx accepts, anything else rejects with its status. Unset: no call.", Example: `"/ws/connect"`},
		{Name: "on_message", Type: tString, Doc: "Backend path each message is POSTed to. Unset: messages are dropped.", Example: `"/ws/message"`},
		{Name: "on_disconnect", Type: tString, Doc: "Backend path called after close (retried). Unset: no call.", Example: `"/ws/disconnect"`},
		{Name: "on_error", Type: "reply, drop or close", Default: `"reply"`, Doc: "When a message webhook fails: `reply` an error frame, `drop`, or `close` with 1011.", Example: `"close"`},
		{Name: "max_in_flight", Type: tNumber, Default: `1`, Doc: "Message webhooks a connection may have outstanding (order is kept); 1 to 1024.", Example: `4`},
		{Name: "channels", Type: "expression", Doc: "Channels a connection joins at connect: a list of strings evaluated per connection (see Per-connection expressions).", Example: `["user:${claims.sub}", "room:${path.room}"]`},
	}},
	{Path: "route.origins", Header: "origins", Doc: "Replaces the top-level `origins` for this route.", Attrs: originAttrs},
	{Path: "stream", Header: `stream "NAME"`, Doc: "A server-sent event stream consumed from the backend and published to channels, or, with a per-connection `path`, sent to each socket; repeatable. Every GET carries `Accept: text/event-stream`, `Last-Event-ID` when resuming, and `X-WS-Timestamp`/`X-WS-Signature` (over an empty body and the connection id, empty for a shared stream) when `backend.signing_secret` is set. NAME is letters, digits, `-`, `_`, `.`.", Attrs: []refAttr{
		{Name: "path", Type: tString, Required: true, Doc: "Backend path of the SSE endpoint. When it uses `claims`, `query` or `header` (`\"/users/${claims.sub}/events\"`), it is a per-connection stream: every socket (on any route) whose values are all present gets its own GET, with the connection's `X-WS-*` identity headers, and that stream's events go as text frames to that socket only; it closes with the socket. Interpolated values are percent-encoded, so each stays one path segment or query value. A socket gets no stream when it lacks a value (no token, no such query parameter) or when its path, decoded, would hold a `.`, `..` or empty segment; a `204` answer ends the stream for that socket. Use `claims` for anything private: `query` and `header` are whatever the client sends.", Example: `"/events"`},
		{Name: "channel", Type: tString, Doc: "Publish every event to this channel. Unset: the event's `event` field, or `message`. Not for per-connection streams.", Example: `"news"`},
		{Name: "prefix", Type: tString, Doc: "Prepended to the channel name. Not for per-connection streams.", Example: `"feed:"`},
		{Name: "scope", Type: "cluster or local", Default: `"cluster"`, Doc: "`cluster` publishes to every replica; `local` only to this one. Not for per-connection streams (their events stay on the socket's replica).", Example: `"local"`},
		{Name: "reconnect_min", Type: tDuration, Default: `"500ms"`, Doc: "First reconnect backoff.", Example: `"1s"`},
		{Name: "reconnect_max", Type: tDuration, Default: `"30s"`, Doc: "Largest reconnect backoff; at least `reconnect_min`.", Example: `"1m"`},
	}},
	{Path: "cluster", Header: "cluster", Doc: "Fan-out between replicas over Redis pub/sub. Without it, one replica serves alone with an in-memory broker.", Attrs: []refAttr{
		{Name: "node_id", Type: tString, DefaultNote: "hostname-XXXXXXXX (random)", Doc: "This replica's id (its Redis topic); letters, digits, `-`, `_`, `.`.", Example: `"ws-1"`},
	}},
	{Path: "cluster.redis", Header: "redis", Doc: "The Redis server. Required in `cluster`.", Attrs: []refAttr{
		{Name: "url", Type: tString, Required: true, Doc: "`redis://`, `rediss://` (TLS) or `unix://`; the password goes in the URL.", Example: `env("REDIS_URL")`},
		{Name: "prefix", Type: tString, Default: `"wsidecar"`, Doc: "Topic prefix.", Example: `"chat-prod"`},
	}},
}

// originAttrs are shared by the top-level and per-route origins blocks.
var originAttrs = []refAttr{
	{Name: "allow", Type: tList, Default: `[]`, Doc: "Exact origins (`https://app.example.com`) or a leftmost-label wildcard (`https://*.example.com`).", Example: `["https://app.example.com", "https://*.example.com"]`},
	{Name: "allow_missing", Type: tBool, Default: `false`, Doc: "Let clients without an Origin header in (non-browser clients).", Example: `true`},
}

// WriteReference writes the configuration reference as Markdown; this is
// docs/config.md.
func WriteReference(w io.Writer) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "# sidecar.hcl reference\n\n")
	fmt.Fprintf(bw, "<!-- Generated from config/reference.go by `go test ./config -update`. Do not edit. -->\n\n")
	fmt.Fprintf(bw, "%s\n\n## Example\n\n```hcl\n%s```\n\n## Blocks\n", referenceIntro, referenceExample)
	for _, b := range reference {
		fmt.Fprintf(bw, "\n### `%s`\n\n", b.Path)
		fmt.Fprintf(bw, "`%s { … }` — %s\n\n", b.Header, b.Doc)
		fmt.Fprintf(bw, "| attribute | type | default | description | example |\n|---|---|---|---|---|\n")
		for _, a := range b.Attrs {
			def := "—"
			switch {
			case a.Required:
				def = "**required**"
			case a.DefaultNote != "":
				def = a.DefaultNote
			case a.Default != "":
				def = "`" + a.Default + "`"
			}
			fmt.Fprintf(bw, "| `%s` | %s | %s | %s | `%s` |\n", a.Name, cell(a.Type), cell(def), cell(a.Doc), cell(a.Example))
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("config: write reference: %w", err)
	}
	return nil
}

// cell escapes text for a Markdown table cell.
func cell(s string) string {
	return strings.ReplaceAll(s, "|", `\|`)
}
