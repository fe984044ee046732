package model_test

import (
	"os"
	"strings"
	"testing"

	"github.com/goambient/goambient/xdsserver/internal/golden"
	"github.com/goambient/goambient/xdsserver/kubeobj"
	"github.com/goambient/goambient/xdsserver/model"
)

// buildWith builds YAML documents as the files source does, with a previous mesh.
func buildWith(t *testing.T, prev *model.Mesh, docs ...string) *model.Mesh {
	t.Helper()
	set, problems, err := kubeobj.Load([]byte(strings.Join(docs, "\n---\n")), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := model.DefaultConfig()
	cfg.Previous = prev
	m, err := model.Build(set, cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.Errors = append(problems, m.Errors...)
	if err := m.Validate(); err != nil {
		t.Fatalf("built mesh is not valid: %v", err)
	}
	return m
}

// TestRoutingProblemsGolden: every problem of testdata/routing-invalid.yaml, with its object
// and field path; the invalid objects are left out, the valid ones kept with their remarks.
func TestRoutingProblemsGolden(t *testing.T) {
	data, err := os.ReadFile("testdata/routing-invalid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	set, problems, err := kubeobj.Load(data, "testdata/routing-invalid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Build(set, model.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("errors:\n")
	for _, e := range append(problems, m.Errors...) {
		b.WriteString("- " + e.Error() + "\n")
	}
	b.WriteString("warnings:\n")
	for _, w := range m.Warnings {
		b.WriteString("- " + w.Error() + "\n")
	}
	b.WriteString("kept:\n")
	for _, v := range m.Routing.VirtualServices {
		b.WriteString("- VirtualService " + v.Key() + "\n")
	}
	for _, h := range m.Routing.HTTPRoutes {
		b.WriteString("- HTTPRoute " + h.Key() + "\n")
	}
	for _, d := range m.Routing.DestinationRules {
		b.WriteString("- DestinationRule " + d.Key() + "\n")
	}
	golden.Check(t, "testdata/routing-invalid.golden", b.String())
	for _, bad := range []string{"bad-regex", "bad-weights", "bad-durations", "bad-actions", "typo"} {
		for _, v := range m.Routing.VirtualServices {
			if v.Name == bad {
				t.Errorf("VirtualService %s was kept", bad)
			}
		}
	}
}

const cart = `apiVersion: v1
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
spec: {selector: {app: cart}, ports: [{name: http, port: 8080}]}`

// TestLastGoodRouting: a VirtualService made invalid (or unreadable) keeps its previous valid
// version, with an error naming the object; a new invalid one is left out; a deleted one goes.
func TestLastGoodRouting(t *testing.T) {
	good := `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cart, namespace: shop}
spec: {hosts: [cart], http: [{timeout: 3s, route: [{destination: {host: cart}}]}]}`
	badRegex := `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cart, namespace: shop}
spec: {hosts: [cart], http: [{match: [{uri: {regex: "("}}], route: [{destination: {host: cart}}]}]}`
	unreadable := `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cart, namespace: shop}
spec: {hosts: [cart], http: [{timeout: soon, route: [{destination: {host: cart}}]}]}`
	timeout := func(m *model.Mesh) string {
		sr := m.Routing.Services["shop/cart"]
		if sr == nil || len(sr.RouteSets) == 0 {
			return "none"
		}
		return sr.RouteSets[0].Rules[0].HTTP.GetTimeout().AsDuration().String()
	}
	first := buildWith(t, nil, cart, good)
	if got := timeout(first); got != "3s" {
		t.Fatalf("first: timeout %s", got)
	}
	for name, bad := range map[string]string{"invalid": badRegex, "unreadable": unreadable} {
		t.Run(name, func(t *testing.T) {
			m := buildWith(t, first, cart, bad)
			if got := timeout(m); got != "3s" {
				t.Errorf("timeout %s: the last good VirtualService was not kept", got)
			}
			msgs := messages(m.Errors)
			if !strings.Contains(msgs, "VirtualService shop/cart") || !strings.Contains(msgs, "the previous valid version is kept") {
				t.Errorf("errors:\n%s", msgs)
			}
			// Without a previous mesh (a first read), the invalid object is simply left out.
			if got := timeout(buildWith(t, nil, cart, bad)); got != "none" {
				t.Errorf("without a previous mesh: %s", got)
			}
			// Deleted (not in the input at all), it is gone even with a previous mesh.
			if got := timeout(buildWith(t, m, cart)); got != "none" {
				t.Errorf("deleted: %s", got)
			}
		})
	}
}

// TestRouteSetOrder: which route sets apply to a Service at its waypoint, and in which order,
// as istiod selects and orders them.
func TestRouteSetOrder(t *testing.T) {
	vs := func(name, ns, extra string) string {
		return `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ` + name + `, namespace: ` + ns + `}
spec: {hosts: [cart.shop.svc.cluster.local], http: [{route: [{destination: {host: cart.shop.svc.cluster.local}}]}]` + extra + `}`
	}
	hr := func(name, ns, port string) string {
		return `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ` + name + `, namespace: ` + ns + `}
spec: {parentRefs: [{group: "", kind: Service, name: cart, namespace: shop` + port + `}], rules: [{backendRefs: [{name: cart, namespace: shop, port: 8080}]}]}`
	}
	other := `apiVersion: v1
kind: Namespace
metadata: {name: other}`
	for _, tc := range []struct {
		name string
		docs []string
		want string
	}{
		{"one VirtualService", []string{vs("a", "shop", "")}, "VirtualService shop/a"},
		{"by name when created together", []string{vs("b", "shop", ""), vs("a", "shop", "")}, "VirtualService shop/a, VirtualService shop/b"},
		{"HTTPRoutes of the waypoint's namespace first", []string{vs("a", "shop", ""), hr("z", "shop", "")}, "HTTPRoute shop/z, VirtualService shop/a"},
		{"HTTPRoutes merged per parent port", []string{hr("hx", "shop", ""), hr("hy", "shop", ""), hr("hp", "shop", ", port: 8080")}, "HTTPRoute shop/hp, HTTPRoute shop/hx+shop/hy"},
		{"exported only to the namespace: before public ones", []string{vs("a", "shop", ""), vs("z", "shop", `, exportTo: ["."]`)}, "VirtualService shop/z, VirtualService shop/a"},
		{"exported nowhere", []string{vs("a", "shop", `, exportTo: ["~"]`)}, ""},
		{"from another namespace (neither the Service's nor the waypoint's)", []string{other, vs("a", "other", "")}, ""},
		{"consumer HTTPRoute in another namespace", []string{other, hr("c", "other", "")}, ""},
		{"bound to a gateway only", []string{vs("a", "shop", ", gateways: [shop/ingress]")}, ""},
		{"bound to mesh and a gateway", []string{vs("a", "shop", ", gateways: [mesh, shop/ingress]")}, "VirtualService shop/a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := buildWith(t, nil, append([]string{cart}, tc.docs...)...)
			if len(m.Errors) > 0 {
				t.Fatalf("errors:\n%s", messages(m.Errors))
			}
			var got []string
			for _, s := range m.Routing.Services["shop/cart"].GetRouteSets() {
				desc := s.Kind + " "
				var objs []string
				for _, r := range s.Rules {
					if !strings.Contains(strings.Join(objs, "+"), r.Object) {
						objs = append(objs, r.Object)
					}
				}
				got = append(got, desc+strings.Join(objs, "+"))
			}
			if g := strings.Join(got, ", "); g != tc.want {
				t.Errorf("got %q, want %q\nwarnings:\n%s", g, tc.want, messages(m.Warnings))
			}
		})
	}
}

// TestGatewayRuleOrder: HTTPRoute rules sorted by the Gateway API's precedence (exact before
// prefix before regex, longer first, then method, headers, query parameters), matchless last.
func TestGatewayRuleOrder(t *testing.T) {
	m := buildWith(t, nil, cart, `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: cart}]
  rules:
  - {name: all, backendRefs: [{name: cart, port: 8080}]}
  - {name: regex, matches: [{path: {type: RegularExpression, value: /r.*}}], backendRefs: [{name: cart, port: 8080}]}
  - {name: short, matches: [{path: {value: /a}}], backendRefs: [{name: cart, port: 8080}]}
  - {name: long, matches: [{path: {value: /a/b}}], backendRefs: [{name: cart, port: 8080}]}
  - {name: headers, matches: [{path: {value: /a/b}, headers: [{name: x, value: "1"}]}], backendRefs: [{name: cart, port: 8080}]}
  - {name: method, matches: [{path: {value: /a/b}, method: GET}], backendRefs: [{name: cart, port: 8080}]}
  - {name: exact, matches: [{path: {type: Exact, value: /a}}], backendRefs: [{name: cart, port: 8080}]}
`)
	var got []string
	for _, r := range m.Routing.Services["shop/cart"].RouteSets[0].Rules {
		got = append(got, r.HTTP.GetName())
	}
	if g, w := strings.Join(got, " "), "exact method headers long short regex all"; g != w {
		t.Errorf("order %q, want %q", g, w)
	}
}
