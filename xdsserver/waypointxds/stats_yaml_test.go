package waypointxds

import (
	"os"
	"regexp"
	"testing"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/goambient/goambient/filters/istiostats"
)

// TestEnvoyYAMLStats: envoy.yaml's stats_config has istiostats.StatsTags, in order, and they
// compile (Envoy's regexes are RE2, as Go's); the prometheus_stats listener serves GET
// /stats/prometheus on 15090 from the admin endpoint and nothing else; the bootstrap validates.
func TestEnvoyYAMLStats(t *testing.T) {
	data, err := os.ReadFile("../../envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrap.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatal(err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("envoy.yaml does not validate: %v", err)
	}
	got := b.GetStatsConfig().GetStatsTags()
	want := istiostats.StatsTags()
	if len(got) != len(want) {
		t.Fatalf("stats_config.stats_tags has %d entries, want %d (istiostats.StatsTags)", len(got), len(want))
	}
	for i, w := range want {
		if got[i].GetTagName() != w.Name || got[i].GetRegex() != w.Regex {
			t.Errorf("stats_tags[%d] = %s %q, want %s %q", i, got[i].GetTagName(), got[i].GetRegex(), w.Name, w.Regex)
		}
		if re, err := regexp.Compile(got[i].GetRegex()); err != nil || re.NumSubexp() != 2 {
			t.Errorf("stats_tags[%d].regex: %v, %d groups (Envoy wants 2: the part removed, the value)", i, err, re.NumSubexp())
		}
	}
	var found bool
	for _, l := range b.GetStaticResources().GetListeners() {
		if l.GetName() != "prometheus_stats" {
			continue
		}
		found = true
		if p := l.GetAddress().GetSocketAddress().GetPortValue(); p != 15090 {
			t.Errorf("prometheus_stats on port %d, want 15090", p)
		}
		var m hcm.HttpConnectionManager
		if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&m); err != nil {
			t.Fatal(err)
		}
		routes := m.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()
		if len(routes) != 1 || routes[0].GetMatch().GetPath() != "/stats/prometheus" || routes[0].GetRoute().GetCluster() != "prometheus_stats" {
			t.Errorf("prometheus_stats routes = %v, want only the path /stats/prometheus to the admin endpoint", routes)
		}
	}
	if !found {
		t.Error("no prometheus_stats listener (Istio's 15090)")
	}
}
