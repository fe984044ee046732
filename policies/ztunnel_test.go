package policies

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

// workloadsForGolden are the destinations whose referenced policies the goldens list.
var workloadsForGolden = []struct {
	ns     string
	labels map[string]string
}{
	{"handson", map[string]string{"app": "handson"}},
	{"demo", map[string]string{"app": "backend"}},
	{"shop", map[string]string{"app": "cart"}},
	{"shop", map[string]string{"app": "db"}},
}

func TestZtunnelProjectionGolden(t *testing.T) {
	ins, _ := filepath.Glob("testdata/ztunnel/*.in.yaml")
	if len(ins) == 0 {
		t.Fatal("no inputs")
	}
	for _, in := range ins {
		t.Run(filepath.Base(in), func(t *testing.T) {
			objs, errs := LoadPath(in)
			for _, e := range errs {
				t.Fatal(e)
			}
			z := ToZtunnel(objs, Options{})
			out := map[string]any{}
			var auths []any
			for _, a := range z.Authorizations() {
				js, err := protojson.Marshal(a)
				if err != nil {
					t.Fatal(err)
				}
				var v any
				_ = json.Unmarshal(js, &v)
				auths = append(auths, v)
			}
			out["authorizations"] = auths
			var warns []string
			for _, w := range z.Warnings {
				warns = append(warns, w.Error())
			}
			out["warnings"] = warns
			refs := map[string][]string{}
			for _, w := range workloadsForGolden {
				if p := z.WorkloadPolicies(w.ns, w.labels); len(p) > 0 {
					refs[w.ns+"/"+w.labels["app"]] = p
				}
			}
			out["workloadPolicies"] = refs
			y, err := yaml.Marshal(out)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, filepath.Join("ztunnel", strings.TrimSuffix(filepath.Base(in), ".in.yaml")+".out.yaml"), string(y))
		})
	}
}

func TestZtunnelGoldensHaveInputs(t *testing.T) {
	outs, _ := filepath.Glob("testdata/ztunnel/*.out.yaml")
	for _, o := range outs {
		if _, err := os.Stat(strings.TrimSuffix(o, ".out.yaml") + ".in.yaml"); err != nil {
			t.Errorf("%s has no input: delete it", o)
		}
	}
}
