//go:build !unix

package hbone

import (
	"net"
	"syscall"
)

func setRcvBuf(syscall.RawConn, int) error { return nil }

func smallSendBuffer(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(4 << 10)
	}
}
