package model

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/policies/meshconfig"
)

// Labels, annotations and names the model reads, as Istio spells them.
const (
	LabelDataplaneMode        = "istio.io/dataplane-mode"         // ambient | none, on a Namespace or Pod
	LabelUseWaypoint          = "istio.io/use-waypoint"           // waypoint name, or none
	LabelUseWaypointNamespace = "istio.io/use-waypoint-namespace" // namespace of that waypoint
	LabelWaypointFor          = "istio.io/waypoint-for"           // service | workload | all | none
	LabelGatewayName          = "gateway.networking.k8s.io/gateway-name"
	LabelGatewayClassName     = "gateway.networking.k8s.io/gateway-class-name"
	LabelGatewayManaged       = "gateway.istio.io/managed"
	LabelServiceName          = "kubernetes.io/service-name"   // on an EndpointSlice
	AnnotationRedirection     = "ambient.istio.io/redirection" // enabled: istio-cni redirected the pod
	LabelTunnel               = "networking.istio.io/tunnel"   // http: the pod speaks HBONE itself
	AnnotationNameOverride    = "gateway.istio.io/name-override"
	// AnnotationTrafficDistribution is Istio's older form of a Service's
	// spec.trafficDistribution, on the Service or its namespace.
	AnnotationTrafficDistribution = "networking.istio.io/traffic-distribution"
	LabelTopologyRegion           = "topology.kubernetes.io/region" // on a Node
	LabelTopologyZone             = "topology.kubernetes.io/zone"
	LabelTopologySubzone          = "topology.istio.io/subzone"
	AnnotationServiceAccount      = "gateway.istio.io/service-account"

	RedirectionEnabled   = "enabled"
	TunnelHTTP           = "http"
	DataplaneModeAmbient = "ambient"
	DataplaneModeNone    = "none"
	WaypointClassName    = "istio-waypoint"           // Istio's waypoint GatewayClass
	MeshController       = "istio.io/mesh-controller" // the controllerName of waypoint classes
	ManagedByMesh        = "istio.io-mesh-controller" // value of gateway.istio.io/managed on waypoint pods
	HBONEPort            = 15008
)

// Traffic types a waypoint accepts (istio.io/waypoint-for).
const (
	TrafficService  = "service"
	TrafficWorkload = "workload"
	TrafficAll      = "all"
	TrafficNone     = "none"
)

// Mesh is one consistent picture of the mesh. It is immutable once built: a change produces a
// new Mesh. Every list is sorted by namespace and name.
type Mesh struct {
	ClusterID     string
	ClusterDomain string
	TrustDomain   string
	RootNamespace string

	Namespaces      []*Namespace
	Localities      map[string]Locality // node name → locality, of the Nodes the input has
	ServiceAccounts []*ServiceAccount
	Services        []*Service  // including the Services of waypoints
	Workloads       []*Workload // including the pods of waypoints
	Waypoints       []*Waypoint
	// ServiceEntries are the valid ServiceEntries (serviceentry.go); their Services are not in
	// Services, and EntryWorkloads (their endpoints and the WorkloadEntries, by UID) are not
	// in Workloads: both lists keep Kubernetes' one-object-per-name shape.
	ServiceEntries []*ServiceEntry
	EntryWorkloads []*Workload
	// OutboundTrafficPolicy is the mesh config's outboundTrafficPolicy.mode (ALLOW_ANY or
	// REGISTRY_ONLY); see the egress section of xdsserver/model/README.md for where it acts.
	OutboundTrafficPolicy string
	Policies              policies.Objects // valid AuthorizationPolicies and PeerAuthentications
	Routing               *Routing         // VirtualServices, HTTPRoutes, DestinationRules (routing.go)
	Ingress               *Ingress         // ingress Gateways (class istio) and their HTTPRoutes (ingress.go)
	// MeshConfig is the istio ConfigMap's mesh config (extensionProviders); nil when none.
	MeshConfig *meshconfig.Config

	Errors   []error // objects that were left out, and why (*policies.Error)
	Warnings []error // remarks on objects that were kept (*policies.Error)
}

// Namespace is a Kubernetes namespace and whether it is in the ambient mesh.
type Namespace struct {
	Name        string
	Labels      map[string]string
	Annotations map[string]string
	Ambient     bool // istio.io/dataplane-mode=ambient
	Implicit    bool // not defined in the input; objects in it refer to it
	// TrafficDistribution is its networking.istio.io/traffic-distribution annotation
	// (PreferSameZone or PreferSameNode; "" for none), its Services' default.
	TrafficDistribution string
	Origin              policies.Origin
}

