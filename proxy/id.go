package proxy

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
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
	if err := validNodeID(node); err != nil {
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

// NodeOf returns the node part of a connection id ("" when id has none), so
// a cluster can send a connection-targeted push straight to the replica
// holding the socket. The random part is base64url and never holds a dot,
// so node ids may contain dots (host names).
func NodeOf(id string) string {
	i := strings.LastIndexByte(id, '.')
	if i <= 0 {
		return ""
	}
	return id[:i]
}

// validNodeID keeps node ids safe in headers, log lines and Redis topic
// names.
func validNodeID(node string) error {
	if node == "" || len(node) > 64 {
		return fmt.Errorf("proxy: node id %q must be 1-64 characters", node)
	}
	for i := 0; i < len(node); i++ {
		b := node[i]
		switch {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9', b == '-', b == '_', b == '.':
		default:
			return fmt.Errorf("proxy: node id %q may hold only letters, digits, '-', '_' and '.'", node)
		}
	}
	return nil
}

// randomNodeID is the node id used when Options.NodeID is empty.
func randomNodeID() (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("proxy: reading random node id: %w", err)
	}
	return "n" + strings.ToLower(base64.RawURLEncoding.EncodeToString(b[:])), nil
}
