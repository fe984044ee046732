package waypointxds

import (
	"slices"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/goambient/goambient/filters/authzconfig"

	"github.com/goambient/goambient/xdsserver/model"
)

func handson(t *testing.T, opts Options) (*model.Mesh, *Resources) {
	t.Helper()
	m := loadMesh(t, "testdata/handson.in.yaml")
	return m, Translate(m, opts)
}

// TestValidateFindsProblems breaks valid resources one way at a time and checks that Validate
// names the problem, including problems inside Anys that ValidateAll does not see.
func TestValidateFindsProblems(t *testing.T) {
	for name, tc := range map[string]struct {
		breakIt func(w *WaypointResources)
		want    string
	}{
		"HCM inside an Any without stat_prefix": {func(w *WaypointResources) {
			l := listenerNamed(w, MainInternal)
			f := l.GetFilterChains()[0].GetFilters()[0]
			var m hcm.HttpConnectionManager
			if err := f.GetTypedConfig().UnmarshalTo(&m); err != nil {
				panic(err)
			}
			m.StatPrefix = ""
			f.GetTypedConfig().Value, _ = proto.Marshal(&m)
		}, "StatPrefix: value length must be at least 1 runes"},
		"missing route configuration": {func(w *WaypointResources) { w.Routes = nil }, `refers to route configuration "inbound-vip|8080|http|handson.handson.svc.cluster.local"`},
		"missing ECDS config":         {func(w *WaypointResources) { w.ExtensionConfigs = nil }, `refers to extension config "goambient.authz/handson/handson"`},
		"missing assignment":          {func(w *WaypointResources) { w.Endpoints = nil }, `refers to cluster load assignment "inbound-vip|8080|http|handson.handson.svc.cluster.local"`},
		"missing cluster": {func(w *WaypointResources) {
			for i, c := range w.Clusters {
				if c.GetName() == MainInternal {
					w.Clusters = append(w.Clusters[:i], w.Clusters[i+1:]...)
					break
				}
			}
		}, `refers to cluster "main_internal"`},
		"missing internal listener": {func(w *WaypointResources) {
			for i, l := range w.Listeners {
				if l.GetName() == ConnectOriginate {
					w.Listeners = append(w.Listeners[:i], w.Listeners[i+1:]...)
					break
				}
			}
		}, `refers to internal listener "connect_originate"`},
		"unknown type in an Any": {func(w *WaypointResources) {
			listenerNamed(w, ConnectTerminate).GetFilterChains()[0].GetFilters()[0].GetTypedConfig().TypeUrl = "type.googleapis.com/no.such.Type"
		}, "no.such.Type"},
		"authz config without gateway": {func(w *WaypointResources) {
			c, _ := golangConfig(&authzconfig.Config{Namespace: "handson"})
			w.ExtensionConfigs[0].TypedConfig = toAny(c)
		}, "gateway: required"},
		"authz config whose policies do not load": {func(w *WaypointResources) {
			c, _ := golangConfig(&authzconfig.Config{Namespace: "handson", Gateway: "handson",
				Policies: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {action: NOPE}\n"})
			w.ExtensionConfigs[0].TypedConfig = toAny(c)
		}, "AuthorizationPolicy default/p: spec"},
		"golang filter config without library": {func(w *WaypointResources) {
			c, _ := golangConfig(&authzconfig.Config{Namespace: "handson", Gateway: "handson"})
			c.LibraryPath = ""
			w.ExtensionConfigs[0].TypedConfig = toAny(c)
		}, "LibraryPath: value length must be at least 1 runes"},
	} {
		t.Run(name, func(t *testing.T) {
			_, r := handson(t, Options{})
			if err := Validate(r); err != nil {
				t.Fatalf("valid resources: %v", err)
			}
			tc.breakIt(r.Waypoints["handson/handson"])
			err := Validate(r)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestWaypointForNode(t *testing.T) {
	m, r := handson(t, Options{})
	pod := m.Waypoint("handson", "handson").Instances[0]
	for id, want := range map[string]string{
		NodeID(pod.IPs[0].String(), pod.Name, pod.Namespace, "cluster.local"): "handson/handson",
		NodeID("10.0.0.1", "handson", "handson", "cluster.local"):             "handson/handson", // the Gateway's name
		NodeID("10.0.0.1", "unknown", "handson", "cluster.local"):             "",
		"not-a-node-id": "",
	} {
		got, err := r.WaypointForNode(id)
		if got != want || (want == "") != (err != nil) {
			t.Errorf("WaypointForNode(%q) = %q, %v; want %q", id, got, err, want)
		}
	}
}

// TestPolicyChangeOnlyChangesECDS: changing an AuthorizationPolicy changes the ECDS resource
// and nothing else, so Envoy gets a filter config update, not new listeners.
func TestPolicyChangeOnlyChangesECDS(t *testing.T) {
	_, before := handson(t, Options{})
	data := readFile(t, "testdata/handson.in.yaml")
	changed := strings.Replace(data, `notMethods: ["GET"]`, `notMethods: ["GET", "HEAD"]`, 1)
	if changed == data {
		t.Fatal("the policy was not changed")
	}
	after := Translate(buildMesh(t, []byte(changed), "changed"), Options{})
	a, b := before.Waypoints["handson/handson"].ByType(), after.Waypoints["handson/handson"].ByType()
	for typ, byName := range a {
		for name, res := range byName {
			same := proto.Equal(res, b[typ][name])
			if want := typ != resource.ExtensionConfigType; same != want {
				t.Errorf("%s %s: unchanged = %v, want %v", typ, name, same, want)
			}
		}
	}
}

func TestSecretsFromOptions(t *testing.T) {
	var asked string
	_, r := handson(t, Options{
		SVID: func(w *model.Waypoint) ([]byte, []byte, bool) {
			asked = w.Key()
			return []byte("CERT"), []byte("KEY"), true
		},
		RootCertPEM: []byte("ROOT"),
	})
	w := r.Waypoints["handson/handson"]
	if asked != "handson/handson" || len(w.Secrets) != 2 || w.Secrets[0].GetName() != SecretDefault || w.Secrets[1].GetName() != SecretRootCA {
		t.Fatalf("asked %q, secrets %v", asked, w.Secrets)
	}
	if string(w.Secrets[0].GetTlsCertificate().GetPrivateKey().GetInlineBytes()) != "KEY" {
		t.Errorf("default = %v", w.Secrets[0])
	}
	if err := Validate(r); err != nil {
		t.Error(err)
	}
}

// TestValidateExtAuthzClusters: an ext_authz filter's provider cluster (HTTP service and gRPC
// service) and the CUSTOM-match filter's ECDS resource must exist.
func TestValidateExtAuthzClusters(t *testing.T) {
	for _, tc := range []struct{ in, w, cluster string }{
		{"testdata/custom-http.in.yaml", "shop/waypoint", "outbound|4180||oauth2-proxy.auth.example.com"},
		{"testdata/jwt.in.yaml", "default/waypoint", "outbound|9191||opa.default.svc.cluster.local"},
	} {
		r := Translate(loadMesh(t, tc.in), Options{})
		if err := Validate(r); err != nil {
			t.Fatalf("%s: valid resources: %v", tc.in, err)
		}
		w := r.Waypoints[tc.w]
		cls := w.Clusters
		w.Clusters = slices.DeleteFunc(slices.Clone(cls), func(c *cluster.Cluster) bool { return c.GetName() == tc.cluster })
		if err := Validate(r); err == nil || !strings.Contains(err.Error(), `refers to cluster "`+tc.cluster+`"`) {
			t.Errorf("%s without %s: Validate = %v", tc.in, tc.cluster, err)
		}
		w.Clusters = cls
		exts := w.ExtensionConfigs
		w.ExtensionConfigs = slices.DeleteFunc(slices.Clone(exts), func(e *core.TypedExtensionConfig) bool {
			return strings.HasPrefix(e.GetName(), authzconfig.CustomPluginName+"/")
		})
		if err := Validate(r); err == nil || !strings.Contains(err.Error(), `refers to extension config "`+authzconfig.CustomPluginName+"/") {
			t.Errorf("%s without the CUSTOM-match ECDS resource: Validate = %v", tc.in, err)
		}
	}
}
