//go:build unix

package hbone

import (
	"net"
	"syscall"
)

// setRcvBuf sets SO_RCVBUF on a socket before it connects, so its window starts small.
func setRcvBuf(rc syscall.RawConn, n int) error {
	var serr error
	err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, n) })
	if err != nil {
		return err
	}
	return serr
}

// smallSendBuffer shrinks an accepted connection's send buffer, so that a peer that does not
// read blocks its writer after a few KiB.
func smallSendBuffer(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(4 << 10)
	}
}
