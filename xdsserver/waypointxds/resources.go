package waypointxds

import (
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	internalupstream "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/internal_upstream/v3"
	rawbuffer "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	metadatav3 "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	golang "github.com/envoyproxy/go-control-plane/contrib/envoy/extensions/filters/http/golang/v3alpha"

	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/xdsserver/model"
)

const (
	connectTimeout       = 10 * time.Second
	httpProtocolOptions  = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	internalUpstreamName = "internal_upstream"
)

// internalUpstream is the transport socket of clusters whose endpoints are internal listeners:
// filter state shared with the upstream crosses over, and so does the host metadata named.
func internalUpstream(hostMetadata ...string) *core.TransportSocket {
	t := &internalupstream.InternalUpstreamTransport{
		TransportSocket: &core.TransportSocket{Name: wellknown.TransportSocketRawBuffer, ConfigType: &core.TransportSocket_TypedConfig{
			TypedConfig: toAny(&rawbuffer.RawBuffer{})}},
	}
	for _, name := range hostMetadata {
		t.PassthroughMetadata = append(t.PassthroughMetadata, &internalupstream.InternalUpstreamTransport_MetadataValueSource{
			Kind: &metadatav3.MetadataKind{Kind: &metadatav3.MetadataKind_Host_{Host: &metadatav3.MetadataKind_Host{}}},
			Name: name,
		})
	}
	return &core.TransportSocket{Name: internalUpstreamName, ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: toAny(t)}}
}

func internalAddress(listenerName, endpointID string) *core.Address {
	return &core.Address{Address: &core.Address_EnvoyInternalAddress{EnvoyInternalAddress: &core.EnvoyInternalAddress{
		AddressNameSpecifier: &core.EnvoyInternalAddress_ServerListenerName{ServerListenerName: listenerName},
		EndpointId:           endpointID,
	}}}
}

func http2Options(allowConnect bool) map[string]*anypb.Any {
	return map[string]*anypb.Any{httpProtocolOptions: toAny(http2ProtocolOptions(allowConnect))}
}

// mainInternalCluster reaches the main_internal listener (connect_terminate's route target).
func mainInternalCluster() *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 MainInternal,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(connectTimeout),
		LoadAssignment: &endpoint.ClusterLoadAssignment{
			ClusterName: MainInternal,
			Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
				HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: internalAddress(MainInternal, "")}},
			}}}},
		},
		TransportSocket: internalUpstream(),
	}
}

// connectOriginateCluster sends connect_originate's tunnels to <pod ip>:15008 over mutual TLS
// with the waypoint's SVID, as HTTP/2 CONNECT.
func connectOriginateCluster(trustDomain string) *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 ConnectOriginate,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST},
		LbPolicy:             cluster.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(connectTimeout),
		LbConfig: &cluster.Cluster_OriginalDstLbConfig_{OriginalDstLbConfig: &cluster.Cluster_OriginalDstLbConfig{
			UpstreamPortOverride: wrapperspb.UInt32(HBONEPort),
		}},
		TypedExtensionProtocolOptions: http2Options(true),
		TransportSocket: &core.TransportSocket{Name: wellknown.TransportSocketTLS, ConfigType: &core.TransportSocket_TypedConfig{
			TypedConfig: toAny(&tlsv3.UpstreamTlsContext{CommonTlsContext: commonTLS(trustDomain)}),
		}},
	}
}

// blackHoleCluster has no endpoints: connections sent to it are closed.
func blackHoleCluster() *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 BlackHole,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(connectTimeout),
	}
}

func internalEndpoint(addr interface{ String() string }, healthy bool) *endpoint.LbEndpoint {
	id := addr.String()
	health := core.HealthStatus_HEALTHY
	if !healthy {
		health = core.HealthStatus_UNHEALTHY
	}
	return &endpoint.LbEndpoint{
		HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: internalAddress(ConnectOriginate, id)}},
		HealthStatus:   health,
		Metadata: &core.Metadata{FilterMetadata: map[string]*structpb.Struct{
			OriginalDstMetadata: {Fields: map[string]*structpb.Value{"local": structpb.NewStringValue(id)}},
		}},
	}
}

