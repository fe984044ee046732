package policies

import (
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// roundTripInputs are every valid AuthorizationPolicy of the examples and of the test data.
func roundTripInputs(t *testing.T) []*AuthorizationPolicy {
	t.Helper()
	var all []*AuthorizationPolicy
	for _, dir := range []string{"../manifests/examples", "testdata"} {
		objs, _ := LoadPath(dir) // invalid.yaml's bad objects are left out, the others kept
		all = append(all, objs.AuthorizationPolicies...)
	}
	data, err := os.ReadFile(filepath.Join("testdata", "decisions.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cases []decisionCase
	if err := yaml.Unmarshal(data, &cases); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		if c.Policies != "" {
			all = append(all, loadCase(t, decisionCase{Name: c.Name, Policies: c.Policies}).AuthorizationPolicies...)
		}
	}
	if len(all) < 20 {
		t.Fatalf("only %d policies found", len(all))
	}
	return all
}

func TestMarshalAuthorizationPoliciesRoundTrip(t *testing.T) {
	in := roundTripInputs(t)
	data, err := MarshalAuthorizationPolicies(in)
	if err != nil {
		t.Fatal(err)
	}
	objs, errs := Load(data, "marshalled")
	for _, e := range errs {
		t.Error(e)
	}
	out := objs.AuthorizationPolicies
	if len(out) != len(in) {
		t.Fatalf("read back %d policies, want %d", len(out), len(in))
	}
	for i := range in {
		a, b := in[i], out[i]
		if a.APIVersion != b.APIVersion || a.Name != b.Name || a.Namespace != b.Namespace ||
			!equalMaps(a.Labels, b.Labels) || !equalMaps(a.Annotations, b.Annotations) || a.DryRun() != b.DryRun() {
			t.Errorf("%s (%s): metadata %+v read back as %+v", a.Key(), a.Origin, a.Meta, b.Meta)
		}
		if !proto.Equal(a.Spec, b.Spec) {
			t.Errorf("%s (%s): spec %v read back as %v", a.Key(), a.Origin, a.Spec, b.Spec)
		}
	}
	again, err := MarshalAuthorizationPolicies(out)
	if err != nil || string(again) != string(data) {
		t.Errorf("marshalling is not deterministic (err %v)", err)
	}
}

func TestMarshalAuthorizationPoliciesEmptyAndNil(t *testing.T) {
	data, err := MarshalAuthorizationPolicies(nil)
	if err != nil || len(data) != 0 {
		t.Errorf("no policies = %q, %v", data, err)
	}
	if objs, errs := Load(data, "empty"); len(objs.AuthorizationPolicies) != 0 || len(errs) != 0 {
		t.Errorf("empty stream read back as %v, %v", objs, errs)
	}
	if _, err := MarshalAuthorizationPolicies([]*AuthorizationPolicy{nil}); err == nil {
		t.Error("a nil policy is an error")
	}
	data, err = MarshalAuthorizationPolicies([]*AuthorizationPolicy{{Meta: Meta{Name: "p", Namespace: "ns"}}})
	if err != nil {
		t.Fatal(err)
	}
	if objs, errs := Load(data, "nospec"); len(objs.AuthorizationPolicies) != 1 || len(errs) != 0 {
		t.Errorf("a policy without spec read back as %v, %v", objs.AuthorizationPolicies, errs)
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
