//go:build unix

package hbone

import "syscall"

// defaultMaxConnections is half the process's open-file limit (the other half is for the
// connections to applications and everything else), at most DefaultMaxConnectionsCap.
func defaultMaxConnections() int {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil || l.Cur == 0 {
		return DefaultMaxConnectionsCap
	}
	return int(min(max(l.Cur/2, 1), DefaultMaxConnectionsCap))
}
