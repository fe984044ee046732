package wds

import (
	"cmp"
	"net/netip"
	"slices"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/xdsserver/model"
)

// Type URLs of the workload API, as ztunnel subscribes to them.
const (
	AddressType       = "type.googleapis.com/istio.workload.Address"
	AuthorizationType = "type.googleapis.com/istio.security.Authorization"
)

// Options change how the mesh is translated.
type Options struct {
	// WaypointHostname refers to waypoints by hostname (GatewayAddress.hostname), as istiod
	// does since it reports both address types in a waypoint Gateway's status. By default a
	// waypoint is referred to by its VIP (GatewayAddress.address), which every ztunnel version
	// understands and which needs no lookup.
	WaypointHostname bool
}

// Resources are what the control plane sends every ztunnel.
type Resources struct {
	Addresses      []*workloadapi.Address    // workloads by UID, then services by name
	Authorizations []*security.Authorization // by namespace and name
	Warnings       []error                   // what ztunnel cannot enforce, in istiod's words
	names          map[string]map[string]proto.Message
}

// Translate converts a mesh as istiod's ambient index does: every pod becomes a Workload
// (tunnel protocol HBONE in the ambient mesh, NONE otherwise), every Service a Service, and the
// policies their L4 projection. The result is ordered and the same for the same mesh.
func Translate(m *model.Mesh, opts Options) *Resources {
	z := policies.ToZtunnel(m.Policies, policies.Options{RootNamespace: m.RootNamespace})
	r := &Resources{Authorizations: z.Authorizations(), Warnings: z.Warnings}
	for _, w := range m.Workloads {
		r.Addresses = append(r.Addresses, &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: Workload(m, w, z, opts)}})
	}
	for _, w := range m.EntryWorkloads {
		r.Addresses = append(r.Addresses, &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: Workload(m, w, z, opts)}})
	}
	slices.SortStableFunc(r.Addresses, func(a, b *workloadapi.Address) int { return cmp.Compare(AddressName(a), AddressName(b)) })
	var services []*workloadapi.Address
	for _, s := range m.Services {
		services = append(services, &workloadapi.Address{Type: &workloadapi.Address_Service{Service: Service(s, opts)}})
	}
	for _, se := range m.ServiceEntries {
		for _, s := range se.Services {
			services = append(services, &workloadapi.Address{Type: &workloadapi.Address_Service{Service: Service(s, opts)}})
		}
	}
	slices.SortStableFunc(services, func(a, b *workloadapi.Address) int { return cmp.Compare(AddressName(a), AddressName(b)) })
	r.Addresses = append(r.Addresses, services...)
	return r
}

// Workload is the istio.workload.Workload of one pod.
func Workload(m *model.Mesh, w *model.Workload, z *policies.Ztunnel, opts Options) *workloadapi.Workload {
	out := &workloadapi.Workload{
		Uid:               w.UID,
		Name:              w.Name,
		Namespace:         w.Namespace,
		Addresses:         addressBytes(w.IPs),
		Network:           "",
		TunnelProtocol:    workloadapi.TunnelProtocol_NONE,
		TrustDomain:       trustDomain(w.TrustDomain),
		ServiceAccount:    w.ServiceAccount,
		Node:              w.Node,
		CanonicalName:     w.CanonicalName,
		CanonicalRevision: w.CanonicalRevision,
		WorkloadType:      workloadapi.WorkloadType_POD,
		WorkloadName:      w.WorkloadName,
		Status:            workloadapi.WorkloadStatus_HEALTHY,
		ClusterId:         m.ClusterID,
		Waypoint:          gatewayAddress(w.Waypoint, opts),
	}
	if w.Ambient {
		out.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
	}
	out.NativeTunnel = w.NativeTunnel
	if !w.Locality.IsZero() {
		out.Locality = &workloadapi.Locality{Region: w.Locality.Region, Zone: w.Locality.Zone, Subzone: w.Locality.Subzone}
	}
	if !w.Healthy {
		out.Status = workloadapi.WorkloadStatus_UNHEALTHY
	}
	if w.HostNetwork {
		out.NetworkMode = workloadapi.NetworkMode_HOST_NETWORK
	}
	out.Hostname, out.Network = w.Hostname, w.Network
	if w.Weight > 0 {
		out.Capacity = wrapperspb.UInt32(w.Weight)
	}
	if z != nil {
		out.AuthorizationPolicies = z.WorkloadPolicies(w.Namespace, w.Labels)
	}
	if len(w.Services) > 0 {
		out.Services = map[string]*workloadapi.PortList{}
		for _, s := range w.Services {
			pl := &workloadapi.PortList{Ports: []*workloadapi.Port{}}
			for _, p := range s.Ports {
				pl.Ports = append(pl.Ports, &workloadapi.Port{ServicePort: p.ServicePort, TargetPort: p.TargetPort})
			}
			out.Services[ServiceName(s.Service)] = pl
		}
	}
	return out
}

