package istiostats

import (
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/envoyproxy/envoy/contrib/golang/common/go/api"
)

// Envoy stat names carry their labels in Istio's encoding, which Istio's bootstrap extracts
// for its extra stat tags: "tag=.=value;.;" per label, then the metric's name. The
// stats_config.stats_tags of StatsTags turn each into a tag and leave the metric's name, which
// Envoy's Prometheus endpoint writes as envoy_<name>{tags}: a scrape config renames
// envoy_istio_* to istio_* (PrometheusRelabel).

// LeTag is the bucket bound's tag of the emulated histograms.
const LeTag = "le"

// Tag is one stats_config.stats_tags entry.
type Tag struct{ Name, Regex string }

// StatsTags are the stats_tags that extract the labels from StatName's names: Istio's regex
// for its extra stat tags, `(NAME=\.=(.*?);\.;)`, for each label and the bucket bound.
func StatsTags() []Tag {
	tags := make([]Tag, 0, len(LabelNames)+1)
	for _, n := range append(append([]string(nil), LabelNames...), LeTag) {
		tags = append(tags, Tag{Name: n, Regex: "(" + n + `=\.=(.*?);\.;)`})
	}
	return tags
}

// PrometheusRelabel is the metric_relabel_configs rule that gives the Envoy path's series
// Istio's names: Envoy's Prometheus endpoint prefixes every stat with envoy_.
const PrometheusRelabel = `{source_labels: [__name__], regex: "envoy_(istio_.*)", target_label: __name__, replacement: "$1"}`

// StatName is the Envoy stat name of metric with the label values v (LabelNames order, as
// Labels.Values gives them), and the extra tag/value pairs after them.
func StatName(metric string, v []string, extra ...string) string {
	var b strings.Builder
	for i, n := range LabelNames {
		b.WriteString(n)
		b.WriteString("=.=")
		b.WriteString(v[i])
		b.WriteString(";.;")
	}
	for i := 0; i+1 < len(extra); i += 2 {
		b.WriteString(extra[i])
		b.WriteString("=.=")
		b.WriteString(extra[i+1])
		b.WriteString(";.;")
	}
	b.WriteString(metric)
	return b.String()
}

// FormatLe writes a bucket bound as Prometheus's text format reads it back.
func FormatLe(le float64) string {
	if math.IsInf(le, 1) {
		return "+Inf"
	}
	return strconv.FormatFloat(le, 'f', -1, 64)
}

// DefaultMaxLabelSets bounds the label sets an Envoy recorder defines stats for: each takes
// 1 + 3×(len(Buckets)+3) counters in Envoy's stat store, which is never pruned.
const DefaultMaxLabelSets = 1000

// Envoy records the four metrics as Envoy stats through the Go filter SDK's counters. The SDK
// offers no histograms (api.ConfigCallbacks: "TODO Histogram"), so each histogram is written
// as Prometheus stores one: cumulative <name>_bucket counters with an le tag, <name>_sum and
// <name>_count; PromQL reads them as a histogram (histogram_quantile, rate of _sum/_count).
// Sums are whole milliseconds and bytes.
type Envoy struct {
	mu       sync.Mutex // the SDK's metric store (Envoy's FilterConfig) is not safe for concurrent use
	cb       api.ConfigCallbackHandler
	sets     map[string]*envoySet
	max      int
	overflow api.CounterMetric
}

type envoySet struct {
	requests api.CounterMetric
	hists    [3]envoyHist
}

type envoyHist struct {
	buckets    []api.CounterMetric // Buckets then +Inf
	sum, count api.CounterMetric
}

// OverflowStat counts the requests not recorded because the label sets reached their bound.
const OverflowStat = "goambient_istio_stats_overflow"

// NewEnvoy returns a recorder defining its stats through cb (a filter config's callbacks);
// maxSets bounds the label sets (DefaultMaxLabelSets when ≤ 0).
func NewEnvoy(cb api.ConfigCallbackHandler, maxSets int) *Envoy {
	if maxSets <= 0 {
		maxSets = DefaultMaxLabelSets
	}
	return &Envoy{cb: cb, sets: map[string]*envoySet{}, max: maxSets, overflow: cb.DefineCounterMetric(OverflowStat)}
}

// Record counts one request.
func (e *Envoy) Record(l *Labels, d time.Duration, requestBytes, responseBytes int64) {
	v := l.Values()
	key := strings.Join(v, "\x00")
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.sets[key]
	if s == nil {
		if len(e.sets) >= e.max {
			e.overflow.Increment(1)
			return
		}
		s = e.define(v)
		e.sets[key] = s
	}
	s.requests.Increment(1)
	ms := float64(d) / float64(time.Millisecond)
	for i, x := range [3]float64{ms, float64(requestBytes), float64(responseBytes)} {
		h := &s.hists[i]
		for j, le := range Buckets {
			if x <= le {
				h.buckets[j].Increment(1)
			}
		}
		h.buckets[len(Buckets)].Increment(1)
		h.sum.Increment(int64(x))
		h.count.Increment(1)
	}
}

func (e *Envoy) define(v []string) *envoySet {
	s := &envoySet{requests: e.cb.DefineCounterMetric(StatName(RequestsTotal, v))}
	for i, name := range [3]string{RequestDuration, RequestBytes, ResponseBytes} {
		h := &s.hists[i]
		for _, le := range append(append([]float64(nil), Buckets...), math.Inf(1)) {
			h.buckets = append(h.buckets, e.cb.DefineCounterMetric(StatName(name+"_bucket", v, LeTag, FormatLe(le))))
		}
		h.sum = e.cb.DefineCounterMetric(StatName(name+"_sum", v))
		h.count = e.cb.DefineCounterMetric(StatName(name+"_count", v))
	}
	return s
}
