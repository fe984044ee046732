package waypointxds_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/xdsserver/kubeobj"
	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/waypointxds"
	"github.com/goambient/goambient/xdsserver/wds"
)

// FuzzTranslate runs any input through the whole configuration path, as the files source and
// cmd/xdsserver do: kubeobj.Load, model.Build, wds.Translate and waypointxds.Translate. Never a
// panic; every problem is a *policies.Error naming the file and document, and the object or
// field of an object; the built mesh passes Mesh.Validate; every workload API resource encodes;
// every waypoint's resources pass Validate. Seeds: each example file, each example folder as
// one file, and the translation tests' inputs.
func FuzzTranslate(f *testing.F) {
	dirs, _ := filepath.Glob("../../manifests/examples/*")
	for _, d := range dirs {
		files, _ := filepath.Glob(filepath.Join(d, "*.yaml"))
		var all [][]byte
		for _, p := range files {
			data, err := os.ReadFile(p)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
			all = append(all, data)
		}
		if len(all) > 0 {
			f.Add(bytes.Join(all, []byte("\n---\n")))
		}
	}
	tests, _ := filepath.Glob("../wds/testdata/*.in.yaml")
	more, _ := filepath.Glob("testdata/*.in.yaml")
	for _, p := range append(tests, more...) {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	cfg := model.DefaultConfig()
	f.Fuzz(func(t *testing.T, data []byte) {
		set, problems, err := kubeobj.Load(data, "fuzz.yaml")
		if err != nil {
			return // not YAML: FuzzLoad checks the report
		}
		m, err := model.Build(set, cfg)
		if err != nil {
			t.Fatalf("Build with the default configuration: %v", err)
		}
		for _, list := range [][]error{problems, m.Errors, m.Warnings} {
			for _, e := range list {
				var pe *policies.Error
				if !errors.As(e, &pe) {
					t.Fatalf("not a *policies.Error: %v", e)
				}
				if pe.Origin.File != "fuzz.yaml" || pe.Origin.Doc < 1 || pe.Reason == "" {
					t.Fatalf("names no file, document or reason: %v", e)
				}
				// A document that is not an object has no kind; an object's problem names
				// the object or the field.
				if pe.Kind != "" && pe.Field == "" && pe.Object == "" {
					t.Fatalf("names neither object nor field: %v", e)
				}
			}
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("the built mesh is not valid: %v", err)
		}
		r := wds.Translate(m, wds.Options{})
		for typeURL, byName := range r.ByType() {
			for name, msg := range byName {
				if name == "" {
					t.Fatalf("%s resource without a name", typeURL)
				}
				if _, err := (proto.MarshalOptions{Deterministic: true}).Marshal(msg); err != nil {
					t.Fatalf("%s %s does not encode: %v", typeURL, name, err)
				}
			}
		}
		wr := waypointxds.Translate(m, waypointxds.Options{})
		if err := waypointxds.Validate(wr); err != nil {
			t.Fatalf("waypoint resources are not valid: %v", err)
		}
	})
}
