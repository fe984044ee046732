package app

import (
	"encoding/json"
	"net/netip"
	"os"
	"strings"
	"testing"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/goambient/goambient/filters/embedded/router"
	"github.com/goambient/goambient/xdsserver/waypointxds"
)

// traffic is the traffic scenario (manifests/examples/traffic) through the embedded waypoint:
// appb's two pods behind their ztunnels, the waypoint of namespace default, a client appa.
// The control plane serves xdsserver's own translation (wds and waypointxds) of the YAML.
type traffic struct {
	*waypoint
	tmpl   string
	v1, v2 *app
}

const (
	appbHost    = "appb.default.svc.cluster.local"
	appbAll     = "inbound-vip|8000|http|" + appbHost
	appbV1      = "inbound-vip|8000|http/v1|" + appbHost
	appbV2      = "inbound-vip|8000|http/v2|" + appbHost
	scenarioDir = "../../../manifests/examples/traffic/"
)

// subsets is the scenario's DestinationRule.
var subsets = scenario("destination-rule.yaml")

func scenario(file string) string {
	b, err := os.ReadFile(scenarioDir + file)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func setupTraffic(t testing.TB, seed uint64, cfg ...wpConfig) *traffic {
	t.Helper()
	tmpl, err := os.ReadFile("testdata/traffic.yaml")
	if err != nil {
		t.Fatal(err)
	}
	a := newAddrs()
	p := newPKI(t, "default/waypoint")
	f := &traffic{tmpl: string(tmpl)}
	f.v1, _ = startPod(t, p, "appb-v1", "default", "appb", a.of("appb-v1"), 8080)
	f.v2, _ = startPod(t, p, "appb-v2", "default", "appb", a.of("appb-v2"), 8080)
	f.waypoint = startWaypoint(t, a, p, "default", "waypoint", "waypoint", seed, cfg...)
	return f
}

// apply serves the scenario's mesh with routing objects added and waits until the waypoint
// routes with it.
func (f *traffic) apply(t testing.TB, routing string) *waypointxds.WaypointResources {
	t.Helper()
	m := buildMesh(t, f.a.render(f.tmpl+"\n---\n"+routing))
	w := f.cp.serve(t, m, "default/waypoint")
	f.settle(t, w)
	return w
}

// settle waits until the waypoint's snapshot is the translation r: every route table with
// the same routes (names, targets, faults) and every cluster with its endpoints.
func (w *waypoint) settle(t testing.TB, r *waypointxds.WaypointResources) {
	t.Helper()
	eventually(t, "the waypoint to route with the new configuration", func() bool {
		if !w.wp.Store.Ready() {
			return false
		}
		snap := w.wp.Store.Load()
		for _, rc := range r.Routes {
			tb := snap.Tables[rc.GetName()]
			if tb == nil {
				return false
			}
			var want []*route.Route
			for _, vh := range rc.GetVirtualHosts() {
				want = append(want, vh.GetRoutes()...)
			}
			if len(tb.Routes) != len(want) {
				return false
			}
			for i, pr := range want {
				if !sameRoute(tb.Routes[i], pr) || (tb.Extras(tb.Routes[i]).Fault != nil) != (pr.GetTypedPerFilterConfig()["envoy.filters.http.fault"] != nil) {
					return false
				}
			}
		}
		for _, cla := range r.Endpoints {
			c := snap.Clusters[cla.GetClusterName()]
			n := 0
			for _, le := range cla.GetEndpoints() {
				n += len(le.GetLbEndpoints())
			}
			if c == nil || len(c.Hosts) != n {
				return false
			}
		}
		return true
	})
}

func sameRoute(rt *router.Route, pr *route.Route) bool {
	if rt.Name != pr.GetName() {
		return false
	}
	a := pr.GetRoute()
	if a == nil {
		return rt.Action == nil
	}
	if rt.Action == nil || rt.Action.Cluster != a.GetCluster() || len(rt.Action.Weighted) != len(a.GetWeightedClusters().GetClusters()) {
		return false
	}
	for i, wc := range a.GetWeightedClusters().GetClusters() {
		if rt.Action.Weighted[i].Cluster != wc.GetName() || rt.Action.Weighted[i].Weight != uint64(wc.GetWeight().GetValue()) {
			return false
		}
	}
	return true
}

func (f *traffic) vip() netip.AddrPort { return netip.AddrPortFrom(f.a.of("appb-vip"), 8000) }

// client opens a stream to appb:8000 as the client default/<sa> (appa when empty).
func (f *traffic) client(t testing.TB, sa string) *stream {
	t.Helper()
	if sa == "" {
		sa = "appa"
	}
	return f.waypoint.connect(t, "default", sa, f.vip(), "appb:8000", netip.AddrPortFrom(f.a.of("appa"), 40000))
}

// seen is what /headers answered: the headers the app saw (Host among them) and its pod.
type seen struct {
	Headers map[string]string `json:"headers"`
	Pod     string            `json:"pod"`
}

func parseSeen(t testing.TB, body string) seen {
	t.Helper()
	var s seen
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatalf("the answer is not /headers' JSON: %q", body)
	}
	return s
}

// logField is an access-log field as a string ("" for null).
func logField(e map[string]any, k string) string {
	switch v := e[k].(type) {
	case nil:
		return ""
	case string:
		return v
	case float64:
		b, _ := json.Marshal(v)
		return string(b)
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

// hasFlag reports whether an access-log line's response_flags holds flag.
func hasFlag(e map[string]any, flag string) bool {
	for _, f := range strings.Split(logField(e, "response_flags"), ",") {
		if f == flag {
			return true
		}
	}
	return false
}
