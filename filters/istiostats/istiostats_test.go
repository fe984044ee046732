package istiostats

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/envoy/contrib/golang/common/go/api"
)

// A stat name's labels come back whole through the stats_tags, hostile values included (cut
// to MaxValueLen, the encoding's reserved characters replaced), and the name that is left is
// the metric's.
func TestStatNameRoundTrip(t *testing.T) {
	l := Labels{
		SourcePrincipal:    "spiffe://cluster.local/ns/a/sa/b",
		DestinationService: "x.y.svc.cluster.local",
		SourceWorkload:     "evil;.;reporter=.=source;.;" + strings.Repeat("w", 1000),
		ResponseCode:       "403",
	}
	v := l.Values()
	name := StatName(RequestDuration+"_bucket", v, LeTag, FormatLe(2500))
	got := map[string]string{}
	for _, tag := range StatsTags() {
		re := regexp.MustCompile(tag.Regex)
		m := re.FindStringSubmatchIndex(name)
		if m == nil {
			t.Fatalf("tag %s not found in %q", tag.Name, name)
		}
		got[tag.Name] = name[m[4]:m[5]]
		name = name[:m[2]] + name[m[3]:]
	}
	if name != RequestDuration+"_bucket" {
		t.Errorf("name left after the tags: %q", name)
	}
	for i, n := range LabelNames {
		if got[n] != v[i] {
			t.Errorf("%s = %q, want %q", n, got[n], v[i])
		}
	}
	if got["reporter"] != "waypoint" || got["le"] != "2500" || len(got["source_workload"]) != MaxValueLen || strings.ContainsAny(got["source_workload"], ";=") {
		t.Errorf("reporter %q, le %q, source_workload %q", got["reporter"], got["le"], got["source_workload"])
	}
}

func TestFlagsString(t *testing.T) {
	for bits, want := range map[uint64]string{0: "-", 1 << 1: "UH", 1<<9 | 1<<10: "DI,FI", 1 << 15: "URX", 1 << 24: "NC"} {
		if got := FlagsString(bits); got != want {
			t.Errorf("FlagsString(%#x) = %q, want %q", bits, got, want)
		}
	}
}

// countStore is a metric store for the benchmark: Envoy's counters are atomic adds too.
type countStore struct{}

type nopCounter struct{ n *int64 }

func (c nopCounter) Increment(d int64) { *c.n += d }
func (c nopCounter) Get() uint64       { return uint64(*c.n) }
func (c nopCounter) Record(v uint64)   { *c.n = int64(v) }

func (countStore) DefineCounterMetric(string) api.CounterMetric { return nopCounter{new(int64)} }
func (countStore) DefineGaugeMetric(string) api.GaugeMetric     { return nopCounter{new(int64)} }

// BenchmarkEnvoyRecord is the Envoy path's cost per request in Go (the label values, the
// label-set lookup and 67 counter increments; each is a cgo call in Envoy, not counted here).
func BenchmarkEnvoyRecord(b *testing.B) {
	e := NewEnvoy(countStore{}, 0)
	l := Labels{SourcePrincipal: "spiffe://cluster.local/ns/a/sa/b", DestinationService: "x.y.svc.cluster.local", ResponseCode: "200"}
	for b.Loop() {
		e.Record(&l, 3*time.Millisecond, 120, 2000)
	}
}
