package xds

import (
	"context"
	"errors"
	"maps"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	xdsserver "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/goambient/goambient/ztunnel/state"
)

// Envoy types a generic client subscribes to in these tests (the waypoint's ECDS and RDS).
const (
	extensionType = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
	routeType     = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
)

// subscription is what a server saw of a subscription request.
type subscription struct {
	typeURL, node string
	versions      map[string]string
}

// cpServer is a go-control-plane delta ADS server of TypedExtensionConfigs and (empty)
// RouteConfigurations on addr.
type cpServer struct {
	addr  string
	ext   *cache.LinearCache
	g     *grpc.Server
	subs  chan subscription
	nacks chan string
}

func serveCP(t *testing.T, addr string) *cpServer {
	t.Helper()
	s := &cpServer{ext: cache.NewLinearCache(extensionType), subs: make(chan subscription, 16), nacks: make(chan string, 16)}
	mux := &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cache.Cache{extensionType: s.ext, routeType: cache.NewLinearCache(routeType)},
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	srv := xdsserver.NewServer(ctx, mux, xdsserver.CallbackFuncs{StreamDeltaRequestFunc: func(_ int64, r *discovery.DeltaDiscoveryRequest) error {
		switch {
		case r.GetErrorDetail() != nil:
			s.nacks <- r.GetErrorDetail().GetMessage()
		case r.GetResponseNonce() == "":
			s.subs <- subscription{typeURL: r.GetTypeUrl(), node: r.GetNode().GetId(), versions: r.GetInitialResourceVersions()}
		}
		return nil
	}})
	s.g = grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(s.g, srv)
	go s.g.Serve(ln)
	t.Cleanup(func() { s.g.Stop(); cancel() })
	return s
}

func ext(name string) types.Resource {
	return &core.TypedExtensionConfig{Name: name, TypedConfig: &anypb.Any{TypeUrl: "type.googleapis.com/x", Value: []byte{}}}
}

// sets records what an Applier was given; it rejects any set with a resource named "bad".
type sets struct {
	mu  sync.Mutex
	got []map[string]*anypb.Any
	ch  chan struct{}
}

func (s *sets) apply(typeURL string, res map[string]*anypb.Any) error {
	if typeURL != extensionType {
		return nil
	}
	if _, bad := res["bad"]; bad {
		return errors.New("bad resource")
	}
	s.mu.Lock()
	s.got = append(s.got, res)
	s.mu.Unlock()
	s.ch <- struct{}{}
	return nil
}

func (s *sets) last() map[string]*anypb.Any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got[len(s.got)-1]
}

func within[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s within 10s", what)
		panic("unreachable")
	}
}

