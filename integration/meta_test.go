// Package integration holds end-to-end tests of the real binaries and repository-wide checks.
package integration

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// goPackages maps each package directory of the repository to its parsed non-test files.
func goPackages(t *testing.T) map[string][]string {
	t.Helper()
	pkgs := map[string][]string{}
	err := filepath.WalkDir("..", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".") && p != "..") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") {
			pkgs[filepath.Dir(p)] = append(pkgs[filepath.Dir(p)], p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pkgs
}

// TestEveryPackageSaysWhatItIsFor: each package has a doc comment, one sentence, naming it.
func TestEveryPackageSaysWhatItIsFor(t *testing.T) {
	for dir, files := range goPackages(t) {
		var doc, name string
		for _, f := range files {
			af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				t.Fatal(err)
			}
			name = af.Name.Name
			if af.Doc != nil {
				doc = strings.TrimSpace(af.Doc.Text())
			}
		}
		switch {
		case doc == "":
			t.Errorf("%s: package %s has no doc comment", dir, name)
		case !strings.HasPrefix(doc, "Package "+name+" ") && !strings.HasPrefix(doc, "Command "):
			t.Errorf("%s: the doc comment should start with %q: %q", dir, "Package "+name, doc)
		case strings.Count(strings.TrimSuffix(doc, "."), ". ") > 0:
			t.Errorf("%s: the doc comment should be one sentence: %q", dir, doc)
		}
	}
}

// TestLayering keeps the data plane free of the control plane and the filters free of both.
// The embedded waypoint (filters/embedded, a host for the filters where Envoy cannot run) is
// data plane: it uses ztunnel's libraries (HBONE, identity, the workload API client), never
// the control plane; the filter logic beside it stays free of both.
func TestLayering(t *testing.T) {
	const mod = "github.com/goambient/goambient/"
	forbidden := map[string][]string{
		"ztunnel":          {mod + "xdsserver"},
		"filters":          {mod + "xdsserver", mod + "ztunnel"},
		"filters/embedded": {mod + "xdsserver"},
		"policies":         {mod + "xdsserver", mod + "ztunnel", mod + "filters"},
	}
	for dir, files := range goPackages(t) {
		rel := filepath.ToSlash(strings.TrimPrefix(dir, "../"))
		top := strings.Split(rel, "/")[0]
		if rel == "filters/embedded" || strings.HasPrefix(rel, "filters/embedded/") {
			top = "filters/embedded"
		}
		for _, f := range files {
			af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range af.Imports {
				path := strings.Trim(imp.Path.Value, `"`)
				for _, bad := range forbidden[top] {
					if strings.HasPrefix(path, bad) {
						t.Errorf("%s imports %s: %s must not depend on it", f, path, top)
					}
				}
			}
		}
	}
}

func TestMain(m *testing.M) {
	// Tests run from this folder; the walks above start at the repository root.
	if _, err := os.Stat("../go.mod"); err != nil {
		panic("run from the integration folder")
	}
	os.Exit(m.Run())
}
