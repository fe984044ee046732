package waypointxds

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	golang "github.com/envoyproxy/go-control-plane/contrib/envoy/extensions/filters/http/golang/v3alpha"

	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/xdsserver/internal/golden"
	"github.com/goambient/goambient/xdsserver/kubeobj"
	"github.com/goambient/goambient/xdsserver/model"
)

// buildMesh builds the mesh of YAML data with the default configuration.
func buildMesh(t testing.TB, data []byte, name string) *model.Mesh {
	t.Helper()
	set, problems, err := kubeobj.Load(data, name)
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Build(set, model.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	m.Errors = append(problems, m.Errors...)
	if err := m.Validate(); err != nil {
		t.Fatalf("the built mesh is not valid: %v", err)
	}
	return m
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func listenerNamed(w *WaypointResources, name string) *listener.Listener {
	for _, l := range w.Listeners {
		if l.GetName() == name {
			return l
		}
	}
	return nil
}

func loadMesh(t testing.TB, in string) *model.Mesh {
	t.Helper()
	data, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	return buildMesh(t, data, in)
}

func toJSON(t testing.TB, m proto.Message) any {
	t.Helper()
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(js, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// render is the golden form: per waypoint, each resource's protojson (Anys expanded), with
// the authz filter's config decoded alongside (its policies as the YAML stream it carries).
func render(t *testing.T, m *model.Mesh, r *Resources) string {
	t.Helper()
	type named struct {
		Name     string `json:"name"`
		Resource any    `json:"resource"`
	}
	type authz struct {
		Config   authzconfig.Config `json:"config"`
		Policies []string           `json:"policies"` // namespace/name of each policy carried
	}
	type wp struct {
		Waypoint         string   `json:"waypoint"`
		Authz            *authz   `json:"authz,omitempty"`
		Listeners        []named  `json:"listeners"`
		Routes           []named  `json:"routes"`
		Clusters         []named  `json:"clusters"`
		Endpoints        []named  `json:"endpoints"`
		ExtensionConfigs []named  `json:"extension_configs"`
		Secrets          []named  `json:"secrets,omitempty"`
		Credentials      []string `json:"credentials,omitempty"` // names only: the key is a test key
	}
	var out struct {
		Pods      map[string]string `json:"pods"`
		Waypoints []wp              `json:"waypoints"`
		Warnings  []string          `json:"warnings,omitempty"`
		// The mesh's own problems: routing objects left out or only partly applied.
		MeshErrors   []string `json:"mesh_errors,omitempty"`
		MeshWarnings []string `json:"mesh_warnings,omitempty"`
	}
	out.Pods = r.Pods
	keys := make([]string, 0, len(r.Waypoints))
	for k := range r.Waypoints {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		w := r.Waypoints[k]
		e := wp{Waypoint: k, Listeners: []named{}, Routes: []named{}, Clusters: []named{}, Endpoints: []named{}, ExtensionConfigs: []named{}}
		for _, x := range w.Listeners {
			e.Listeners = append(e.Listeners, named{x.GetName(), toJSON(t, x)})
		}
		for _, x := range w.Routes {
			e.Routes = append(e.Routes, named{x.GetName(), toJSON(t, x)})
		}
		for _, x := range w.Clusters {
			e.Clusters = append(e.Clusters, named{x.GetName(), toJSON(t, x)})
		}
		for _, x := range w.Endpoints {
			e.Endpoints = append(e.Endpoints, named{x.GetClusterName(), toJSON(t, x)})
		}
		for _, x := range w.ExtensionConfigs {
			e.ExtensionConfigs = append(e.ExtensionConfigs, named{x.GetName(), toJSON(t, x)})
			var gc golang.Config
			if err := x.GetTypedConfig().UnmarshalTo(&gc); err != nil {
				t.Fatal(err)
			}
			c, err := authzconfig.DecodeConfig(gc.GetPluginConfig())
			if err != nil {
				t.Fatal(err)
			}
			objs, errs := policies.Load([]byte(c.Policies), x.GetName())
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			e.Authz = &authz{Config: *c, Policies: []string{}}
			e.Authz.Config.Policies = "(below)"
			for _, ap := range objs.AuthorizationPolicies {
				e.Authz.Policies = append(e.Authz.Policies, ap.Key())
			}
		}
		for _, x := range w.Secrets {
			e.Secrets = append(e.Secrets, named{x.GetName(), toJSON(t, x)})
		}
		for _, x := range w.Credentials {
			e.Credentials = append(e.Credentials, x.GetName())
		}
		out.Waypoints = append(out.Waypoints, e)
	}
	for _, w := range r.Warnings {
		out.Warnings = append(out.Warnings, w.Error())
	}
	for _, e := range m.Errors {
		out.MeshErrors = append(out.MeshErrors, e.Error())
	}
	for _, w := range m.Warnings {
		out.MeshWarnings = append(out.MeshWarnings, w.Error())
	}
	y, err := yaml.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	return string(y)
}

func TestTranslateGolden(t *testing.T) {
	ins, _ := filepath.Glob("testdata/*.in.yaml")
	if len(ins) < 2 {
		t.Fatalf("inputs: %v", ins)
	}
	for _, in := range ins {
		t.Run(strings.TrimSuffix(filepath.Base(in), ".in.yaml"), func(t *testing.T) {
			m := loadMesh(t, in)
			r := Translate(m, Options{})
			if err := Validate(r); err != nil {
				t.Errorf("Validate: %v", err)
			}
			golden.Check(t, strings.TrimSuffix(in, ".in.yaml")+".out.yaml", render(t, m, r))
			again := Translate(loadMesh(t, in), Options{})
			for k, w := range r.Waypoints {
				a, b := w.ByType(), again.Waypoints[k].ByType()
				for typ, byName := range a {
					for name, res := range byName {
						if !proto.Equal(res, b[typ][name]) {
							t.Errorf("%s: %s %s: translation is not deterministic", k, typ, name)
						}
					}
				}
			}
		})
	}
}

func TestGoldensHaveInputs(t *testing.T) {
	outs, _ := filepath.Glob("testdata/*.out.yaml")
	for _, o := range outs {
		if _, err := os.Stat(strings.TrimSuffix(o, ".out.yaml") + ".in.yaml"); err != nil {
			t.Errorf("%s has no input: delete it", o)
		}
	}
}

// TestTrafficInputsAreTheScenario: each testdata/traffic-*.in.yaml is the files of
// manifests/examples/traffic its first line names, joined as they are, so that the goldens
// are the scenario's resources (the seed's VirtualService verbatim).
func TestTrafficInputsAreTheScenario(t *testing.T) {
	ins, _ := filepath.Glob("testdata/traffic-*.in.yaml")
	if len(ins) < 3 {
		t.Fatalf("inputs: %v", ins)
	}
	for _, in := range ins {
		b, err := os.ReadFile(in)
		if err != nil {
			t.Fatal(err)
		}
		first, rest, _ := strings.Cut(string(b), "\n")
		list, ok := strings.CutPrefix(first, "# manifests/examples/traffic: ")
		if !ok {
			t.Errorf("%s: the first line does not name the scenario's files", in)
			continue
		}
		list, _, _ = strings.Cut(list, " (")
		var parts []string
		for _, f := range strings.Split(list, " + ") {
			p, err := os.ReadFile(filepath.Join("../../manifests/examples/traffic", f))
			if err != nil {
				t.Fatal(err)
			}
			parts = append(parts, string(p))
		}
		if want := strings.Join(parts, "---\n"); rest != want {
			t.Errorf("%s is not %s joined: rebuild it from the scenario", in, list)
		}
	}
}
