package policies_test

import (
	"fmt"
	"testing"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/policies/policytest"
)

// BenchmarkEngine measures one decision of the native engine. The OPA comparison on the same
// sets, with the ratio, is BenchmarkNativeVsOPA in policies/rego.
func BenchmarkEngine(b *testing.B) {
	for _, shape := range []policytest.Shape{policytest.Selected, policytest.NamespaceWide} {
		for _, n := range []int{1, 100, 1000} {
			b.Run(fmt.Sprintf("%s/policies=%d", shape, n), func(b *testing.B) {
				data, req := policytest.BenchSet(n, shape)
				objs, errs := policies.Load(data, "bench")
				if len(errs) > 0 {
					b.Fatal(errs[0])
				}
				e := policies.Compile(objs.AuthorizationPolicies, policies.Options{})
				var d policies.Decision
				b.ReportAllocs()
				for b.Loop() {
					e.Evaluate(&req, &d)
				}
				if !d.Allowed {
					b.Fatal("the benchmark request must be allowed")
				}
			})
		}
	}
}

// TestEvaluateDoesNotAllocate holds the steady-state promise of ARCHITECTURE.md.
func TestEvaluateDoesNotAllocate(t *testing.T) {
	data, req := policytest.BenchSet(100, policytest.Selected)
	objs, _ := policies.Load(data, "bench")
	e := policies.Compile(objs.AuthorizationPolicies, policies.Options{})
	var d policies.Decision
	if n := testing.AllocsPerRun(200, func() { e.Evaluate(&req, &d) }); n != 0 {
		t.Errorf("Evaluate allocates %v times per decision, want 0", n)
	}
}