// TestApplyNACKReconnect: with an Applier, the full set of a type is applied, a rejected
// response is NACKed and changes nothing, the node id goes on every subscription when asked,
// and after the server goes away the client reconnects, resumes with the versions it holds
// and receives the new server's resources.
func TestApplyNACKReconnect(t *testing.T) {
	s1 := serveCP(t, "127.0.0.1:0")
	if err := s1.ext.UpdateResources(map[string]types.Resource{"a": ext("a"), "b": ext("b")}, nil); err != nil {
		t.Fatal(err)
	}
	got := &sets{ch: make(chan struct{}, 16)}
	const node = "waypoint~127.0.0.1~wp.ns~ns.svc.cluster.local"
	c, err := New(Options{
		Address: s1.addr, NodeID: node, NodeOnEveryRequest: true, Types: []string{extensionType, routeType},
		Apply: got.apply, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	for _, typ := range []string{extensionType, routeType} {
		if s := within(t, s1.subs, "subscription"); s.typeURL != typ || s.node != node {
			t.Fatalf("subscription to %s with node %q, want %s with %q", s.typeURL, s.node, typ, node)
		}
	}
	within(t, got.ch, "update")
	if l := got.last(); len(l) != 2 || l["a"] == nil || l["b"] == nil {
		t.Fatalf("first set %v, want a and b", l)
	}

	// Removing a and adding bad: Apply rejects the set, the client NACKs, nothing changes.
	if err := s1.ext.UpdateResources(map[string]types.Resource{"bad": ext("bad")}, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	if msg := within(t, s1.nacks, "NACK"); msg != "bad resource" {
		t.Errorf("NACK %q, want the applier's error", msg)
	}
	want := c.Versions(extensionType)
	if len(want) != 2 || want["a"] == "" || want["b"] == "" {
		t.Fatalf("accepted after the NACK: %v, want a and b still", want)
	}
	if c.LastError() == nil {
		t.Error("no LastError after a NACK")
	}

	// The server goes away; another one comes on the same address with other resources.
	s1.g.Stop()
	s2 := serveCP(t, s1.addr)
	if err := s2.ext.UpdateResources(map[string]types.Resource{"c": ext("c")}, nil); err != nil {
		t.Fatal(err)
	}
	s := within(t, s2.subs, "subscription after reconnecting")
	if s.typeURL != extensionType || s.node != node {
		t.Fatalf("subscription to %s with node %q after reconnecting, want %s with %q", s.typeURL, s.node, extensionType, node)
	}
	if !maps.Equal(s.versions, want) {
		t.Errorf("resumed with %v, want %v", s.versions, want)
	}
	for {
		within(t, got.ch, "update")
		if l := got.last(); l["c"] != nil {
			if names := slices.Sorted(maps.Keys(l)); !slices.Equal(names, []string{"c"}) {
				t.Errorf("set after reconnecting %v, want c alone", names)
			}
			break
		}
	}
	if st := c.Stats(); st.Connects < 2 || st.NACKs != 1 {
		t.Errorf("stats %+v, want 2 connects and 1 NACK", st)
	}
}

// TestNewOptions: a client needs an address and exactly one of a Store and an Applier; a
// Store takes only the workload API's types, an Applier needs its types.
func TestNewOptions(t *testing.T) {
	apply := func(string, map[string]*anypb.Any) error { return nil }
	store := state.NewStore(nil)
	for name, o := range map[string]Options{
		"no address":         {Apply: apply, Types: []string{extensionType}},
		"neither":            {Address: "x:1"},
		"both":               {Address: "x:1", Apply: apply, Store: store},
		"applier, no types":  {Address: "x:1", Apply: apply},
		"store, envoy types": {Address: "x:1", Store: store, Types: []string{extensionType}},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	for name, o := range map[string]Options{
		"store":              {Address: "x:1", Store: store},
		"store, addresses":   {Address: "x:1", Store: store, Types: []string{AddressType}},
		"applier with types": {Address: "x:1", Apply: apply, Types: []string{extensionType}},
	} {
		if _, err := New(o); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestStoreSubscriptions: with a Store the node (with its metadata) goes on the first
// subscription only, Synced waits for every type, and an unchanged resource keeps its
// decoded message across responses.
func TestStoreSubscriptions(t *testing.T) {
	f, addr := startFakeADS(t)

	store := state.NewStore(nil)
	c, err := New(Options{Address: addr, Store: store, Node: Node{IP: "10.0.0.5", PodName: "z", Namespace: "istio-system"}})
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)

	first, second := within(t, f.reqs, "subscription"), within(t, f.reqs, "subscription")
	if first.GetNode().GetId() == "" || second.GetNode() != nil {
		t.Errorf("nodes %v and %v, want the first only", first.GetNode(), second.GetNode())
	}
	send := func(r *discovery.DeltaDiscoveryResponse) {
		t.Helper()
		f.send(t, r)
		if ack := within(t, f.reqs, "ACK"); ack.GetResponseNonce() != r.GetNonce() || ack.GetErrorDetail() != nil {
			t.Fatalf("want ACK of %s, got %v", r.GetNonce(), ack)
		}
	}
	send(&discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Nonce: "n1", Resources: []*discovery.Resource{workload("c//Pod/ns/w", []byte{10, 1, 2, 3})}})
	w := store.Load().Workload("c//Pod/ns/w")
	select {
	case <-c.Synced():
		t.Fatal("synced before the authorizations")
	default:
	}
	send(&discovery.DeltaDiscoveryResponse{TypeUrl: AuthorizationType, Nonce: "n2"})
	select {
	case <-c.Synced():
	default:
		t.Fatal("not synced after both types")
	}
	if got := store.Load().Workload("c//Pod/ns/w"); got == nil || got != w {
		t.Errorf("workload %p after an authorization update, want the same %p", got, w)
	}
	if v := c.Versions(AddressType); v["c//Pod/ns/w"] != "v-c//Pod/ns/w" {
		t.Errorf("versions %v", v)
	}
}
