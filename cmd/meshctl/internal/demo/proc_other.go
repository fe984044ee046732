//go:build !linux

package demo

import "syscall"

// sysProcAttr: no parent-death signal outside Linux; the demo stops what it started.
func sysProcAttr() *syscall.SysProcAttr { return nil }
