package server_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	golang "github.com/envoyproxy/go-control-plane/contrib/envoy/extensions/filters/http/golang/v3alpha"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/xdsserver/kubeobj"
	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/server"
	"github.com/goambient/goambient/xdsserver/waypointxds"
)

const (
	routeName = "inbound-vip|8080|http|handson.handson.svc.cluster.local"
	ecdsName  = "goambient.authz/handson/handson"
)

// waypointMesh is handson's mesh with the waypoint and the L7 policy; edit may change the YAML.
func waypointMesh(t *testing.T, edit func(string) string) (*model.Mesh, *waypointxds.Resources) {
	t.Helper()
	var all []string
	for _, f := range []string{"mesh.yaml", "k8s-gateway.yaml", "L7-authorization-policy.yaml"} {
		data, err := os.ReadFile(filepath.Join(examples, f))
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, string(data))
	}
	yaml := strings.Join(all, "\n---\n")
	if edit != nil {
		yaml = edit(yaml)
	}
	set, problems, err := kubeobj.Load([]byte(yaml), "handson")
	if err != nil || len(problems) > 0 {
		t.Fatal(err, problems)
	}
	m, err := model.Build(set, model.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	r := waypointxds.Translate(m, waypointxds.Options{})
	if err := waypointxds.Validate(r); err != nil {
		t.Fatal(err)
	}
	return m, r
}

func waypointNode(t *testing.T, m *model.Mesh) *core.Node {
	t.Helper()
	w := m.Waypoint("handson", "handson")
	if w == nil || len(w.Instances) == 0 {
		t.Fatal("handson has no waypoint pod")
	}
	p := w.Instances[0]
	return &core.Node{Id: waypointxds.NodeID(p.IPs[0].String(), p.Name, p.Namespace, "cluster.local"), Cluster: "handson.handson"}
}

func dial(t *testing.T, addr string) discovery.AggregatedDiscoveryServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return discovery.NewAggregatedDiscoveryServiceClient(conn)
}

// deltaClient is a minimal delta ADS client, as Envoy with api_type DELTA_GRPC.
type deltaClient struct {
	t      *testing.T
	stream discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	node   *core.Node
}

func newDeltaClient(t *testing.T, addr string, node *core.Node) *deltaClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	s, err := dial(t, addr).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &deltaClient{t: t, stream: s, node: node}
}

func (c *deltaClient) subscribe(typeURL string, names ...string) {
	c.t.Helper()
	if len(names) == 0 {
		names = []string{"*"}
	}
	if err := c.stream.Send(&discovery.DeltaDiscoveryRequest{Node: c.node, TypeUrl: typeURL, ResourceNamesSubscribe: names}); err != nil {
		c.t.Fatal(err)
	}
}

// recv returns the next response and ACKs it. The stream's context bounds the wait.
func (c *deltaClient) recv() *discovery.DeltaDiscoveryResponse {
	c.t.Helper()
	resp, err := c.stream.Recv()
	if err != nil {
		c.t.Fatalf("recv: %v", err)
	}
	if err := c.stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}); err != nil {
		c.t.Fatal(err)
	}
	return resp
}

// sotwFetch asks for one type on a new state-of-the-world ADS stream, as Envoy with
// api_type GRPC, and returns the first response.
func sotwFetch(t *testing.T, addr string, node *core.Node, typeURL string, names ...string) *discovery.DiscoveryResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	s, err := dial(t, addr).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: typeURL, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatalf("%s: %v", typeURL, err)
	}
	return resp
}

