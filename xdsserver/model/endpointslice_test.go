package model_test

import (
	"strings"
	"testing"

	"github.com/goambient/goambient/xdsserver/model"
)

// TestEndpointSliceTargetRef: a Service without selector is in front of the pods its
// EndpointSlices name, matched as istiod matches them, by namespace, name and uid: a targetRef
// of a pod since replaced (another uid) or without the uid of a pod that has one names no pod
// (and is warned about), so the pod does not get the Service.
func TestEndpointSliceTargetRef(t *testing.T) {
	pod := func(uid string) string {
		meta := "{name: db-0, namespace: shop}"
		if uid != "" {
			meta = "{name: db-0, namespace: shop, uid: " + uid + "}"
		}
		return `
apiVersion: v1
kind: Pod
metadata: ` + meta + `
spec: {nodeName: node-a}
status: {podIP: 10.244.3.9}`
	}
	const svc = `
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: tcp-db, port: 5432}]`
	slice := func(ref string) string {
		return `
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-abc, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints:
- addresses: [10.244.3.9]
  targetRef: ` + ref
	}
	for _, tc := range []struct {
		name, pod, ref string
		want           bool
	}{
		{"same uid", pod("u-1"), "{kind: Pod, namespace: shop, name: db-0, uid: u-1}", true},
		{"stale uid", pod("u-2"), "{kind: Pod, namespace: shop, name: db-0, uid: u-1}", false},
		{"targetRef without uid", pod("u-1"), "{kind: Pod, namespace: shop, name: db-0}", false},
		{"neither has a uid (a folder of YAML)", pod(""), "{kind: Pod, namespace: shop, name: db-0}", true},
		{"targetRef without namespace", pod(""), "{kind: Pod, name: db-0}", false},
		{"not a pod", pod(""), "{kind: Node, namespace: shop, name: db-0}", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := build(t, model.DefaultConfig(), nsPlain, tc.pod, svc, slice(tc.ref))
			noErrors(t, m)
			w := workload(t, m, "shop", "db-0")
			if got := len(w.Services) == 1 && w.Services[0].Service.Name == "db"; got != tc.want {
				t.Fatalf("pod behind Service db: %v, want %v (services %+v)", got, tc.want, w.Services)
			}
			warned := strings.Contains(messages(m.Warnings), "endpoints[0].targetRef: names no pod")
			if warned != (!tc.want && strings.Contains(tc.ref, "Pod")) {
				t.Errorf("warnings:\n%s", messages(m.Warnings))
			}
		})
	}
}
