//go:build !linux

package main

import "os/exec"

// detach is a no-op here: children share the demo's process group, so
// Ctrl-C in a terminal reaches them directly as well as being forwarded.
func detach(*exec.Cmd) {}
