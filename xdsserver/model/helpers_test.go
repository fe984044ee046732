package model_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/goambient/goambient/xdsserver/internal/golden" // defines -update
	"github.com/goambient/goambient/xdsserver/kubeobj"
	"github.com/goambient/goambient/xdsserver/model"
)

// build builds a mesh from YAML documents, as the files source does, and checks it is valid.
func build(t *testing.T, cfg model.Config, docs ...string) *model.Mesh {
	t.Helper()
	set, problems, err := kubeobj.Load([]byte(strings.Join(docs, "\n---\n")), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
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

// buildFiles builds a mesh from files of the examples folder.
func buildFiles(t *testing.T, cfg model.Config, files ...string) *model.Mesh {
	t.Helper()
	all := &kubeobj.Set{}
	var problems []error
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join("../../manifests/examples", f))
		if err != nil {
			t.Fatal(err)
		}
		set, errs, err := kubeobj.Load(data, f)
		if err != nil {
			t.Fatal(err)
		}
		all.Append(set)
		problems = append(problems, errs...)
	}
	m, err := model.Build(all, cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.Errors = append(problems, m.Errors...)
	if err := m.Validate(); err != nil {
		t.Fatalf("built mesh is not valid: %v", err)
	}
	return m
}

func messages(errs []error) string {
	var out []string
	for _, e := range errs {
		out = append(out, e.Error())
	}
	return strings.Join(out, "\n")
}

func noErrors(t *testing.T, m *model.Mesh) {
	t.Helper()
	if len(m.Errors) > 0 {
		t.Fatalf("unexpected errors:\n%s", messages(m.Errors))
	}
}

func workload(t *testing.T, m *model.Mesh, ns, name string) *model.Workload {
	t.Helper()
	w := m.Workload(ns, name)
	if w == nil {
		t.Fatalf("no workload %s/%s; errors:\n%s", ns, name, messages(m.Errors))
	}
	return w
}

func service(t *testing.T, m *model.Mesh, ns, name string) *model.Service {
	t.Helper()
	s := m.Service(ns, name)
	if s == nil {
		t.Fatalf("no service %s/%s; errors:\n%s", ns, name, messages(m.Errors))
	}
	return s
}

func waypointKey(w *model.Waypoint) string {
	if w == nil {
		return ""
	}
	return w.Key()
}

const (
	nsAmbient = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}`
	nsPlain = `
apiVersion: v1
kind: Namespace
metadata: {name: shop}`
	podCart = `
apiVersion: v1
kind: Pod
metadata: {name: cart, namespace: shop, labels: {app: cart}}
spec: {serviceAccountName: cart, nodeName: node-a}`
	svcCart = `
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: 8080}]`
)

// waypointGateway is a waypoint Gateway in shop with the given waypoint-for ("" for none).
func waypointGateway(name, trafficType string) string {
	labels := ""
	if trafficType != "" {
		labels = "\n  labels: {istio.io/waypoint-for: " + trafficType + "}"
	}
	return `
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: ` + name + `
  namespace: shop` + labels + `
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]`
}
