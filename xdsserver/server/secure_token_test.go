package server_test

import (
	"io"
	"strings"
	"sync/atomic"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/goambient/goambient/xdsserver/server"
)

// TestSecureViewPodToken: a Kubernetes service account token (a TokenReview caller) of the
// service account the waypoint's pods run as gets, for the waypoint's node, its secrets and
// the workload API, as istiod serves a gateway whose verified identity is in its namespace.
// Refused with PermissionDenied before anything is sent: another service account of the
// namespace, the same service account name in another namespace, and the right token for a
// node id of another namespace. The ingress gateway's certificates take the same path
// (integration/kube TestIngressCertificatesByPodToken, with the real API server).
func TestSecureViewPodToken(t *testing.T) {
	var gen atomic.Int64
	gen.Store(1)
	srv, addr, node := startSecureView(t, &gen)

	s, err := dial(t, addr).DeltaAggregatedResources(tokenCtx(t, "tok-pod-handson"))
	if err != nil {
		t.Fatal(err)
	}
	c := &deltaClient{t: t, stream: s, node: node}
	c.subscribe(resource.SecretType)
	if got := secretsOf(t, deltaAnys(c.recv())); len(got) != 2 || got["default"] != "cert-1" {
		t.Fatalf("secrets %v, want default (cert-1) and ROOTCA", got)
	}
	if w := srv.WaypointOfSecureNode(node.GetId()); w != "handson/handson" {
		t.Errorf("WaypointOfSecureNode = %q, want handson/handson", w)
	}
	wl, err := dial(t, addr).DeltaAggregatedResources(tokenCtx(t, "tok-pod-handson"))
	if err != nil {
		t.Fatal(err)
	}
	if err := wl.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: server.Types[0], ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := wl.Recv(); err != nil {
		t.Fatalf("the workload API to the waypoint's pod token: %v", err)
	}

	elsewhere := &core.Node{Id: strings.ReplaceAll(node.GetId(), "handson", "default")}
	for _, tc := range []struct {
		name, tok string
		node      *core.Node
		typ       string
	}{
		{"another service account", "tok-pod-curl", node, resource.SecretType},
		{"another service account, workload API", "tok-pod-curl", node, server.Types[0]},
		{"the same name in another namespace", "tok-pod-elsewhere", node, resource.SecretType},
		{"a node of another namespace", "tok-pod-handson", elsewhere, resource.SecretType},
		{"a node of another namespace, workload API", "tok-pod-handson", elsewhere, server.Types[0]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := dial(t, addr).DeltaAggregatedResources(tokenCtx(t, tc.tok))
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Send(&discovery.DeltaDiscoveryRequest{Node: tc.node, TypeUrl: tc.typ, ResourceNamesSubscribe: []string{"default"}}); err != nil && err != io.EOF {
				t.Fatal(err)
			}
			if resp, err := s.Recv(); status.Code(err) != codes.PermissionDenied {
				t.Fatalf("got %v (%d resources), want PermissionDenied", err, len(resp.GetResources()))
			}
		})
	}
}
