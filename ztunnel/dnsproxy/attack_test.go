package dnsproxy

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestAttackForwardFlood: a flood of queries for names the mesh does not know, while the
// upstream never answers, holds at most MaxForwards upstream queries (and their goroutines);
// the rest are answered SERVFAIL at once; local answers keep flowing; everything is released
// after the upstream timeout. Peer: a UDP socket that reads and never answers.
func TestAttackForwardFlood(t *testing.T) {
	base := runtime.NumGoroutine()
	const maxFwd, flood = 16, 400
	p, addr := startProxy(t, []netip.AddrPort{blackhole(t)}, Limits{MaxForwards: maxFwd, UpstreamTimeout: 2 * time.Second, UDPWorkers: 2})
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	send := func(i int) {
		q := new(dns.Msg)
		q.SetQuestion(fmt.Sprintf("n%d.unknown.example.", i), dns.TypeA)
		b, _ := q.Pack()
		conn.Write(b)
	}
	// The first maxFwd queries take every forward slot (the upstream never answers)...
	for i := range maxFwd {
		send(i)
	}
	deadline := time.Now().Add(10 * time.Second)
	for int(p.Stats.Forwarded.Load()) < maxFwd && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polling the counter, bounded
	}
	// ...then each further query is answered SERVFAIL at once, one after the other.
	buf := make([]byte, 4096)
	for i := maxFwd; i < flood; i++ {
		send(i)
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("query %d beyond the limit: %v", i, err)
		}
		r := new(dns.Msg)
		if err := r.Unpack(buf[:n]); err != nil || r.Rcode != dns.RcodeServerFailure {
			t.Fatalf("query %d beyond the limit: %v %v, want SERVFAIL", i, r, err)
		}
	}
	if got := p.Stats.Refused.Load(); got != flood-maxFwd {
		t.Errorf("%d refused, want %d", got, flood-maxFwd)
	}
	if got := int(p.Stats.Forwarded.Load()); got > maxFwd {
		t.Errorf("%d queries forwarded at once, limit %d", got, maxFwd)
	}
	if g := runtime.NumGoroutine(); g > base+maxFwd+20 {
		t.Errorf("%d goroutines during the flood (baseline %d, forward limit %d)", g, base, maxFwd)
	}
	// A local answer does not wait for the held forwards.
	if r := queryUDPRetry(t, addr, "web.shop.svc.cluster.local", dns.TypeA); len(r.Answer) != 1 {
		t.Errorf("local answer during the flood: %v", r)
	}
	// The held queries time out and their slots come back.
	deadline = time.Now().Add(15 * time.Second)
	for len(p.fwd) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // polling the slots, bounded
	}
	if len(p.fwd) > 0 {
		t.Errorf("%d forward slots still held after the upstream timeout", len(p.fwd))
	}
	if p.Stats.Failed.Load() == 0 {
		t.Error("no upstream failure was counted")
	}
	waitGoroutines(t, base+10)
}

// TestAttackTCP: idle TCP connections are closed after TCPReadTimeout, at most MaxTCPConns
// are served at once (the rest wait in the backlog), and a connection that sends a query
// slowly, byte by byte, is dropped at the same timeout; goroutines and memory come back.
func TestAttackTCP(t *testing.T) {
	base := runtime.NumGoroutine()
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	up := startUpstream(t)
	const maxConns = 4
	_, addr := startProxy(t, []netip.AddrPort{up.addr}, Limits{MaxTCPConns: maxConns, TCPReadTimeout: 500 * time.Millisecond})
	var conns []net.Conn
	for range 40 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	if g := runtime.NumGoroutine(); g > base+maxConns+30 {
		t.Errorf("%d goroutines with 40 idle connections (baseline %d, limit %d connections)", g, base, maxConns)
	}
	// The served idle connections are closed by the proxy: a read sees EOF.
	closed := 0
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != nil {
			closed++
		}
		c.Close()
	}
	if closed != len(conns) {
		t.Errorf("%d of %d idle connections closed", closed, len(conns))
	}
	// A slow sender: two bytes of length, then one byte at a time.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte{0, 40})
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("a connection with half a query got an answer")
	}
	c.Close()
	if r := query(t, addr, "tcp", "web.shop.svc.cluster.local", dns.TypeA, false); len(r.Answer) != 1 {
		t.Errorf("TCP answer after the attack: %v", r)
	}
	waitGoroutines(t, base+10)
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grow := int64(after.HeapInuse) - int64(before.HeapInuse); grow > 8<<20 {
		t.Errorf("heap grew by %d bytes", grow)
	}
}

// TestAttackGarbage: random packets and answers sent as queries get nothing back, and the
// proxy keeps answering.
func TestAttackGarbage(t *testing.T) {
	up := startUpstream(t)
	_, addr := startProxy(t, []netip.AddrPort{up.addr}, Limits{})
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i := range 200 {
		b := make([]byte, 1+i*7%1500)
		rand.Read(b)
		conn.Write(b)
	}
	resp := new(dns.Msg)
	resp.SetQuestion("web.", dns.TypeA)
	resp.Response = true
	b, _ := resp.Pack()
	conn.Write(b)
	if r := queryUDPRetry(t, addr, "web", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("answer after garbage: %v", r)
	}
}
