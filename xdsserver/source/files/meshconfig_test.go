package files

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/goambient/goambient/xdsserver/model"
)

// TestMeshConfigFile: a mesh config file given to the source is read as the istio
// ConfigMap (its providers in the mesh, its problems naming the file and field), a change is
// seen by the next poll, and an unreadable file keeps the previous providers.
func TestMeshConfigFile(t *testing.T) {
	dir := t.TempDir()
	mc := filepath.Join(t.TempDir(), "mesh")
	write := func(s string) {
		if err := os.WriteFile(mc, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("extensionProviders:\n- name: opa\n  envoyExtAuthzGrpc: {service: opa.auth.svc.cluster.local, port: 9191}\n- name: bad\n  envoyExtAuthzHttp: {service: x, port: 0}\n")
	src := New(Options{Paths: []string{dir}, Model: model.DefaultConfig(), MeshConfig: mc})
	m, err := src.Load()
	if err != nil {
		t.Fatal(err)
	}
	if m.MeshConfig == nil || m.MeshConfig.Providers["opa"] == nil || len(m.MeshConfig.Providers) != 1 {
		t.Fatalf("providers: %+v", m.MeshConfig)
	}
	if len(m.Errors) != 1 || !strings.Contains(m.Errors[0].Error(), mc) || !strings.Contains(m.Errors[0].Error(), "extensionProviders[1] (bad).envoyExtAuthzHttp.port") {
		t.Fatalf("errors: %v", m.Errors)
	}
	write("extensionProviders:\n- name: oauth\n  envoyExtAuthzHttp: {service: oauth2-proxy.auth.svc.cluster.local, port: 4180}\n")
	if !src.poll() {
		t.Fatal("the changed mesh config file was not noticed")
	}
	if m, _ = src.build(); m.MeshConfig.Providers["oauth"] == nil {
		t.Fatalf("providers after the change: %+v", m.MeshConfig.Providers)
	}
	if err := os.Remove(mc); err != nil {
		t.Fatal(err)
	}
	if src.poll() {
		t.Fatal("a missing mesh config file changed the mesh")
	}
	if m, _ = src.build(); m.MeshConfig.Providers["oauth"] == nil {
		t.Fatal("the last good mesh config was dropped")
	}
}
