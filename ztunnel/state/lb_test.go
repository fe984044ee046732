package state

import (
	"errors"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"istio.io/istio/pkg/workloadapi"
)

// lbMesh is a client on node-a (eu-west/eu-west-1a) and the endpoints of svc/echo (VIP
// 10.96.0.1): one on the client's node, one elsewhere in its zone, one in its region's other
// zone, one in another region, one with no locality; unhealthy lists endpoints that are down.
func lbMesh(lb *workloadapi.LoadBalancing, unhealthy ...string) Resources {
	wl := func(name, node, region, zone string) *workloadapi.Workload {
		w := &workloadapi.Workload{
			Uid: "Kubernetes//Pod/ns/" + name, Name: name, Namespace: "ns", ServiceAccount: name, Node: node,
			Addresses: [][]byte{{10, 244, byte(len(name)), name[len(name)-1]}}, TunnelProtocol: workloadapi.TunnelProtocol_HBONE,
			Services: map[string]*workloadapi.PortList{"ns/echo.ns.svc.cluster.local": {Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}}},
		}
		if region != "" {
			w.Locality = &workloadapi.Locality{Region: region, Zone: zone}
		}
		for _, u := range unhealthy {
			if u == name {
				w.Status = workloadapi.WorkloadStatus_UNHEALTHY
			}
		}
		return w
	}
	client := wl("client", "node-a", "eu-west", "eu-west-1a")
	client.Services = nil
	return Resources{
		Workloads: []*workloadapi.Workload{
			client,
			wl("ep-node-1", "node-a", "eu-west", "eu-west-1a"),
			wl("ep-zone-2", "node-b", "eu-west", "eu-west-1a"),
			wl("ep-region-3", "node-c", "eu-west", "eu-west-1b"),
			wl("ep-far-4", "node-d", "us-east", "us-east-1a"),
			wl("ep-none-5", "node-e", "", ""),
		},
		Services: []*workloadapi.Service{{
			Name: "echo", Namespace: "ns", Hostname: "echo.ns.svc.cluster.local",
			Addresses: []*workloadapi.NetworkAddress{{Address: []byte{10, 96, 0, 1}}},
			Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}, LoadBalancing: lb,
		}},
	}
}

