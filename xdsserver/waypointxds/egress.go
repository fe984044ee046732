package waypointxds

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/goambient/goambient/xdsserver/model"
)

// SystemCABundle is the trust store TLS origination verifies against when a DestinationRule
// names no CA (Istio's default for SIMPLE: the proxy image's system roots).
const SystemCABundle = "/etc/ssl/certs/ca-certificates.crt"

// entryPorts are the HTTP ports of the ServiceEntry hosts bound to waypoint w (an egress
// waypoint), served like a Service's: one filter chain per host VIP and port.
func entryPorts(mesh *model.Mesh, w *model.Waypoint, r *Resources) []servicePort {
	var out []servicePort
	for _, se := range mesh.ServiceEntries {
		for _, s := range se.Services {
			if s.Waypoint == nil || s.Waypoint.Key() != w.Key() {
				continue
			}
			if len(s.VIPs) == 0 {
				r.warn(w, "ServiceEntry "+se.Key()+" host "+s.Hostname, "has no VIP (addresses, or IP auto-allocation): left out")
				continue
			}
			for _, p := range s.Ports {
				if proto := p.Protocol(); !proto.IsHTTP() {
					r.warn(w, fmt.Sprintf("ServiceEntry %s host %s: port %d", se.Key(), s.Hostname, p.Port),
						"protocol %s is not served by the waypoint (only HTTP: a client that speaks TLS itself needs no origination): connections to it are closed", proto)
					continue
				}
				out = append(out, servicePort{svc: s, port: p, name: ServiceName(p.Port, s.Hostname)})
			}
		}
	}
	return out
}

// entriesBound are the "namespace/name" of the ServiceEntries with a host bound to w.
func entriesBound(mesh *model.Mesh, w *model.Waypoint) map[string]bool {
	out := map[string]bool{}
	for _, se := range mesh.ServiceEntries {
		for _, s := range se.Services {
			if s.Waypoint != nil && s.Waypoint.Key() == w.Key() {
				out[se.Key()] = true
			}
		}
	}
	return out
}

// entryEndpoint is one endpoint of a ServiceEntry host's port.
type entryEndpoint struct {
	host  string     // a DNS name (resolution DNS), or ""
	addr  netip.Addr // an IP otherwise
	port  uint32
	hbone bool // a workload in the mesh (a WorkloadEntry or pod captured by a ztunnel)
	ok    bool // healthy
}

