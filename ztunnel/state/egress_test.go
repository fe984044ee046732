package state

import (
	"net/netip"
	"testing"
)

// TestRouteEgress: ServiceEntry addresses are routed by the workload API like any service —
// an auto-allocated VIP to its hostname endpoint (resolved when dialled), a CIDR passed
// through to the address dialled, a WorkloadEntry over HBONE to its own ztunnel, an egress
// waypoint's ServiceEntry to the waypoint. Input: testdata/egress.yaml.
func TestRouteEgress(t *testing.T) {
	s := load(t, "egress.yaml")
	client := s.WorkloadByIP(netip.MustParseAddr("10.244.0.9"))
	for _, tc := range []struct {
		name, dst string
		kind      Kind
		dial      string // "" for a hostname route
		hostname  string
		authority string
		waypoint  string
	}{
		{"auto-allocated VIP → hostname endpoint", "240.240.0.1:80", Passthrough, "", "httpbin.example.com", "", ""},
		{"its IPv6 VIP too", "[2001:2::1]:80", Passthrough, "", "httpbin.example.com", "", ""},
		{"CIDR, resolution NONE: the address dialled", "203.0.113.77:443", Passthrough, "203.0.113.77:443", "", "", ""},
		{"WorkloadEntry over HBONE at its mapped port", "240.240.0.3:80", Direct, "10.200.0.5:15008", "", "10.200.0.5:9080", ""},
		{"ServiceEntry with an egress waypoint", "240.240.0.2:80", ToServiceWaypoint, "10.244.0.50:15008", "", "240.240.0.2:80", "egress-waypoint"},
		{"outside every ServiceEntry", "198.18.0.1:443", Passthrough, "198.18.0.1:443", "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := s.Route(netip.MustParseAddrPort(tc.dst), client)
			if err != nil {
				t.Fatal(err)
			}
			if r.Kind != tc.kind || r.Hostname != tc.hostname {
				t.Errorf("kind %v hostname %q, want %v %q", r.Kind, r.Hostname, tc.kind, tc.hostname)
			}
			if tc.dial != "" && r.Dial.String() != tc.dial {
				t.Errorf("dial %s, want %s", r.Dial, tc.dial)
			}
			if tc.hostname != "" && (r.Dial.Addr().IsValid() || r.Dial.Port() != 80) {
				t.Errorf("a hostname route dials %s; want only the port 80", r.Dial)
			}
			if tc.authority != "" && r.Authority.String() != tc.authority {
				t.Errorf("authority %s, want %s", r.Authority, tc.authority)
			}
			if got := r.Waypoint.GetName(); got != tc.waypoint {
				t.Errorf("waypoint %q, want %q", got, tc.waypoint)
			}
		})
	}
	if sv := s.ServiceByVIP(netip.MustParseAddr("203.0.113.1")); sv.GetName() != "partners" {
		t.Errorf("ServiceByVIP in the CIDR = %v", sv)
	}
	if eps := s.HostnameEndpoints(s.Service("shop/httpbin.example.com")); len(eps) != 1 || eps[0].GetHostname() != "httpbin.example.com" {
		t.Errorf("hostname endpoints = %v", eps)
	}
	if sv, ok := s.Resolve("httpbin.example.com", "shop"); !ok || sv.GetName() != "httpbin" {
		t.Errorf("Resolve(httpbin.example.com) = %v", sv)
	}
}
