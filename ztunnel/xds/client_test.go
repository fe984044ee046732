package xds

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"istio.io/istio/pkg/workloadapi"

	"github.com/goambient/goambient/ztunnel/state"
)

// fakeADS is a scripted delta ADS server: it hands each received request to the test and
// sends what the test gives it.
type fakeADS struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	reqs  chan *discovery.DeltaDiscoveryRequest
	resps chan *discovery.DeltaDiscoveryResponse
}

func (f *fakeADS) DeltaAggregatedResources(s discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	go func() {
		for {
			r, err := s.Recv()
			if err != nil {
				return
			}
			f.reqs <- r
		}
	}()
	for {
		select {
		case r := <-f.resps:
			if err := s.Send(r); err != nil {
				return err
			}
		case <-s.Context().Done():
			return nil
		}
	}
}

// startFakeADS serves a fakeADS on a loopback port until the test ends.
func startFakeADS(t *testing.T) (f *fakeADS, addr string) {
	t.Helper()
	f = &fakeADS{reqs: make(chan *discovery.DeltaDiscoveryRequest, 16), resps: make(chan *discovery.DeltaDiscoveryResponse)}
	g := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(g, f)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return f, l.Addr().String()
}

// send hands r to the client's stream, within 10 s.
func (f *fakeADS) send(t *testing.T, r *discovery.DeltaDiscoveryResponse) {
	t.Helper()
	select {
	case f.resps <- r:
	case <-time.After(10 * time.Second):
		t.Fatal("cannot send")
	}
}

// runClient runs c until the test ends, then waits for Run to return.
func runClient(t *testing.T, c *Client) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func workload(uid string, addr []byte) *discovery.Resource {
	a, _ := anypb.New(&workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
		Uid: uid, Name: "w", Namespace: "ns", Addresses: [][]byte{addr},
	}}})
	a.TypeUrl = AddressType
	return &discovery.Resource{Name: uid, Version: "v-" + uid, Resource: a}
}

