package istiooracle

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"
	"istio.io/istio/pilot/pkg/model"
	istioroute "istio.io/istio/pilot/pkg/networking/core/route"
	"istio.io/istio/pkg/config"
	"istio.io/istio/pkg/config/constants"
	"istio.io/istio/pkg/config/host"
	"istio.io/istio/pkg/config/mesh"
	"istio.io/istio/pkg/config/protocol"
	"istio.io/istio/pkg/config/schema/gvk"
	"istio.io/istio/pkg/config/validation"
	"istio.io/istio/pkg/util/sets"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/xdsserver/kubeobj"
	gamodel "github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/waypointxds"
)

// inputs are the routing goldens' inputs and the model's invalid objects.
func inputs(t *testing.T) []string {
	ins, _ := filepath.Glob("../testdata/*.in.yaml")
	ins = append(ins, "../../model/testdata/routing-invalid.yaml", "testdata/edges.yaml")
	if len(ins) < 5 {
		t.Fatalf("inputs: %v", ins)
	}
	return ins
}

func load(t *testing.T, path string) (*kubeobj.Set, *gamodel.Mesh) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	set, problems, err := kubeobj.Load(data, path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := gamodel.Build(set, gamodel.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	m.Errors = append(problems, m.Errors...)
	return set, m
}

// TestValidationAgreesWithIstio: every VirtualService and DestinationRule of the inputs is
// refused here exactly when istiod's webhook code (pkg/config/validation) refuses it.
func TestValidationAgreesWithIstio(t *testing.T) {
	checked := 0
	for _, in := range inputs(t) {
		set, m := load(t, in)
		refused := map[string]bool{}
		for _, e := range m.Errors {
			if pe, ok := e.(*policies.Error); ok {
				refused[pe.Kind+" "+pe.Object] = true
			}
		}
		for _, vs := range set.VirtualServices {
			ns := cmpOr(vs.Metadata.Namespace, "default")
			cfg := config.Config{Meta: config.Meta{GroupVersionKind: gvk.VirtualService, Name: vs.Metadata.Name, Namespace: ns}, Spec: vs.Spec}
			_, err := validation.ValidateVirtualService(cfg)
			if mine := refused["VirtualService "+ns+"/"+vs.Metadata.Name]; mine != (err != nil) {
				t.Errorf("%s: VirtualService %s/%s: refused here %v, by istiod: %v", in, ns, vs.Metadata.Name, mine, err)
			}
			checked++
		}
		for _, dr := range set.DestinationRules {
			ns := cmpOr(dr.Metadata.Namespace, "default")
			cfg := config.Config{Meta: config.Meta{GroupVersionKind: gvk.DestinationRule, Name: dr.Metadata.Name, Namespace: ns}, Spec: dr.Spec}
			_, err := validation.ValidateDestinationRule(cfg)
			if mine := refused["DestinationRule "+ns+"/"+dr.Metadata.Name]; mine != (err != nil) {
				t.Errorf("%s: DestinationRule %s/%s: refused here %v, by istiod: %v", in, ns, dr.Metadata.Name, mine, err)
			}
			checked++
		}
	}
	t.Logf("%d objects checked", checked)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// istioService is the pilot model of one of the mesh's Services (hostname and ports).
func istioService(s *gamodel.Service) *model.Service {
	out := &model.Service{Hostname: host.Name(s.Hostname), Attributes: model.ServiceAttributes{Name: s.Name, Namespace: s.Namespace}}
	for _, p := range s.Ports {
		out.Ports = append(out.Ports, &model.Port{Name: p.Name, Port: int(p.Port), Protocol: protocol.Instance(p.Protocol())})
	}
	return out
}

// TestRoutesAgreeWithIstio: each service port's routes are the ones istiod's TranslateRoute
// gives for the same rules, taken in the order and with the skips of its waypoint
// (waypointInboundRoute), with the destination clusters named as its
// getWaypointDestinationCluster names them.
func TestRoutesAgreeWithIstio(t *testing.T) {
	meshCfg := mesh.DefaultMeshConfig()
	push := model.NewPushContext()
	push.Mesh = meshCfg
	compared := 0
	for _, in := range inputs(t) {
		_, m := load(t, in)
		res := waypointxds.Translate(m, waypointxds.Options{})
		for _, w := range m.Waypoints {
			wr := res.Waypoints[w.Key()]
			node := &model.Proxy{Type: model.Waypoint, Labels: map[string]string{}, Metadata: &model.NodeMetadata{Namespace: w.Namespace}}
			for _, rc := range wr.Routes {
				parts := strings.Split(rc.GetName(), "|")
				port, _ := strconv.Atoi(parts[1])
				svc := m.ServiceByHost(parts[3])
				if svc == nil {
					continue // a ServiceEntry host (egress): no route rules bind to it, the goldens show its default route
				}
				opts := istioroute.RouteOptions{
					Mesh: meshCfg, Push: push,
					LookupService: func(h host.Name) *model.Service {
						if s := m.ServiceByHost(string(h)); s != nil {
							return istioService(s)
						}
						return nil
					},
					LookupDestinationCluster: func(d *networking.Destination, s *model.Service, port int) string {
						return waypointCluster(m, w, d, s, port)
					},
					LookupHash: func(*networking.HTTPRouteDestination) *networking.LoadBalancerSettings_ConsistentHashLB { return nil },
				}
				var want []*route.Route
				for _, set := range m.Routing.For(svc).GetRouteSets() {
					want = append(want, istioSetRoutes(node, set, port, opts)...)
				}
				if len(want) == 0 {
					want = []*route.Route{istioroute.BuildDefaultHTTPOutboundRoute(rc.GetName(), svc.Hostname+":"+parts[1]+"/*", meshCfg)}
				}
				got := rc.GetVirtualHosts()[0].GetRoutes()
				if len(got) != len(want) {
					t.Errorf("%s: %s: %d routes, istiod makes %d", in, rc.GetName(), len(got), len(want))
					continue
				}
				for i := range got {
					compared++
					if !proto.Equal(got[i], want[i]) {
						t.Errorf("%s: %s: route %d (%s) differs from istiod's\n--- here\n%s\n--- istiod\n%s", in, rc.GetName(), i, got[i].GetName(), js(got[i]), js(want[i]))
					}
				}
			}
		}
	}
	if compared < 30 {
		t.Errorf("only %d routes compared", compared)
	}
	t.Logf("%d routes compared", compared)
}

// istioSetRoutes is istiod's waypointInboundRoute over one route set.
func istioSetRoutes(node *model.Proxy, set *gamodel.RouteSet, port int, opts istioroute.RouteOptions) []*route.Route {
	cfg := config.Config{Meta: config.Meta{GroupVersionKind: gvk.VirtualService, Name: set.Name, Namespace: set.Namespace, Domain: "cluster.local"}}
	if set.Gateway {
		cfg.Annotations = map[string]string{constants.InternalRouteSemantics: constants.RouteSemanticsGateway}
	}
	var out []*route.Route
	add := func(r *route.Route) {
		if set.Gateway {
			r.Metadata = nil // istiod names its internal VirtualService; this mesh names nothing for HTTPRoutes
		}
		out = append(out, r)
	}
	for _, rule := range set.Rules {
		h := rule.HTTP
		if len(h.GetMatch()) == 0 {
			if r := istioroute.TranslateRoute(node, h, nil, port, cfg, sets.New("mesh"), opts); r != nil {
				add(r)
			}
			return out
		}
		for _, mt := range h.GetMatch() {
			if len(mt.GetSourceLabels()) > 0 {
				continue
			}
			r := istioroute.TranslateRoute(node, h, mt, port, cfg, sets.New("mesh"), opts)
			if r == nil {
				continue
			}
			add(r)
			if istioroute.IsCatchAllRoute(r) {
				return out
			}
		}
	}
	return out
}

// waypointCluster is istiod's getWaypointDestinationCluster and portToSubset for this mesh.
func waypointCluster(m *gamodel.Mesh, w *gamodel.Waypoint, d *networking.Destination, s *model.Service, listenerPort int) string {
	if d.GetHost() == "" {
		return "UnknownService"
	}
	port := listenerPort
	if d.GetPort() != nil {
		port = int(d.GetPort().GetNumber())
	} else if s != nil && len(s.Ports) == 1 {
		port = s.Ports[0].Port
	}
	subset := "http"
	var p *model.Port
	if s != nil {
		p, _ = s.Ports.GetByPort(port)
	}
	if p != nil && !p.Protocol.IsHTTP() && !p.Protocol.IsUnsupported() {
		subset = "tcp"
	}
	if d.GetSubset() != "" {
		subset += "/" + d.GetSubset()
	}
	dir := model.TrafficDirectionInboundVIP
	if gs := m.ServiceByHost(d.GetHost()); gs != nil && (gs.Waypoint == nil || gs.Waypoint.Key() != w.Key()) {
		dir, subset = model.TrafficDirectionOutbound, d.GetSubset()
	}
	return model.BuildSubsetKey(dir, subset, host.Name(d.GetHost()), port)
}

func js(m proto.Message) string {
	b, _ := protojson.MarshalOptions{Multiline: true, UseProtoNames: true}.Marshal(m)
	return string(b)
}
