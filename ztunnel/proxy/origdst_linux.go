package proxy

import (
	"errors"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// OriginalDst returns the destination a connection had before an iptables REDIRECT/TPROXY sent
// it to this listener (SO_ORIGINAL_DST, IPv4 only). Without a NAT
// entry the kernel answers ENOENT.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, errors.New("original destination: not a TCP connection")
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	if addrPortOf(c.LocalAddr()).Addr().Is6() {
		return netip.AddrPort{}, errors.New("original destination: IPv6 (IP6T_SO_ORIGINAL_DST) not supported yet")
	}
	var out netip.AddrPort
	var serr error
	err = rc.Control(func(fd uintptr) {
		var mreq *unix.IPv6Mreq
		mreq, serr = unix.GetsockoptIPv6Mreq(int(fd), syscall.SOL_IP, unix.SO_ORIGINAL_DST)
		if serr != nil {
			return
		}
		// The option fills a struct sockaddr_in, which fits in an ip_mreqn-sized buffer:
		// family(2) port(2, big endian) addr(4)
		b := mreq.Multiaddr
		out = netip.AddrPortFrom(netip.AddrFrom4([4]byte{b[4], b[5], b[6], b[7]}), uint16(b[2])<<8|uint16(b[3]))
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	return out, serr
}
