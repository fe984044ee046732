package hbone

import "syscall"

// sinkOf is the raw connection the read loop may write to directly: TCP connections only.
func sinkOf(c any) syscall.RawConn {
	sc, ok := c.(interface {
		SyscallConn() (syscall.RawConn, error)
		CloseWrite() error
	})
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}
