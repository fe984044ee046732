package gatewaydeploy

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/bootstrap/internal_listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/goambient/goambient/xdsserver/internal/golden"
	"github.com/goambient/goambient/xdsserver/model"
)

// gateway reads a Gateway from testdata (the scenario's YAML), with a UID as the API server
// would give it.
func gateway(t *testing.T, file string) *gatewayv1.Gateway {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	doc, _, _ := bytes.Cut(b, []byte("\n---"))
	var gw gatewayv1.Gateway
	if err := yaml.UnmarshalStrict(doc, &gw); err != nil {
		t.Fatal(err)
	}
	gw.UID = "7c9d2a1e-0000-4000-8000-000000000001"
	return &gw
}

func testOptions(t *testing.T, proxy Proxy) *Options {
	t.Helper()
	o := &Options{Proxy: proxy}
	o.Kube, o.Gateway = nil, nil
	if err := o.withDefaults(); err != nil {
		t.Fatal(err)
	}
	return o
}

// render is what the controller applies for gw, as YAML documents.
func render(t *testing.T, gw *gatewayv1.Gateway, names model.DeployedNames, proxy Proxy, p params) string {
	t.Helper()
	class := classInfos[builtinClasses[string(gw.Spec.GatewayClassName)]]
	in := newInput(gw, class, names, proxy)
	var out []string
	for _, o := range []struct {
		key string
		obj runtime.Object
	}{{"serviceAccount", in.serviceAccount()}, {"deployment", in.deployment(testOptions(t, proxy))}, {"service", in.service()}} {
		m, err := p.overlay(o.key, o.obj)
		if err != nil {
			t.Fatal(err)
		}
		y, err := yaml.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(y))
	}
	return strings.Join(out, "---\n")
}

// TestRenderGolden: handson's waypoint (under its fallback name, as in the cluster where the
// namespace has a Service and a ServiceAccount handson) with Envoy and with the Go waypoint,
// and an ingress Gateway with both (the Go one's ADS on the TLS listener with the projected
// token, where its certificates are), are rendered as the goldens say (istiod's templates' labels,
// annotations, owner, ports; the pod templates of this project's proxies).
func TestRenderGolden(t *testing.T) {
	handson := gateway(t, "../../manifests/examples/handson/k8s-gateway.yaml")
	fallback := model.DeployedNames{Name: "handson-istio-waypoint", ServiceAccount: "handson-istio-waypoint"}
	golden.Check(t, "testdata/handson-envoy.yaml", render(t, handson, fallback, ProxyEnvoy, nil))
	golden.Check(t, "testdata/handson-go.yaml", render(t, handson, fallback, ProxyGo, nil))
	ingress := gateway(t, "testdata/ingress.in.yaml")
	golden.Check(t, "testdata/ingress.yaml", render(t, ingress, model.DeployedNames{Name: "ingress-istio", ServiceAccount: "ingress-istio"}, ProxyEnvoy, nil))
	golden.Check(t, "testdata/ingress-go.yaml", render(t, ingress, model.DeployedNames{Name: "ingress-istio", ServiceAccount: "ingress-istio"}, ProxyGo, nil))
}

// TestOverlays: Istio's parameters ConfigMaps patch the objects (strategic merge), in order;
// an overlay may not rename or re-own an object; unknown keys and bad proxies are refused.
func TestOverlays(t *testing.T) {
	gw := gateway(t, "../../manifests/examples/handson/k8s-gateway.yaml")
	names := model.DeployedNames{Name: "handson-istio-waypoint", ServiceAccount: "handson-istio-waypoint"}
	p := params{
		{"deployment": "spec:\n  replicas: 2\n  template:\n    spec:\n      containers:\n      - name: istio-proxy\n        resources: {limits: {memory: 1Gi}}\n"},
		{"deployment": "spec: {replicas: 3}", "service": "metadata: {annotations: {a: b}}", ProxyKey: "go"},
	}
	if err := p.check(); err != nil {
		t.Fatal(err)
	}
	out := render(t, gw, names, p.proxy(ProxyEnvoy), p)
	for _, want := range []string{"replicas: 3", "memory: 1Gi", "a: b", "image: goambient/waypoint:dev"} {
		if !strings.Contains(out, want) {
			t.Errorf("overlaid objects lack %q:\n%s", want, out)
		}
	}
	for _, tc := range []struct {
		p    params
		want string
	}{
		{params{{"horizontalPodAutoscaler": "spec: {}"}}, `unsupported key "horizontalPodAutoscaler"`},
		{params{{ProxyKey: "nginx"}}, `unknown proxy "nginx"`},
	} {
		if err := tc.p.check(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.p, err, tc.want)
		}
	}
	in := newInput(gw, classInfos[MeshController], names, ProxyEnvoy)
	for _, bad := range []string{"metadata: {name: other}", "metadata: {ownerReferences: [{apiVersion: v1, kind: ConfigMap, name: x, uid: u}]}", "spec: {ports: 3}"} {
		if _, err := (params{{"service": bad}}).overlay("service", in.service()); err == nil {
			t.Errorf("overlay %q was accepted", bad)
		}
	}
}