// entryEndpoints are the endpoints of a ServiceEntry host's port: its hostname workloads, the
// entry's IP endpoints, and the pods and WorkloadEntries its workloadSelector selects.
func entryEndpoints(mesh *model.Mesh, sp servicePort) []entryEndpoint {
	var out []entryEndpoint
	for _, list := range [][]*model.Workload{mesh.Workloads, mesh.EntryWorkloads} {
		for _, wl := range list {
			for _, ws := range wl.Services {
				if ws.Service != sp.svc {
					continue
				}
				for _, pm := range ws.Ports {
					if pm.ServicePort != sp.port.Port || pm.TargetPort == 0 {
						continue
					}
					e := entryEndpoint{host: wl.Hostname, port: pm.TargetPort, hbone: wl.Ambient, ok: wl.Healthy}
					if len(wl.IPs) > 0 {
						e.addr = wl.IPs[0]
					}
					out = append(out, e)
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b entryEndpoint) int {
		return cmp.Or(cmp.Compare(a.host, b.host), a.addr.Compare(b.addr), cmp.Compare(a.port, b.port))
	})
	return out
}

// entryCluster is the cluster of a ServiceEntry host's port, as istiod's waypoint builds it
// (buildWaypointInboundVIPCluster): endpoints in the mesh through connect_originate (HBONE);
// otherwise straight to the endpoints — STRICT_DNS (LOGICAL_DNS for DNS_ROUND_ROBIN) over the
// hostnames, EDS over IPs — with TLS originated when the DestinationRule's tls says SIMPLE.
// The assignment is nil for a DNS cluster (its endpoints are inline).
func entryCluster(mesh *model.Mesh, sp servicePort) (*cluster.Cluster, *endpoint.ClusterLoadAssignment, error) {
	dr := mesh.Routing.For(sp.svc).GetDestinationRule()
	policy := portPolicy(dr.GetSpec().GetTrafficPolicy(), sp.port.Port)
	c := upstreamCluster(sp, upstream{name: sp.name, policy: policy})
	eps := entryEndpoints(mesh, sp)
	cla := &endpoint.ClusterLoadAssignment{ClusterName: sp.name}
	var lbs []*endpoint.LbEndpoint
	mesh_, direct := false, false
	for _, e := range eps {
		if e.hbone && e.addr.IsValid() {
			mesh_ = true
			lbs = append(lbs, internalEndpoint(netip.AddrPortFrom(e.addr, uint16(e.port)), e.ok))
			continue
		}
		direct = true
		address := e.host
		if address == "" {
			address = e.addr.String()
		}
		lbs = append(lbs, &endpoint.LbEndpoint{
			HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: &core.Address{Address: &core.Address_SocketAddress{
				SocketAddress: &core.SocketAddress{Address: address, PortSpecifier: &core.SocketAddress_PortValue{PortValue: e.port}},
			}}}},
			HealthStatus: health(e.ok),
		})
	}
	if mesh_ && direct {
		return nil, nil, fmt.Errorf("endpoints both in and outside the mesh: not supported")
	}
	if len(lbs) > 0 {
		cla.Endpoints = []*endpoint.LocalityLbEndpoints{{LbEndpoints: lbs}}
	}
	tls := policy.GetTls()
	if mesh_ {
		if tls != nil && tls.GetMode() != networking.ClientTLSSettings_DISABLE && tls.GetMode() != networking.ClientTLSSettings_ISTIO_MUTUAL {
			return nil, nil, fmt.Errorf("TLS origination to endpoints in the mesh (HBONE already encrypts): not supported")
		}
		return c, cla, nil
	}
	ts, err := originateTLS(tls, sp.svc.Hostname)
	if err != nil {
		return nil, nil, err
	}
	c.TransportSocket = ts // nil: plain TCP
	if slices.ContainsFunc(eps, func(e entryEndpoint) bool { return e.host != "" }) {
		typ := cluster.Cluster_STRICT_DNS
		if sp.svc.Entry.Resolution == model.ResolutionDNSRoundRobin {
			typ = cluster.Cluster_LOGICAL_DNS
		}
		c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: typ}
		c.EdsClusterConfig = nil
		c.LoadAssignment = cla
		return c, nil, nil
	}
	return c, cla, nil
}

func health(ok bool) core.HealthStatus {
	if ok {
		return core.HealthStatus_HEALTHY
	}
	return core.HealthStatus_UNHEALTHY
}

// originateTLS is the transport socket of a DestinationRule's tls toward a host outside the
// mesh (istiod's buildWaypointTLSContext): SIMPLE verifies the server with caCertificates (a
// file on the waypoint; the system roots when empty, unless insecureSkipVerify) and its
// subjectAltNames, and sends sni (the host when empty). DISABLE, or no tls: nil (plain TCP).
// MUTUAL (client certificates) and credentialName (SDS) are not supported.
func originateTLS(t *networking.ClientTLSSettings, host string) (*core.TransportSocket, error) {
	if t == nil {
		return nil, nil
	}
	switch t.GetMode() {
	case networking.ClientTLSSettings_DISABLE:
		return nil, nil
	case networking.ClientTLSSettings_SIMPLE:
	default:
		return nil, fmt.Errorf("tls mode %s is not supported toward a ServiceEntry (SIMPLE and DISABLE are)", t.GetMode())
	}
	if t.GetCredentialName() != "" {
		return nil, fmt.Errorf("tls.credentialName is not supported (give caCertificates, a file on the waypoint)")
	}
	ctx := &tlsv3.UpstreamTlsContext{Sni: cmp.Or(t.GetSni(), host), CommonTlsContext: &tlsv3.CommonTlsContext{}}
	if !t.GetInsecureSkipVerify().GetValue() {
		vc := &tlsv3.CertificateValidationContext{
			TrustedCa: &core.DataSource{Specifier: &core.DataSource_Filename{Filename: cmp.Or(t.GetCaCertificates(), SystemCABundle)}},
		}
		for _, san := range t.GetSubjectAltNames() {
			vc.MatchTypedSubjectAltNames = append(vc.MatchTypedSubjectAltNames, &tlsv3.SubjectAltNameMatcher{
				SanType: tlsv3.SubjectAltNameMatcher_DNS,
				Matcher: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: san}},
			})
		}
		ctx.CommonTlsContext.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc}
	}
	return &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: toAny(ctx)}}, nil
}
