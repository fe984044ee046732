package policytest

import (
	"testing"

	"github.com/goambient/goambient/policies"
)

func TestBenchSetIsValidAndAllows(t *testing.T) {
	for _, shape := range []Shape{Selected, NamespaceWide} {
		for _, n := range []int{1, 100, 1000} {
			data, req := BenchSet(n, shape)
			objs, errs := policies.Load(data, "bench")
			if len(errs) > 0 {
				t.Fatal(errs[0])
			}
			d := policies.Compile(objs.AuthorizationPolicies, policies.Options{}).Decide(&req)
			if !d.Allowed || d.Policy != "bench/zz-allow" {
				t.Errorf("%s/%d: %+v, want allowed by bench/zz-allow", shape, n, d)
			}
		}
	}
}