// TestLoadBalancing: a service's load_balancing picks endpoints for the client as Istio's
// ztunnel does: FAILOVER sends to the endpoints sharing the most leading scopes with the client
// (its zone, then its region, then anywhere), STRICT only to those sharing all (or nowhere),
// and without a mode the preferences are ignored. The endpoints the connections reach over
// many picks (round robin) are listed.
func TestLoadBalancing(t *testing.T) {
	zone := []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_NETWORK, workloadapi.LoadBalancing_REGION, workloadapi.LoadBalancing_ZONE}
	node := []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_NETWORK, workloadapi.LoadBalancing_REGION, workloadapi.LoadBalancing_ZONE,
		workloadapi.LoadBalancing_SUBZONE, workloadapi.LoadBalancing_NODE}
	failover := func(s []workloadapi.LoadBalancing_Scope) *workloadapi.LoadBalancing {
		return &workloadapi.LoadBalancing{RoutingPreference: s, Mode: workloadapi.LoadBalancing_FAILOVER}
	}
	for _, tc := range []struct {
		name      string
		lb        *workloadapi.LoadBalancing
		unhealthy []string
		src       string // "" for an unknown client
		want      string // the endpoints reached, sorted; "error" for no healthy upstream
	}{
		{"no load_balancing", nil, nil, "client", "ep-far-4 ep-node-1 ep-none-5 ep-region-3 ep-zone-2"},
		{"preferences without a mode", &workloadapi.LoadBalancing{RoutingPreference: zone}, nil, "client", "ep-far-4 ep-node-1 ep-none-5 ep-region-3 ep-zone-2"},
		{"PreferSameZone", failover(zone), nil, "client", "ep-node-1 ep-zone-2"},
		{"PreferSameZone, the zone down", failover(zone), []string{"ep-node-1", "ep-zone-2"}, "client", "ep-region-3"},
		{"PreferSameZone, the region down", failover(zone), []string{"ep-node-1", "ep-zone-2", "ep-region-3"}, "client", "ep-far-4 ep-none-5"},
		{"PreferSameNode", failover(node), nil, "client", "ep-node-1"},
		{"PreferSameNode, the node down", failover(node), []string{"ep-node-1"}, "client", "ep-zone-2"},
		{"internalTrafficPolicy Local", &workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_NODE}, Mode: workloadapi.LoadBalancing_STRICT}, nil, "client", "ep-node-1"},
		{"Local, nothing on the node", &workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_NODE}, Mode: workloadapi.LoadBalancing_STRICT}, []string{"ep-node-1"}, "client", "error"},
		{"unknown client: as one with no locality", failover(zone), nil, "", "ep-none-5"},
		{"ALLOW_ALL keeps unhealthy endpoints", &workloadapi.LoadBalancing{RoutingPreference: zone, Mode: workloadapi.LoadBalancing_FAILOVER, HealthPolicy: workloadapi.LoadBalancing_ALLOW_ALL}, []string{"ep-node-1"}, "client", "ep-node-1 ep-zone-2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := New(lbMesh(tc.lb, tc.unhealthy...))
			if err != nil {
				t.Fatal(err)
			}
			var src *workloadapi.Workload
			if tc.src != "" {
				src = st.Workload("Kubernetes//Pod/ns/" + tc.src)
			}
			reached := map[string]bool{}
			for range 20 {
				r, err := st.Route(mustAddrPort("10.96.0.1:80"), src)
				if err != nil {
					if tc.want == "error" && errors.Is(err, ErrNoHealthyUpstream) {
						return
					}
					t.Fatal(err)
				}
				reached[r.Workload.GetName()] = true
			}
			if got := sortedKeys(reached); got != tc.want {
				t.Errorf("reached %q, want %q", got, tc.want)
			}
		})
	}
}

// TestLoadBalancingRefused: a load_balancing Istio's ztunnel would not convert (an unspecified
// or unknown scope, an unknown mode) makes the State fail, naming the field.
func TestLoadBalancingRefused(t *testing.T) {
	for _, tc := range []struct {
		lb    *workloadapi.LoadBalancing
		field string
	}{
		{&workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_ZONE, workloadapi.LoadBalancing_UNSPECIFIED_SCOPE}}, "services[0].load_balancing.routing_preference[1]"},
		{&workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{42}}, "services[0].load_balancing.routing_preference[0]"},
		{&workloadapi.LoadBalancing{Mode: 9}, "services[0].load_balancing.mode"},
		{&workloadapi.LoadBalancing{HealthPolicy: 7}, "services[0].load_balancing.health_policy"},
	} {
		if _, err := New(lbMesh(tc.lb)); err == nil || !strings.Contains(err.Error(), tc.field+": ") {
			t.Errorf("%v: error %v, want one naming %s", tc.lb, err, tc.field)
		}
	}
}

// TestLoadBalancingNoAllocation: choosing a preferred endpoint allocates nothing.
func TestLoadBalancingNoAllocation(t *testing.T) {
	st, err := New(lbMesh(&workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_REGION, workloadapi.LoadBalancing_ZONE}, Mode: workloadapi.LoadBalancing_FAILOVER}))
	if err != nil {
		t.Fatal(err)
	}
	src := st.Workload("Kubernetes//Pod/ns/client")
	sv := st.services["ns/echo.ns.svc.cluster.local"]
	if n := testing.AllocsPerRun(100, func() { st.pickEndpoint(sv, src) }); n != 0 {
		t.Errorf("%v allocations per pick", n)
	}
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func sortedKeys(m map[string]bool) string { return strings.Join(slices.Sorted(maps.Keys(m)), " ") }