// ServiceAccount is a Kubernetes service account (an identity of the mesh).
type ServiceAccount struct {
	Namespace string
	Name      string
	Origin    policies.Origin
}

// Service is a Kubernetes Service: a hostname, VIPs and ports in front of workloads.
type Service struct {
	Namespace   string
	Name        string
	Hostname    string // <name>.<namespace>.svc.<cluster domain>
	Labels      map[string]string
	Annotations map[string]string
	Selector    map[string]string // nil: its workloads come from EndpointSlices
	VIPs        []netip.Addr      // empty for a headless Service
	Headless    bool              // clusterIP: None
	IPFamilies  []string
	Ports       []ServicePort
	// LoadBalancing is how ztunnels pick its endpoints (from spec.trafficDistribution, the
	// traffic-distribution annotations, internalTrafficPolicy and publishNotReadyAddresses).
	LoadBalancing LoadBalancing
	Waypoint      *Waypoint // service traffic goes through this waypoint (nil: none)
	WaypointOf    string    // "ns/name" of the waypoint whose own Service this is
	Synthesized   bool      // made by the model (a waypoint's Service), not read
	// Entry is the ServiceEntry this Service is one host of (nil for a Kubernetes Service);
	// CIDRs are its spec.addresses that are ranges, not single VIPs.
	Entry  *ServiceEntry
	CIDRs  []netip.Prefix
	Origin policies.Origin
}

// ServicePort is one port of a Service.
type ServicePort struct {
	Name           string
	Port           uint32
	TargetPort     uint32 // 0 when TargetPortName names a container port
	TargetPortName string
	Transport      string // TCP, UDP or SCTP
	AppProtocol    string // spec.ports[].appProtocol, "" when not given
}

// Workload is a pod, including the pods that run waypoints.
type Workload struct {
	UID               string // <cluster>//Pod/<namespace>/<name>
	PodUID            string // metadata.uid ("" when the input has none)
	Namespace         string
	Name              string
	ServiceAccount    string
	Node              string
	Locality          Locality // its node's
	IPs               []netip.Addr
	Labels            map[string]string
	Annotations       map[string]string
	TrustDomain       string
	Ambient           bool // in the ambient mesh: its traffic goes through ztunnel over HBONE
	NativeTunnel      bool // it terminates HBONE itself (networking.istio.io/tunnel: http)
	Healthy           bool
	HostNetwork       bool
	WorkloadName      string // the Deployment (or other controller) name, or the pod name
	CanonicalName     string
	CanonicalRevision string
	ContainerPorts    map[string]uint32 // named container ports
	Services          []WorkloadService // the Services that select it, by namespace and name
	Waypoint          *Waypoint         // workload traffic goes through this waypoint (nil: none)
	WaypointOf        string            // "ns/name" of the waypoint this pod runs
	Synthesized       bool              // made by the model (a waypoint's pod), not read
	// Kind is "" for a pod, WorkloadEntry or ServiceEntry (an endpoint of one) otherwise.
	Kind     string
	Hostname string // the DNS name ztunnels resolve, for an entry whose address is a name (IPs empty)
	Network  string
	Weight   uint32 // the endpoint's weight (0: default)
	Origin   policies.Origin
}

// WorkloadService is a Service a workload is behind, with the ports resolved for that workload.
type WorkloadService struct {
	Service *Service
	Ports   []PortMapping
}

// PortMapping is one service port and the workload port it reaches.
type PortMapping struct {
	ServicePort uint32
	TargetPort  uint32
}

// Waypoint is a Gateway that runs a waypoint proxy, with its own Service and pods.
type Waypoint struct {
	Namespace      string
	Name           string
	Class          string
	TrafficType    string // service, workload, all or none
	Labels         map[string]string
	Listeners      []Listener
	AllowedFrom    string            // which namespaces may use it: Same, All or Selector
	AllowedLabels  map[string]string // the namespace labels required with Selector
	Address        netip.Addr        // where ztunnel sends traffic for it (its Service's VIP)
	ServiceAccount string            // the identity its pods run as
	Service        *Service          // its own Service
	Instances      []*Workload       // its pods
	Origin         policies.Origin
}

// Listener is one listener of a waypoint Gateway.
type Listener struct {
	Name     string
	Port     uint32
	Protocol string
}

// Locality is where a node is: its topology.kubernetes.io/region and zone and
// topology.istio.io/subzone labels.
type Locality struct {
	Region, Zone, Subzone string
}

