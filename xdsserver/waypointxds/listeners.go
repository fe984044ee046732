package waypointxds

import (
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	sfscommon "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/set_filter_state/v3"
	fault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	setfilterstate "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/set_filter_state/v3"
	origdst "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	golang "github.com/envoyproxy/go-control-plane/contrib/envoy/extensions/filters/http/golang/v3alpha"

	"github.com/goambient/goambient/filters/authzconfig"
)

// toAny packs m with a deterministic encoding (maps sorted), so the same config always has
// the same bytes and the same version: anypb.New's encoding is not stable, and every push
// would then look like a change. It cannot fail for the well-formed messages built here (a
// nil result would be caught by Validate).
func toAny(m proto.Message) *anypb.Any {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil
	}
	return &anypb.Any{TypeUrl: "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName()), Value: b}
}

// repack re-encodes an Any made elsewhere deterministically.
func repack(a *anypb.Any) (*anypb.Any, error) {
	m, err := a.UnmarshalNew()
	if err != nil {
		return nil, err
	}
	return toAny(m), nil
}

func ads() *core.ConfigSource {
	return &core.ConfigSource{
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
		ResourceApiVersion:    core.ApiVersion_V3,
	}
}

func sdsSecret(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: ads()}
}

// commonTLS is the HBONE TLS context of both sides: TLS 1.3 only, ALPN h2, the waypoint's SVID
// and the trust bundle from SDS, peers verified by a SPIFFE URI SAN of the trust domain.
func commonTLS(trustDomain string) *tlsv3.CommonTlsContext {
	return &tlsv3.CommonTlsContext{
		TlsParams: &tlsv3.TlsParameters{
			TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
			TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
		},
		AlpnProtocols:                  []string{"h2"},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(SecretDefault)},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext: &tlsv3.CertificateValidationContext{
					MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
						SanType: tlsv3.SubjectAltNameMatcher_URI,
						Matcher: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: "spiffe://" + trustDomain + "/"}},
					}},
				},
				ValidationContextSdsSecretConfig: sdsSecret(SecretRootCA),
			},
		},
	}
}

func originalDstFilter() *listener.ListenerFilter {
	return &listener.ListenerFilter{
		Name:       wellknown.OriginalDestination,
		ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: toAny(&origdst.OriginalDst{})},
	}
}

func routerFilter() *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: wellknown.Router, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: toAny(&router.Router{})}}
}

func setState(key, factory, format string) *sfscommon.FilterStateValue {
	return &sfscommon.FilterStateValue{
		Key:        &sfscommon.FilterStateValue_ObjectKey{ObjectKey: key},
		FactoryKey: factory,
		Value: &sfscommon.FilterStateValue_FormatString{FormatString: &core.SubstitutionFormatString{
			Format: &core.SubstitutionFormatString_TextFormatSource{TextFormatSource: &core.DataSource{
				Specifier: &core.DataSource_InlineString{InlineString: format}}},
		}},
		SharedWithUpstream: sfscommon.FilterStateValue_ONCE,
	}
}

