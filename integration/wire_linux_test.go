//go:build linux

package integration

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// loCapture records the TCP payload of IPv4 packets on the loopback interface, with an AF_PACKET
// socket (needs CAP_NET_RAW): a real wire capture, below both ztunnels.
type loCapture struct {
	fd   int
	mu   sync.Mutex
	segs []tcpSeg
	done chan struct{}
}

type tcpSeg struct {
	src, dst netip4Port
	seq      uint32
	payload  []byte
}

type netip4Port struct {
	ip   [4]byte
	port uint16
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// startLoCapture starts capturing; it skips t when raw sockets are not allowed.
func startLoCapture(t *testing.T) *loCapture {
	t.Helper()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skipf("no lo interface: %v", err)
	}
	fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW, int(htons(syscall.ETH_P_ALL)))
	if err != nil {
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
			t.Skipf("packet capture needs CAP_NET_RAW: %v", err)
		}
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrLinklayer{Protocol: htons(syscall.ETH_P_ALL), Ifindex: lo.Index}); err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, 8<<20)
	tv := syscall.NsecToTimeval(int64(100 * time.Millisecond))
	syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	c := &loCapture{fd: fd, done: make(chan struct{})}
	stop := make(chan struct{})
	go c.run(stop)
	t.Cleanup(func() { close(stop); <-c.done; syscall.Close(fd) })
	return c
}

func (c *loCapture) run(stop chan struct{}) {
	defer close(c.done)
	buf := make([]byte, 1<<17)
	for {
		select {
		case <-stop:
			return
		default:
		}
		n, from, err := syscall.Recvfrom(c.fd, buf, 0)
		if err != nil {
			continue // the 100ms timeout, or EINTR
		}
		// On lo each packet is seen going out and coming in: keep one copy.
		if ll, ok := from.(*syscall.SockaddrLinklayer); ok && ll.Pkttype == syscall.PACKET_OUTGOING {
			continue
		}
		p := buf[:n]
		if len(p) < 14+20 || binary.BigEndian.Uint16(p[12:14]) != 0x0800 {
			continue
		}
		ip := p[14:]
		ihl := int(ip[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(ip[2:4]))
		if ip[9] != 6 || total > len(ip) || len(ip) < ihl+20 {
			continue
		}
		tcp := ip[ihl:total]
		off := int(tcp[12]>>4) * 4
		if off > len(tcp) {
			continue
		}
		s := tcpSeg{seq: binary.BigEndian.Uint32(tcp[4:8]), payload: append([]byte(nil), tcp[off:]...)}
		copy(s.src.ip[:], ip[12:16])
		copy(s.dst.ip[:], ip[16:20])
		s.src.port, s.dst.port = binary.BigEndian.Uint16(tcp[0:2]), binary.BigEndian.Uint16(tcp[2:4])
		if len(s.payload) == 0 {
			continue
		}
		c.mu.Lock()
		c.segs = append(c.segs, s)
		c.mu.Unlock()
	}
}

// streams returns, per TCP connection (client address) towards dst, the payload sent to dst,
// in sequence order without retransmitted duplicates.
func (c *loCapture) streams(dst net.IP, dstPort uint16, toDst bool) map[netip4Port][]byte {
	var d [4]byte
	copy(d[:], dst.To4())
	want := netip4Port{d, dstPort}
	c.mu.Lock()
	defer c.mu.Unlock()
	bySrc := map[netip4Port][]tcpSeg{}
	for _, s := range c.segs {
		switch {
		case toDst && s.dst == want:
			bySrc[s.src] = append(bySrc[s.src], s)
		case !toDst && s.src == want:
			bySrc[s.dst] = append(bySrc[s.dst], s)
		}
	}
	out := map[netip4Port][]byte{}
	for k, segs := range bySrc {
		sort.SliceStable(segs, func(i, j int) bool { return int32(segs[i].seq-segs[j].seq) < 0 })
		var b bytes.Buffer
		seen := map[uint32]bool{}
		for _, s := range segs {
			if !seen[s.seq] {
				seen[s.seq] = true
				b.Write(s.payload)
			}
		}
		out[k] = b.Bytes()
	}
	return out
}

// TestHBONEWireCaptureLoopback captures loopback packets while a client pod on n1 calls the
// server pod on n2: the bytes n1 sends to serverIP:15008 are TLS from the first byte and never
// plaintext HTTP; the capture does see the plaintext on the app leg, so it would have seen it.
func TestHBONEWireCaptureLoopback(t *testing.T) {
	e := newTwoNodes(t)
	capt := startLoCapture(t)
	body := ""
	for i := range 3 {
		code, b, err := e.get(e.client, fmt.Sprintf("/wire/%d", i))
		if err != nil || code != 200 || !strings.Contains(b, e.marker) {
			t.Fatalf("GET: %d %q %v", code, b, err)
		}
		body = b
	}
	_ = body
	server := net.ParseIP(e.server)
	var app net.IP
	var appPort uint16 = 8080
	host, _, _ := net.SplitHostPort(appAddrOf(e.server, 8080))
	app = net.ParseIP(host)
	var toHBONE, fromHBONE, appLeg map[netip4Port][]byte
	eventually(t, 5*time.Second, "the captured streams", func() bool {
		toHBONE, fromHBONE, appLeg = capt.streams(server, 15008, true), capt.streams(server, 15008, false), capt.streams(app, appPort, true)
		return len(toHBONE) > 0 && len(fromHBONE) > 0 && len(appLeg) >= 3
	})
	for src, b := range toHBONE {
		if len(b) < 3 || b[0] != 0x16 || b[1] != 0x03 {
			t.Errorf("client→server stream from %v does not start with a TLS handshake record: % x", src, b[:min(len(b), 16)])
		}
		for _, bad := range []string{"GET /", "HTTP/1.1", "/wire/", "CONNECT"} {
			if bytes.Contains(b, []byte(bad)) {
				t.Errorf("client→server stream from %v contains %q in the clear", src, bad)
			}
		}
		t.Logf("client→server %v: %d bytes, starts % x", src, len(b), b[:min(len(b), 5)])
	}
	for src, b := range fromHBONE {
		if len(b) < 3 || b[0] != 0x16 || b[1] != 0x03 {
			t.Errorf("server→client stream to %v does not start with a TLS record: % x", src, b[:min(len(b), 16)])
		}
		if bytes.Contains(b, []byte("HTTP/1.1")) || bytes.Contains(b, []byte(e.marker)) {
			t.Errorf("server→client stream to %v contains the HTTP answer in the clear", src)
		}
	}
	var seen bool
	for _, b := range appLeg {
		seen = seen || bytes.Contains(b, []byte("GET /wire/"))
	}
	if !seen {
		t.Error("the capture did not see the plaintext request on the app leg: it proves nothing")
	}
}