// TestBootstrap: the Envoy pods' bootstrap, once the start script put a token in, is an Envoy
// Bootstrap that validates: ADS over TLS to xdsserver's 15012 with the token, readiness and
// stats listeners on 15021 and 15090 towards the loopback admin.
func TestBootstrap(t *testing.T) {
	o := testOptions(t, ProxyEnvoy)
	js, err := yaml.YAMLToJSON([]byte(strings.ReplaceAll(o.bootstrap, tokenPlaceholder, "eyJhbGciOi.token.sig")))
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrap.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatalf("not a Bootstrap: %v", err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	md := b.GetDynamicResources().GetAdsConfig().GetGrpcServices()[0].GetInitialMetadata()
	if len(md) != 1 || md[0].GetValue() != "Bearer eyJhbGciOi.token.sig" {
		t.Errorf("initial metadata %v", md)
	}
	var xds, listeners []string
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == "xds-grpc" {
			sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
			xds = append(xds, sa.GetAddress(), string(rune('0'+sa.GetPortValue()/10000)))
		}
	}
	for _, l := range b.GetStaticResources().GetListeners() {
		listeners = append(listeners, l.GetName())
	}
	if len(xds) != 2 || xds[0] != "istiod.istio-system.svc" || !strings.Contains(o.bootstrap, "port_value: 15012") || !strings.Contains(o.bootstrap, rootFile) {
		t.Errorf("xds-grpc: %v", xds)
	}
	if strings.Join(listeners, ",") != "readiness,prometheus" {
		t.Errorf("listeners %v", listeners)
	}
	if b.GetAdmin().GetAddress().GetSocketAddress().GetAddress() != "127.0.0.1" {
		t.Error("the admin interface is not on loopback")
	}
}

// TestEnvoyStart runs the Envoy container's start script under /bin/sh with the pod's
// environment and a stand-in envoy on PATH that records what it was started with: the
// bootstrap written has the token, Envoy gets it and Istio's node id and cluster.
func TestEnvoyStart(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	dir := t.TempDir()
	o := testOptions(t, ProxyEnvoy)
	in := newInput(gateway(t, "../../manifests/examples/handson/k8s-gateway.yaml"), classInfos[MeshController],
		model.DeployedNames{Name: "handson-istio-waypoint", ServiceAccount: "handson-istio-waypoint"}, ProxyEnvoy)
	c := in.podSpec(o).Containers[0]
	script := c.Command[2]
	// The pod's paths, moved into dir.
	script = strings.ReplaceAll(script, tokenFile, filepath.Join(dir, "istio-token"))
	script = strings.ReplaceAll(script, bootstrapDir, dir)
	os.WriteFile(filepath.Join(dir, "istio-token"), []byte("the.projected.token"), 0o600)
	os.WriteFile(filepath.Join(dir, "envoy"), []byte("#!/bin/sh\nprintf '%s\\n' \"$@\" > \""+dir+"/args\"\n"), 0o755)
	env := []string{"PATH=" + dir + ":/usr/bin:/bin", "INSTANCE_IP=10.244.0.7", "POD_NAME=handson-istio-waypoint-5d9c-x2",
		"POD_NAMESPACE=handson", "SERVICE_ACCOUNT=handson-istio-waypoint"}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env = append(env, e.Name+"="+e.Value)
		}
	}
	cmd := exec.Command(sh, "-c", script)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	args, _ := os.ReadFile(filepath.Join(dir, "args"))
	want := "-c\n" + dir + "/envoy.yaml\n--service-node\nwaypoint~10.244.0.7~handson-istio-waypoint-5d9c-x2.handson~handson.svc.cluster.local\n--service-cluster\nhandson-istio-waypoint.handson\n"
	if string(args) != want {
		t.Errorf("envoy started with\n%s\nwant\n%s", args, want)
	}
	written, _ := os.ReadFile(filepath.Join(dir, "envoy.yaml"))
	if !strings.Contains(string(written), "value: Bearer the.projected.token\n") || strings.Contains(string(written), tokenPlaceholder) {
		t.Errorf("the bootstrap written does not carry the token:\n%s", written)
	}
	if string(written) != strings.ReplaceAll(o.bootstrap, tokenPlaceholder, "the.projected.token")+"\n" {
		t.Error("the bootstrap written differs from the rendered one beyond the token")
	}
}

// TestServicePorts: istiod's port naming (dots, length, duplicates) and one port per number.
func TestServicePorts(t *testing.T) {
	gw := &gatewayv1.Gateway{Spec: gatewayv1.GatewaySpec{Listeners: []gatewayv1.Listener{
		{Name: "a.b", Port: 80, Protocol: "HTTP"}, {Name: "a-b", Port: 8080, Protocol: "HTTP"}, {Name: "again", Port: 80, Protocol: "HTTP"},
		{Name: gatewayv1.SectionName(strings.Repeat("x", 70)), Port: 443, Protocol: "HTTPS"},
	}}}
	got, _ := json.Marshal(servicePorts(gw))
	var ports []corev1.ServicePort
	json.Unmarshal(got, &ports)
	var names []string
	for _, p := range ports {
		names = append(names, p.Name+":"+string(rune('0'+p.Port%10))+":"+*p.AppProtocol)
	}
	want := []string{"status-port:1:tcp", "a-b:0:http", "a-b-8080:0:http", strings.Repeat("x", 63) + ":3:https"}
	if strings.Join(names, ",") != strings.Join(want, ",") {
		t.Errorf("ports %v, want %v", names, want)
	}
}