// connectTerminateListener is Istio's connect_terminate: HBONE (mTLS + HTTP/2 CONNECT) on
// 0.0.0.0:15008; each CONNECT stream goes to main_internal, with the CONNECT target, the
// source address and the peer's SPIFFE id in filter state shared with that connection.
func connectTerminateListener(trustDomain string) *listener.Listener {
	connectAuthority := &setfilterstate.Config{OnRequestHeaders: []*sfscommon.FilterStateValue{
		setState(OriginalDstLocal, "", "%REQ(:AUTHORITY)%"),
		setState(ConnectAuthority, "envoy.hashable_string", "%REQ(:AUTHORITY)%"),
		setState(OriginalDstRemote, "", "%DOWNSTREAM_REMOTE_ADDRESS%"),
		setState(authzconfig.PeerPrincipalKey, "envoy.hashable_string", "%DOWNSTREAM_PEER_URI_SAN%"),
	}}
	m := &hcm.HttpConnectionManager{
		StatPrefix:        ConnectTerminate,
		CodecType:         hcm.HttpConnectionManager_HTTP2,
		UseRemoteAddress:  wrapperspb.Bool(false),
		StreamIdleTimeout: durationpb.New(0),
		UpgradeConfigs:    []*hcm.HttpConnectionManager_UpgradeConfig{{UpgradeType: "CONNECT"}},
		Http2ProtocolOptions: &core.Http2ProtocolOptions{
			AllowConnect:         true,
			MaxConcurrentStreams: wrapperspb.UInt32(100),
			ConnectionKeepalive: &core.KeepaliveSettings{
				Interval: durationpb.New(10 * time.Second),
				Timeout:  durationpb.New(20 * time.Second),
			},
		},
		RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &route.RouteConfiguration{
			Name: "default",
			VirtualHosts: []*route.VirtualHost{{
				Name:    "default",
				Domains: []string{"*"},
				Routes: []*route.Route{{
					Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_ConnectMatcher_{ConnectMatcher: &route.RouteMatch_ConnectMatcher{}}},
					Action: &route.Route_Route{Route: &route.RouteAction{
						ClusterSpecifier: &route.RouteAction_Cluster{Cluster: MainInternal},
						UpgradeConfigs: []*route.RouteAction_UpgradeConfig{{
							UpgradeType: "CONNECT", ConnectConfig: &route.RouteAction_UpgradeConfig_ConnectConfig{},
						}},
					}},
				}},
			}},
		}},
		HttpFilters: []*hcm.HttpFilter{
			{Name: "connect_authority", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: toAny(connectAuthority)}},
			routerFilter(),
		},
	}
	return &listener.Listener{
		Name: ConnectTerminate,
		Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
			Address: "0.0.0.0", PortSpecifier: &core.SocketAddress_PortValue{PortValue: HBONEPort}}}},
		ConnectionBalanceConfig: &listener.Listener_ConnectionBalanceConfig{
			BalanceType: &listener.Listener_ConnectionBalanceConfig_ExactBalance_{ExactBalance: &listener.Listener_ConnectionBalanceConfig_ExactBalance{}},
		},
		TrafficDirection: core.TrafficDirection_INBOUND,
		FilterChains: []*listener.FilterChain{{
			Name: ConnectTerminate,
			TransportSocket: &core.TransportSocket{Name: wellknown.TransportSocketTLS, ConfigType: &core.TransportSocket_TypedConfig{
				TypedConfig: toAny(&tlsv3.DownstreamTlsContext{
					CommonTlsContext:         commonTLS(trustDomain),
					RequireClientCertificate: wrapperspb.Bool(true),
				}),
			}},
			Filters: []*listener.Filter{{
				Name:       wellknown.HTTPConnectionManager,
				ConfigType: &listener.Filter_TypedConfig{TypedConfig: toAny(m)},
			}},
		}},
	}
}

// mainInternalListener is Istio's main_internal: an internal listener whose original_dst
// listener filter restores the CONNECT target (a service VIP:port) from filter state; one
// filter chain per service VIP and HTTP port, each an HTTP connection manager running the
// authz filter (configured over ECDS) then the router, with its routes from RDS. Anything
// else reaches the default chain, which closes the connection.
func mainInternalListener(ports []servicePort, ecds string) *listener.Listener {
	l := &listener.Listener{
		Name:              MainInternal,
		ListenerSpecifier: &listener.Listener_InternalListener{InternalListener: &listener.Listener_InternalListenerConfig{}},
		ListenerFilters:   []*listener.ListenerFilter{originalDstFilter()},
		TrafficDirection:  core.TrafficDirection_INBOUND,
		DefaultFilterChain: &listener.FilterChain{
			Name:    BlackHole,
			Filters: []*listener.Filter{tcpProxyFilter(BlackHole, BlackHole, nil)},
		},
	}
	for _, sp := range ports {
		var ranges []*core.CidrRange
		for _, vip := range sp.svc.VIPs {
			ranges = append(ranges, &core.CidrRange{AddressPrefix: vip.String(), PrefixLen: wrapperspb.UInt32(uint32(vip.BitLen()))})
		}
		l.FilterChains = append(l.FilterChains, &listener.FilterChain{
			Name: sp.name,
			FilterChainMatch: &listener.FilterChainMatch{
				DestinationPort: wrapperspb.UInt32(sp.port.Port),
				PrefixRanges:    ranges,
			},
			Filters: []*listener.Filter{{
				Name:       wellknown.HTTPConnectionManager,
				ConfigType: &listener.Filter_TypedConfig{TypedConfig: toAny(serviceHCM(sp, ecds))},
			}},
		})
	}
	return l
}

