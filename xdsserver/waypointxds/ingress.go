package waypointxds

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	metadatav3 "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	xdstype "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/goambient/goambient/xdsserver/model"
)

// Limits of an ingress gateway's HTTP connection managers (Envoy's defaults where Envoy has
// them; the embedded gateway applies the same, filters/embedded/gateway).
const (
	IngressMaxHeadersCount       = 100
	IngressMaxRequestHeadersKB   = 60
	IngressStreamIdleTimeout     = 5 * 60 // seconds, Envoy's default stream_idle_timeout
	IngressRequestHeadersTimeout = 10     // seconds
	IngressIdleTimeout           = 60 * 60
	IngressMaxConcurrentStreams  = 100
)

// CredentialName is the SDS name of a Gateway API certificateRef, as istiod names it
// (credentials.ToKubernetesGatewayResource): kubernetes-gateway://<namespace>/<name>.
func CredentialName(secretKey string) string { return "kubernetes-gateway://" + secretKey }

// IngressListenerName is istiod's name of a gateway listener on a port: 0.0.0.0_<port>.
func IngressListenerName(port uint32) string {
	return "0.0.0.0_" + strconv.FormatUint(uint64(port), 10)
}

// IngressRouteName is the RDS name of a port's HTTP listeners (istiod's http.<port>), or of
// one HTTPS listener (https.<port>.<listener>.<gateway>.<namespace>).
func IngressRouteName(g *model.IngressGateway, l *model.IngressListener) string {
	p := strconv.FormatUint(uint64(l.Port), 10)
	if l.Protocol == "HTTPS" {
		return "https." + p + "." + l.Name + "." + g.Name + "." + g.Namespace
	}
	return "http." + p
}

// OutboundName is the cluster of a Service port seen from outside its waypoint:
// outbound|<port>||<hostname>.
func OutboundName(port uint32, hostname string) string {
	return "outbound|" + strconv.FormatUint(uint64(port), 10) + "||" + hostname
}

// translateIngress builds an ingress gateway's resources in the shape istiod gives an
// ambient ingress gateway: a listener per port (HTTP: one chain; HTTPS: one TLS chain per
// listener, its certificate over SDS), RDS with a virtual host per hostname, an outbound
// EDS cluster per backend Service port whose endpoints are HBONE tunnels (connect_originate)
// to the pods or, with istio.io/ingress-use-waypoint, to the Service's waypoint.
func translateIngress(mesh *model.Mesh, g *model.IngressGateway, r *Resources) *WaypointResources {
	td := cmp.Or(mesh.TrustDomain, "cluster.local")
	out := &WaypointResources{Namespace: g.Namespace, Name: g.Name}
	ports := map[uint32][]*model.IngressListener{}
	for _, l := range g.Listeners {
		if l.Served {
			ports[l.Port] = append(ports[l.Port], l)
		}
	}
	backends := map[string]backend{}
	for _, port := range slices.Sorted(maps.Keys(ports)) {
		ls := ports[port]
		lis := &listener.Listener{
			Name:    IngressListenerName(port),
			Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{Address: "0.0.0.0", PortSpecifier: &core.SocketAddress_PortValue{PortValue: port}}}},
		}
		if ls[0].Protocol == "HTTP" {
			name := IngressRouteName(g, ls[0])
			lis.FilterChains = []*listener.FilterChain{{Filters: []*listener.Filter{ingressHCMFilter(name, port)}}}
			out.Routes = append(out.Routes, ingressRoute(mesh, g, name, port, ls, backends))
		} else {
			lis.ListenerFilters = []*listener.ListenerFilter{{Name: wellknown.TlsInspector,
				ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: toAny(&tlsinspector.TlsInspector{})}}}
			for _, l := range ls {
				name := IngressRouteName(g, l)
				fc := &listener.FilterChain{
					Name:            name,
					Filters:         []*listener.Filter{ingressHCMFilter(name, port)},
					TransportSocket: downstreamTLS(CredentialName(l.Cert.Secret)),
				}
				if l.Hostname != "" {
					fc.FilterChainMatch = &listener.FilterChainMatch{ServerNames: []string{l.Hostname}}
				}
				lis.FilterChains = append(lis.FilterChains, fc)
				out.Routes = append(out.Routes, ingressRoute(mesh, g, name, port, []*model.IngressListener{l}, backends))
				out.Credentials = append(out.Credentials, &tlsv3.Secret{Name: CredentialName(l.Cert.Secret), Type: &tlsv3.Secret_TlsCertificate{
					TlsCertificate: &tlsv3.TlsCertificate{
						CertificateChain: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: l.Cert.CertPEM}},
						PrivateKey:       &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: l.Cert.KeyPEM}},
					}}})
			}
		}
		out.Listeners = append(out.Listeners, lis)
	}
	out.Listeners = append(out.Listeners, connectOriginateListener())
	out.Clusters = append(out.Clusters, ingressConnectOriginateCluster(td), blackHoleCluster())
	for _, name := range slices.Sorted(maps.Keys(backends)) {
		b := backends[name]
		out.Clusters = append(out.Clusters, ingressCluster(name))
		out.Endpoints = append(out.Endpoints, ingressEndpoints(mesh, g, name, b, r))
	}
	out.Secrets = nil // the SVID and bundle: referenced (SecretDefault, SecretRootCA), provided by the secure path
	sortByName(out.Listeners, (*listener.Listener).GetName)
	sortByName(out.Routes, (*route.RouteConfiguration).GetName)
	sortByName(out.Clusters, (*cluster.Cluster).GetName)
	sortByName(out.Endpoints, (*endpoint.ClusterLoadAssignment).GetClusterName)
	sortByName(out.Credentials, (*tlsv3.Secret).GetName)
	out.Credentials = slices.CompactFunc(out.Credentials, func(a, b *tlsv3.Secret) bool { return a.GetName() == b.GetName() })
	return out
}

