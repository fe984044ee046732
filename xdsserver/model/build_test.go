package model_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/goambient/goambient/xdsserver/kubeobj"
	"github.com/goambient/goambient/xdsserver/model"
)

// TestMembership: which pods are in the ambient mesh (tunnel protocol HBONE), from folders
// (the model plays istio-cni's node agent: labels) and from a cluster (CaptureByNodeAgent: the
// node agent's annotation only, as istiod).
func TestMembership(t *testing.T) {
	annotated := strings.Replace(podCart, "labels:", "annotations: {ambient.istio.io/redirection: enabled}, labels:", 1)
	for _, tc := range []struct {
		name           string
		docs           []string
		files, cluster bool
	}{
		{"namespace label", []string{nsAmbient, podCart}, true, false},
		{"no label", []string{nsPlain, podCart}, false, false},
		{"pod opts out", []string{nsAmbient, strings.Replace(podCart, "app: cart}", "app: cart, istio.io/dataplane-mode: none}", 1)}, false, false},
		{"pod opts in", []string{nsPlain, strings.Replace(podCart, "app: cart}", "app: cart, istio.io/dataplane-mode: ambient}", 1)}, true, false},
		{"host network", []string{nsAmbient, strings.Replace(podCart, "nodeName: node-a}", "nodeName: node-a, hostNetwork: true}", 1)}, false, false},
		{"captured by istio-cni", []string{nsPlain, annotated}, true, true},
		{"captured in an ambient namespace", []string{nsAmbient, annotated}, true, true},
		{"redirection not enabled", []string{nsAmbient, strings.Replace(annotated, "redirection: enabled", "redirection: disabled", 1)}, true, false},
		{"speaks HBONE itself", []string{nsPlain, strings.Replace(podCart, "app: cart}", "app: cart, networking.istio.io/tunnel: http}", 1)}, true, true},
		{"namespace not defined", []string{podCart}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, mode := range []struct {
				name string
				cfg  model.Config
				want bool
			}{{"files", model.DefaultConfig(), tc.files}, {"cluster", clusterConfig(), tc.cluster}} {
				m := build(t, mode.cfg, tc.docs...)
				noErrors(t, m)
				if got := workload(t, m, "shop", "cart").Ambient; got != mode.want {
					t.Errorf("%s: ambient = %v, want %v", mode.name, got, mode.want)
				}
			}
		})
	}
}

// clusterConfig is what cmd/xdsserver uses with the Kubernetes source (the addresses given,
// so the test pods need none from the cluster: Placement still allocates without FromCluster).
func clusterConfig() model.Config {
	cfg := model.DefaultConfig()
	cfg.DeployWaypoints, cfg.CaptureByNodeAgent = false, true
	return cfg
}

