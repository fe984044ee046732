package app

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/goambient/goambient/ztunnel/hbone"
)

// BenchmarkWaypointVsDirect sends the same GET from the same client to the same app, one
// request at a time on a keep-alive HTTP/1.1 connection inside one HBONE stream, alternately
// (1) straight to handson-blue's HBONE server, as a source ztunnel does without a waypoint, and
// (2) through the embedded waypoint (HBONE in, the authz filter with handson's L7 policy,
// HBONE out to the same server). It reports both rates and waypoint/direct.
func BenchmarkWaypointVsDirect(b *testing.B) {
	f := setup(b)
	f.configure(b, true)
	eventually(b, "readiness 200", func() bool { return f.ready() == http.StatusOK })
	via := f.connect(b, "curl-allow")
	dc, err := f.client.Dial(context.Background(), hbone.Target{
		Source: f.p.svid(b, "handson", "curl-allow"), Address: netip.AddrPortFrom(f.a.of("blue"), 15008),
		Identities: []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/handson/sa/handson")},
		Authority:  netip.AddrPortFrom(f.a.of("blue"), 8080).String(),
	})
	if err != nil {
		b.Fatal(err)
	}
	defer dc.Close()
	direct := &stream{c: dc, br: bufio.NewReader(dc), host: "handson:8080"}
	for _, s := range []*stream{direct, via} { // warm up both paths
		if code, _ := s.do(b, "GET", "/", ""); code != 200 {
			b.Fatalf("warm-up GET = %d", code)
		}
	}
	var dt, wt time.Duration
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		if code, _ := direct.do(b, "GET", "/", ""); code != 200 {
			b.Fatalf("direct GET = %d", code)
		}
		t1 := time.Now()
		if code, _ := via.do(b, "GET", "/", ""); code != 200 {
			b.Fatalf("waypoint GET = %d", code)
		}
		dt += t1.Sub(t0)
		wt += time.Since(t1)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/dt.Seconds(), "direct-req/s")
	b.ReportMetric(float64(b.N)/wt.Seconds(), "waypoint-req/s")
	b.ReportMetric(dt.Seconds()/wt.Seconds(), "waypoint/direct")
	b.ReportMetric(0, "ns/op")
}

// manyRoutes is a VirtualService for host with n rules, all to the Service appb: n-1 that a
// request to / does not match (a path prefix and a header each, as canaries are written), then
// the catch-all it takes.
func manyRoutes(name, host string, n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: %s}\nspec:\n  hosts: [%s]\n  http:\n", name, host)
	for i := range n - 1 {
		fmt.Fprintf(&b, "  - name: r%d\n    match: [{uri: {prefix: /api/v%d/}, headers: {x-tenant: {exact: t%d}}}]\n    route: [{destination: {host: appb}}]\n", i, i, i)
	}
	b.WriteString("  - name: rest\n    route: [{destination: {host: appb}}]\n")
	return b.String()
}

// BenchmarkRoutes100VsOne sends the same GET through the embedded waypoint, one request at a
// time on keep-alive connections, alternately to a Service whose VirtualService has one rule
// and to one whose VirtualService has 100 (the request takes the last). Both route to the
// same cluster (appb's two pods). It reports both rates and routes100/routes1. Peers as TestRouting.
func BenchmarkRoutes100VsOne(b *testing.B) {
	f := setupTraffic(b, 1)
	f.apply(b, manyRoutes("one", "appb-v1", 1)+"---\n"+manyRoutes("many", "appb-v2", 100))
	one := f.waypoint.connect(b, "default", "appa", netip.AddrPortFrom(f.a.of("appb-v1-vip"), 8000), "appb-v1:8000", netip.AddrPortFrom(f.a.of("appa"), 40001))
	many := f.waypoint.connect(b, "default", "appa", netip.AddrPortFrom(f.a.of("appb-v2-vip"), 8000), "appb-v2:8000", netip.AddrPortFrom(f.a.of("appa"), 40002))
	for _, s := range []*stream{one, many} {
		if code, body := s.do(b, "GET", "/", ""); code != 200 {
			b.Fatalf("warm-up GET = %d %q", code, body)
		}
	}
	if e := f.log.entries(b); logField(e[len(e)-1], "route_name") != "rest" {
		b.Fatalf("the request did not take the last rule: %v", e[len(e)-1])
	}
	var ot, mt time.Duration
	timed := func(s *stream) time.Duration {
		t0 := time.Now()
		if code, _ := s.do(b, "GET", "/", ""); code != 200 {
			b.Fatalf("GET = %d", code)
		}
		return time.Since(t0)
	}
	b.ResetTimer()
	odd := false
	for b.Loop() {
		// Each goes first every other time: the second of a pair is measurably faster
		// (the waypoint's goroutines are still awake).
		if odd = !odd; odd {
			ot += timed(one)
			mt += timed(many)
		} else {
			mt += timed(many)
			ot += timed(one)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/ot.Seconds(), "routes1-req/s")
	b.ReportMetric(float64(b.N)/mt.Seconds(), "routes100-req/s")
	b.ReportMetric(ot.Seconds()/mt.Seconds(), "routes100/routes1")
	b.ReportMetric(0, "ns/op")
}
