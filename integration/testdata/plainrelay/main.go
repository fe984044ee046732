// Command plainrelay is TestPerf's baseline: a TCP relay that copies bytes through a buffer,
// one goroutine per direction, with no TLS and no HTTP/2 — the least a user-space proxy does.
//
//	plainrelay LISTEN_ADDR TARGET_ADDR   (prints the listening address, then serves)
package main

import (
	"fmt"
	"net"
	"os"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: plainrelay LISTEN_ADDR TARGET_ADDR")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go relay(c.(*net.TCPConn), os.Args[2])
	}
}

func relay(c *net.TCPConn, target string) {
	defer c.Close()
	u, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer u.Close()
	done := make(chan struct{})
	go func() { copyThrough(u.(*net.TCPConn), c); close(done) }()
	copyThrough(c, u.(*net.TCPConn))
	<-done
}

// copyThrough copies src to dst through a 16 KiB buffer (not io.Copy, which would splice),
// then half-closes dst.
func copyThrough(dst, src *net.TCPConn) {
	buf := make([]byte, 16<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	dst.CloseWrite()
}
