package proxy

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"

	"github.com/wsidecar/wsidecar/bridge"
)

// idRandomBytes is the entropy of a connection id: 128 bits makes ids
// unguessable, so knowing one socket's id never lets a client address
// another socket through the push API.
const idRandomBytes = 16

// idBatch is how many ids' worth of randomness one crypto/rand read fetches,
// so handshake bursts do not pay a getrandom call per id.
const idBatch = 64

// idGen makes connection ids "<node>.<22 chars base64url>".
type idGen struct {
	prefix string // node id + "."

	mu  sync.Mutex
	buf [idRandomBytes * idBatch]byte
	off int // next unused byte in buf; len(buf) means empty
}

func newIDGen(node string) (*idGen, error) {
	if err := bridge.CheckNodeID(node); err != nil {
		return nil, err
	}
	g := &idGen{prefix: node + "."}
	g.off = len(g.buf)
	return g, nil
}

// next returns a fresh id. It fails only if the system's random source does.
func (g *idGen) next() (string, error) {
	var raw [idRandomBytes]byte
	g.mu.Lock()
	if g.off == len(g.buf) {
		if _, err := rand.Read(g.buf[:]); err != nil {
			g.mu.Unlock()
			return "", fmt.Errorf("proxy: reading random id bytes: %w", err)
		}
		g.off = 0
	}
	copy(raw[:], g.buf[g.off:g.off+idRandomBytes])
	// Wipe what was handed out so a memory disclosure of the batch does not
	// reveal ids already in use.
	clear(g.buf[g.off : g.off+idRandomBytes])
	g.off += idRandomBytes
	g.mu.Unlock()

	var out [64]byte
	n := copy(out[:], g.prefix)
	enc := base64.RawURLEncoding
	if n+enc.EncodedLen(idRandomBytes) > len(out) {
		return g.prefix + enc.EncodeToString(raw[:]), nil
	}
	enc.Encode(out[n:], raw[:])
	return string(out[:n+enc.EncodedLen(idRandomBytes)]), nil
}

// randomNodeID is the node id used when Options.NodeID is empty.
func randomNodeID() (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("proxy: reading random node id: %w", err)
	}
	return "n" + strings.ToLower(base64.RawURLEncoding.EncodeToString(b[:])), nil
}
