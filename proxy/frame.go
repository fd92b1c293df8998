package proxy

import (
	"encoding/binary"

	"github.com/fasthttp/websocket"
)

// Server-to-client frames are written by conn.writeLoop itself rather than
// through websocket.Conn, so that several queued frames leave in one
// write(2) with one write deadline (RFC 6455 §5.2: a server frame is the
// FIN/opcode byte, the payload length in 7, 7+16 or 7+64 bits, no mask, the
// payload). Only uncompressed sockets take this path; close frames and
// frames too big to batch still go through the library.

// maxBatch bounds the bytes one write(2) carries, and so the scratch buffer
// a writing socket holds (in its ring, returned to the pool when the queue
// empties). A frame whose encoding alone exceeds it is written through the
// library.
const maxBatch = 16 << 10

// maxFrameHeader is the longest server frame header: 2 bytes + 64-bit length.
const maxFrameHeader = 10

// batchable reports whether f can be encoded into a write batch: an
// uncompressed data, ping or pong frame that fits maxBatch.
func batchable(f *outFrame) bool {
	switch f.typ {
	case websocket.TextMessage, websocket.BinaryMessage, websocket.PingMessage, websocket.PongMessage:
		return len(f.data)+maxFrameHeader <= maxBatch
	}
	return false
}

// appendFrame appends f's wire encoding (a final, unmasked frame) to b.
func appendFrame(b []byte, typ int8, data []byte) []byte {
	b = append(b, 0x80|byte(typ))
	switch n := len(data); {
	case n < 126:
		b = append(b, byte(n))
	case n <= 0xffff:
		b = append(b, 126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(b, data...)
}
