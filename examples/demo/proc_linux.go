package main

import (
	"os/exec"
	"syscall"
)

// detach puts a child in its own process group, so a terminal's Ctrl-C
// reaches only the demo, which then stops each child once, in order, with
// SIGTERM (a second signal often means "stop now" to a server). Pdeathsig
// stops the child too if the demo itself is killed outright.
func detach(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
