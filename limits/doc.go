// Package limits guards the door: it works out which client a request really
// comes from (trusted proxies), caps how many connections the process, one
// client address and one user may hold, and rate-limits handshakes, messages
// and bytes with token buckets.
//
// It knows nothing of WebSocket or fasthttp: callers hand it addresses, header
// strings, user ids and byte counts, and map the typed Reason it returns to an
// HTTP status or close code.
//
// Memory is bounded against address-spraying floods: per-address state lives
// in a sharded table with a hard size cap, and idle entries are retired
// lazily on insert and by Door.Sweep (see Door.Run).
package limits
