package kube_test

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"sigs.k8s.io/yaml"

	"github.com/goambient/goambient/integration/istiod"
	"github.com/goambient/goambient/ztunnel/xds"
)

const listenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"

// testWaypointNodeUnderIstiod: istiod serves a waypoint's own configuration (its listeners
// connect_terminate and main_internal) only to a node of type waypoint whose address is one
// of the waypoint's pods. The node the embedded waypoint sends (cmd/waypoint: its --node-id,
// no metadata) and the node of the repository's envoy.yaml (its id's form and metadata, with
// the pod and namespace a deployment template would put in) both get it, over istiod's 15012
// with a token of the waypoint's ServiceAccount; so a goambient waypoint could run under
// istiod (the embedded waypoint's L7 policy would still need goambient's ECDS filter config,
// which istiod does not send: see the README).
func testWaypointNodeUnderIstiod(t *testing.T, p *peerEnv) {
	ip := p.ips[peerNS+"/waypoint-0"]
	id := "waypoint~" + ip + "~waypoint-0." + peerNS + "~" + peerNS + ".svc.cluster.local" // cmd/waypoint's --node-id form

	// envoy.yaml's node: the same id form and its metadata, for this waypoint.
	data, err := os.ReadFile("../../envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var boot struct{ Node map[string]any }
	if err := yaml.Unmarshal(data, &boot); err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(boot.Node)
	if err != nil {
		t.Fatal(err)
	}
	envoyNode := &core.Node{}
	if err := protojson.Unmarshal(js, envoyNode); err != nil {
		t.Fatalf("envoy.yaml's node: %v", err)
	}
	if parts := strings.Split(envoyNode.GetId(), "~"); len(parts) != 4 || parts[0] != "waypoint" {
		t.Fatalf("envoy.yaml's node id %q is not waypoint~<ip>~<pod>.<ns>~<ns>.svc.cluster.local", envoyNode.GetId())
	}
	for _, k := range []string{"NAMESPACE", "CLUSTER_ID", "ISTIO_VERSION"} {
		if _, ok := envoyNode.GetMetadata().GetFields()[k]; !ok {
			t.Errorf("envoy.yaml's node metadata lacks %s, which istiod reads", k)
		}
	}
	envoyNode.Id = id // what --service-node does in the template
	envoyNode.Metadata.Fields["NAMESPACE"] = structpb.NewStringValue(peerNS)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tok, err := p.s.Token(ctx, peerNS, "waypoint", []string{"istio-ca"}, nil, 3600)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		node     *core.Node
		waypoint bool
	}{
		{"embedded waypoint's node", &core.Node{Id: id}, true},
		{"envoy.yaml's node", envoyNode, true},
		{"the same pod as a gateway (router~)", &core.Node{Id: "router" + strings.TrimPrefix(id, "waypoint")}, false},
	} {
		names, err := istiodListeners(ctx, p.istiod, tok, tc.node)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		for _, want := range []string{"connect_terminate", "main_internal"} {
			if slices.Contains(names, want) != tc.waypoint {
				t.Errorf("%s (%s): istiod sent listeners %v: a waypoint's %s %v, want %v", tc.name, tc.node.GetId(), names, want, !tc.waypoint, tc.waypoint)
			}
		}
		t.Logf("%s: istiod sent listeners %v", tc.name, names)
	}
}

// istiodListeners asks istiod's TLS listener for the listeners of node (delta ADS, wildcard,
// with the token) and returns their names from its first response.
func istiodListeners(ctx context.Context, d *istiod.Istiod, token string, node *core.Node) ([]string, error) {
	creds, err := xds.TLSCredentials(d.RootFile, istiod.ServerName)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(d.Secure, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token, xds.ClusterIDKey, xds.DefaultClusterID)
	s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: listenerType, ResourceNamesSubscribe: []string{"*"}}); err != nil {
		return nil, err
	}
	resp, err := s.Recv()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, r := range resp.GetResources() {
		var l listener.Listener
		if err := r.GetResource().UnmarshalTo(&l); err != nil {
			return nil, err
		}
		names = append(names, l.GetName())
	}
	slices.Sort(names)
	return names, nil
}
