package wds_test

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/goambient/goambient/xdsserver/meshgen"
	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/wds"
)

// BenchmarkTranslate is the full translation of a generated mesh (model.Build then
// wds.Translate): the mesh of the performance targets (10,000 pods, 1,000 services, 1,000
// policies; target under 1 s and 500 MB of heap) and, as the baseline of the same run, one
// ten times smaller, so the scaling shows. Metrics: ms/translation, heap-MB (live heap after
// a GC, the input and the translated resources held), and the resources produced.
func BenchmarkTranslate(b *testing.B) {
	for _, div := range []int{10, 1} {
		o := meshgen.Default.Scaled(div)
		b.Run(fmt.Sprintf("pods=%d", o.Pods), func(b *testing.B) {
			set, err := meshgen.Generate(o)
			if err != nil {
				b.Fatal(err)
			}
			cfg := model.DefaultConfig()
			var before runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			var r *wds.Resources
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				m, err := model.Build(set, cfg)
				if err != nil {
					b.Fatal(err)
				}
				if len(m.Errors) > 0 {
					b.Fatalf("mesh errors: %v", m.Errors[0])
				}
				r = wds.Translate(m, wds.Options{})
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/translation")
			var after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&after)
			b.ReportMetric(float64(after.HeapAlloc)/(1<<20), "heap-MB")
			b.ReportMetric(float64(after.HeapAlloc-min(before.HeapAlloc, after.HeapAlloc))/(1<<20), "resources-heap-MB")
			b.ReportMetric(float64(len(r.Addresses)), "addresses")
			b.ReportMetric(float64(len(r.Authorizations)), "authorizations")
			runtime.KeepAlive(set)
		})
	}
}