// backend is a Service port a gateway route sends to.
type backend struct {
	svc  *model.Service
	port uint32
}

func ingressHCMFilter(rdsName string, port uint32) *listener.Filter {
	m := &hcm.HttpConnectionManager{
		StatPrefix:       "outbound_0.0.0.0_" + strconv.FormatUint(uint64(port), 10),
		CodecType:        hcm.HttpConnectionManager_AUTO,
		UseRemoteAddress: wrapperspb.Bool(true),
		NormalizePath:    wrapperspb.Bool(true),
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
			ConfigSource: ads(), RouteConfigName: rdsName,
		}},
		HttpFilters:           []*hcm.HttpFilter{routerFilter()},
		MaxRequestHeadersKb:   wrapperspb.UInt32(IngressMaxRequestHeadersKB),
		StreamIdleTimeout:     durationpb.New(IngressStreamIdleTimeout * 1e9),
		RequestHeadersTimeout: durationpb.New(IngressRequestHeadersTimeout * 1e9),
		CommonHttpProtocolOptions: &core.HttpProtocolOptions{
			IdleTimeout:     durationpb.New(IngressIdleTimeout * 1e9),
			MaxHeadersCount: wrapperspb.UInt32(IngressMaxHeadersCount),
		},
		Http2ProtocolOptions: &core.Http2ProtocolOptions{MaxConcurrentStreams: wrapperspb.UInt32(IngressMaxConcurrentStreams)},
	}
	return &listener.Filter{Name: wellknown.HTTPConnectionManager, ConfigType: &listener.Filter_TypedConfig{TypedConfig: toAny(m)}}
}

// downstreamTLS terminates TLS with a certificate from SDS, ALPN h2 then http/1.1.
func downstreamTLS(secret string) *core.TransportSocket {
	ctx := &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsParams:                      &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2},
		AlpnProtocols:                  []string{"h2", "http/1.1"},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(secret)},
	}}
	return &core.TransportSocket{Name: wellknown.TransportSocketTLS, ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: toAny(ctx)}}
}

// ingressRoute is the route configuration of listeners ls on one port: a virtual host per
// hostname (<hostname>:<port>), its routes translated as a waypoint's Gateway API routes are.
func ingressRoute(mesh *model.Mesh, g *model.IngressGateway, name string, port uint32, ls []*model.IngressListener, backends map[string]backend) *route.RouteConfiguration {
	rc := &route.RouteConfiguration{Name: name, ValidateClusters: wrapperspb.Bool(false)}
	hosts := map[string][]*model.RouteRule{}
	for _, l := range ls {
		for _, h := range l.Hosts {
			hosts[h.Hostname] = append(hosts[h.Hostname], h.Rules...)
		}
	}
	ctx := routeCtx{mesh: mesh, w: &model.Waypoint{Namespace: g.Namespace, Name: g.Name}, sp: servicePort{port: model.ServicePort{Port: port}},
		tls: len(ls) > 0 && ls[0].Protocol == "HTTPS"}
	p := strconv.FormatUint(uint64(port), 10)
	for _, h := range slices.Sorted(maps.Keys(hosts)) {
		vh := &route.VirtualHost{Name: h + ":" + p, Domains: []string{h, h + ":*"}}
		if h == "*" {
			vh.Domains = []string{"*"}
		}
		set := &model.RouteSet{Kind: "HTTPRoute", Namespace: g.Namespace, Name: g.Namespace + "~" + h, Gateway: true, Rules: hosts[h]}
		vh.Routes = ctx.setRoutes(set)
		for _, rule := range hosts[h] {
			for _, d := range rule.HTTP.GetRoute() {
				addBackend(mesh, backends, d.GetDestination(), port)
			}
			for _, m := range rule.HTTP.GetMirrors() {
				addBackend(mesh, backends, m.GetDestination(), port)
			}
		}
		rc.VirtualHosts = append(rc.VirtualHosts, vh)
	}
	return rc
}

