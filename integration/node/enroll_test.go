package node

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// enrollYAML: a namespace without the ambient label, a server and a client started before the
// namespace joins the mesh.
const enrollYAML = `apiVersion: v1
kind: Namespace
metadata: {name: enroll}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: server, namespace: enroll}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: enroll}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: enroll}
spec:
  selector: {app: server}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: enroll, labels: {app: server}}
spec:
  serviceAccountName: server
  containers: [{name: server, image: echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: enroll, labels: {app: client}}
spec:
  serviceAccountName: client
  containers: [{name: client, image: curl}]
`

// TestEnrollByLabel: "enroll by label, no restart" (the Korean lab) — pods running before their
// namespace is labelled istio.io/dataplane-mode=ambient are captured by istio-cni once it is,
// without a restart, and their traffic then goes through the ztunnel with their identities.
func TestEnrollByLabel(t *testing.T) {
	n := testNode(t)
	s := newScenario(t, n, "handson", "enroll") // only its kubectl helpers: the YAML is inline
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		n.Kubectl(ctx, "delete", "namespace", "enroll", "--wait=true", "--timeout=2m")
	})
	r, err := renderForNode([]byte(enrollYAML))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(n.Dir, "enroll.yaml")
	if err := os.WriteFile(path, r, 0o644); err != nil {
		t.Fatal(err)
	}
	s.kubectl("apply", "-f", path)
	s.kubectl("-n", "enroll", "wait", "--for=condition=Ready", "pod", "--all", "--timeout=3m")
	uids := s.kubectl("-n", "enroll", "get", "pods", "-o", "jsonpath={.items[*].metadata.uid}")
	s.expectCurl("client", "200", "http://server:8080/")
	if a := s.kubectl("-n", "enroll", "get", "pod", "server", "-o", "jsonpath={.metadata.annotations}"); strings.Contains(a, "ambient.istio.io/redirection") {
		t.Fatalf("the server is redirected before the label: %s", a)
	}

	s.kubectl("label", "namespace", "enroll", "istio.io/dataplane-mode=ambient")
	s.waitEnrolled("server", "client")
	if got := s.kubectl("-n", "enroll", "get", "pods", "-o", "jsonpath={.items[*].metadata.uid}"); got != uids {
		t.Errorf("pods were replaced: uids %s, then %s", uids, got)
	}
	if rc := s.kubectl("-n", "enroll", "get", "pods", "-o", "jsonpath={.items[*].status.containerStatuses[*].restartCount}"); strings.Trim(rc, "0 ") != "" {
		t.Errorf("containers restarted: %s", rc)
	}
	s.expectCurl("client", "200", "http://server:8080/")
	s.waitLog("istio-system", "ds/ztunnel", "spiffe://cluster.local/ns/enroll/sa/client", "spiffe://cluster.local/ns/enroll/sa/server", `direction="inbound"`)
}
