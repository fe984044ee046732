package policies

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if got != string(want) {
		t.Errorf("%s is stale or wrong (go test -update to refresh); got:\n%s", path, got)
	}
}

func TestInvalidPoliciesAreReportedAndSkipped(t *testing.T) {
	objs, errs := LoadPath("testdata/invalid.yaml")
	var b strings.Builder
	for _, e := range errs {
		b.WriteString(e.Error())
		b.WriteString("\n")
	}
	golden(t, "invalid.golden", b.String())
	if len(objs.AuthorizationPolicies) != 1 || objs.AuthorizationPolicies[0].Name != "still-loads" {
		t.Errorf("only still-loads should load, got %d policies", len(objs.AuthorizationPolicies))
	}
	if len(objs.PeerAuthentications) != 0 {
		t.Errorf("the bad PeerAuthentication loaded")
	}
}

func TestExamplesLoadUnchanged(t *testing.T) {
	objs, errs := LoadPath("../manifests/examples")
	for _, e := range errs {
		t.Error(e)
	}
	if n := len(objs.AuthorizationPolicies); n != 12 {
		t.Errorf("want the 12 AuthorizationPolicies of the examples, got %d", n)
	}
	if n := len(objs.RequestAuthentications); n != 1 {
		t.Errorf("want the jwt scenario's RequestAuthentication, got %d", n)
	}
	if n := len(objs.PeerAuthentications); n != 1 {
		t.Errorf("want 1 PeerAuthentication, got %d", n)
	}
}

// TestExamplesMatchShared keeps manifests/examples identical to the scenarios in ../shared.
func TestExamplesMatchShared(t *testing.T) {
	shared := filepath.Join("..", "..", "shared", "examples")
	if _, err := os.Stat(shared); err != nil {
		t.Skip("no ../shared/examples beside the repository")
	}
	err := filepath.WalkDir(shared, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(shared, p)
		want, _ := os.ReadFile(p)
		got, err := os.ReadFile(filepath.Join("..", "manifests", "examples", rel))
		if err != nil || string(got) != string(want) {
			t.Errorf("manifests/examples/%s differs from the shared scenario (copy it again)", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
