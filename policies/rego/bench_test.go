package rego

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/policies/policytest"
)

// benchSet builds n AuthorizationPolicies (Kubernetes JSON maps) in namespace bench and a
// request, deterministically. Every policy applies to the request (no selectors: the worst
// case), half are DENY and half ALLOW, their rules mix principals, IP blocks, namespaces,
// methods, path templates, hosts, ports and a header condition, and none of them matches; the
// only match is the ALLOW policy zz-allow, last in Envoy's order, so an evaluation visits every
// rule before deciding.
func benchSet(n int) ([]map[string]any, policies.Request) {
	out := make([]map[string]any, 0, n+1)
	for i := range n {
		action := "ALLOW"
		if i%2 == 0 {
			action = "DENY"
		}
		out = append(out, benchPolicy(fmt.Sprintf("p%04d", i), map[string]any{
			"action": action,
			"rules": []any{
				map[string]any{
					"from": []any{map[string]any{"source": map[string]any{
						"principals": []string{fmt.Sprintf("cluster.local/ns/team-%d/sa/client", i)},
						"ipBlocks":   []string{fmt.Sprintf("10.%d.0.0/16", i%250)},
					}}},
					"to": []any{map[string]any{"operation": map[string]any{
						"methods": []string{"GET", "POST"},
						"paths":   []string{fmt.Sprintf("/api/v%d/{*}/items/{**}", i), "/static/*"},
						"hosts":   []string{fmt.Sprintf("svc-%d.bench.svc.cluster.local", i)},
					}}},
				},
				map[string]any{
					"from": []any{map[string]any{"source": map[string]any{"namespaces": []string{fmt.Sprintf("ns-%d*", i)}}}},
					"to": []any{map[string]any{"operation": map[string]any{
						"notMethods": []string{"GET"},
						"ports":      []string{fmt.Sprint(9000 + i%1000)},
					}}},
					"when": []any{map[string]any{"key": "request.headers[x-tenant]", "values": []string{fmt.Sprintf("tenant-%d", i)}}},
				},
			},
		}))
	}
	out = append(out, benchPolicy("zz-allow", map[string]any{
		"rules": []any{map[string]any{
			"from": []any{map[string]any{"source": map[string]any{"principals": []string{"cluster.local/ns/frontend/sa/web"}}}},
			"to": []any{map[string]any{"operation": map[string]any{
				"methods": []string{"GET"},
				"paths":   []string{"/api/v1/{*}/items/{**}"},
			}}},
		}},
	}))
	req := policies.Request{
		Principal: "cluster.local/ns/frontend/sa/web",
		SourceIP:  netip.MustParseAddr("10.200.3.4"),
		DestPort:  8080,
		Method:    "GET",
		Path:      "/api/v1/shop/items/42/reviews",
		Host:      "web.bench.svc.cluster.local",
		Headers:   map[string]string{"x-tenant": "tenant-x", "user-agent": "bench"},
		Target:    policies.Target{Namespace: "bench", Labels: map[string]string{"app": "web"}},
	}
	return out, req
}

func benchPolicy(name string, spec map[string]any) map[string]any {
	return map[string]any{
		"apiVersion": "security.istio.io/v1",
		"kind":       "AuthorizationPolicy",
		"metadata":   map[string]any{"name": name, "namespace": "bench"},
		"spec":       spec,
	}
}

// BenchmarkOPA measures one decision of the Rego reference with the policy set prepared in
// OPA's store (NewWithPolicies): only the request is sent per evaluation.
func BenchmarkOPA(b *testing.B) {
	ctx := context.Background()
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("policies=%d", n), func(b *testing.B) {
			objs, req := benchSet(n)
			ev, err := NewWithPolicies(ctx, rootNS, objs)
			if err != nil {
				b.Fatal(err)
			}
			var d policies.Decision
			b.ReportAllocs()
			for b.Loop() {
				if d, err = ev.Decide(ctx, Input{Request: req}); err != nil {
					b.Fatal(err)
				}
			}
			if d.Reason != policies.ReasonAllowMatched || d.Policy != "bench/zz-allow" {
				b.Fatalf("decision %+v, want allowed by bench/zz-allow", d)
			}
		})
	}
}

// BenchmarkNativeVsOPA runs both engines on the native benchmark's sets (policytest.BenchSet)
// in the same run and reports the OPA time per decision with native-ns/op and the ratio
// opa/native, so the comparison does not depend on the machine.
func BenchmarkNativeVsOPA(b *testing.B) {
	ctx := context.Background()
	for _, shape := range []policytest.Shape{policytest.Selected, policytest.NamespaceWide} {
		for _, n := range []int{1, 100, 1000} {
			b.Run(fmt.Sprintf("%s/policies=%d", shape, n), func(b *testing.B) {
				data, req := policytest.BenchSet(n, shape)
				loaded, errs := policies.Load(data, "bench")
				if len(errs) > 0 {
					b.Fatal(errs[0])
				}
				eng := policies.Compile(loaded.AuthorizationPolicies, policies.Options{RootNamespace: rootNS})
				var d policies.Decision
				nativeNs := nsPerOp(func() { eng.Evaluate(&req, &d) })
				ev, err := NewWithPolicies(ctx, rootNS, yamlPolicies(b, data))
				if err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				for b.Loop() {
					if d, err = ev.Decide(ctx, Input{Request: req}); err != nil {
						b.Fatal(err)
					}
				}
				if want := eng.Decide(&req); mustJSON(d) != mustJSON(want) {
					b.Fatalf("engines differ: opa %s, native %s", mustJSON(d), mustJSON(want))
				}
				opaNs := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
				b.ReportMetric(nativeNs, "native-ns/op")
				b.ReportMetric(opaNs/nativeNs, "opa/native")
			})
		}
	}
}

// nsPerOp times f over enough iterations to take at least 100ms (testing.Benchmark cannot be
// nested in a running benchmark).
func nsPerOp(f func()) float64 {
	for n := 1; ; n *= 4 {
		start := time.Now()
		for range n {
			f()
		}
		if el := time.Since(start); el >= 100*time.Millisecond || n >= 1<<30 {
			return float64(el.Nanoseconds()) / float64(n)
		}
	}
}
