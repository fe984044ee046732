package dnsproxy

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// BenchmarkLatency alternates, in the same run, a query sent straight to the upstream (a
// miekg/dns server on loopback) with the same query through the proxy (forwarded), and a
// query the proxy answers from the state; it reports each one's mean latency, the latency the
// proxy adds to a forwarded query and the ratio proxied/direct.
//
//	go test -run '^$' -bench . -benchtime 3000x ./ztunnel/dnsproxy
func BenchmarkLatency(b *testing.B) {
	up := startUpstream(b)
	_, proxy := startProxy(b, []netip.AddrPort{up.addr}, Limits{})
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	ask := func(server, name string) time.Duration {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		start := time.Now()
		if _, _, err := c.Exchange(q, server); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	var direct, forwarded, local time.Duration
	b.ResetTimer()
	for range b.N {
		direct += ask(up.addr.String(), "outside.example.com.")
		forwarded += ask(proxy, "outside.example.com.")
		local += ask(proxy, "web.shop.svc.cluster.local.")
	}
	n := float64(b.N)
	b.ReportMetric(float64(direct.Microseconds())/n, "direct-µs/q")
	b.ReportMetric(float64(forwarded.Microseconds())/n, "forwarded-µs/q")
	b.ReportMetric(float64(local.Microseconds())/n, "local-µs/q")
	b.ReportMetric(float64((forwarded-direct).Microseconds())/n, "added-µs/q")
	b.ReportMetric(float64(forwarded)/float64(direct), "forwarded/direct")
}

// BenchmarkThroughput sends b.N queries from 16 concurrent clients, straight to the upstream,
// then through the proxy (forwarded), then answered by the proxy from the state, in the same
// run, and reports queries per second of each and the ratio forwarded/direct.
func BenchmarkThroughput(b *testing.B) {
	up := startUpstream(b)
	_, proxy := startProxy(b, []netip.AddrPort{up.addr}, Limits{})
	const clients = 16
	run := func(server, name string) float64 {
		var wg sync.WaitGroup
		start := time.Now()
		for w := range clients {
			wg.Go(func() {
				c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
				q := new(dns.Msg)
				q.SetQuestion(name, dns.TypeA)
				for i := w; i < b.N; i += clients {
					if _, _, err := c.Exchange(q, server); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		return float64(b.N) / time.Since(start).Seconds()
	}
	b.ResetTimer()
	direct := run(up.addr.String(), "outside.example.com.")
	forwarded := run(proxy, "outside.example.com.")
	local := run(proxy, "web.shop.svc.cluster.local.")
	b.ReportMetric(direct, "direct-q/s")
	b.ReportMetric(forwarded, "forwarded-q/s")
	b.ReportMetric(local, "local-q/s")
	b.ReportMetric(forwarded/direct, "forwarded/direct")
	b.ReportMetric(0, "ns/op")
}