func policyNames(t *testing.T, resp *discovery.DeltaDiscoveryResponse) []string {
	t.Helper()
	var names []string
	for _, r := range resp.GetResources() {
		var ext core.TypedExtensionConfig
		if err := r.GetResource().UnmarshalTo(&ext); err != nil {
			t.Fatal(err)
		}
		var gc golang.Config
		if err := ext.GetTypedConfig().UnmarshalTo(&gc); err != nil {
			t.Fatal(err)
		}
		c, err := authzconfig.DecodeConfig(gc.GetPluginConfig())
		if err != nil {
			t.Fatal(err)
		}
		objs, errs := policies.Load([]byte(c.Policies), ext.GetName())
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		for _, ap := range objs.AuthorizationPolicies {
			names = append(names, ap.Key()+" "+strings.Join(ap.Spec.GetRules()[0].GetTo()[0].GetOperation().GetNotMethods(), ","))
		}
	}
	return names
}

// TestWaypointOverADS connects as handson's waypoint Envoy, over delta and over SotW ADS, and
// checks it gets its listeners, routes and authz config; a policy change then reaches it as
// an ECDS update only, listener versions unchanged.
func TestWaypointOverADS(t *testing.T) {
	m, before := waypointMesh(t, nil)
	srv, addr := startServer(t, "127.0.0.1:0", server.Options{Registerer: prometheus.NewRegistry()}, resources(t, false))
	srv.SetWaypoints(before)
	node := waypointNode(t, m)

	c := newDeltaClient(t, addr, node)
	want := []string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType, resource.ExtensionConfigType}
	for _, typ := range want {
		c.subscribe(typ)
	}
	got := map[string]*discovery.DeltaDiscoveryResponse{}
	for i := 0; len(got) < len(want) && i < 20; i++ {
		r := c.recv()
		got[r.GetTypeUrl()] = r
	}
	if len(got) < len(want) {
		t.Fatalf("got responses for %d types, want %d", len(got), len(want))
	}
	names := func(r *discovery.DeltaDiscoveryResponse) []string {
		var n []string
		for _, x := range r.GetResources() {
			n = append(n, x.GetName())
		}
		return n
	}
	if n := strings.Join(names(got[resource.ListenerType]), ","); !strings.Contains(n, "connect_terminate") || !strings.Contains(n, "main_internal") || !strings.Contains(n, "connect_originate") {
		t.Errorf("listeners = %s", n)
	}
	if n := names(got[resource.RouteType]); len(n) != 1 || n[0] != routeName {
		t.Errorf("routes = %v", n)
	}
	if p := policyNames(t, got[resource.ExtensionConfigType]); len(p) != 1 || p[0] != "handson/layer7-authz GET" {
		t.Errorf("authz policies = %v", p)
	}
	if w := srv.WaypointOfNode(node.GetId()); w != "handson/handson" {
		t.Errorf("WaypointOfNode = %q", w)
	}
	listenerVersions := map[string]string{}
	for _, r := range got[resource.ListenerType].GetResources() {
		listenerVersions[r.GetName()] = r.GetVersion()
	}
	sotwListeners := sotwFetch(t, addr, node, resource.ListenerType)
	sotwECDS := sotwFetch(t, addr, node, resource.ExtensionConfigType, ecdsName)
	if len(sotwListeners.GetResources()) != 3 || len(sotwECDS.GetResources()) != 1 {
		t.Fatalf("SotW: %d listeners, %d extension configs", len(sotwListeners.GetResources()), len(sotwECDS.GetResources()))
	}

	// The policy now also lets HEAD through: only the ECDS resource changes.
	_, after := waypointMesh(t, func(y string) string {
		return strings.Replace(y, `notMethods: ["GET"]`, `notMethods: ["GET", "HEAD"]`, 1)
	})
	srv.SetWaypoints(after)
	r := c.recv() // a delta response is sent only for a type whose resources changed
	if r.GetTypeUrl() != resource.ExtensionConfigType {
		t.Fatalf("after a policy change, got a %s response, want only ECDS", r.GetTypeUrl())
	}
	if p := policyNames(t, r); len(p) != 1 || p[0] != "handson/layer7-authz GET,HEAD" {
		t.Errorf("authz policies after the change = %v", p)
	}
	// A new client sees the same listener versions, and a new ECDS version.
	if v := sotwFetch(t, addr, node, resource.ListenerType).GetVersionInfo(); v != sotwListeners.GetVersionInfo() {
		t.Errorf("listener version changed: %s → %s", sotwListeners.GetVersionInfo(), v)
	}
	if v := sotwFetch(t, addr, node, resource.ExtensionConfigType, ecdsName).GetVersionInfo(); v == sotwECDS.GetVersionInfo() {
		t.Errorf("ECDS version unchanged: %s", v)
	}
	c2 := newDeltaClient(t, addr, node)
	c2.subscribe(resource.ListenerType)
	for _, res := range c2.recv().GetResources() {
		if listenerVersions[res.GetName()] != res.GetVersion() {
			t.Errorf("listener %s: version %s → %s", res.GetName(), listenerVersions[res.GetName()], res.GetVersion())
		}
		var l listener.Listener
		if err := res.GetResource().UnmarshalTo(&l); err != nil || l.ValidateAll() != nil {
			t.Errorf("listener %s: %v", res.GetName(), err)
		}
	}
}

