package server_test

import (
	"fmt"
	"net"
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/goambient/goambient/xdsserver/ca"
	"github.com/goambient/goambient/xdsserver/server"
	"github.com/goambient/goambient/xdsserver/waypointxds"
)

// secondWaypoint adds a second waypoint, handson/second, to handson's mesh.
func secondWaypoint(yaml string) string {
	return yaml + `
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: second, namespace: handson}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
`
}

// startTwoWaypoints serves RegisterSecure's ADS (on the Server's own limits and listener) for
// handson's mesh with two waypoints, whose secrets carry the certificate "cert-<ns>/<name>";
// tokens: tok-handson, tok-second (the waypoints), tok-node-a (the ztunnel of node-a).
func startTwoWaypoints(t *testing.T) (addr string, handson, second *core.Node) {
	t.Helper()
	srv, err := server.New(server.Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	m, r := waypointMesh(t, secondWaypoint)
	srv.SetWaypoints(r)
	srv.Set(resources(t, false))
	g := grpc.NewServer(srv.ServerOptions()...)
	auth := fakeAuth{
		"tok-handson": {Kind: ca.KindWaypoint, Namespace: "handson", Name: "handson"},
		"tok-second":  {Kind: ca.KindWaypoint, Namespace: "handson", Name: "second"},
		"tok-node-a":  {Kind: ca.KindZtunnel, Node: "node-a"},
		"tok-curl":    {Kind: ca.KindWorkload, Namespace: "handson", Name: "curl"},
	}
	secrets := func(ns, name string) ([]*tlsv3.Secret, error) {
		return []*tlsv3.Secret{waypointxds.SVIDSecret([]byte("cert-"+ns+"/"+name), []byte("key")), waypointxds.RootCASecret([]byte("root"))}, nil
	}
	if err := srv.RegisterSecure(g, server.SecureOptions{Authenticator: auth, Secrets: secrets}); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- g.Serve(srv.Listener(l)) }()
	t.Cleanup(func() {
		srv.Stop()
		g.Stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	node := func(name string) *core.Node {
		w := m.Waypoint("handson", name)
		if w == nil || len(w.Instances) == 0 {
			t.Fatalf("handson/%s has no waypoint pod", name)
		}
		p := w.Instances[0]
		return &core.Node{Id: waypointxds.NodeID(p.IPs[0].String(), p.Name, p.Namespace, "cluster.local")}
	}
	return l.Addr().String(), node("handson"), node("second")
}

// recvAll reads a stream until it ends and returns the certificates of the secrets it got
// and how it ended.
func recvAll[T interface{ GetTypeUrl() string }](recv func() (T, error), anys func(T) map[string]string) ([]string, error) {
	var certs []string
	for {
		resp, err := recv()
		if err != nil {
			return certs, err
		}
		for _, c := range anys(resp) {
			certs = append(certs, c)
		}
	}
}

// TestAttackUnauthenticatedSecure: on the secure ADS, a stream without a token or with one
// the authenticator does not know ends with Unauthenticated and receives nothing, for every
// type served (the workload API's and Envoy's), over delta and SotW.
func TestAttackUnauthenticatedSecure(t *testing.T) {
	addr, node, _ := startTwoWaypoints(t)
	base := measure()
	types := append(append([]string{}, server.Types...), waypointxds.Types...)
	for _, tok := range []string{"", "tok-unknown"} {
		for _, typeURL := range types {
			t.Run(fmt.Sprintf("delta %q %s", tok, typeURL), func(t *testing.T) {
				s, err := dial(t, addr).DeltaAggregatedResources(tokenCtx(t, tok))
				if err != nil {
					t.Fatal(err)
				}
				_ = s.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: typeURL, ResourceNamesSubscribe: []string{"*"}})
				n := 0
				for {
					_, err = s.Recv()
					if err != nil {
						break
					}
					n++
				}
				if status.Code(err) != codes.Unauthenticated || n != 0 {
					t.Errorf("%d responses, then %v; want none, then Unauthenticated", n, err)
				}
			})
			t.Run(fmt.Sprintf("sotw %q %s", tok, typeURL), func(t *testing.T) {
				s, err := dial(t, addr).StreamAggregatedResources(tokenCtx(t, tok))
				if err != nil {
					t.Fatal(err)
				}
				_ = s.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: typeURL})
				n := 0
				for {
					_, err = s.Recv()
					if err != nil {
						break
					}
					n++
				}
				if status.Code(err) != codes.Unauthenticated || n != 0 {
					t.Errorf("%d responses, then %v; want none, then Unauthenticated", n, err)
				}
			})
		}
	}
	eventually(t, timeout, func() bool { return serverGoroutines() <= base.goroutines+2 }, func() string {
		return fmt.Sprintf("server goroutines: %d after the attack, %d before", serverGoroutines(), base.goroutines)
	})
	// A waypoint with its token is served.
	s, err := dial(t, addr).DeltaAggregatedResources(tokenCtx(t, "tok-handson"))
	if err != nil {
		t.Fatal(err)
	}
	c := &deltaClient{t: t, stream: s, node: node}
	c.subscribe(resource.SecretType)
	if got := secretsOf(t, deltaAnys(c.recv())); got["default"] != "cert-handson/handson" {
		t.Errorf("the handson waypoint got %v", got)
	}
}

