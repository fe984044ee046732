// Package policytest builds deterministic policy sets and requests for benchmarks and tests.
package policytest

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/goambient/goambient/policies"
)

// Shape says how a benchmark set's policies attach to workloads.
type Shape string

// The shapes of BenchSet.
const (
	// Selected: policies carry selectors over 10 apps, so about a tenth apply to a request (the
	// usual layout: per-workload policies).
	Selected Shape = "selected"
	// NamespaceWide: no selectors, every policy applies to every request (the worst case).
	NamespaceWide Shape = "namespace-wide"
)

// BenchSet returns n AuthorizationPolicies as multi-document YAML and a request that none of
// the DENY rules match and one ALLOW rule near the end of Envoy's order matches, so an
// evaluation walks every applicable rule. Half the policies are DENY, half ALLOW; rules mix
// principals, namespaces, methods, paths (with templates), hosts, headers and IP blocks.
func BenchSet(n int, shape Shape) ([]byte, policies.Request) {
	var b strings.Builder
	for i := range n {
		action := "ALLOW"
		if i%2 == 0 {
			action = "DENY"
		}
		fmt.Fprintf(&b, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p%04d, namespace: bench}\nspec:\n  action: %s\n", i, action)
		if shape == Selected {
			fmt.Fprintf(&b, "  selector: {matchLabels: {app: app-%d}}\n", i%10)
		}
		fmt.Fprintf(&b, `  rules:
  - from: [{source: {principals: ["cluster.local/ns/team-%d/sa/client"], ipBlocks: ["10.%d.0.0/16"]}}]
    to: [{operation: {methods: [GET, POST], paths: ["/api/v%d/{*}/items/{**}", "/static/*"], hosts: ["svc-%d.bench.svc.cluster.local"]}}]
  - from: [{source: {namespaces: ["ns-%d*"]}}]
    to: [{operation: {notMethods: [GET], ports: ["%d"]}}]
    when: [{key: "request.headers[x-tenant]", values: ["tenant-%d"]}]
`, i, i%250, i, i, i, 9000+i%1000, i)
		b.WriteString("---\n")
	}
	// The matching ALLOW rule: the last policy in Envoy's order, applying to the request.
	sel := ""
	if shape == Selected {
		sel = "  selector: {matchLabels: {app: app-3}}\n"
	}
	fmt.Fprintf(&b, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: zz-allow, namespace: bench}\nspec:\n%s  rules:\n  - from: [{source: {principals: [\"cluster.local/ns/frontend/sa/web\"]}}]\n    to: [{operation: {methods: [GET], paths: [\"/api/v1/{*}/items/{**}\"]}}]\n", sel)
	req := policies.Request{
		Principal: "cluster.local/ns/frontend/sa/web",
		SourceIP:  netip.MustParseAddr("10.200.3.4"),
		DestPort:  8080,
		Method:    "GET",
		Path:      "/api/v1/shop/items/42/reviews",
		Host:      "web.bench.svc.cluster.local",
		Headers:   map[string]string{"x-tenant": "tenant-x", "user-agent": "bench"},
		Target:    policies.Target{Namespace: "bench", Labels: map[string]string{"app": "app-3", "version": "v1"}},
	}
	return []byte(b.String()), req
}

// WaypointBenchSet is BenchSet(n, NamespaceWide) attached to the waypoint "waypoint" of
// namespace bench, compiled, and its request as that waypoint sees it for the service web of
// bench: what the waypoint filter's benchmarks run. The request is allowed (checked here; an
// error says otherwise).
func WaypointBenchSet(n int) (yaml string, engine *policies.Engine, req policies.Request, err error) {
	data, req := BenchSet(n, NamespaceWide)
	yaml = strings.ReplaceAll(string(data), "spec:\n",
		"spec:\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n")
	objs, errs := policies.Load([]byte(yaml), "bench")
	if len(errs) > 0 {
		return "", nil, req, errs[0]
	}
	engine = policies.Compile(objs.AuthorizationPolicies, policies.Options{})
	req.Target = policies.Target{Waypoint: true, Namespace: "bench", Gateway: "waypoint", GatewayClass: "istio-waypoint", Service: "web", ServiceNamespace: "bench"}
	req.DestIP = req.SourceIP
	var d policies.Decision
	engine.Evaluate(&req, &d)
	if !d.Allowed {
		return "", nil, req, fmt.Errorf("the waypoint benchmark request is not allowed: %+v", d)
	}
	return yaml, engine, req, nil
}