// Service is the istio.workload.Service of one Service. A named targetPort is 0 here: each
// workload's services map carries the number it resolves to.
func Service(s *model.Service, opts Options) *workloadapi.Service {
	out := &workloadapi.Service{
		Name:          s.Name,
		Namespace:     s.Namespace,
		Hostname:      s.Hostname,
		Waypoint:      gatewayAddress(s.Waypoint, opts),
		Canonical:     true, // a Kubernetes Service is canonical for its hostname
		LoadBalancing: loadBalancing(s.LoadBalancing),
	}
	for _, ip := range s.VIPs {
		out.Addresses = append(out.Addresses, &workloadapi.NetworkAddress{Network: "", Address: ip.AsSlice()})
	}
	for _, p := range s.CIDRs {
		out.Addresses = append(out.Addresses, &workloadapi.NetworkAddress{Network: "", Address: p.Addr().AsSlice(), Length: proto.Uint32(uint32(p.Bits()))})
	}
	if s.Entry != nil {
		// As istiod's constructServiceEntries: not canonical, with the ServiceEntry's SANs.
		out.Canonical, out.SubjectAltNames = false, s.Entry.SubjectAltNames
	}
	for _, p := range s.Ports {
		out.Ports = append(out.Ports, &workloadapi.Port{ServicePort: p.Port, TargetPort: p.TargetPort, AppProtocol: appProtocol(p.Protocol())})
	}
	switch {
	case len(s.IPFamilies) == 2:
		out.IpFamilies = workloadapi.IPFamilies_DUAL
	case len(s.IPFamilies) == 1 && s.IPFamilies[0] == "IPv4":
		out.IpFamilies = workloadapi.IPFamilies_IPV4_ONLY
	case len(s.IPFamilies) == 1:
		out.IpFamilies = workloadapi.IPFamilies_IPV6_ONLY
	}
	return out
}

// ServiceName is the resource name of a Service: "<namespace>/<hostname>".
func ServiceName(s *model.Service) string { return s.Namespace + "/" + s.Hostname }

// AddressName is the resource name of an Address: a workload's UID or a service's
// "<namespace>/<hostname>".
func AddressName(a *workloadapi.Address) string {
	switch t := a.GetType().(type) {
	case *workloadapi.Address_Workload:
		return t.Workload.GetUid()
	case *workloadapi.Address_Service:
		return t.Service.GetNamespace() + "/" + t.Service.GetHostname()
	}
	return ""
}

// AuthorizationName is the resource name of an Authorization: "<namespace>/<name>".
func AuthorizationName(a *security.Authorization) string { return a.GetNamespace() + "/" + a.GetName() }

// ByType indexes the resources by type URL and resource name, the shape an xDS cache takes.
// The messages are shared with r: do not modify them.
func (r *Resources) ByType() map[string]map[string]proto.Message {
	out := map[string]map[string]proto.Message{AddressType: {}, AuthorizationType: {}}
	for _, a := range r.Addresses {
		out[AddressType][AddressName(a)] = a
	}
	for _, a := range r.Authorizations {
		out[AuthorizationType][AuthorizationName(a)] = a
	}
	return out
}

// gatewayAddress is how workloads and services refer to their waypoint, with the HBONE port
// istiod hardcodes.
func gatewayAddress(w *model.Waypoint, opts Options) *workloadapi.GatewayAddress {
	if w == nil {
		return nil
	}
	if opts.WaypointHostname && w.Service != nil {
		return &workloadapi.GatewayAddress{
			Destination:   &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{Namespace: w.Namespace, Hostname: w.Service.Hostname}},
			HboneMtlsPort: model.HBONEPort,
		}
	}
	return &workloadapi.GatewayAddress{
		Destination:   &workloadapi.GatewayAddress_Address{Address: &workloadapi.NetworkAddress{Network: "", Address: w.Address.AsSlice()}},
		HboneMtlsPort: model.HBONEPort,
	}
}

// loadBalancing is a Service's LoadBalancing message, nil when it has neither preferences nor
// a health policy (as istiod leaves it).
func loadBalancing(lb model.LoadBalancing) *workloadapi.LoadBalancing {
	if len(lb.Scopes) == 0 && lb.Mode == "" && !lb.AllowAll {
		return nil
	}
	out := &workloadapi.LoadBalancing{}
	for _, sc := range lb.Scopes {
		out.RoutingPreference = append(out.RoutingPreference, workloadapi.LoadBalancing_Scope(workloadapi.LoadBalancing_Scope_value[string(sc)]))
	}
	out.Mode = workloadapi.LoadBalancing_Mode(workloadapi.LoadBalancing_Mode_value[string(lb.Mode)])
	if lb.AllowAll {
		out.HealthPolicy = workloadapi.LoadBalancing_ALLOW_ALL
	}
	return out
}

func addressBytes(ips []netip.Addr) [][]byte {
	var out [][]byte
	for _, ip := range ips {
		out = append(out, ip.AsSlice())
	}
	return out
}

// trustDomain is empty for cluster.local, as istiod's pickTrustDomain sends it (ztunnel reads
// an empty trust domain as cluster.local).
func trustDomain(td string) string {
	if td == "cluster.local" {
		return ""
	}
	return td
}

// appProtocol is istiod's toAppProtocolFromProtocol.
func appProtocol(p model.Protocol) workloadapi.AppProtocol {
	switch p {
	case model.ProtocolHTTP:
		return workloadapi.AppProtocol_HTTP11
	case model.ProtocolHTTP2:
		return workloadapi.AppProtocol_HTTP2
	case model.ProtocolGRPC:
		return workloadapi.AppProtocol_GRPC
	case model.ProtocolTLS, model.ProtocolHTTPS:
		return workloadapi.AppProtocol_TLS
	case model.ProtocolTCP:
		return workloadapi.AppProtocol_TCP
	}
	return workloadapi.AppProtocol_UNKNOWN
}
