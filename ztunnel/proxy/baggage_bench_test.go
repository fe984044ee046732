package proxy

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"istio.io/istio/pkg/workloadapi"

	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/metrics"
	"github.com/goambient/goambient/ztunnel/state"
)

var (
	noBagOnce sync.Once
	noBagE    = benchEnv{noBaggage: true}
)

// BenchmarkNewConnBaggage: a new connection per 64-byte request and its echo, through two
// ztunnel pairs in the same process, alternately: one as Istio's (the source's baggage on the
// CONNECT, the destination's in the answer, each read into the metrics' labels) and one with
// DisableBaggage. Wall time per connection of each and on/off (the whole connection: SOCKS5,
// the HBONE stream, the policy check, the app's dial). Both pairs share the process's CPUs.
func BenchmarkNewConnBaggage(b *testing.B) {
	on := env(b)
	noBagOnce.Do(func() { noBagE.err = noBagE.start() })
	if noBagE.err != nil {
		b.Fatal(noBagE.err)
	}
	off := &noBagE
	msg, buf := make([]byte, 64), make([]byte, 64)
	once := func(e *benchEnv) time.Duration {
		t0 := time.Now()
		c, err := e.dialProxied()
		if err != nil {
			b.Fatal(err)
		}
		err = pingPong(c, msg, buf)
		c.Close()
		if err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	var ton, toff time.Duration
	b.ResetTimer()
	odd := false
	for b.Loop() {
		if odd = !odd; odd {
			ton += once(on)
			toff += once(off)
		} else {
			toff += once(off)
			ton += once(on)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(ton.Microseconds())/float64(b.N), "baggage-on-µs/conn")
	b.ReportMetric(float64(toff.Microseconds())/float64(b.N), "baggage-off-µs/conn")
	b.ReportMetric(ton.Seconds()/toff.Seconds(), "on/off")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkBaggageWork is the baggage's own work per connection, both sides: the source's
// header built and encoded, parsed by the destination into labels, and the same back.
func BenchmarkBaggageWork(b *testing.B) {
	st, err := state.Parse([]byte(fmt.Sprintf(baggageState, "127.1.1.11", "127.1.1.12")), "bench")
	if err != nil {
		b.Fatal(err)
	}
	src, dst := st.WorkloadByIP(netip.MustParseAddr("127.1.1.11")), st.WorkloadByIP(netip.MustParseAddr("127.1.1.12"))
	var l metrics.Labels
	for b.Loop() {
		for _, w := range []*workloadapi.Workload{src, dst} {
			v := hbone.BaggageValue(baggageOf(w))
			if d, ok := parseBaggage(v); ok {
				d.fillSource(&l)
			}
		}
	}
}
