package kubeobj

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/goambient/goambient/policies"
)

// fuzzSeeds are the repository's mesh files: every example scenario's files, and the
// translation tests' inputs.
func fuzzSeeds(f *testing.F) {
	var paths []string
	for _, g := range []string{"../../manifests/examples/*/*.yaml", "../wds/testdata/*.in.yaml", "../waypointxds/testdata/*.in.yaml"} {
		m, _ := filepath.Glob(g)
		paths = append(paths, m...)
	}
	if len(paths) == 0 {
		f.Fatal("no seed files")
	}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
}

// FuzzLoad: any input is decoded or reported, never a panic. A file that is not YAML is one
// ErrSyntax error naming the file; every problem with an object is a *policies.Error naming
// the file, the document, the kind, and the object or the field.
func FuzzLoad(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		set, problems, err := Load(data, "fuzz.yaml")
		if err != nil {
			if !errors.Is(err, ErrSyntax) || set != nil || problems != nil {
				t.Fatalf("Load error %v with set %v and %d problems", err, set, len(problems))
			}
			if !strings.Contains(err.Error(), "fuzz.yaml") {
				t.Fatalf("syntax error does not name the file: %v", err)
			}
			return
		}
		for _, p := range problems {
			var pe *policies.Error
			if !errors.As(p, &pe) {
				t.Fatalf("problem is not a *policies.Error: %v", p)
			}
			if pe.Origin.File != "fuzz.yaml" || pe.Origin.Doc < 1 || pe.Reason == "" {
				t.Fatalf("problem without file, document or reason: %#v", pe)
			}
			if pe.Kind != "" && pe.Field == "" {
				t.Fatalf("problem of a %s names no field: %v", pe.Kind, pe)
			}
		}
	})
}