func TestClientACKsNACKs(t *testing.T) {
	f, addr := startFakeADS(t)

	store := state.NewStore(nil)
	node := Node{IP: "10.0.0.5", PodName: "ztunnel-abc", Namespace: "istio-system", NodeName: "worker"}
	c, err := New(Options{Address: addr, Store: store, Node: node})
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)

	recv := func() *discovery.DeltaDiscoveryRequest { t.Helper(); return within(t, f.reqs, "request") }
	send := func(r *discovery.DeltaDiscoveryResponse) { t.Helper(); f.send(t, r) }

	// Subscriptions: both types, wildcard, node id and metadata on the first.
	first, second := recv(), recv()
	if first.GetTypeUrl() != AddressType || second.GetTypeUrl() != AuthorizationType {
		t.Fatalf("subscribed to %s, %s", first.GetTypeUrl(), second.GetTypeUrl())
	}
	if got, want := first.GetNode().GetId(), "ztunnel~10.0.0.5~ztunnel-abc.istio-system~istio-system.svc.cluster.local"; got != want {
		t.Errorf("node id %q, want %q", got, want)
	}
	if got := first.GetNode().GetMetadata().GetFields()["NODE_NAME"].GetStringValue(); got != "worker" {
		t.Errorf("NODE_NAME = %q", got)
	}
	// istiod reads the cluster of a node from CLUSTER_ID (Istio's default when not configured).
	if got := first.GetNode().GetMetadata().GetFields()["CLUSTER_ID"].GetStringValue(); got != DefaultClusterID {
		t.Errorf("CLUSTER_ID = %q, want %q", got, DefaultClusterID)
	}
	for _, r := range []*discovery.DeltaDiscoveryRequest{first, second} {
		if len(r.GetResourceNamesSubscribe()) != 1 || r.GetResourceNamesSubscribe()[0] != "*" {
			t.Errorf("%s: subscribe %v", r.GetTypeUrl(), r.GetResourceNamesSubscribe())
		}
	}

	// A good response: ACK with its nonce, state stored.
	send(&discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Nonce: "n1", Resources: []*discovery.Resource{workload("c//Pod/ns/w", []byte{10, 1, 2, 3})}})
	if ack := recv(); ack.GetResponseNonce() != "n1" || ack.GetErrorDetail() != nil {
		t.Fatalf("want ACK of n1, got %v", ack)
	}
	good := store.Load()
	if good.Workload("c//Pod/ns/w") == nil {
		t.Fatal("workload not in the state")
	}

	// Undecodable bytes: NACK with error_detail, state kept.
	broken := workload("c//Pod/ns/x", []byte{10, 1, 2, 4})
	broken.Resource.Value = []byte{0xff, 0xff}
	send(&discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Nonce: "n2", Resources: []*discovery.Resource{broken}})
	nack := recv()
	if nack.GetResponseNonce() != "n2" || nack.GetErrorDetail() == nil {
		t.Fatalf("want NACK of n2, got %v", nack)
	}
	t.Logf("decode NACK: %s", nack.GetErrorDetail().GetMessage())

	// A resource that decodes but cannot be built (3-byte address): NACK, state kept.
	send(&discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Nonce: "n3", Resources: []*discovery.Resource{workload("c//Pod/ns/y", []byte{1, 2, 3})}})
	if nack := recv(); nack.GetResponseNonce() != "n3" || nack.GetErrorDetail() == nil {
		t.Fatalf("want NACK of n3, got %v", nack)
	}
	if store.Load() != good {
		t.Error("state changed by a rejected response")
	}

	// A removal is applied.
	send(&discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Nonce: "n4", RemovedResources: []string{"c//Pod/ns/w"}})
	if ack := recv(); ack.GetResponseNonce() != "n4" || ack.GetErrorDetail() != nil {
		t.Fatalf("want ACK of n4, got %v", ack)
	}
	if store.Load().Workload("c//Pod/ns/w") != nil {
		t.Error("removed workload still in the state")
	}
	if s := c.Stats(); s.ACKs != 2 || s.NACKs != 2 {
		t.Errorf("stats %+v, want 2 ACKs and 2 NACKs", s)
	}
}

// TestClientAcceptsLargeResponse: a response over gRPC's default 4 MiB receive limit (a large
// mesh's initial sync) is received and ACKed, not refused (which made the client reconnect
// and get the same response forever).
func TestClientAcceptsLargeResponse(t *testing.T) {
	f, addr := startFakeADS(t)

	store := state.NewStore(nil)
	c, err := New(Options{Address: addr, Store: store, Node: Node{IP: "10.0.0.5", PodName: "z", Namespace: "istio-system", NodeName: "worker"}})
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)

	recv := func() *discovery.DeltaDiscoveryRequest { t.Helper(); return within(t, f.reqs, "request") }
	recv()
	recv() // the two subscriptions

	// 6 MiB of resources: many workloads, as an initial sync carries them.
	var rs []*discovery.Resource
	size := 0
	for i := 0; size < 6<<20; i++ {
		r := workload(fmt.Sprintf("c//Pod/ns/w%d-%s", i, strings.Repeat("x", 200)), []byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		size += proto.Size(r)
		rs = append(rs, r)
	}
	select {
	case f.resps <- &discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Nonce: "big", Resources: rs}:
	case <-time.After(10 * time.Second):
		t.Fatal("cannot send")
	}
	if ack := recv(); ack.GetResponseNonce() != "big" || ack.GetErrorDetail() != nil {
		t.Fatalf("want ACK of the %d-byte response, got nonce %q error %v", size, ack.GetResponseNonce(), ack.GetErrorDetail())
	}
	if s := c.Stats(); s.Connects != 1 {
		t.Errorf("%d streams opened, want 1", s.Connects)
	}
}
