package kubeobj

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	_ "github.com/goambient/goambient/xdsserver/internal/golden" // defines -update
)

func TestLoad(t *testing.T) {
	const in = `apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: ServiceAccount, metadata: {name: cart, namespace: shop}}
- {apiVersion: v1, kind: Pod, metadata: {name: cart, namespace: shop}, spec: {serviceAccountName: cart}, status: {podIP: 10.0.0.1}}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {ports: [{port: 80, targetPort: http}, {port: 81, targetPort: 8081}, {port: 82}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: not-gateway-api}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: Gateway
metadata: {name: old, namespace: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: typo, namespace: shop}
spec: {containers: [{name: app, ports: [{containerPort: "8080"}]}]}
---
just a string
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ok, namespace: shop}
spec: {}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: bad, namespace: shop}
spec: {mtls: {mode: SOMETIMES}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: mine}
spec: {controllerName: istio.io/mesh-controller}
`
	set, problems, err := Load([]byte(in), "in.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Namespaces) != 1 || len(set.ServiceAccounts) != 1 || len(set.Pods) != 1 || len(set.Services) != 1 ||
		len(set.Gateways) != 0 || len(set.GatewayClasses) != 1 || len(set.Policies.AuthorizationPolicies) != 1 || set.Len() != 6 {
		t.Errorf("set = %+v", set)
	}
	ports := set.Services[0].Spec.Ports
	if !ports[0].TargetPort.IsString || ports[0].TargetPort.StrVal != "http" || ports[1].TargetPort.IntVal != 8081 || !ports[2].TargetPort.IsZero() {
		t.Errorf("target ports = %+v", ports)
	}
	var got []string
	for _, p := range problems {
		got = append(got, p.Error())
	}
	want := []string{
		`in.yaml:24 (document 6): Gateway shop/old: apiVersion: "gateway.networking.k8s.io/v1alpha2" is not supported; use gateway.networking.k8s.io/v1 or gateway.networking.k8s.io/v1beta1`,
		`in.yaml:28 (document 7): Pod shop/typo: spec.containers.ports.containerPort: expected a number, found string`,
		`in.yaml:33 (document 8): not a Kubernetes object (a mapping with apiVersion, kind and metadata)`,
		`in.yaml:40 (document 10): PeerAuthentication shop/bad: spec: invalid value for enum field mode: "SOMETIMES"`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestLoadSyntaxError(t *testing.T) {
	set, problems, err := Load([]byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: Pod\nmetadata: {name: [\n"), "half.yaml")
	if !errors.Is(err, ErrSyntax) || set != nil || problems != nil {
		t.Fatalf("set=%v problems=%v err=%v: a file with a YAML syntax error is unusable as a whole", set, problems, err)
	}
	if !strings.Contains(err.Error(), "half.yaml:5 (document 2): not valid YAML") {
		t.Errorf("err = %v", err)
	}
}

func TestIntOrString(t *testing.T) {
	for _, in := range []string{`8080`, `"http"`} {
		var v IntOrString
		if err := json.Unmarshal([]byte(in), &v); err != nil {
			t.Fatal(err)
		}
		out, _ := json.Marshal(v)
		if string(out) != in || v.String() != strings.Trim(in, `"`) {
			t.Errorf("%s → %+v → %s", in, v, out)
		}
	}
	var v IntOrString
	if err := json.Unmarshal([]byte(`true`), &v); err == nil {
		t.Error("true is not a port")
	}
}