// IsZero reports whether no part of the locality is known.
func (l Locality) IsZero() bool { return l == Locality{} }

// LoadBalancing is a Service's endpoint selection, as istiod sends it (workload API
// LoadBalancing): ztunnels prefer (Failover) or require (Strict) endpoints that share the
// client's scopes, in order.
type LoadBalancing struct {
	Scopes   []Scope
	Mode     LBMode
	AllowAll bool // unready endpoints too (publishNotReadyAddresses)
}

// Scope is one routing preference of a LoadBalancing.
type Scope string

// Scopes, as the workload API names them.
const (
	ScopeNetwork Scope = "NETWORK"
	ScopeRegion  Scope = "REGION"
	ScopeZone    Scope = "ZONE"
	ScopeSubzone Scope = "SUBZONE"
	ScopeNode    Scope = "NODE"
)

// LBMode says how a LoadBalancing's scopes are applied.
type LBMode string

// Modes, as the workload API names them ("" sends no preference).
const (
	LBStrict   LBMode = "STRICT"
	LBFailover LBMode = "FAILOVER"
	// LBPassthrough sends a connection to the address the client used (ServiceEntry
	// resolution NONE).
	LBPassthrough LBMode = "PASSTHROUGH"
)

// Key is "namespace/name".
func (s *Service) Key() string { return s.Namespace + "/" + s.Name }

// Key is "namespace/name".
func (w *Workload) Key() string { return w.Namespace + "/" + w.Name }

// Key is "namespace/name".
func (w *Waypoint) Key() string { return w.Namespace + "/" + w.Name }

// Key is "namespace/name".
func (s *ServiceAccount) Key() string { return s.Namespace + "/" + s.Name }

// ForServices reports whether services may send their traffic through the waypoint.
func (w *Waypoint) ForServices() bool {
	return w.TrafficType == TrafficService || w.TrafficType == TrafficAll
}

// ForWorkloads reports whether workloads may send their traffic through the waypoint.
func (w *Waypoint) ForWorkloads() bool {
	return w.TrafficType == TrafficWorkload || w.TrafficType == TrafficAll
}

// AllowsFrom reports whether objects of a namespace may use the waypoint (the allowedRoutes of
// its HBONE listener).
func (w *Waypoint) AllowsFrom(ns *Namespace) bool {
	switch w.AllowedFrom {
	case "All":
		return true
	case "Selector":
		return ns != nil && selects(w.AllowedLabels, ns.Labels, true)
	}
	return ns != nil && ns.Name == w.Namespace
}

// Namespace returns the named namespace, or nil.
func (m *Mesh) Namespace(name string) *Namespace {
	return find(m.Namespaces, func(n *Namespace) int { return cmp.Compare(n.Name, name) })
}

// Service returns the named Service, or nil.
func (m *Mesh) Service(ns, name string) *Service {
	return find(m.Services, func(s *Service) int { return compareKey(s.Namespace, s.Name, ns, name) })
}

// Workload returns the named pod, or nil.
func (m *Mesh) Workload(ns, name string) *Workload {
	return find(m.Workloads, func(w *Workload) int { return compareKey(w.Namespace, w.Name, ns, name) })
}

// Waypoint returns the named waypoint, or nil.
func (m *Mesh) Waypoint(ns, name string) *Waypoint {
	return find(m.Waypoints, func(w *Waypoint) int { return compareKey(w.Namespace, w.Name, ns, name) })
}

// Nodes lists the nodes workloads run on, sorted.
func (m *Mesh) Nodes() []string {
	var nodes []string
	for _, w := range m.Workloads {
		if w.Node != "" {
			nodes = append(nodes, w.Node)
		}
	}
	slices.Sort(nodes)
	return slices.Compact(nodes)
}

func find[T any](list []T, cmp func(T) int) T {
	var zero T
	if i, ok := slices.BinarySearchFunc(list, 0, func(e T, _ int) int { return cmp(e) }); ok {
		return list[i]
	}
	return zero
}

func compareKey(ns1, name1, ns2, name2 string) int {
	return cmp.Or(cmp.Compare(ns1, ns2), cmp.Compare(name1, name2))
}

// selects reports whether a label selector matches labels. An empty selector matches
// everything when emptyMatches, nothing otherwise (a Service without selector selects no pods).
func selects(selector, labels map[string]string, emptyMatches bool) bool {
	if len(selector) == 0 {
		return emptyMatches
	}
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
