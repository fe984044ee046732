package files

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goambient/goambient/xdsserver/model"

	_ "github.com/goambient/goambient/xdsserver/internal/golden" // defines -update
)

func example(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("../../../manifests/examples", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// write replaces a file atomically (through a hidden temporary file the source ignores), as an
// editor or kubectl-like tool would, so the poller never sees it half-written.
func write(t *testing.T, dir, name, content string) {
	t.Helper()
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

func errorsOf(m *model.Mesh) string {
	var out []string
	for _, e := range m.Errors {
		out = append(out, e.Error())
	}
	return strings.Join(out, "\n")
}

// TestWatch runs the source on a folder and changes the folder under it: each change is
// pushed, and a broken file keeps its previous objects.
func TestWatch(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "mesh.yaml", example(t, "handson/mesh.yaml"))
	src := New(Options{Paths: []string{dir}, Interval: 5 * time.Millisecond, Model: model.DefaultConfig()})
	pushes := make(chan *model.Mesh, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, func(m *model.Mesh) { pushes <- m }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	// waitFor returns the first pushed mesh that satisfies cond.
	waitFor := func(what string, cond func(*model.Mesh) bool) *model.Mesh {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case m := <-pushes:
				if cond(m) {
					return m
				}
			case <-deadline:
				t.Fatalf("no push with %s", what)
			}
		}
	}
	policies := func(m *model.Mesh) int { return len(m.Policies.AuthorizationPolicies) }

	m := waitFor("the first mesh", func(m *model.Mesh) bool { return true })
	if len(m.Workloads) != 4 || policies(m) != 0 || len(m.Errors) != 0 {
		t.Fatalf("first mesh: %d workloads, %d policies, errors:\n%s", len(m.Workloads), policies(m), errorsOf(m))
	}

	write(t, dir, "policy.yaml", example(t, "handson/L4-authorization-policy.yaml"))
	waitFor("the policy added", func(m *model.Mesh) bool { return policies(m) == 1 && len(m.Errors) == 0 })

	write(t, dir, "policy.yaml", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: half\n")
	m = waitFor("the half-written file reported", func(m *model.Mesh) bool { return len(m.Errors) > 0 })
	if policies(m) != 1 || len(m.Workloads) != 4 || m.Policies.AuthorizationPolicies[0].Name != "layer4-authz" {
		t.Errorf("a broken file must keep its previous objects: %d policies, %d workloads", policies(m), len(m.Workloads))
	}
	if e := errorsOf(m); !strings.Contains(e, "policy.yaml:1 (document 1): not valid YAML") || !strings.Contains(e, "its previous objects are kept until it is fixed") {
		t.Errorf("errors:\n%s", e)
	}

	// One bad document: only it is left out.
	write(t, dir, "policy.yaml", example(t, "handson/L4-authorization-policy.yaml")+`---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: handson}
spec: {action: ALLOW, rules: [{to: [{operation: {ports: [http]}}]}]}
`)
	m = waitFor("the bad document reported", func(m *model.Mesh) bool { return strings.Contains(errorsOf(m), "AuthorizationPolicy handson/bad") })
	if policies(m) != 1 || len(m.Errors) != 1 || !strings.Contains(errorsOf(m), "policy.yaml:22 (document 2): AuthorizationPolicy handson/bad: spec.rules[0].to[0].operation.ports[0]") {
		t.Errorf("%d policies, errors:\n%s", policies(m), errorsOf(m))
	}

	if err := os.Remove(filepath.Join(dir, "policy.yaml")); err != nil {
		t.Fatal(err)
	}
	waitFor("the policy removed", func(m *model.Mesh) bool { return policies(m) == 0 && len(m.Errors) == 0 })

	// A new file that was never valid is skipped, and the rest stays.
	write(t, dir, "gateway.yaml", "kind: Gateway\nspec: [\n")
	m = waitFor("the broken new file reported", func(m *model.Mesh) bool { return len(m.Errors) > 0 })
	if len(m.Workloads) != 4 || !strings.Contains(errorsOf(m), "the file is skipped until it is fixed") {
		t.Errorf("%d workloads, errors:\n%s", len(m.Workloads), errorsOf(m))
	}
	write(t, dir, "gateway.yaml", example(t, "handson/k8s-gateway.yaml"))
	m = waitFor("the waypoint", func(m *model.Mesh) bool { return len(m.Waypoints) == 1 })
	if len(m.Errors) != 0 || m.Service("handson", "handson").Waypoint == nil {
		t.Errorf("errors:\n%s", errorsOf(m))
	}
}

// TestPollOnlyOnChange: rewriting a file with the same content, or touching it, rebuilds nothing.
func TestPollOnlyOnChange(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "mesh.yaml", example(t, "handson/mesh.yaml"))
	write(t, dir, "notes.txt", "not configuration")
	src := New(Options{Paths: []string{dir}})
	if _, err := src.Load(); err != nil {
		t.Fatal(err)
	}
	if src.poll() {
		t.Error("nothing changed, yet poll wants a rebuild")
	}
	write(t, dir, "mesh.yaml", example(t, "handson/mesh.yaml"))
	future := time.Now().Add(time.Hour)
	if err := os.Chtimes(filepath.Join(dir, "mesh.yaml"), future, future); err != nil {
		t.Fatal(err)
	}
	if src.poll() {
		t.Error("same content, yet poll wants a rebuild")
	}
	write(t, dir, "mesh.yaml", strings.Replace(example(t, "handson/mesh.yaml"), "worker2", "worker3", 1))
	if !src.poll() {
		t.Error("content changed, yet poll does not want a rebuild")
	}
}

func TestSeveralPaths(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	write(t, a, "mesh.yaml", example(t, "demo-strict/mesh.yaml"))
	if err := os.MkdirAll(filepath.Join(b, "nested", ".hidden"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(b, "nested"), "pa.yml", example(t, "demo-strict/peer-authentication.yaml"))
	write(t, filepath.Join(b, "nested", ".hidden"), "ignored.yaml", example(t, "demo-strict/authz-policy.yaml"))
	single := filepath.Join(t.TempDir(), "authz.json")
	if err := os.WriteFile(single, []byte(`{"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy","metadata":{"name":"deny-all","namespace":"demo"},"spec":{"action":"DENY","rules":[{}]}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := New(Options{Paths: []string{a, b, single, filepath.Join(a, "missing")}, Model: model.DefaultConfig()}).Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Errors) != 0 || len(m.Workloads) != 4 || len(m.Policies.PeerAuthentications) != 1 || len(m.Policies.AuthorizationPolicies) != 1 {
		t.Errorf("%d workloads, %d peer authentications, %d policies, errors:\n%s", len(m.Workloads), len(m.Policies.PeerAuthentications), len(m.Policies.AuthorizationPolicies), errorsOf(m))
	}
	if _, err := New(Options{}).Load(); err == nil {
		t.Error("no path: want an error")
	}
}
