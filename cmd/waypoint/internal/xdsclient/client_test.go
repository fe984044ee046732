package xdsclient

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	xds "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
)

// server is a go-control-plane delta ADS server of TypedExtensionConfigs on addr.
type server struct {
	addr  string
	lc    *cache.LinearCache
	g     *grpc.Server
	nodes chan string
}

func serve(t *testing.T, addr string) *server {
	t.Helper()
	s := &server{lc: cache.NewLinearCache(ExtensionType), nodes: make(chan string, 16)}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	srv := xds.NewServer(ctx, s.lc, xds.CallbackFuncs{StreamDeltaRequestFunc: func(_ int64, r *discovery.DeltaDiscoveryRequest) error {
		if r.GetNode() != nil && r.GetResponseNonce() == "" {
			s.nodes <- r.GetNode().GetId()
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

type sets struct {
	mu  sync.Mutex
	got []map[string]*anypb.Any
	ch  chan struct{}
}

func (s *sets) apply(typeURL string, res map[string]*anypb.Any) error {
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

func waitFor(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("no update within 10s")
	}
}

// TestApplyNACKReconnect: the full set of a type is applied, a rejected response is NACKed and
// changes nothing, and after the server goes away the client reconnects with its node id and
// receives the new server's resources.
func TestApplyNACKReconnect(t *testing.T) {
	s1 := serve(t, "127.0.0.1:0")
	if err := s1.lc.UpdateResources(map[string]types.Resource{"a": ext("a"), "b": ext("b")}, nil); err != nil {
		t.Fatal(err)
	}
	got := &sets{ch: make(chan struct{}, 16)}
	const node = "waypoint~127.0.0.1~wp.ns~ns.svc.cluster.local"
	c, err := New(Options{Address: s1.addr, NodeID: node, Types: []string{ExtensionType}, Apply: got.apply, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if n := <-s1.nodes; n != node {
		t.Fatalf("node id %q, want %q", n, node)
	}
	waitFor(t, got.ch)
	if l := got.last(); len(l) != 2 || l["a"] == nil || l["b"] == nil {
		t.Fatalf("first set %v, want a and b", l)
	}

	// Removing a and adding bad: Apply rejects the set, the client NACKs, nothing changes.
	if err := s1.lc.UpdateResources(map[string]types.Resource{"bad": ext("bad")}, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for c.NACKs() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no NACK within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := c.versions(ExtensionType); len(got) != 2 {
		t.Fatalf("accepted after the NACK: %v, want a and b still", got)
	}

	// The server goes away; another one comes on the same address with other resources.
	s1.g.Stop()
	s2 := serve(t, s1.addr)
	if err := s2.lc.UpdateResources(map[string]types.Resource{"c": ext("c")}, nil); err != nil {
		t.Fatal(err)
	}
	if n := <-s2.nodes; n != node {
		t.Fatalf("node id after reconnecting %q, want %q", n, node)
	}
	for {
		waitFor(t, got.ch)
		if l := got.last(); l["c"] != nil {
			break
		}
	}
	if c.Connects() < 2 {
		t.Errorf("%d connects, want 2", c.Connects())
	}
}
