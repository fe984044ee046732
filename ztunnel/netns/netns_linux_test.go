package netns

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/goambient/goambient/ztunnel/proxy"
)

// newNS creates a uniquely named network namespace for t, with a veth pair whose end d0 holds
// 10.9.9.1/24, and deletes it when t ends. It skips t without root or the ip command.
func newNS(t *testing.T) (string, *NS) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("the ip command (iproute2) is not installed")
	}
	name := fmt.Sprintf("gm-%06x-unit", rand.IntN(1<<24))
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	run(t, "ip", "-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
	run(t, "ip", "-n", name, "addr", "add", "10.9.9.1/24", "dev", "d0")
	run(t, "ip", "-n", name, "link", "set", "d0", "up")
	run(t, "ip", "-n", name, "link", "set", "d1", "up")
	ns, err := Open("/var/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return name, ns
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func TestOpenRejectsNonNamespace(t *testing.T) {
	if _, err := Open("/etc/hostname"); err == nil {
		t.Fatal("Open of a regular file succeeded")
	}
}

// TestListenStaysInNamespace: a listener opened in the namespace is reachable from inside it
// and not from the caller's namespace, and the calling thread is back where it was.
func TestListenStaysInNamespace(t *testing.T) {
	_, ns := newNS(t)
	before, _ := os.Readlink("/proc/thread-self/ns/net")
	ln, err := ns.Listen(context.Background(), "tcp", "10.9.9.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if after, _ := os.Readlink("/proc/thread-self/ns/net"); after != before {
		t.Fatalf("thread left in %s (was %s)", after, before)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ns.Dialer(0)(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial from inside: %v", err)
	}
	b := make([]byte, 2)
	if _, err := c.Read(b); err != nil || string(b) != "hi" {
		t.Fatalf("read: %q %v", b, err)
	}
	c.Close()
	// From the test's own namespace 10.9.9.1 is not a local address (unless the host has it).
	if hc, err := (&net.Dialer{Timeout: 200 * time.Millisecond}).Dial("tcp", ln.Addr().String()); err == nil {
		hc.Close()
		if !hostHas("10.9.9.1") {
			t.Fatal("the namespace's listener is reachable from outside it")
		}
	}
}

func hostHas(ip string) bool {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if strings.HasPrefix(a.String(), ip+"/") {
			return true
		}
	}
	return false
}

// TestRulesRedirectUnmarkedOnly applies Rules: an application's connection (no mark) to a
// remote address lands on 127.0.0.1:15001; ztunnel's (marked Mark) is not redirected (a
// filter rule then refuses it, so the test needs no remote host).
func TestRulesRedirectUnmarkedOnly(t *testing.T) {
	name, ns := newNS(t)
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		t.Skip("iptables is not installed")
	}
	if err := Apply(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "netns", "exec", name, "iptables", "-A", "OUTPUT", "-d", "10.9.9.9", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset")
	ln, err := ns.Listen(context.Background(), "tcp", fmt.Sprintf("127.0.0.1:%d", PortOutbound))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type acc struct {
		from net.Addr
		orig netip.AddrPort
		err  error
	}
	accepted := make(chan acc, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			orig, err := proxy.OriginalDst(c)
			accepted <- acc{c.RemoteAddr(), orig, err}
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ns.Dialer(0)(ctx, "tcp", "10.9.9.9:80")
	if err != nil {
		t.Fatalf("unmarked dial: %v", err)
	}
	c.Close()
	select {
	case a := <-accepted:
		if a.err != nil || a.orig.String() != "10.9.9.9:80" {
			t.Errorf("SO_ORIGINAL_DST of the redirected connection: %v %v, want 10.9.9.9:80", a.orig, a.err)
		}
		t.Logf("redirected connection from %v, original destination %v", a.from, a.orig)
	case <-ctx.Done():
		t.Fatal("the unmarked connection did not reach 15001")
	}
	_, err = ns.DialContext(ctx, "tcp", "10.9.9.9:80")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("marked dial: want connection refused by the filter rule (not redirected), got %v", err)
	}
}