func TestWaypointBinding(t *testing.T) {
	nsUses := func(wp string) string {
		return strings.Replace(nsAmbient, "ambient}", "ambient, istio.io/use-waypoint: "+wp+"}", 1)
	}
	podUses := func(wp string) string {
		return strings.Replace(podCart, "app: cart}", "app: cart, istio.io/use-waypoint: "+wp+"}", 1)
	}
	svcUses := func(wp string) string {
		return strings.Replace(svcCart, "namespace: shop}", "namespace: shop, labels: {istio.io/use-waypoint: "+wp+"}}", 1)
	}
	otherNS := `
apiVersion: v1
kind: Namespace
metadata: {name: infra}`
	infraWaypoint := func(from string) string {
		gw := strings.Replace(waypointGateway("shared", "all"), "namespace: shop", "namespace: infra", 1)
		if from != "" {
			gw = strings.Replace(gw, "protocol: HBONE}", "protocol: HBONE, allowedRoutes: {namespaces: {from: "+from+"}}}", 1)
		}
		return gw
	}
	crossNS := strings.Replace(nsAmbient, "ambient}", "ambient, istio.io/use-waypoint: shared, istio.io/use-waypoint-namespace: infra}", 1)
	for _, tc := range []struct {
		name              string
		docs              []string
		service, workload string // waypoint keys, "" for none
		warning           string // a substring of the warnings, "" for none
	}{
		{"namespace, service waypoint", []string{nsUses("wp"), waypointGateway("wp", ""), podCart, svcCart}, "shop/wp", "", ""},
		{"namespace, workload waypoint", []string{nsUses("wp"), waypointGateway("wp", "workload"), podCart, svcCart}, "", "shop/wp", "does not accept service traffic"},
		{"namespace, all", []string{nsUses("wp"), waypointGateway("wp", "all"), podCart, svcCart}, "shop/wp", "shop/wp", ""},
		{"namespace, none traffic", []string{nsUses("wp"), waypointGateway("wp", "none"), podCart, svcCart}, "", "", "does not accept service traffic"},
		{"pod opts out", []string{nsUses("wp"), waypointGateway("wp", "all"), podUses("none"), svcCart}, "shop/wp", "", ""},
		{"service opts out", []string{nsUses("wp"), waypointGateway("wp", "all"), podCart, svcUses("none")}, "", "shop/wp", ""},
		{"pod label wins over namespace", []string{nsUses("wp"), waypointGateway("wp", "all"), waypointGateway("pod-wp", "workload"), podUses("pod-wp"), svcCart}, "shop/wp", "shop/pod-wp", ""},
		{"service label only", []string{nsAmbient, waypointGateway("wp", ""), podCart, svcUses("wp")}, "shop/wp", "", ""},
		{"pod label to a service waypoint", []string{nsAmbient, waypointGateway("wp", "service"), podUses("wp"), svcCart}, "", "", "does not accept workload traffic"},
		{"missing waypoint", []string{nsUses("nope"), podCart, svcCart}, "", "", "waypoint shop/nope is not found"},
		{"other namespace, not allowed", []string{crossNS, otherNS, infraWaypoint(""), podCart, svcCart}, "", "", "does not allow use from namespace shop"},
		{"other namespace, from All", []string{crossNS, otherNS, infraWaypoint("All"), podCart, svcCart}, "infra/shared", "infra/shared", ""},
		{"class says workload", []string{nsUses("wp"), `
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio-waypoint, labels: {istio.io/waypoint-for: workload}}
spec: {controllerName: istio.io/mesh-controller}`, waypointGateway("wp", ""), podCart, svcCart}, "", "shop/wp", "does not accept service traffic"},
		{"gateway overrides class", []string{nsUses("wp"), `
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio-waypoint, labels: {istio.io/waypoint-for: workload}}
spec: {controllerName: istio.io/mesh-controller}`, waypointGateway("wp", "service"), podCart, svcCart}, "shop/wp", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := build(t, model.DefaultConfig(), tc.docs...)
			noErrors(t, m)
			if got := waypointKey(service(t, m, "shop", "cart").Waypoint); got != tc.service {
				t.Errorf("service waypoint = %q, want %q", got, tc.service)
			}
			if got := waypointKey(workload(t, m, "shop", "cart").Waypoint); got != tc.workload {
				t.Errorf("workload waypoint = %q, want %q", got, tc.workload)
			}
			warnings := messages(m.Warnings)
			if tc.warning == "" && warnings != "" {
				t.Errorf("unexpected warnings:\n%s", warnings)
			}
			if tc.warning != "" && !strings.Contains(warnings, tc.warning) {
				t.Errorf("warnings do not say %q:\n%s", tc.warning, warnings)
			}
			for _, w := range m.Waypoints {
				if w.Service == nil || w.Service.Waypoint != nil || len(w.Instances) != 1 || w.Instances[0].Waypoint != nil {
					t.Errorf("waypoint %s: its own Service and pods must exist and use no waypoint", w.Key())
				}
			}
		})
	}
}

