// Package proxy is the client-facing half of wsidecar: it owns the listener,
// the handshake pipeline (the "door"), the life of every upgraded socket
// (read loop, bounded send queue, heartbeat, close codes), the hub that
// indexes sockets by id, user and channel, and graceful drain.
//
// It reaches the backend only through the small Backend interface and knows
// nothing of the backend's URLs; the bridge package reaches sockets only
// through the Hub (which satisfies bridge.Hub).
//
// # Connection model
//
// Memory per idle socket is what limits how many sockets one process holds,
// so the model is built around idle sockets costing as little as possible:
//
//   - one goroutine per socket, the read loop; fasthttp's hijack goroutine
//     hands over to it and returns, so the handshake's RequestCtx and read
//     buffer go back to fasthttp's pools instead of living as long as the
//     socket;
//   - writes go through a bounded per-socket queue drained by a writer
//     goroutine that is started when the queue becomes non-empty and exits
//     when it is empty again; an idle socket has no writer, no queue storage
//     and (through the shared write buffer pool) no write buffer;
//   - heartbeats, token expiry and close grace periods are enforced by one
//     scanner per Server walking the hub's shards, not by a timer per socket;
//   - fan-out encodes a frame once (websocket.PreparedMessage) and queues the
//     same frame to every matched socket; queueing never blocks the caller: a
//     full queue drops the frame (slow consumer), while replies to a socket's
//     own messages wait for room instead, pushing back on that client;
//   - a socket joins the hub before its 101 is written, so a push sent as
//     soon as the connect webhook accepted is queued, not lost.
//
// An idle plain-ws socket costs about 8 KiB: a 4 KiB goroutine stack (the
// blocked read path needs more than 2 KiB), the 1 KiB read buffer
// (Listener.ReadBufferSize), the websocket and proxy connection structs and
// the kernel-facing net.Conn (BenchmarkIdleSocketMemory).
//
// # Handshake pipeline
//
// Every upgrade request walks the same ordered stages, cheapest first, and
// no backend call is made for a request a local check refuses:
//
//	drain → global cap → client IP → handshake rate → per-IP cap → Origin →
//	route match → auth (JWT) → per-user cap → connect webhook → upgrade
//
// The stages that belong to other packages (limits, auth) plug in as Guards
// on Options.Door; each Door field documents what happens when it is nil.
// Gate builds all of them from a limits.Door, a limits.Resolver, Origin
// allowlists and an auth.Verifier, and swaps them atomically on reload.
// Every refusal is a *Rejection with a reason that maps to one HTTP status;
// it is counted once in wsidecar_handshake_rejections_total{reason} (through
// the shared limits.Door) and logged at most once per reason per client
// address per Options.RejectLogInterval, with credential query parameters
// redacted.
package proxy
