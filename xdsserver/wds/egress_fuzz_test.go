package wds

import (
	"os"
	"testing"

	"github.com/goambient/goambient/xdsserver/kubeobj"
	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/ztunnel/state"
)

// FuzzEgressState: whatever ServiceEntries and WorkloadEntries a mesh has, the workload API it
// translates to is one a ztunnel accepts (state.New refuses a repeated name or address, which
// would stop every ztunnel from taking the update). Seeds: the egress inputs.
func FuzzEgressState(f *testing.F) {
	for _, p := range []string{"testdata/egress.in.yaml", "../model/testdata/egress-invalid.yaml", "../../manifests/examples/egress/service-entry.yaml"} {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	cfg := model.DefaultConfig()
	f.Fuzz(func(t *testing.T, data []byte) {
		set, _, err := kubeobj.Load(data, "fuzz.yaml")
		if err != nil {
			return
		}
		m, err := model.Build(set, cfg)
		if err != nil {
			t.Fatal(err)
		}
		r := Translate(m, Options{})
		var res state.Resources
		for _, a := range r.Addresses {
			if w := a.GetWorkload(); w != nil {
				res.Workloads = append(res.Workloads, w)
			} else {
				res.Services = append(res.Services, a.GetService())
			}
		}
		res.Authorizations = r.Authorizations
		if _, err := state.New(res); err != nil {
			t.Fatalf("a ztunnel refuses the translation: %v", err)
		}
	})
}

// TestEgressCollisions: ServiceEntries and WorkloadEntries that repeat a Service's hostname, a
// pod's address or each other's are warned about and a ztunnel still accepts the translation.
func TestEgressCollisions(t *testing.T) {
	const in = `apiVersion: v1
kind: Namespace
metadata: {name: ns, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec: {clusterIP: 10.96.0.5, selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: ns, labels: {app: web}}
status: {podIP: 10.244.0.5}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: ns}
spec:
  hosts: [web.ns.svc.cluster.local, a.example.com]
  addresses: [10.96.0.5]
  resolution: STATIC
  ports: [{name: http, number: 80, protocol: HTTP}]
  endpoints: [{address: 10.244.0.5}, {address: 192.0.2.7}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: ns}
spec:
  hosts: [a.example.com, b.example.com]
  resolution: STATIC
  ports: [{name: http, number: 80, protocol: HTTP}]
  endpoints: [{address: 192.0.2.7}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm, namespace: ns}
spec: {address: 10.244.0.5}
`
	set, problems, err := kubeobj.Load([]byte(in), "collisions.yaml")
	if err != nil || len(problems) > 0 {
		t.Fatal(err, problems)
	}
	m, err := model.Build(set, model.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Warnings) < 4 {
		t.Errorf("want warnings for the hostname, the VIP and the addresses taken, got %v", m.Warnings)
	}
	r := Translate(m, Options{})
	var res state.Resources
	for _, a := range r.Addresses {
		if w := a.GetWorkload(); w != nil {
			res.Workloads = append(res.Workloads, w)
		} else {
			res.Services = append(res.Services, a.GetService())
		}
	}
	if _, err := state.New(res); err != nil {
		t.Fatalf("a ztunnel refuses the translation: %v\nwarnings: %v", err, m.Warnings)
	}
}
