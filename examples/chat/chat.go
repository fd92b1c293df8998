// Package chat holds the browser chat page shared by the example backends.
// The Go backend (examples/legacy) serves it from the embedded Files; the
// Flask backend (examples/flask) serves the same files from disk. The page
// reads its WebSocket URL from /config.js, which each backend writes.
package chat

import "embed"

// Files holds index.html, app.js and style.css at its root, ready for
// http.FileServerFS.
//
//go:embed index.html app.js style.css
var Files embed.FS
