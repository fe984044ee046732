// Package stats gives the embedded waypoint Istio's request metrics: labels from each finished request and the mesh state, recorded into Prometheus, served on a bounded read-only listener.
package stats

import (
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	is "github.com/goambient/goambient/filters/istiostats"
)

// DefaultMaxSeries bounds the label sets a Prometheus recorder keeps; requests past it are
// counted in goambient_istio_stats_overflow_total instead (label values come from the mesh's
// state, but a churn of pods or principals must not grow the waypoint's memory without end).
const DefaultMaxSeries = 10000

// Prometheus records the four metrics into a Prometheus registry.
type Prometheus struct {
	requests                   *prometheus.CounterVec
	duration, reqSize, rspSize *prometheus.HistogramVec
	overflow                   prometheus.Counter

	mu   sync.Mutex
	seen map[string]struct{}
	max  int
}

// NewPrometheus registers the metrics in reg; maxSeries bounds the label sets
// (DefaultMaxSeries when ≤ 0).
func NewPrometheus(reg prometheus.Registerer, maxSeries int) (*Prometheus, error) {
	if maxSeries <= 0 {
		maxSeries = DefaultMaxSeries
	}
	hist := func(name, help string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: is.Buckets}, is.LabelNames)
	}
	p := &Prometheus{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: is.RequestsTotal, Help: "The total number of requests"}, is.LabelNames),
		duration: hist(is.RequestDuration, "Duration of requests in milliseconds"),
		reqSize:  hist(is.RequestBytes, "Request sizes in bytes"),
		rspSize:  hist(is.ResponseBytes, "Response sizes in bytes"),
		overflow: prometheus.NewCounter(prometheus.CounterOpts{Name: "goambient_istio_stats_overflow_total",
			Help: "Requests not recorded in Istio's request metrics because the label sets reached their bound"}),
		seen: map[string]struct{}{},
		max:  maxSeries,
	}
	for _, c := range []prometheus.Collector{p.requests, p.duration, p.reqSize, p.rspSize, p.overflow} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Record counts one request: its labels, how long it took, and its body sizes.
func (p *Prometheus) Record(l *is.Labels, d time.Duration, requestBytes, responseBytes int64) {
	v := l.Values()
	key := strings.Join(v, "\x00")
	p.mu.Lock()
	_, ok := p.seen[key]
	if !ok && len(p.seen) < p.max {
		p.seen[key], ok = struct{}{}, true
	}
	p.mu.Unlock()
	if !ok {
		p.overflow.Inc()
		return
	}
	p.requests.WithLabelValues(v...).Inc()
	p.duration.WithLabelValues(v...).Observe(float64(d) / float64(time.Millisecond))
	p.reqSize.WithLabelValues(v...).Observe(float64(requestBytes))
	p.rspSize.WithLabelValues(v...).Observe(float64(responseBytes))
}
