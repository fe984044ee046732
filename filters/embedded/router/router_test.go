package router_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/goambient/goambient/filters/embedded/host"
	"github.com/goambient/goambient/filters/embedded/router"
	"github.com/goambient/goambient/xdsserver/kubeobj"
	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/waypointxds"
)

const mesh = `apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {selector: {app: cart}, ports: [{name: http, port: 8080}]}
---
`

// rules is a VirtualService for cart with n rules: n-1 with a path prefix and a header (as
// canaries are written), then a catch-all.
func rules(n int) string {
	var b strings.Builder
	b.WriteString("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: cart, namespace: shop}\nspec:\n  hosts: [cart]\n  http:\n")
	for i := range n - 1 {
		fmt.Fprintf(&b, "  - name: r%d\n    match: [{uri: {prefix: /api/v%d/}, headers: {x-tenant: {exact: t%d}}}]\n    route: [{destination: {host: cart}}]\n", i, i, i)
	}
	b.WriteString("  - name: rest\n    route: [{destination: {host: cart}}]\n")
	return b.String()
}

// table compiles cart's route configuration as xdsserver translates the YAML for Envoy.
func table(t testing.TB, yaml string) *router.Table {
	t.Helper()
	set, problems, err := kubeobj.Load([]byte(yaml), "test.yaml")
	if err != nil || len(problems) > 0 {
		t.Fatal(err, problems)
	}
	m, err := model.Build(set, model.DefaultConfig())
	if err != nil || len(m.Errors) > 0 {
		t.Fatal(err, m.Errors)
	}
	r := waypointxds.Translate(m, waypointxds.Options{})
	var rc *route.RouteConfiguration
	for _, c := range r.Waypoints["shop/waypoint"].Routes {
		if c.GetName() == "inbound-vip|8080|http|cart.shop.svc.cluster.local" {
			rc = c
		}
	}
	tb, err := router.Compile(rc)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func request(method, path string, hdr map[string]string) *host.Request {
	h := http.Header{}
	for k, v := range hdr {
		h.Set(k, v)
	}
	r := &host.Request{}
	r.Reset(method, path, "cart:8080", "http", "HTTP/1.1", h)
	return r
}

// TestSelect: the first matching route wins, in the VirtualService's order; a route's header
// match needs the header; the query does not take part in a path match.
func TestSelect(t *testing.T) {
	tb := table(t, mesh+rules(5))
	for _, tc := range []struct {
		path string
		hdr  map[string]string
		want string
	}{
		{"/api/v2/x", map[string]string{"x-tenant": "t2"}, "r2"},
		{"/api/v2/x?q=1", map[string]string{"x-tenant": "t2"}, "r2"},
		{"/api/v2/x", map[string]string{"x-tenant": "t3"}, "rest"},
		{"/api/v2", map[string]string{"x-tenant": "t2"}, "rest"},
		{"/", nil, "rest"},
	} {
		if rt := tb.Select(request("GET", tc.path, tc.hdr)); rt == nil || rt.Name != tc.want {
			t.Errorf("%s %v: %v, want %s", tc.path, tc.hdr, rt, tc.want)
		}
	}
}

// BenchmarkSelect is the route selection cost per request with 1, 10 and 100 routes per
// service, the request taking the last one (every route before it is tried): compare the
// sub-benchmarks of one run.
func BenchmarkSelect(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("routes=%d", n), func(b *testing.B) {
			tb := table(b, mesh+rules(n))
			r := request("GET", "/api/v1000/items", map[string]string{"x-tenant": "t1000", "user-agent": "bench"})
			b.ReportAllocs()
			for b.Loop() {
				if rt := tb.Select(r); rt == nil || rt.Name != "rest" {
					b.Fatalf("selected %v", rt)
				}
			}
		})
	}
}
