package app

import (
	"bufio"
	"context"
	"net/http"
	"net/netip"
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
