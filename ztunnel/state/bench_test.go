package state

import (
	"net/netip"
	"testing"

	"github.com/goambient/goambient/policies/l4"
)

// BenchmarkPerConnection measures what the proxy does per connection against a baseline in the
// same run: one bare map lookup by IP. Compare the ns/op ratios, not the absolute figures.
func BenchmarkPerConnection(b *testing.B) {
	s := load(b, "handson.yaml")
	src := s.WorkloadByIP(ip("10.244.1.4"))
	dst := s.WorkloadByIP(ip("10.244.2.5"))
	baseline := map[netip.Addr]int{ip("10.244.2.5"): 1}
	vip, pod := ap("10.96.0.10:8080"), ip("10.244.2.5")
	conn := l4.Conn{SrcIdentity: "spiffe://cluster.local/ns/handson/sa/curl-deny", SrcIP: ip("10.244.1.4"), DstIP: pod, DstPort: 8080}
	b.Run("baseline-map", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = baseline[pod]
		}
	})
	b.Run("WorkloadByIP", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = s.WorkloadByIP(pod)
		}
	})
	b.Run("Route-VIP", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = s.Route(vip, src)
		}
	})
	b.Run("Authorize-deny", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = s.Authorize(dst, conn)
		}
	})
	b.Run("Resolve-FQDN", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = s.Resolve("handson.handson.svc.cluster.local", "handson")
		}
	})
}