// TestAttackOtherNodesConfig: a caller authenticated as one waypoint (or ztunnel) cannot get
// another's configuration: asking with the other waypoint's node id, or switching to it on a
// stream admitted for its own, ends with PermissionDenied before any of the other waypoint's
// resources is sent (delta and SotW), while the other waypoint is connected and served; a
// ztunnel's NODE_NAME must be its token's node; a workload gets nothing.
func TestAttackOtherNodesConfig(t *testing.T) {
	addr, handson, second := startTwoWaypoints(t)

	// The second waypoint is connected: its node has a snapshot with its secrets.
	ss, err := dial(t, addr).DeltaAggregatedResources(tokenCtx(t, "tok-second"))
	if err != nil {
		t.Fatal(err)
	}
	sc := &deltaClient{t: t, stream: ss, node: second}
	sc.subscribe(resource.SecretType)
	if got := secretsOf(t, deltaAnys(sc.recv())); got["default"] != "cert-handson/second" {
		t.Fatalf("the second waypoint got %v", got)
	}
	base := measure()

	deltaCerts := func(r *discovery.DeltaDiscoveryResponse) map[string]string {
		if r.GetTypeUrl() != resource.SecretType {
			return nil
		}
		return secretsOf(t, deltaAnys(r))
	}
	sotwCerts := func(r *discovery.DiscoveryResponse) map[string]string {
		if r.GetTypeUrl() != resource.SecretType {
			return nil
		}
		return secretsOf(t, r.GetResources())
	}
	check := func(t *testing.T, certs []string, err error) {
		t.Helper()
		for _, c := range certs {
			if strings.Contains(c, "second") {
				t.Errorf("handson's token got the second waypoint's certificate %q", c)
			}
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("ended with %v, want PermissionDenied", err)
		}
	}
	t.Run("delta, the other node", func(t *testing.T) {
		s, err := dial(t, addr).DeltaAggregatedResources(tokenCtx(t, "tok-handson"))
		if err != nil {
			t.Fatal(err)
		}
		_ = s.Send(&discovery.DeltaDiscoveryRequest{Node: second, TypeUrl: resource.SecretType, ResourceNamesSubscribe: []string{"*"}})
		certs, err := recvAllDelta(s, deltaCerts)
		check(t, certs, err)
	})
	t.Run("delta, switching node", func(t *testing.T) {
		s, err := dial(t, addr).DeltaAggregatedResources(tokenCtx(t, "tok-handson"))
		if err != nil {
			t.Fatal(err)
		}
		c := &deltaClient{t: t, stream: s, node: handson}
		c.subscribe(resource.ListenerType)
		c.recv()
		_ = s.Send(&discovery.DeltaDiscoveryRequest{Node: second, TypeUrl: resource.SecretType, ResourceNamesSubscribe: []string{"*"}})
		certs, err := recvAllDelta(s, deltaCerts)
		check(t, certs, err)
	})
	t.Run("sotw, switching node", func(t *testing.T) {
		s, err := dial(t, addr).StreamAggregatedResources(tokenCtx(t, "tok-handson"))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&discovery.DiscoveryRequest{Node: handson, TypeUrl: resource.ListenerType}); err != nil {
			t.Fatal(err)
		}
		resp, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		_ = s.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()})
		_ = s.Send(&discovery.DiscoveryRequest{Node: second, TypeUrl: resource.SecretType, ResourceNames: []string{"default"}})
		certs, err := recvAllSotw(s, sotwCerts)
		check(t, certs, err)
	})
	t.Run("ztunnel of another node", func(t *testing.T) {
		s, err := dial(t, addr).DeltaAggregatedResources(tokenCtx(t, "tok-node-a"))
		if err != nil {
			t.Fatal(err)
		}
		_ = s.Send(&discovery.DeltaDiscoveryRequest{Node: ztunnelNode("node-b"), TypeUrl: server.Types[0], ResourceNamesSubscribe: []string{"*"}})
		certs, err := recvAllDelta(s, deltaCerts)
		check(t, certs, err)
	})
	t.Run("workload", func(t *testing.T) {
		s, err := dial(t, addr).DeltaAggregatedResources(tokenCtx(t, "tok-curl"))
		if err != nil {
			t.Fatal(err)
		}
		_ = s.Send(&discovery.DeltaDiscoveryRequest{Node: ztunnelNode("node-a"), TypeUrl: server.Types[0], ResourceNamesSubscribe: []string{"*"}})
		certs, err := recvAllDelta(s, deltaCerts)
		check(t, certs, err)
	})
	// The attackers' streams and connections are gone (the second waypoint's remains); the
	// second waypoint is still served.
	eventually(t, timeout, func() bool { return serverGoroutines() <= base.goroutines+2 }, func() string {
		return fmt.Sprintf("server goroutines: %d after the attack, %d before", serverGoroutines(), base.goroutines)
	})
	sc.subscribe(resource.ListenerType)
	if resp := sc.recv(); len(resp.GetResources()) == 0 {
		t.Error("the second waypoint got no listeners after the attack")
	}
}

func recvAllDelta(s discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, certs func(*discovery.DeltaDiscoveryResponse) map[string]string) ([]string, error) {
	return recvAll(s.Recv, certs)
}

func recvAllSotw(s discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, certs func(*discovery.DiscoveryResponse) map[string]string) ([]string, error) {
	return recvAll(s.Recv, certs)
}
