package dnsproxy

import (
	"context"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/goambient/goambient/ztunnel/state"
)

// upstream is a DNS server on loopback built on miekg/dns's own server (the peer every test
// forwards to): outside.example.com has an A record (TTL ttl), big.example.com a TXT answer
// larger than 512 bytes, origin.mirror.example.net A and AAAA; other names are NXDOMAIN.
type upstream struct {
	addr    netip.AddrPort
	queries atomic.Int64
	ttl     atomic.Uint32
}

func startUpstream(t testing.TB) *upstream {
	t.Helper()
	u := &upstream{}
	u.ttl.Store(60)
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		u.queries.Add(1)
		r := new(dns.Msg)
		r.SetReply(q)
		name, qt := strings.ToLower(q.Question[0].Name), q.Question[0].Qtype
		hdr := dns.RR_Header{Name: q.Question[0].Name, Class: dns.ClassINET, Ttl: u.ttl.Load(), Rrtype: qt}
		switch {
		case name == "outside.example.com." && qt == dns.TypeA:
			r.Answer = append(r.Answer, &dns.A{Hdr: hdr, A: net.IPv4(192, 0, 2, 99)})
		case name == "origin.mirror.example.net." && qt == dns.TypeA:
			r.Answer = append(r.Answer, &dns.A{Hdr: hdr, A: net.IPv4(192, 0, 2, 80)})
		case name == "origin.mirror.example.net." && qt == dns.TypeAAAA:
			r.Answer = append(r.Answer, &dns.AAAA{Hdr: hdr, AAAA: net.ParseIP("2001:db8::80")})
		case name == "big.example.com." && qt == dns.TypeTXT:
			for range 20 {
				r.Answer = append(r.Answer, &dns.TXT{Hdr: hdr, Txt: []string{strings.Repeat("x", 100)}})
			}
		case name == "outside.example.com." || name == "origin.mirror.example.net." || name == "big.example.com.":
		default:
			r.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(r)
	})
	pc, ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		go srv.ActivateAndServe()
		t.Cleanup(func() { srv.Shutdown() })
	}
	u.addr = netip.MustParseAddrPort(pc.LocalAddr().String())
	return u
}

// blackhole is a UDP and TCP upstream that reads queries and never answers.
func blackhole(t testing.TB) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

// startProxy serves a proxy over testdata/mesh.yaml on loopback UDP and TCP (one port).
func startProxy(t testing.TB, ups []netip.AddrPort, lim Limits) (*Proxy, string) {
	t.Helper()
	st, err := state.LoadFile("testdata/mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{Store: state.NewStore(st), Upstreams: ups, Limits: lim})
	if err != nil {
		t.Fatal(err)
	}
	pc, ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { p.ServeUDP(ctx, pc); done <- struct{}{} }()
	go func() { p.ServeTCP(ctx, ln); done <- struct{}{} }()
	t.Cleanup(func() {
		cancel()
		<-done
		<-done
	})
	return p, pc.LocalAddr().String()
}

func query(t testing.TB, server, network, name string, qtype uint16, edns bool) *dns.Msg {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	if edns {
		q.SetEdns0(4096, false)
	}
	c := &dns.Client{Net: network, Timeout: 10 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(q, server)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return r
}

// waitGoroutines waits (10 s at most) for the goroutine count to come back to at most n.
func waitGoroutines(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, want at most %d:\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond) // polling for the count, not synchronising on it
	}
}

// queryUDPRetry asks over UDP as a stub resolver does after a loss: up to 10 tries of 1 s (a
// query sent right after a flood may be dropped by the full socket buffer, as on any server).
func queryUDPRetry(t testing.TB, server, name string, qtype uint16) *dns.Msg {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Net: "udp", Timeout: time.Second}
	var err error
	for range 10 {
		var r *dns.Msg
		if r, _, err = c.Exchange(q, server); err == nil {
			return r
		}
	}
	t.Fatalf("%s %s over udp, 10 tries: %v", name, dns.TypeToString[qtype], err)
	return nil
}