// logRecorder signals each log record whose message contains match.
type logRecorder struct {
	match string
	mu    sync.Mutex
	seen  chan string
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.match) {
		var node string
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "node" {
				node = a.Value.String()
			}
			return true
		})
		select {
		case h.seen <- node:
		default:
		}
	}
	return nil
}
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logRecorder) WithGroup(string) slog.Handler      { return h }

// TestUnknownWaypointNodeGetsNothing: a node id that names no waypoint gets no snapshot, and
// a warning is logged; ztunnels on the same server still get the workload API.
func TestUnknownWaypointNodeGetsNothing(t *testing.T) {
	_, res := waypointMesh(t, nil)
	logs := &logRecorder{match: "unknown waypoint node", seen: make(chan string, 4)}
	srv, addr := startServer(t, "127.0.0.1:0", server.Options{Registerer: prometheus.NewRegistry(), Logger: slog.New(logs)}, resources(t, false))
	srv.SetWaypoints(res)
	id := waypointxds.NodeID("10.0.0.1", "intruder", "handson", "cluster.local")
	c := newDeltaClient(t, addr, &core.Node{Id: id})
	c.subscribe(resource.ListenerType)
	if got := <-logs.seen; got != id {
		t.Errorf("warning for node %q, want %q", got, id)
	}
	if w := srv.WaypointOfNode(id); w != "" {
		t.Errorf("unknown node serves waypoint %q", w)
	}
}

// TestWaypointBeforeItsGateway connects a waypoint Envoy while the mesh has no waypoint for it
// (its Gateway not applied yet): it gets nothing, then its listeners once the Gateway exists.
func TestWaypointBeforeItsGateway(t *testing.T) {
	m, res := waypointMesh(t, nil)
	srv, addr := startServer(t, "127.0.0.1:0", server.Options{Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler)}, resources(t, false))
	srv.SetWaypoints(&waypointxds.Resources{})
	node := waypointNode(t, m)
	c := newDeltaClient(t, addr, node)
	c.subscribe(resource.ListenerType)
	if resp := c.recv(); len(resp.GetResources()) != 0 { // fail closed: nothing yet
		t.Fatalf("an unknown node got %d listeners", len(resp.GetResources()))
	}
	deadline := time.Now().Add(timeout)
	for srv.DeltaWatches(node.GetId()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no watch for the node")
		}
		time.Sleep(5 * time.Millisecond)
	}
	srv.SetWaypoints(&waypointxds.Resources{}) // another push without its Gateway
	srv.SetWaypoints(res)
	for { // an empty response may come first; the stream's deadline bounds the loop
		if resp := c.recv(); len(resp.GetResources()) > 0 {
			if got := len(resp.GetResources()); got != 3 {
				t.Fatalf("got %d listeners, want 3", got)
			}
			return
		}
	}
}