func serviceHCM(sp servicePort, ecds string) *hcm.HttpConnectionManager {
	return &hcm.HttpConnectionManager{
		StatPrefix:       sp.name,
		CodecType:        hcm.HttpConnectionManager_AUTO,
		UseRemoteAddress: wrapperspb.Bool(false),
		NormalizePath:    wrapperspb.Bool(true),
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
			ConfigSource: ads(), RouteConfigName: sp.name,
		}},
		HttpFilters: []*hcm.HttpFilter{
			// Istio's request metrics (filters/istiostats): first, so that it is there for
			// every request, the authz filter's denials included (it records in OnLog).
			{Name: authzconfig.StatsPluginName, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: toAny(&golang.Config{
				LibraryId: authzconfig.LibraryID, LibraryPath: authzconfig.LibraryPath, PluginName: authzconfig.StatsPluginName,
			})}},
			{
				// Envoy asks ECDS for the resource named as the filter. Without it (not yet
				// received, or rejected) the chain answers 500: fail closed.
				Name: ecds,
				ConfigType: &hcm.HttpFilter_ConfigDiscovery{ConfigDiscovery: &core.ExtensionConfigSource{
					ConfigSource: ads(),
					TypeUrls:     []string{golangConfigTypeURL},
				}},
			},
			// Fault injection runs after authorization (a denied request is never delayed),
			// each route carrying its own config, as in istiod's waypoint chains.
			{Name: FaultFilter, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: toAny(&fault.HTTPFault{})}},
			routerFilter(),
		},
	}
}

func tcpProxyFilter(statPrefix, cluster string, tunnel *tcpproxy.TcpProxy_TunnelingConfig) *listener.Filter {
	return &listener.Filter{
		Name: wellknown.TCPProxy,
		ConfigType: &listener.Filter_TypedConfig{TypedConfig: toAny(&tcpproxy.TcpProxy{
			StatPrefix:       statPrefix,
			ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: cluster},
			TunnelingConfig:  tunnel,
		})},
	}
}

// connectOriginateListener is Istio's connect_originate: an internal listener whose
// original_dst filter restores the pod's ip:port from the endpoint metadata, and whose
// tcp_proxy tunnels the connection in an HTTP/2 CONNECT to the pod's HBONE port with
// :authority = that ip:port.
func connectOriginateListener() *listener.Listener {
	return &listener.Listener{
		Name:              ConnectOriginate,
		ListenerSpecifier: &listener.Listener_InternalListener{InternalListener: &listener.Listener_InternalListenerConfig{}},
		UseOriginalDst:    wrapperspb.Bool(false),
		ListenerFilters:   []*listener.ListenerFilter{originalDstFilter()},
		FilterChains: []*listener.FilterChain{{
			Name: ConnectOriginate,
			Filters: []*listener.Filter{tcpProxyFilter(ConnectOriginate, ConnectOriginate,
				&tcpproxy.TcpProxy_TunnelingConfig{Hostname: "%DOWNSTREAM_LOCAL_ADDRESS%"})},
		}},
	}
}

const golangConfigTypeURL = "type.googleapis.com/envoy.extensions.filters.http.golang.v3alpha.Config"

// golangConfig is the authz filter's filter-level config: the library and plugin names, and
// the waypoint's authzconfig.Config as plugin_config.
func golangConfig(c *authzconfig.Config) (*golang.Config, error) {
	pc, err := authzconfig.EncodeConfig(c)
	if err == nil {
		pc, err = repack(pc)
	}
	if err != nil {
		return nil, err
	}
	return &golang.Config{
		LibraryId:    authzconfig.LibraryID,
		LibraryPath:  authzconfig.LibraryPath,
		PluginName:   authzconfig.PluginName,
		PluginConfig: pc,
	}, nil
}
