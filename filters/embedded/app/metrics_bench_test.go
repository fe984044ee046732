package app

import (
	"net/http"
	"testing"
	"time"
)

// BenchmarkWaypointMetricsOnOff sends the same GET (handson step 3, allowed) one request at a
// time on a keep-alive connection, alternately through two embedded waypoints in the same
// process: one recording Istio's request metrics (--metrics-listen), one without. It reports
// both rates and on/off.
func BenchmarkWaypointMetricsOnOff(b *testing.B) {
	on, off := setup(b, wpConfig{metrics: true}), setup(b)
	var streams [2]*stream
	for i, f := range []*handson{on, off} {
		f.configure(b, true)
		eventually(b, "readiness 200", func() bool { return f.ready() == http.StatusOK })
		streams[i] = f.connect(b, "curl-allow")
		if code, _ := streams[i].do(b, "GET", "/", ""); code != 200 {
			b.Fatalf("warm-up GET = %d", code)
		}
	}
	var took [2]time.Duration
	timed := func(i int) {
		t0 := time.Now()
		if code, _ := streams[i].do(b, "GET", "/", ""); code != 200 {
			b.Fatalf("GET = %d", code)
		}
		took[i] += time.Since(t0)
	}
	b.ResetTimer()
	odd := false
	for b.Loop() {
		if odd = !odd; odd { // each goes first every other time
			timed(0)
			timed(1)
		} else {
			timed(1)
			timed(0)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/took[0].Seconds(), "metrics-on-req/s")
	b.ReportMetric(float64(b.N)/took[1].Seconds(), "metrics-off-req/s")
	b.ReportMetric(took[1].Seconds()/took[0].Seconds(), "on/off")
	b.ReportMetric(0, "ns/op")
}