func addBackend(mesh *model.Mesh, backends map[string]backend, d *networking.Destination, port uint32) {
	svc := mesh.ServiceByHost(d.GetHost())
	if svc == nil {
		return
	}
	switch {
	case d.GetPort() != nil:
		port = d.GetPort().GetNumber()
	case len(svc.Ports) == 1:
		port = svc.Ports[0].Port
	}
	backends[OutboundName(port, svc.Hostname)] = backend{svc: svc, port: port}
}

func ingressCluster(name string) *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: ads(), ServiceName: name},
		ConnectTimeout:       durationpb.New(connectTimeout),
		TransportSocket:      internalUpstream(OriginalDstMetadata),
		LbPolicy:             cluster.Cluster_LEAST_REQUEST,
		CircuitBreakers:      &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{circuitBreakers(nil)}},
		CommonLbConfig:       &cluster.Cluster_CommonLbConfig{HealthyPanicThreshold: &xdstype.Percent{}},
	}
}

// ingressConnectOriginateCluster is connect_originate for a gateway: as the waypoint's, and
// the endpoint metadata's "waypoint" address, when present, replaces the destination (the
// tunnel goes to the Service's waypoint with the Service's VIP:port as :authority), as
// istiod's buildConnectOriginate.
func ingressConnectOriginateCluster(td string) *cluster.Cluster {
	c := connectOriginateCluster(td)
	c.GetOriginalDstLbConfig().MetadataKey = &metadatav3.MetadataKey{
		Key:  OriginalDstMetadata,
		Path: []*metadatav3.MetadataKey_PathSegment{{Segment: &metadatav3.MetadataKey_PathSegment_Key{Key: "waypoint"}}},
	}
	return c
}

// ingressEndpoints are a backend's HBONE tunnels: to each waypoint pod (waypointIP:15008,
// :authority the Service's VIP:port) when the gateway uses the Service's waypoint, else to
// each ambient pod behind the port (podIP:targetPort).
func ingressEndpoints(mesh *model.Mesh, g *model.IngressGateway, name string, b backend, r *Resources) *endpoint.ClusterLoadAssignment {
	cla := &endpoint.ClusterLoadAssignment{ClusterName: name}
	var lbs []*endpoint.LbEndpoint
	if mesh.IngressUsesWaypoint(b.svc) && len(b.svc.VIPs) > 0 {
		vip := netip.AddrPortFrom(b.svc.VIPs[0], uint16(b.port)).String()
		for _, wp := range b.svc.Waypoint.Instances {
			if len(wp.IPs) == 0 {
				continue
			}
			via := netip.AddrPortFrom(wp.IPs[0], HBONEPort).String()
			ep := internalEndpoint(stringer(via), wp.Healthy)
			ep.Metadata.FilterMetadata[OriginalDstMetadata] = &structpb.Struct{Fields: map[string]*structpb.Value{
				"local": structpb.NewStringValue(vip), "waypoint": structpb.NewStringValue(via)}}
			lbs = append(lbs, ep)
		}
	} else {
		if b.svc.Waypoint != nil {
			r.ingressNote(g, b.svc)
		}
		for _, wl := range mesh.Workloads {
			if len(wl.IPs) == 0 || !wl.Ambient {
				continue
			}
			for _, ws := range wl.Services {
				if ws.Service == nil || ws.Service.Key() != b.svc.Key() {
					continue
				}
				for _, pm := range ws.Ports {
					if pm.ServicePort == b.port && pm.TargetPort != 0 {
						lbs = append(lbs, internalEndpoint(netip.AddrPortFrom(wl.IPs[0], uint16(pm.TargetPort)), wl.Healthy))
					}
				}
			}
		}
	}
	slices.SortFunc(lbs, func(a, b *endpoint.LbEndpoint) int {
		return cmp.Compare(a.GetEndpoint().GetAddress().GetEnvoyInternalAddress().GetEndpointId(),
			b.GetEndpoint().GetAddress().GetEnvoyInternalAddress().GetEndpointId())
	})
	if len(lbs) > 0 {
		cla.Endpoints = []*endpoint.LocalityLbEndpoints{{LbEndpoints: lbs}}
	}
	return cla
}

type stringer string

func (s stringer) String() string { return string(s) }

// ingressNote says once per gateway and Service that the Service's waypoint is bypassed, as
// istiod's status message does.
func (r *Resources) ingressNote(g *model.IngressGateway, s *model.Service) {
	msg := fmt.Sprintf("Service %s has waypoint %s, but ingress traffic is not using it (set the label %s=true on the Service or its namespace if desired): its policies do not apply to the gateway's requests",
		s.Key(), s.Waypoint.Key(), model.LabelIngressUseWaypoint)
	err := fmt.Errorf("Gateway %s: %s", g.Key(), msg)
	if slices.ContainsFunc(r.Warnings, func(w error) bool { return w.Error() == err.Error() }) {
		return
	}
	r.Warnings = append(r.Warnings, err)
}
