package model

import (
	"cmp"
	"fmt"
	"net/netip"
)

// Config says how to build the mesh: names istiod takes from its own configuration, and where
// to place workloads whose addresses the input does not give.
type Config struct {
	ClusterID       string   // first part of workload UIDs; "Kubernetes" (Istio's default) when empty
	ClusterDomain   string   // "cluster.local" when empty
	TrustDomain     string   // "cluster.local" when empty
	RootNamespace   string   // "istio-system" when empty
	WaypointClasses []string // GatewayClass names that make waypoints besides istio-waypoint
	Placement       Placement
	// DeployWaypoints makes the model play istiod's deployment controller: a waypoint Gateway
	// without pods or Service gets a synthesized pod and Service (with addresses from the
	// Placement), as in a cluster where istiod has deployed it. For inputs without Kubernetes.
	DeployWaypoints bool
	WaypointNode    string // node of synthesized waypoint pods; the first node (sorted) when empty
	// FromCluster says the input is a Kubernetes API server's objects, where the kubelet and
	// the API server give every address: nothing is allocated from the Placement. A pod with
	// no IP yet (scheduled, not started) is left out until it has one, as istiod's ambient
	// index does (pilot/pkg/serviceregistry/ambient/workloads.go), not sent to ztunnels with
	// an invented address; a Service without a cluster IP (ExternalName) has no VIP.
	FromCluster bool
	// Previous is the mesh built before this one from the same source. A routing object
	// (VirtualService, HTTPRoute, DestinationRule) whose new version is invalid keeps its
	// valid version from Previous, as if a validating webhook had refused the change.
	Previous *Mesh
	// CaptureByNodeAgent says which pods are in the ambient mesh the way istiod decides it in
	// a cluster: only the pods istio-cni's node agent has annotated with
	// ambient.istio.io/redirection=enabled, which it writes once it has redirected the pod's
	// traffic to its ztunnel (pilot/pkg/serviceregistry/ambient/workloads.go,
	// setTunnelProtocol). Before that (or with no node agent at all) no ztunnel captures the
	// pod, so sending HBONE to it would break every connection to it. Off (folders of YAML,
	// the local demo), nobody writes the annotation: the model plays the node agent and
	// enrolls pods from the istio.io/dataplane-mode labels as istio-cni would.
	CaptureByNodeAgent bool
	// OutboundTrafficPolicy is the mesh config's outboundTrafficPolicy.mode: ALLOW_ANY
	// (Istio's default, used when empty) or REGISTRY_ONLY.
	OutboundTrafficPolicy string
}

// Placement gives the ranges pod IPs and service VIPs are allocated from when the input has
// none (status.podIP, spec.clusterIP). An allocated address depends only on the object's
// namespace and name and on the addresses already taken, so it is the same in every build.
type Placement struct {
	PodCIDR     netip.Prefix
	ServiceCIDR netip.Prefix
}

var (
	// DefaultPlacement uses kind's default ranges.
	DefaultPlacement = Placement{PodCIDR: netip.MustParsePrefix("10.244.0.0/16"), ServiceCIDR: netip.MustParsePrefix("10.96.0.0/16")}
	// LoopbackPlacement puts pods and VIPs on loopback, for local runs without network namespaces.
	LoopbackPlacement = Placement{PodCIDR: netip.MustParsePrefix("127.10.0.0/16"), ServiceCIDR: netip.MustParsePrefix("127.96.0.0/16")}
)

// Defaults of Config.
const (
	DefaultClusterID     = "Kubernetes"
	DefaultClusterDomain = "cluster.local"
	DefaultTrustDomain   = "cluster.local"

	OutboundAllowAny     = "ALLOW_ANY"
	OutboundRegistryOnly = "REGISTRY_ONLY"
)

// DefaultConfig is the configuration for a folder of YAML: Istio's defaults, DefaultPlacement,
// and waypoints deployed by the model.
func DefaultConfig() Config {
	return Config{DeployWaypoints: true}.WithDefaults()
}

// WithDefaults fills the empty fields.
func (c Config) WithDefaults() Config {
	c.ClusterID = cmp.Or(c.ClusterID, DefaultClusterID)
	c.ClusterDomain = cmp.Or(c.ClusterDomain, DefaultClusterDomain)
	c.TrustDomain = cmp.Or(c.TrustDomain, DefaultTrustDomain)
	c.RootNamespace = cmp.Or(c.RootNamespace, "istio-system")
	c.OutboundTrafficPolicy = cmp.Or(c.OutboundTrafficPolicy, OutboundAllowAny)
	if !c.Placement.PodCIDR.IsValid() {
		c.Placement.PodCIDR = DefaultPlacement.PodCIDR
	}
	if !c.Placement.ServiceCIDR.IsValid() {
		c.Placement.ServiceCIDR = DefaultPlacement.ServiceCIDR
	}
	return c
}

// Validate checks a configuration after WithDefaults.
func (c Config) Validate() error {
	for _, p := range []struct {
		name   string
		prefix netip.Prefix
	}{{"pod CIDR", c.Placement.PodCIDR}, {"service CIDR", c.Placement.ServiceCIDR}} {
		if !p.prefix.Addr().Is4() || p.prefix.Bits() < 8 || p.prefix.Bits() > 30 {
			return fmt.Errorf("%s %s: must be an IPv4 prefix from /8 to /30", p.name, p.prefix)
		}
	}
	if !isDNSSubdomain(c.ClusterDomain) {
		return fmt.Errorf("cluster domain %q is not a DNS name", c.ClusterDomain)
	}
	if !isTrustDomain(c.TrustDomain) {
		return fmt.Errorf("trust domain %q is not valid", c.TrustDomain)
	}
	if c.OutboundTrafficPolicy != OutboundAllowAny && c.OutboundTrafficPolicy != OutboundRegistryOnly {
		return fmt.Errorf("outboundTrafficPolicy mode %q is not ALLOW_ANY or REGISTRY_ONLY", c.OutboundTrafficPolicy)
	}
	if !isDNSLabel(c.RootNamespace) {
		return fmt.Errorf("root namespace %q is not a valid name", c.RootNamespace)
	}
	return nil
}
