package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/goambient/goambient/xdsserver/ca"
	"github.com/goambient/goambient/xdsserver/server"
	"github.com/goambient/goambient/xdsserver/waypointxds"
)

// TestAttackTLSUnauthenticated: on the TLS listener as cmd/xdsserver wires it (startSecure,
// real TLS, bootstrap tokens), a client without a token or with an unknown one gets
// Unauthenticated and not one response, for every type served, over delta and SotW; the
// waypoint and the ztunnel with their tokens are served afterwards.
func TestAttackTLSUnauthenticated(t *testing.T) {
	f := startSecureFixture(t)
	creds := credentials.NewTLS(&tls.Config{RootCAs: f.roots, ServerName: ca.ServerDNSName, MinVersion: tls.VersionTLS12})
	conn, err := grpc.NewClient(f.secure, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
	types := append(append([]string{}, server.Types...), waypointxds.Types...)
	for _, tok := range []string{"", "not-a-known-token-0123456789"} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a bound, not a timing assertion
		t.Cleanup(cancel)
		if tok != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
		}
		for _, typeURL := range types {
			t.Run(fmt.Sprintf("delta %q %s", tok, typeURL), func(t *testing.T) {
				s, err := ads.DeltaAggregatedResources(ctx)
				if err != nil {
					t.Fatal(err)
				}
				_ = s.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: f.node}, TypeUrl: typeURL, ResourceNamesSubscribe: []string{"*"}})
				n := 0
				for ; ; n++ {
					if _, err = s.Recv(); err != nil {
						break
					}
				}
				if status.Code(err) != codes.Unauthenticated || n != 0 {
					t.Errorf("%d responses, then %v; want none, then Unauthenticated", n, err)
				}
			})
			t.Run(fmt.Sprintf("sotw %q %s", tok, typeURL), func(t *testing.T) {
				s, err := ads.StreamAggregatedResources(ctx)
				if err != nil {
					t.Fatal(err)
				}
				_ = s.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: f.node}, TypeUrl: typeURL})
				n := 0
				for ; ; n++ {
					if _, err = s.Recv(); err != nil {
						break
					}
				}
				if status.Code(err) != codes.Unauthenticated || n != 0 {
					t.Errorf("%d responses, then %v; want none, then Unauthenticated", n, err)
				}
			})
		}
	}
	if resp, err := ask(t, f.stream(t, true, tokWaypoint), f.node, resource.SecretType); err != nil || len(resp.GetResources()) != 2 {
		t.Errorf("the waypoint after the attack: %v, %d secrets", err, len(resp.GetResources()))
	}
	s := f.stream(t, true, tokZtunnel)
	if err := s.Send(&discovery.DeltaDiscoveryRequest{Node: ztunnelNode("node-a"), TypeUrl: server.Types[0], ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := s.Recv(); err != nil || len(resp.GetResources()) == 0 {
		t.Errorf("the ztunnel after the attack: %v, %d addresses", err, len(resp.GetResources()))
	}
}
