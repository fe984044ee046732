package model_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/goambient/goambient/xdsserver/model"
)

// TestMeshValidate: Validate finds what a broken mesh would send ztunnels wrong.
func TestMeshValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		break_ func(m *model.Mesh)
		want   string
	}{
		{"shared address", func(m *model.Mesh) { m.Workloads[1].IPs = m.Workloads[0].IPs }, "share the address"},
		{"port", func(m *model.Mesh) { m.Services[0].Ports[0].Port = 0 }, "Service shop/cart: spec.ports[0].port: 0 is not a port number"},
		{"uid", func(m *model.Mesh) { m.Workloads[0].UID = "Pod/shop/cart" }, `metadata.uid: "Pod/shop/cart" is not <cluster>//Pod/shop/cart`},
		{"foreign waypoint", func(m *model.Mesh) { w := *m.Waypoints[0]; m.Services[0].Waypoint = &w }, "waypoint shop/wp is not in the mesh"},
		{"service-only waypoint on a pod", func(m *model.Mesh) { m.Workloads[0].Waypoint = m.Waypoints[0] }, "waypoint shop/wp does not accept workload traffic"},
		{"no address", func(m *model.Mesh) { m.Waypoints[0].Address = netip.Addr{} }, "a waypoint needs an address"},
		{"traffic type", func(m *model.Mesh) { m.Waypoints[0].TrafficType = "some" }, `"some" is not service, workload, all or none`},
		{"trust domain", func(m *model.Mesh) { m.Workloads[0].TrustDomain = "" }, "is not a valid trust domain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := build(t, model.DefaultConfig(), strings.Replace(nsAmbient, "ambient}", "ambient, istio.io/use-waypoint: wp}", 1),
				podCart, svcCart, waypointGateway("wp", ""))
			tc.break_(m)
			err := m.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	cfg := model.DefaultConfig()
	cfg.Placement.PodCIDR = netip.MustParsePrefix("fd00::/64")
	if _, err := model.Build(nil, cfg); err == nil {
		t.Error("an IPv6 pod CIDR is not supported for allocation")
	}
	cfg = model.DefaultConfig()
	cfg.TrustDomain = "Not A Domain"
	if _, err := model.Build(nil, cfg); err == nil {
		t.Error("bad trust domain accepted")
	}
	m, err := model.Build(nil, model.Config{})
	if err != nil || m.ClusterID != "Kubernetes" || m.TrustDomain != "cluster.local" || m.RootNamespace != "istio-system" {
		t.Errorf("defaults: %+v, %v", m, err)
	}
}
