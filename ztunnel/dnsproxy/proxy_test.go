package dnsproxy

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

// TestAnswers: the proxy answers mesh services and ServiceEntry hosts from the state
// (testdata/mesh.yaml; the test's client is the pod at 127.0.0.1 in namespace shop) and
// forwards everything else to the upstream (a miekg/dns server on loopback), over UDP and TCP.
func TestAnswers(t *testing.T) {
	up := startUpstream(t)
	p, addr := startProxy(t, []netip.AddrPort{up.addr}, Limits{})
	for _, tc := range []struct {
		name   string
		qtype  uint16
		rcode  int
		want   []string
		local  bool
		reason string
	}{
		{"web", dns.TypeA, dns.RcodeSuccess, []string{"10.96.0.20"}, true, "a short name in the client's namespace"},
		{"web.shop", dns.TypeA, dns.RcodeSuccess, []string{"10.96.0.20"}, true, "name.namespace"},
		{"web.shop.svc.cluster.local", dns.TypeA, dns.RcodeSuccess, []string{"10.96.0.20"}, true, "the service's hostname"},
		{"WEB.Shop.svc.cluster.local", dns.TypeA, dns.RcodeSuccess, []string{"10.96.0.20"}, true, "letter case is ignored"},
		{"web.shop.svc.cluster.local", dns.TypeAAAA, dns.RcodeSuccess, nil, true, "no IPv6 VIP: NODATA, not forwarded"},
		{"db.shop.svc.cluster.local", dns.TypeA, dns.RcodeSuccess, []string{"10.244.0.30"}, true, "headless: the endpoints"},
		{"httpbin.example.com", dns.TypeA, dns.RcodeSuccess, []string{"240.240.0.1"}, true, "a ServiceEntry host: its auto-allocated VIP"},
		{"httpbin.example.com", dns.TypeAAAA, dns.RcodeSuccess, []string{"2001:2::1"}, true, "and its IPv6 VIP"},
		{"httpbin.example.com.shop.svc.cluster.local", dns.TypeA, dns.RcodeSuccess, []string{"240.240.0.1"}, true, "expanded with a search domain"},
		{"api.wild.example.com", dns.TypeA, dns.RcodeSuccess, []string{"240.240.0.9"}, true, "under a wildcard host"},
		{"mirror.example.net", dns.TypeA, dns.RcodeNameError, nil, false, "a host without VIP: forwarded"},
		{"outside.example.com", dns.TypeA, dns.RcodeSuccess, []string{"192.0.2.99"}, false, "not in the mesh: forwarded"},
		{"nowhere.example.com", dns.TypeA, dns.RcodeNameError, nil, false, "NXDOMAIN from the upstream"},
		{"httpbin.example.com", dns.TypeMX, dns.RcodeNameError, nil, false, "other types are forwarded"},
	} {
		for _, network := range []string{"udp", "tcp"} {
			t.Run(network+"/"+tc.name+"/"+dns.TypeToString[tc.qtype], func(t *testing.T) {
				local := p.Stats.Local.Load()
				r := query(t, addr, network, tc.name, tc.qtype, false)
				if r.Rcode != tc.rcode {
					t.Fatalf("%s (%s): rcode %s, want %s", tc.name, tc.reason, dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
				}
				var got []string
				for _, rr := range r.Answer {
					switch rr := rr.(type) {
					case *dns.A:
						got = append(got, rr.A.String())
					case *dns.AAAA:
						got = append(got, rr.AAAA.String())
					}
					if tc.local && rr.Header().Ttl != TTL {
						t.Errorf("TTL %d, want %d", rr.Header().Ttl, TTL)
					}
				}
				if !slices.Equal(got, tc.want) {
					t.Errorf("%s (%s): %v, want %v", tc.name, tc.reason, got, tc.want)
				}
				if isLocal := p.Stats.Local.Load() > local; isLocal != tc.local {
					t.Errorf("%s (%s): answered locally %v, want %v", tc.name, tc.reason, isLocal, tc.local)
				}
			})
		}
	}
}

// TestTruncation: an answer larger than the client's UDP size is truncated with TC set, and the
// client gets it whole over TCP; EDNS0 raises the UDP size up to Limits.MaxUDPSize.
func TestTruncation(t *testing.T) {
	up := startUpstream(t)
	_, addr := startProxy(t, []netip.AddrPort{up.addr}, Limits{MaxUDPSize: 4096})
	r := query(t, addr, "udp", "big.example.com", dns.TypeTXT, false)
	if !r.Truncated || len(r.Answer) >= 20 {
		t.Errorf("UDP without EDNS0: truncated %v with %d records; want TC and fewer than 20", r.Truncated, len(r.Answer))
	}
	if r.Compress = true; r.Len() > dns.MinMsgSize {
		t.Errorf("UDP answer of %d bytes, more than 512", r.Len())
	}
	r = query(t, addr, "udp", "big.example.com", dns.TypeTXT, true)
	if r.Truncated || len(r.Answer) != 20 {
		t.Errorf("UDP with EDNS0 4096: truncated %v with %d records; want all 20", r.Truncated, len(r.Answer))
	}
	_, capped := startProxy(t, []netip.AddrPort{up.addr}, Limits{MaxUDPSize: 1232})
	if r = query(t, capped, "udp", "big.example.com", dns.TypeTXT, true); !r.Truncated {
		t.Errorf("UDP with EDNS0 4096 over a limit of 1232: not truncated (%d records)", len(r.Answer))
	}
	r = query(t, addr, "tcp", "big.example.com", dns.TypeTXT, false)
	if r.Truncated || len(r.Answer) != 20 {
		t.Errorf("TCP: truncated %v with %d records", r.Truncated, len(r.Answer))
	}
}

// TestBadQueries: queries the proxy does not serve get the DNS answer for them.
func TestBadQueries(t *testing.T) {
	up := startUpstream(t)
	_, addr := startProxy(t, []netip.AddrPort{up.addr}, Limits{})
	q := new(dns.Msg)
	q.SetQuestion("web.", dns.TypeA)
	q.Opcode = dns.OpcodeStatus
	c := &dns.Client{Net: "udp"}
	if r, _, err := c.Exchange(q, addr); err != nil || r.Rcode != dns.RcodeNotImplemented {
		t.Errorf("opcode STATUS: %v %v, want NOTIMP", r, err)
	}
	q = new(dns.Msg)
	q.Id = dns.Id()
	q.Question = []dns.Question{{Name: "a.", Qtype: dns.TypeA, Qclass: dns.ClassINET}, {Name: "b.", Qtype: dns.TypeA, Qclass: dns.ClassINET}}
	if r, _, err := c.Exchange(q, addr); err != nil || r.Rcode != dns.RcodeFormatError {
		t.Errorf("two questions: %v %v, want FORMERR", r, err)
	}
}