// serviceRoute is the RDS route configuration of one service port: its routes (serviceRoutes),
// and the authz filter told which Service it is for. The per-route config is keyed both by the
// filter's name in main_internal (the ECDS name; what Envoy looks up) and by
// authzconfig.FilterName (the contract other readers use).
func serviceRoute(rc routeCtx, ecds string) (*route.RouteConfiguration, error) {
	sp := rc.sp
	ar := &authzconfig.Route{Service: sp.svc.Name, ServiceNamespace: sp.svc.Namespace}
	if sp.svc.Entry != nil {
		ar.Kind = policies.KindServiceEntry // a ServiceEntry host: ServiceEntry targetRefs apply (egress.go)
	}
	ac, err := authzconfig.EncodeRoute(ar)
	if err == nil {
		ac, err = repack(ac)
	}
	if err != nil {
		return nil, err
	}
	perRoute := toAny(&golang.ConfigsPerRoute{PluginsConfig: map[string]*golang.RouterPlugin{
		authzconfig.PluginName: {Override: &golang.RouterPlugin_Config{Config: ac}},
	}})
	return &route.RouteConfiguration{
		Name:                           sp.name,
		ValidateClusters:               wrapperspb.Bool(false),
		MaxDirectResponseBodySizeBytes: wrapperspb.UInt32(maxDirectResponseBody),
		VirtualHosts: []*route.VirtualHost{{
			Name:                 vhostName(sp.port.Port),
			Domains:              []string{"*"},
			Routes:               serviceRoutes(rc),
			TypedPerFilterConfig: map[string]*anypb.Any{authzconfig.FilterName: perRoute, ecds: perRoute},
		}},
	}, nil
}

// extensionConfig is the ECDS resource of the waypoint's authz filter: its identity and the
// AuthorizationPolicies that can apply there.
func extensionConfig(mesh *model.Mesh, w *model.Waypoint, name string, customInChain bool) (*core.TypedExtensionConfig, error) {
	aps := Applicable(mesh, w)
	pol, err := policies.MarshalAuthorizationPolicies(aps)
	if err != nil {
		return nil, err
	}

	c, err := golangConfig(&authzconfig.Config{
		Namespace:     w.Namespace,
		Gateway:       w.Name,
		GatewayClass:  w.Class,
		RootNamespace: mesh.RootNamespace,
		TrustDomain:   mesh.TrustDomain,
		Policies:      string(pol),
		Providers:     customProviders(mesh, aps),
		CustomInChain: customInChain,
	})
	if err != nil {
		return nil, err
	}
	return &core.TypedExtensionConfig{Name: name, TypedConfig: toAny(c)}, nil
}

// Applicable lists the AuthorizationPolicies that can apply at waypoint w: those whose
// targetRefs name its Gateway (in its namespace), its GatewayClass (from the root namespace),
// or a Service or ServiceEntry bound to it (in its namespace). Selector policies apply to workloads
// (enforced by ztunnel), not to waypoints.
func Applicable(mesh *model.Mesh, w *model.Waypoint) []*policies.AuthorizationPolicy {
	bound := map[string]bool{}
	for _, s := range mesh.Services {
		if s.Waypoint != nil && s.Waypoint.Key() == w.Key() {
			bound[s.Key()] = true
		}
	}
	boundEntries := entriesBound(mesh, w)
	root := mesh.RootNamespace
	if root == "" {
		root = "istio-system"
	}
	var out []*policies.AuthorizationPolicy
	for _, ap := range mesh.Policies.AuthorizationPolicies {
		refs := ap.Spec.GetTargetRefs()
		if r := ap.Spec.GetTargetRef(); r != nil {
			refs = append(refs[:len(refs):len(refs)], r)
		}
		for _, ref := range refs {
			if ref.GetNamespace() != "" && ref.GetNamespace() != ap.Namespace {
				continue
			}
			var applies bool
			switch ref.GetKind() {
			case "Gateway":
				applies = ref.GetGroup() == "gateway.networking.k8s.io" && ap.Namespace == w.Namespace && ref.GetName() == w.Name
			case "GatewayClass":
				applies = ref.GetGroup() == "gateway.networking.k8s.io" && ap.Namespace == root && ref.GetName() == w.Class
			case "Service":
				applies = (ref.GetGroup() == "" || ref.GetGroup() == "core") && bound[ap.Namespace+"/"+ref.GetName()]
			case "ServiceEntry":
				applies = ref.GetGroup() == "networking.istio.io" && boundEntries[ap.Namespace+"/"+ref.GetName()]
			}
			if applies {
				out = append(out, ap)
				break
			}
		}
	}
	return out
}

// secrets are the SDS secrets served when the options provide them.
func secrets(w *model.Waypoint, opts Options) []*tlsv3.Secret {
	var out []*tlsv3.Secret
	if opts.SVID != nil {
		if cert, key, ok := opts.SVID(w); ok {
			out = append(out, SVIDSecret(cert, key))
		}
	}
	if len(opts.RootCertPEM) > 0 {
		out = append(out, RootCASecret(opts.RootCertPEM))
	}
	return out
}

// SVIDSecret is the SDS secret "default": a waypoint's PEM certificate chain and private key.
func SVIDSecret(certPEM, keyPEM []byte) *tlsv3.Secret {
	return &tlsv3.Secret{Name: SecretDefault, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: certPEM}},
		PrivateKey:       &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: keyPEM}},
	}}}
}

// RootCASecret is the SDS secret "ROOTCA": the PEM trust bundle.
func RootCASecret(rootPEM []byte) *tlsv3.Secret {
	return &tlsv3.Secret{Name: SecretRootCA, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: rootPEM}},
	}}}
}
