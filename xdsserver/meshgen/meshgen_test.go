package meshgen_test

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"

	"github.com/goambient/goambient/xdsserver/meshgen"
	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/wds"
)

func translate(t *testing.T, o meshgen.Options) (*model.Mesh, map[string]map[string]proto.Message) {
	t.Helper()
	set, err := meshgen.Generate(o)
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Build(set, model.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range m.Errors {
		t.Errorf("mesh error: %v", e)
	}
	r := wds.Translate(m, wds.Options{})
	for _, w := range r.Warnings {
		t.Errorf("translation warning: %v", w)
	}
	return m, r.ByType()
}

// TestGenerate: the mesh is valid, has what the options say, and a Variant changes exactly
// one Authorization.
func TestGenerate(t *testing.T) {
	o := meshgen.Default.Scaled(50)
	m, base := translate(t, o)
	if len(m.Workloads) != o.Pods || len(m.Services) != o.Services || len(m.Policies.AuthorizationPolicies) != o.Policies {
		t.Fatalf("got %d workloads, %d services, %d policies; want %+v", len(m.Workloads), len(m.Services), len(m.Policies.AuthorizationPolicies), o)
	}
	if got := len(m.Nodes()); got != o.Nodes {
		t.Errorf("%d nodes, want %d", got, o.Nodes)
	}
	withPolicies := 0
	for _, a := range base[wds.AddressType] {
		if len(a.(*workloadapi.Address).GetWorkload().GetAuthorizationPolicies()) > 1 {
			withPolicies++ // the mesh-wide STRICT one and at least one of its own
		}
	}
	if withPolicies != o.Pods {
		t.Errorf("%d of %d workloads have policies of their own", withPolicies, o.Pods)
	}
	for _, w := range m.Workloads {
		if len(w.Services) != 1 {
			t.Fatalf("%s is behind %d services", w.Key(), len(w.Services))
		}
	}
	o.Variant = 1
	_, changed := translate(t, o)
	for typ, byName := range base {
		diff := 0
		for name, res := range byName {
			if !proto.Equal(res, changed[typ][name]) {
				diff++
			}
		}
		want := 0
		if typ == wds.AuthorizationType {
			want = 1
		}
		if diff != want {
			t.Errorf("%s: the variant changes %d resources, want %d", typ, diff, want)
		}
	}
}
