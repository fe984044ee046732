package demo

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCNIPlace(t *testing.T) {
	c := newCNI()
	mesh, err := os.ReadFile(filepath.Join(examples, "handson", "mesh.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.place(mesh)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(out), "status: {podIP: "+c.net+"."); n != 4 {
		t.Fatalf("%d pods placed, want 4:\n%s", n, out)
	}
	again, err := c.place(mesh)
	if err != nil || string(again) != string(out) {
		t.Fatalf("a second apply moved pods (%v)", err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mesh.yaml"), out, 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := loadMesh(c.wp, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Errors) > 0 {
		t.Fatal(m.Errors)
	}
	for _, w := range m.Workloads {
		if len(w.IPs) != 1 || !strings.HasPrefix(w.IPs[0].String(), c.net+".") {
			t.Errorf("pod %s at %v, want in %s.0/24", w.Key(), w.IPs, c.net)
		}
	}
	if c.ips["handson/handson-blue"] == "" || c.ips["handson/curl"] == "" {
		t.Errorf("ips: %v", c.ips)
	}
}
