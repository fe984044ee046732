package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/goambient/goambient/xdsserver/ca"
	"github.com/goambient/goambient/xdsserver/server"
	"github.com/goambient/goambient/xdsserver/waypointxds"
)

// fakeAuth authenticates the tokens of its map.
type fakeAuth map[string]ca.Caller

func (a fakeAuth) Authenticate(_ context.Context, tok string) (*ca.Caller, error) {
	c, ok := a[tok]
	if !ok {
		return nil, errors.New("unknown token")
	}
	return &c, nil
}

// startSecureView serves RegisterSecure's ADS over loopback (plaintext here: the TLS listener
// is cmd/xdsserver's, tested there) with handson's waypoint, and secrets whose certificate is
// "cert-<gen>".
func startSecureView(t *testing.T, gen *atomic.Int64) (*server.Server, string, *core.Node) {
	t.Helper()
	srv, err := server.New(server.Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	m, r := waypointMesh(t, nil)
	srv.SetWaypoints(r)
	g := grpc.NewServer()
	secrets := func(ns, name string) ([]*tlsv3.Secret, error) {
		if ns+"/"+name != "handson/handson" {
			return nil, fmt.Errorf("asked for the secrets of %s/%s", ns, name)
		}
		return []*tlsv3.Secret{
			waypointxds.SVIDSecret(fmt.Appendf(nil, "cert-%d", gen.Load()), []byte("key")),
			waypointxds.RootCASecret([]byte("root")),
		}, nil
	}
	auth := fakeAuth{
		"tok-handson": {Kind: ca.KindWaypoint, Namespace: "handson", Name: "handson"},
		"tok-other":   {Kind: ca.KindWaypoint, Namespace: "handson", Name: "other"},
		"tok-ztunnel": {Kind: ca.KindZtunnel, Node: "node-a"},
		// Kubernetes service account tokens (as TokenReview reports them): the waypoint's
		// pods' own (handson-istio-waypoint: the fallback name, as handson has a Service and a
		// ServiceAccount handson), another of its namespace, the same name in another namespace.
		"tok-pod-handson":   {Kind: ca.KindWorkload, Namespace: "handson", Name: "handson-istio-waypoint"},
		"tok-pod-curl":      {Kind: ca.KindWorkload, Namespace: "handson", Name: "curl-allow"},
		"tok-pod-elsewhere": {Kind: ca.KindWorkload, Namespace: "default", Name: "handson-istio-waypoint"},
	}
	if err := srv.RegisterSecure(g, server.SecureOptions{Authenticator: auth, Secrets: secrets}); err != nil {
		t.Fatal(err)
	}
	if err := srv.RegisterSecure(grpc.NewServer(), server.SecureOptions{Authenticator: auth, Secrets: secrets}); err == nil {
		t.Error("RegisterSecure accepted a second call")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- g.Serve(l) }()
	t.Cleanup(func() {
		srv.Stop()
		g.Stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return srv, l.Addr().String(), waypointNode(t, m)
}

func tokenCtx(t *testing.T, tok string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), timeout) // a bound, not a timing assertion
	t.Cleanup(cancel)
	if tok == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
}

// secrets decodes the secrets of a response: name → the certificate chain ("" for ROOTCA).
func secretsOf(t *testing.T, rs []*anypb.Any) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, r := range rs {
		var s tlsv3.Secret
		if err := r.UnmarshalTo(&s); err != nil {
			t.Fatal(err)
		}
		out[s.GetName()] = string(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	}
	return out
}

func deltaAnys(resp *discovery.DeltaDiscoveryResponse) []*anypb.Any {
	var out []*anypb.Any
	for _, r := range resp.GetResources() {
		out = append(out, r.GetResource())
	}
	return out
}

// TestSecureViewDeltaRotation: a waypoint's delta stream gets default and ROOTCA; after a
// renewal (RefreshSecrets with a new certificate) only default is sent again; a SotW stream
// (Envoy may use either) gets both.
func TestSecureViewDeltaRotation(t *testing.T) {
	var gen atomic.Int64
	gen.Store(1)
	srv, addr, node := startSecureView(t, &gen)
	s, err := dial(t, addr).DeltaAggregatedResources(tokenCtx(t, "tok-handson"))
	if err != nil {
		t.Fatal(err)
	}
	c := &deltaClient{t: t, stream: s, node: node}
	c.subscribe(resource.SecretType)
	got := secretsOf(t, deltaAnys(c.recv()))
	if len(got) != 2 || got["default"] != "cert-1" {
		t.Fatalf("secrets %v, want default (cert-1) and ROOTCA", got)
	}
	if w := srv.WaypointOfSecureNode(node.GetId()); w != "handson/handson" {
		t.Errorf("WaypointOfSecureNode = %q, want handson/handson", w)
	}
	gen.Store(2)
	srv.RefreshSecrets()
	got = secretsOf(t, deltaAnys(c.recv()))
	if len(got) != 1 || got["default"] != "cert-2" {
		t.Fatalf("after renewal: sent %v, want only default (cert-2)", got)
	}

	sotw, err := dial(t, addr).StreamAggregatedResources(tokenCtx(t, "tok-handson"))
	if err != nil {
		t.Fatal(err)
	}
	if err := sotw.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.SecretType, ResourceNames: []string{"default", "ROOTCA"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := sotw.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := secretsOf(t, resp.GetResources()); len(got) != 2 || got["default"] != "cert-2" {
		t.Errorf("SotW secrets %v, want default (cert-2) and ROOTCA", got)
	}
}

// TestSecureViewRefusals: Envoy types are refused to a stream without token or with an unknown
// token (Unauthenticated), with a ztunnel's or with another waypoint's token for handson's node
// (PermissionDenied), over delta and SotW; the workload API is served to a ztunnel's token.
func TestSecureViewRefusals(t *testing.T) {
	var gen atomic.Int64
	_, addr, node := startSecureView(t, &gen)
	for _, c := range []struct {
		tok  string
		want codes.Code
	}{{"", codes.Unauthenticated}, {"tok-unknown", codes.Unauthenticated}, {"tok-ztunnel", codes.PermissionDenied}, {"tok-other", codes.PermissionDenied}} {
		t.Run("delta "+c.tok, func(t *testing.T) {
			s, err := dial(t, addr).DeltaAggregatedResources(tokenCtx(t, c.tok))
			if err != nil {
				t.Fatal(err)
			}
			// A refused stream may end before the request is sent (io.EOF): Recv has the status.
			if err := s.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ListenerType, ResourceNamesSubscribe: []string{"*"}}); err != nil && err != io.EOF {
				t.Fatal(err)
			}
			if _, err := s.Recv(); status.Code(err) != c.want {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
		t.Run("sotw "+c.tok, func(t *testing.T) {
			s, err := dial(t, addr).StreamAggregatedResources(tokenCtx(t, c.tok))
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.SecretType, ResourceNames: []string{"default"}}); err != nil && err != io.EOF {
				t.Fatal(err)
			}
			if _, err := s.Recv(); status.Code(err) != c.want {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	t.Run("workload API", func(t *testing.T) {
		s, err := dial(t, addr).DeltaAggregatedResources(tokenCtx(t, "tok-ztunnel"))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&discovery.DeltaDiscoveryRequest{Node: ztunnelNode("node-a"), TypeUrl: server.Types[0], ResourceNamesSubscribe: []string{"*"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatalf("workload API: %v", err)
		}
	})
}

// ztunnelNode is the node a ztunnel of node name sends, as Istio's ztunnel.
func ztunnelNode(name string) *core.Node {
	md, err := structpb.NewStruct(map[string]any{"NODE_NAME": name, "NAMESPACE": "istio-system", "NAME": "ztunnel-" + name})
	if err != nil {
		panic(err)
	}
	return &core.Node{Id: "ztunnel~127.0.0.1~ztunnel-" + name + ".istio-system~istio-system.svc.cluster.local", Metadata: md}
}
