// Package promtext reads the Prometheus text exposition format into flat samples (name, labels, value), as a scraper sees them.
package promtext

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Sample is one series' value: histograms are flattened into _bucket (with le), _sum and
// _count samples, as Prometheus stores them.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Key is the series' identity: name{label="value",...} with the labels sorted.
func (s Sample) Key() string {
	keys := make([]string, 0, len(s.Labels))
	for k := range s.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(s.Name)
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%q", k, s.Labels[k])
	}
	b.WriteByte('}')
	return b.String()
}

// Parse reads an exposition (at most what r gives; bound r yourself).
func Parse(r io.Reader) ([]Sample, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(fams))
	for n := range fams {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []Sample
	for _, n := range names {
		for _, m := range fams[n].GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				if lp.GetValue() != "" { // Prometheus: an empty label is no label
					labels[lp.GetName()] = lp.GetValue()
				}
			}
			out = append(out, flatten(n, fams[n].GetType(), m, labels)...)
		}
	}
	return out, nil
}

func flatten(name string, typ dto.MetricType, m *dto.Metric, labels map[string]string) []Sample {
	with := func(k, v string) map[string]string {
		c := make(map[string]string, len(labels)+1)
		for a, b := range labels {
			c[a] = b
		}
		c[k] = v
		return c
	}
	switch typ {
	case dto.MetricType_COUNTER:
		return []Sample{{name, labels, m.GetCounter().GetValue()}}
	case dto.MetricType_GAUGE:
		return []Sample{{name, labels, m.GetGauge().GetValue()}}
	case dto.MetricType_UNTYPED:
		return []Sample{{name, labels, m.GetUntyped().GetValue()}}
	case dto.MetricType_HISTOGRAM:
		h := m.GetHistogram()
		out := make([]Sample, 0, len(h.GetBucket())+3)
		inf := false
		for _, b := range h.GetBucket() {
			le := b.GetUpperBound()
			inf = inf || math.IsInf(le, 1)
			out = append(out, Sample{name + "_bucket", with("le", model.FloatString(le).String()), float64(b.GetCumulativeCount())})
		}
		if !inf {
			out = append(out, Sample{name + "_bucket", with("le", "+Inf"), float64(h.GetSampleCount())})
		}
		out = append(out, Sample{name + "_sum", labels, h.GetSampleSum()}, Sample{name + "_count", labels, float64(h.GetSampleCount())})
		return out
	case dto.MetricType_SUMMARY:
		s := m.GetSummary()
		return []Sample{{name + "_sum", labels, s.GetSampleSum()}, {name + "_count", labels, float64(s.GetSampleCount())}}
	}
	return nil
}
