package demo

import "syscall"

// sysProcAttr makes a started process die with the demo, even if the demo is killed.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
