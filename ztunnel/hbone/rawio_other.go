//go:build !linux

package hbone

import (
	"errors"
	"net"
	"syscall"
)

// rawConn returns c: raw system calls are only used on Linux.
func rawConn(c net.Conn) net.Conn { return c }

// writeNonblocking is never called where sinkOf finds no sink.
func writeNonblocking(syscall.RawConn, []byte) (int, error) {
	return 0, errors.ErrUnsupported
}
