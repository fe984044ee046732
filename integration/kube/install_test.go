package kube_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

// TestBundleAccepted: `kubectl apply --server-side -k manifests/install` (done by cluster())
// created every object and every CRD is Established; the scenarios' YAML was accepted by the
// real CRD validation (cluster() applied it); and the schemas are in force: objects Istio's
// and Gateway API's CRDs forbid are refused by the API server.
func TestBundleAccepted(t *testing.T) {
	e := cluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, want := range []string{
		"customresourcedefinition.apiextensions.k8s.io/authorizationpolicies.security.istio.io serverside-applied",
		"customresourcedefinition.apiextensions.k8s.io/gateways.gateway.networking.k8s.io serverside-applied",
		"namespace/istio-system serverside-applied",
		"clusterrole.rbac.authorization.k8s.io/goambient-xdsserver serverside-applied",
		"deployment.apps/xdsserver serverside-applied",
		"service/istiod serverside-applied",
		"daemonset.apps/ztunnel serverside-applied",
	} {
		if !strings.Contains(e.applyOut, want) {
			t.Errorf("kubectl apply did not say %q:\n%s", want, e.applyOut)
		}
	}
	dyn, err := dynamic.NewForConfig(e.s.Config)
	if err != nil {
		t.Fatal(err)
	}
	crds, err := dyn.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	groups := map[string]int{}
	for _, u := range crds.Items {
		group, _, _ := unstructured.NestedString(u.Object, "spec", "group")
		groups[group]++
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		established := false
		for _, c := range conds {
			m, _ := c.(map[string]any)
			established = established || m["type"] == "Established" && m["status"] == "True"
		}
		if !established {
			t.Errorf("CRD %s is not Established", u.GetName())
		}
	}
	for _, g := range []string{"security.istio.io", "networking.istio.io", "telemetry.istio.io", "extensions.istio.io", "gateway.networking.k8s.io"} {
		if groups[g] == 0 {
			t.Errorf("no CRD of %s: %v", g, groups)
		}
	}
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown action", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-action, namespace: default}
spec: {action: MAYBE}
`, "Unsupported value"},
		{"Gateway without listeners", `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bad-gateway, namespace: default}
spec: {gatewayClassName: istio-waypoint, listeners: []}
`, "listeners"},
		{"unknown PeerAuthentication mode", `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: bad-mode, namespace: default}
spec: {mtls: {mode: SOMETIMES}}
`, "Unsupported value"},
	} {
		f := filepath.Join(t.TempDir(), "bad.yaml")
		os.WriteFile(f, []byte(tc.yaml), 0o644)
		out, err := e.s.Kubectl(ctx, "apply", "--server-side", "-f", f)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: accepted, or refused for another reason (want %q): %v\n%s", tc.name, tc.want, err, out)
		}
	}
}