// TestBadObjects: a bad object is reported with file, document, object and field, and left
// out; the rest is kept.
func TestBadObjects(t *testing.T) {
	for _, tc := range []struct {
		name    string
		doc     string
		errs    []string // exact messages
		missing string   // "Kind ns/name" left out
	}{
		{"port out of range", `
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: shop}
spec: {ports: [{name: http, port: 80}, {name: big, port: 70000}]}`,
			[]string{"test.yaml:12 (document 3): Service shop/bad: spec.ports[1].port: 70000 is not a port number (1-65535)"}, "Service shop/bad"},
		{"target port name", `
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: shop}
spec: {ports: [{port: 80, targetPort: Not_A_Name}]}`,
			[]string{`test.yaml:12 (document 3): Service shop/bad: spec.ports[0].targetPort: "Not_A_Name" is not a port name (up to 15 lowercase letters, digits and '-')`}, "Service shop/bad"},
		{"port not a number", `
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: shop}
spec: {ports: [{port: eighty}]}`,
			[]string{`test.yaml:12 (document 3): Service shop/bad: spec.ports.port: expected a number, found string`}, "Service shop/bad"},
		{"cluster IP", `
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: shop}
spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}`,
			[]string{`test.yaml:12 (document 3): Service shop/bad: spec.clusterIP: "10.96.0.300" is not an IP address`}, "Service shop/bad"},
		{"service name", `
apiVersion: v1
kind: Service
metadata: {name: 1bad, namespace: shop}
spec: {ports: [{port: 80}]}`,
			[]string{`test.yaml:12 (document 3): Service shop/1bad: metadata.name: "1bad" must start with a letter`}, "Service shop/1bad"},
		{"pod IP", `
apiVersion: v1
kind: Pod
metadata: {name: bad, namespace: shop}
status: {podIP: not-an-ip}`,
			[]string{`test.yaml:12 (document 3): Pod shop/bad: status.podIP: "not-an-ip" is not an IP address`}, "Pod shop/bad"},
		{"pod IP taken", `
apiVersion: v1
kind: Pod
metadata: {name: zz-twin, namespace: shop}
status: {podIP: 10.244.9.9}
---
apiVersion: v1
kind: Pod
metadata: {name: twin, namespace: shop}
status: {podIP: 10.244.9.9}`,
			[]string{`test.yaml:12 (document 3): Pod shop/zz-twin: status.podIP: 10.244.9.9 is already the address of Pod shop/twin`}, "Pod shop/zz-twin"},
		// Found by FuzzTranslate: the pod was left out, but the implicit namespace its lookup
		// created stayed, and the built mesh did not validate.
		{"pod namespace", `
apiVersion: v1
kind: Pod
metadata: {name: bad, namespace: deXo}`,
			[]string{`test.yaml:12 (document 3): Pod deXo/bad: metadata.namespace: "deXo" is not a valid namespace name`}, "Pod deXo/bad"},
		{"wrong apiVersion", `
apiVersion: v2
kind: Pod
metadata: {name: bad, namespace: shop}`,
			[]string{`test.yaml:12 (document 3): Pod shop/bad: apiVersion: "v2" is not supported; use v1`}, "Pod shop/bad"},
		{"waypoint-for", waypointGateway("bad", "sometimes"),
			[]string{`test.yaml:12 (document 3): Gateway shop/bad: metadata.labels[istio.io/waypoint-for]: "sometimes" is not service, workload, all or none`}, "Gateway shop/bad"},
		{"gateway without listeners", `
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bad, namespace: shop}
spec: {gatewayClassName: istio-waypoint}`,
			[]string{`test.yaml:12 (document 3): Gateway shop/bad: spec.listeners: a Gateway needs at least one listener`}, "Gateway shop/bad"},
		{"policy", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: shop}
spec: {action: DENY, rules: [{to: [{operation: {ports: ["http"]}}]}]}`,
			nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := build(t, model.DefaultConfig(), nsAmbient, podCart, tc.doc, svcCart)
			if tc.errs == nil {
				if len(m.Errors) == 0 || !strings.HasPrefix(m.Errors[0].Error(), "test.yaml:12 (document 3): AuthorizationPolicy shop/bad: spec.rules[0].to[0].operation.ports[0]") {
					t.Errorf("errors:\n%s", messages(m.Errors))
				}
			} else if got := messages(m.Errors); got != strings.Join(tc.errs, "\n") {
				t.Errorf("errors:\n%s\nwant:\n%s", got, strings.Join(tc.errs, "\n"))
			}
			// The valid objects around the bad one are all there.
			workload(t, m, "shop", "cart")
			service(t, m, "shop", "cart")
			kind, key, _ := strings.Cut(tc.missing, " ")
			ns, name, _ := strings.Cut(key, "/")
			switch kind {
			case "Service":
				if m.Service(ns, name) != nil {
					t.Errorf("%s was kept", tc.missing)
				}
			case "Pod":
				if m.Workload(ns, name) != nil {
					t.Errorf("%s was kept", tc.missing)
				}
			case "Gateway":
				if m.Waypoint(ns, name) != nil || m.Workload(ns, name) != nil {
					t.Errorf("%s was kept", tc.missing)
				}
			}
		})
	}
}

func TestDefaultsAndRemarks(t *testing.T) {
	m := build(t, model.DefaultConfig(), nsAmbient, `
apiVersion: v1
kind: Pod
metadata: {name: no-sa, namespace: shop}`, `
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP}]`, `
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: shop}
status: {phase: Succeeded}`, `
apiVersion: v1
kind: Pod
metadata: {name: elsewhere, namespace: other}`, `
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-ingress, namespace: shop}`)
	noErrors(t, m)
	if sa := workload(t, m, "shop", "no-sa").ServiceAccount; sa != "default" {
		t.Errorf("service account = %q, want default (as Kubernetes sets it)", sa)
	}
	if len(m.Waypoints) != 0 || m.Workload("shop", "ingress") != nil {
		t.Errorf("a Gateway of class istio is not a waypoint")
	}
	if g := m.IngressGateway("shop", "ingress"); g == nil || g.ServiceAccount != "ingress-istio" {
		t.Errorf("a Gateway of class istio is an ingress gateway running as ingress-istio: %+v", g)
	}
	if m.Workload("shop", "done") != nil {
		t.Errorf("a finished pod is not in the mesh")
	}
	want := strings.Join([]string{
		`test.yaml:19 (document 4): Pod shop/done: status.phase: a Succeeded pod is not part of the mesh`,
		`test.yaml:25 (document 5): Namespace other: not defined; its objects are treated as in a namespace without labels (not in the ambient mesh)`,
	}, "\n")
	if got := messages(m.Warnings); got != want {
		t.Errorf("warnings:\n%s\nwant:\n%s", got, want)
	}
}

// TestDefinedTwice: the later definition wins; a Namespace's labels are merged, as applying
// handson's k8s-gateway.yaml after mesh.yaml adds use-waypoint to the namespace.
func TestDefinedTwice(t *testing.T) {
	m := build(t, model.DefaultConfig(), nsAmbient, podCart, `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/use-waypoint: wp}}`,
		strings.Replace(podCart, "node-a", "node-b", 1), waypointGateway("wp", ""), svcCart)
	noErrors(t, m)
	ns := m.Namespace("shop")
	if !ns.Ambient || ns.Labels["istio.io/use-waypoint"] != "wp" {
		t.Errorf("namespace labels not merged: %v", ns.Labels)
	}
	if node := workload(t, m, "shop", "cart").Node; node != "node-b" {
		t.Errorf("the later pod definition should win, node = %q", node)
	}
	if got := messages(m.Warnings); got != `test.yaml:6 (document 2): Pod shop/cart: defined again at test.yaml:17 (document 4); that definition is used` {
		t.Errorf("warnings:\n%s", got)
	}
}

func TestPlacement(t *testing.T) {
	pods := []string{nsAmbient, podCart, svcCart, strings.Replace(podCart, "name: cart,", "name: cart-2,", 1)}
	a := build(t, model.DefaultConfig(), pods...)
	b := build(t, model.DefaultConfig(), pods...)
	ip := func(m *model.Mesh, name string) netip.Addr { return workload(t, m, "shop", name).IPs[0] }
	if ip(a, "cart") != ip(b, "cart") || ip(a, "cart-2") != ip(b, "cart-2") || a.Services[0].VIPs[0] != b.Services[0].VIPs[0] {
		t.Fatal("allocation is not deterministic")
	}
	if !model.DefaultPlacement.PodCIDR.Contains(ip(a, "cart")) || !model.DefaultPlacement.ServiceCIDR.Contains(service(t, a, "shop", "cart").VIPs[0]) {
		t.Errorf("addresses outside the default ranges")
	}
	// Adding objects (a pod that sorts before, a waypoint) moves no existing address.
	c := build(t, model.DefaultConfig(), append(pods, strings.Replace(podCart, "name: cart,", "name: a-first,", 1), waypointGateway("wp", ""))...)
	if ip(c, "cart") != ip(a, "cart") || ip(c, "cart-2") != ip(a, "cart-2") || service(t, c, "shop", "cart").VIPs[0] != a.Services[0].VIPs[0] {
		t.Errorf("adding objects moved addresses")
	}
	// Explicit addresses are kept, and allocation avoids them.
	explicit := build(t, model.DefaultConfig(), nsAmbient, strings.Replace(podCart, "spec:", "status: {podIP: "+ip(a, "cart-2").String()+"}\nspec:", 1),
		strings.Replace(podCart, "name: cart,", "name: cart-2,", 1))
	if ip(explicit, "cart") != ip(a, "cart-2") || ip(explicit, "cart-2") == ip(a, "cart-2") {
		t.Errorf("explicit address not kept or not avoided: %v %v", ip(explicit, "cart"), ip(explicit, "cart-2"))
	}
	// Loopback placement.
	cfg := model.DefaultConfig()
	cfg.Placement = model.LoopbackPlacement
	lo := build(t, cfg, pods...)
	if !ip(lo, "cart").IsLoopback() || !service(t, lo, "shop", "cart").VIPs[0].IsLoopback() {
		t.Errorf("loopback placement gave %v, %v", ip(lo, "cart"), lo.Services[0].VIPs)
	}
}

func TestNamedTargetPort(t *testing.T) {
	m := build(t, model.DefaultConfig(), nsAmbient, `
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http-alt}, {name: admin, port: 9000, targetPort: admin}]`, `
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {containers: [{name: app, ports: [{name: http-alt, containerPort: 8080}]}]}`)
	noErrors(t, m)
	ws := workload(t, m, "shop", "web-1").Services
	if len(ws) != 1 || len(ws[0].Ports) != 1 || ws[0].Ports[0] != (model.PortMapping{ServicePort: 80, TargetPort: 8080}) {
		t.Errorf("services = %+v, want port 80 → 8080 only (no container port named admin)", ws)
	}
	if p := service(t, m, "shop", "web").Ports[0]; p.TargetPort != 0 || p.TargetPortName != "http-alt" {
		t.Errorf("service port = %+v", p)
	}
}

func TestScenarios(t *testing.T) {
	cfg := model.DefaultConfig()
	cfg.Placement = model.LoopbackPlacement
	step1 := buildFiles(t, cfg, "handson/mesh.yaml")
	step3 := buildFiles(t, cfg, "handson/mesh.yaml", "handson/k8s-gateway.yaml", "handson/L7-authorization-policy.yaml")
	all := buildFiles(t, cfg, "handson/L4-authorization-policy.yaml", "handson/L7-authorization-policy.yaml", "handson/k8s-gateway.yaml", "handson/mesh.yaml")
	for _, m := range []*model.Mesh{step1, step3, all} {
		noErrors(t, m)
	}
	for _, name := range []string{"handson-blue", "curl", "curl-allow", "curl-deny"} {
		if a, b := workload(t, step1, "handson", name).IPs, workload(t, step3, "handson", name).IPs; a[0] != b[0] {
			t.Errorf("%s moved from %v to %v when the waypoint was added", name, a, b)
		}
		if w := workload(t, step3, "handson", name); !w.Ambient || w.Waypoint != nil || w.Node == "" {
			t.Errorf("%s: ambient=%v waypoint=%v node=%q", name, w.Ambient, w.Waypoint, w.Node)
		}
	}
	for _, m := range []*model.Mesh{step3, all} {
		wp := m.Waypoint("handson", "handson")
		if wp == nil || service(t, m, "handson", "handson").Waypoint != wp {
			t.Fatalf("Service handson/handson does not use the waypoint handson/handson")
		}
		if wp.ServiceAccount != "handson-istio-waypoint" || wp.Service.Name != "handson-istio-waypoint" || !wp.Address.IsLoopback() || wp.Instances[0].Node != "worker" {
			t.Errorf("waypoint = %+v", wp)
		}
	}
	if n := len(all.Policies.AuthorizationPolicies); n != 2 {
		t.Errorf("%d policies", n)
	}
	for _, files := range [][]string{
		{"bookinfo-lite/mesh.yaml", "bookinfo-lite/allow-nothing.yaml", "bookinfo-lite/rbac.yaml"},
		{"demo-strict/mesh.yaml", "demo-strict/peer-authentication.yaml", "demo-strict/authz-policy.yaml"},
	} {
		m := buildFiles(t, cfg, files...)
		noErrors(t, m)
		if len(m.Warnings) > 0 {
			t.Errorf("%v: warnings:\n%s", files, messages(m.Warnings))
		}
	}
}

func TestProtocol(t *testing.T) {
	for _, tc := range []struct {
		port model.ServicePort
		want model.Protocol
	}{
		{model.ServicePort{Name: "http", Port: 80, Transport: "TCP"}, model.ProtocolHTTP},
		{model.ServicePort{Name: "http-web", Port: 80, Transport: "TCP"}, model.ProtocolHTTP},
		{model.ServicePort{Name: "HTTP2", Port: 80, Transport: "TCP"}, model.ProtocolHTTP2},
		{model.ServicePort{Name: "grpc-web-x", Port: 80, Transport: "TCP"}, model.ProtocolGRPCWeb},
		{model.ServicePort{Name: "web", Port: 80, Transport: "TCP", AppProtocol: "http"}, model.ProtocolHTTP},
		{model.ServicePort{Name: "http", Port: 80, Transport: "TCP", AppProtocol: "kubernetes.io/h2c"}, model.ProtocolHTTP2},
		{model.ServicePort{Name: "web", Port: 80, Transport: "TCP"}, model.ProtocolUnsupported},
		{model.ServicePort{Name: "db", Port: 3306, Transport: "TCP"}, model.ProtocolTCP},
		{model.ServicePort{Name: "http", Port: 53, Transport: "UDP"}, model.ProtocolUDP},
	} {
		if got := tc.port.Protocol(); got != tc.want {
			t.Errorf("%+v: %s, want %s", tc.port, got, tc.want)
		}
	}
}

// TestBuildConcurrently: sources may build from the same objects at once (run with -race).
func TestBuildConcurrently(t *testing.T) {
	set, _, err := kubeobj.Load([]byte(strings.Join([]string{nsAmbient, podCart, svcCart, waypointGateway("wp", ""), "kind: Pod\napiVersion: v1\nmetadata: {name: bare}"}, "\n---\n")), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan *model.Mesh)
	for range 2 {
		go func() {
			m, _ := model.Build(set, model.DefaultConfig())
			done <- m
		}()
	}
	a, b := <-done, <-done
	if len(a.Workloads) != 3 || len(b.Workloads) != 3 || a.Workloads[0].IPs[0] != b.Workloads[0].IPs[0] {
		t.Errorf("builds differ")
	}
	if set.Pods[1].Metadata.Namespace != "" || a.Workload("default", "bare") == nil {
		t.Errorf("input modified")
	}
}
