package waypointxds

import (
	"slices"
	"strconv"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	securityv1beta1 "istio.io/api/security/v1beta1"

	golang "github.com/envoyproxy/go-control-plane/contrib/envoy/extensions/filters/http/golang/v3alpha"

	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/policies/extprovider"
	"github.com/goambient/goambient/xdsserver/model"
)

// ExtAuthzFilter is Envoy's external authorization HTTP filter.
const ExtAuthzFilter = "envoy.filters.http.ext_authz"

// CustomExtensionConfigName is the ECDS resource of a waypoint's CUSTOM-match filter (the
// authz filter's policies under authzconfig.CustomPluginName).
func CustomExtensionConfigName(namespace, gateway string) string {
	return authzconfig.CustomPluginName + "/" + namespace + "/" + gateway
}

// customProviderNames are the providers the CUSTOM policies among aps name, sorted, once each.
func customProviderNames(aps []*policies.AuthorizationPolicy) []string {
	var names []string
	for _, ap := range aps {
		if ap.Spec.GetAction() == securityv1beta1.AuthorizationPolicy_CUSTOM {
			names = append(names, ap.Spec.GetProvider().GetName())
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// customFilters are the filters of a service chain that enforce CUSTOM, as istiod's CUSTOM
// builder places them first in a waypoint's chain (before jwt_authn): the CUSTOM-match
// filter (over ECDS, standing for istiod's shadow RBAC filter: it sets the same dynamic
// metadata), then one envoy.filters.http.ext_authz per provider, each enabled only when that
// metadata names its provider. Every chain of the waypoint gets them when some CUSTOM policy
// applies there: the per-request match uses the route's Service, so a chain whose Service no
// CUSTOM policy targets never enables them. None when no CUSTOM policy applies.
func customFilters(mesh *model.Mesh, aps []*policies.AuthorizationPolicy, ecds string) []*hcm.HttpFilter {
	if len(customProviderNames(aps)) == 0 {
		return nil
	}
	out := []*hcm.HttpFilter{{
		Name: ecds,
		ConfigType: &hcm.HttpFilter_ConfigDiscovery{ConfigDiscovery: &core.ExtensionConfigSource{
			ConfigSource: ads(),
			TypeUrls:     []string{golangConfigTypeURL},
		}},
	}}
	for _, p := range customProviders(mesh, aps) {
		out = append(out, &hcm.HttpFilter{Name: ExtAuthzFilter, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: toAny(extAuthzConfig(&p))}})
	}
	return out
}

// ExtAuthzClusterName is the cluster a provider is reached through: istiod's
// outbound|<port>||<host>.
func ExtAuthzClusterName(p *extprovider.Provider) string {
	return "outbound|" + strconv.Itoa(int(p.Port)) + "||" + p.Host()
}

// extAuthzConfig is istiod's generateHTTPConfig / generateGRPCConfig for p: the service
// through p's cluster with p's timeout, failure_mode_allow, status_on_error (Envoy's 403 left
// implicit), allowed headers and body buffering, enabled by the provider's
// filter_enabled_metadata.
func extAuthzConfig(p *extprovider.Provider) *extauthzv3.ExtAuthz {
	cl := ExtAuthzClusterName(p)
	timeout := durationpb.New(p.Timeout)
	c := &extauthzv3.ExtAuthz{
		FailureModeAllow:      p.FailOpen,
		TransportApiVersion:   core.ApiVersion_V3,
		FilterEnabledMetadata: providerMatcher(p.Name),
	}
	if p.StatusOnError != 0 && p.StatusOnError != 403 {
		c.StatusOnError = &typev3.HttpStatus{Code: typev3.StatusCode(p.StatusOnError)}
	}
	if p.MaxRequestBytes > 0 {
		c.WithRequestBody = &extauthzv3.BufferSettings{MaxRequestBytes: p.MaxRequestBytes,
			AllowPartialMessage: p.AllowPartialMessage, PackAsBytes: p.PackAsBytes}
	}
	if p.Kind == extprovider.GRPC {
		c.Services = &extauthzv3.ExtAuthz_GrpcService{GrpcService: &core.GrpcService{
			TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: cl, Authority: p.Host()}},
			Timeout:         timeout,
		}}
		return c
	}
	svc := &extauthzv3.HttpService{
		PathPrefix: p.PathPrefix,
		ServerUri: &core.HttpUri{
			Uri:              "http://" + p.Host(),
			HttpUpstreamType: &core.HttpUri_Cluster{Cluster: cl},
			Timeout:          timeout,
		},
	}
	if len(p.IncludeAdditionalHeadersInCheck) > 0 {
		keys := make([]string, 0, len(p.IncludeAdditionalHeadersInCheck))
		for k := range p.IncludeAdditionalHeadersInCheck {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		req := &extauthzv3.AuthorizationRequest{}
		for _, k := range keys {
			req.HeadersToAdd = append(req.HeadersToAdd, &core.HeaderValue{Key: k, Value: p.IncludeAdditionalHeadersInCheck[k]})
		}
		svc.AuthorizationRequest = req
	}
	if len(p.HeadersToUpstreamOnAllow) > 0 || len(p.HeadersToDownstreamOnDeny) > 0 || len(p.HeadersToDownstreamOnAllow) > 0 {
		svc.AuthorizationResponse = &extauthzv3.AuthorizationResponse{
			AllowedUpstreamHeaders:        headerMatchers(p.HeadersToUpstreamOnAllow),
			AllowedClientHeaders:          headerMatchers(p.HeadersToDownstreamOnDeny),
			AllowedClientHeadersOnSuccess: headerMatchers(p.HeadersToDownstreamOnAllow),
		}
	}
	c.Services = &extauthzv3.ExtAuthz_HttpService{HttpService: svc}
	c.AllowedHeaders = headerMatchers(p.IncludeRequestHeadersInCheck)
	return c
}

// headerMatchers is istiod's generateHeaders: "*x" a suffix, "x*" a prefix, else exact, case
// ignored (nil for none).
func headerMatchers(hs []string) *matcher.ListStringMatcher {
	if len(hs) == 0 {
		return nil
	}
	l := &matcher.ListStringMatcher{}
	for _, h := range hs {
		m := &matcher.StringMatcher{IgnoreCase: true}
		if s, ok := strings.CutPrefix(h, "*"); ok {
			m.MatchPattern = &matcher.StringMatcher_Suffix{Suffix: s}
		} else if s, ok := strings.CutSuffix(h, "*"); ok {
			m.MatchPattern = &matcher.StringMatcher_Prefix{Prefix: s}
		} else {
			m.MatchPattern = &matcher.StringMatcher_Exact{Exact: h}
		}
		l.Patterns = append(l.Patterns, m)
	}
	return l
}

// providerMatcher is istiod's generateFilterMatcherForProvider: envoy.filters.http.rbac's
// istio_ext_authz_shadow_effective_policy_id starting with istio-ext-authz-<provider>.
func providerMatcher(provider string) *matcher.MetadataMatcher {
	return &matcher.MetadataMatcher{
		Filter: authzconfig.CustomMetadataFilter,
		Path:   []*matcher.MetadataMatcher_PathSegment{{Segment: &matcher.MetadataMatcher_PathSegment_Key{Key: authzconfig.CustomPolicyIDKey}}},
		Value: &matcher.ValueMatcher{MatchPattern: &matcher.ValueMatcher_StringMatch{StringMatch: &matcher.StringMatcher{
			MatchPattern: &matcher.StringMatcher_Prefix{Prefix: authzconfig.CustomIDPrefix + "-" + provider},
		}}},
	}
}

// customExtensionConfigOf is the ECDS resource of the CUSTOM-match filter: the authz
// filter's resource ext (the same policies, providers and identity) under
// authzconfig.CustomPluginName, named name.
func customExtensionConfigOf(ext *core.TypedExtensionConfig, name string) (*core.TypedExtensionConfig, error) {
	var gc golang.Config
	if err := ext.GetTypedConfig().UnmarshalTo(&gc); err != nil {
		return nil, err
	}
	gc.PluginName = authzconfig.CustomPluginName
	return &core.TypedExtensionConfig{Name: name, TypedConfig: toAny(&gc)}, nil
}

// appendNewClusters appends the clusters of add whose names out lacks (a provider's cluster
// may also be a remote JWKS's).
func appendNewClusters(out, add []*cluster.Cluster) []*cluster.Cluster {
	for _, c := range add {
		if !slices.ContainsFunc(out, func(o *cluster.Cluster) bool { return o.GetName() == c.GetName() }) {
			out = append(out, c)
		}
	}
	return out
}

// addCustomRoute gives the CUSTOM-match filter (ECDS name customECDS) of a service chain the
// authz filter's per-route config (ECDS name ecds): the same Service target.
func addCustomRoute(rc *route.RouteConfiguration, ecds, customECDS string) error {
	for _, vh := range rc.GetVirtualHosts() {
		var cpr golang.ConfigsPerRoute
		if err := vh.GetTypedPerFilterConfig()[ecds].UnmarshalTo(&cpr); err != nil {
			return err
		}
		vh.TypedPerFilterConfig[customECDS] = toAny(&golang.ConfigsPerRoute{PluginsConfig: map[string]*golang.RouterPlugin{
			authzconfig.CustomPluginName: {Override: &golang.RouterPlugin_Config{Config: cpr.GetPluginsConfig()[authzconfig.PluginName].GetConfig()}},
		}})
	}
	return nil
}

// extAuthzClusters are the clusters of the providers the chains' ext_authz filters call: for a
// mesh Service, its pods over HBONE through connect_originate (as the waypoint reaches any
// service; only ambient pods are endpoints), else a DNS cluster to host:port; HTTP/2 for gRPC.
func extAuthzClusters(mesh *model.Mesh, aps []*policies.AuthorizationPolicy) ([]*cluster.Cluster, []*endpoint.ClusterLoadAssignment) {
	var cls []*cluster.Cluster
	var eps []*endpoint.ClusterLoadAssignment
	for _, p := range customProviders(mesh, aps) {
		name := ExtAuthzClusterName(&p)
		var c *cluster.Cluster
		if svc, port := meshServicePort(mesh, p.Host(), uint32(p.Port)); svc != nil {
			sp := servicePort{svc: svc, port: port, name: name}
			u := upstream{name: name}
			c = upstreamCluster(sp, u)
			eps = append(eps, upstreamEndpoints(mesh, sp, u))
		} else {
			c = &cluster.Cluster{
				Name:                 name,
				ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STRICT_DNS},
				ConnectTimeout:       durationpb.New(connectTimeout),
				LoadAssignment: &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{{
					LbEndpoints: []*endpoint.LbEndpoint{{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
						Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
							Address: p.Host(), PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(p.Port)}}}},
					}}}},
				}}},
			}
		}
		if p.Kind == extprovider.GRPC {
			c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptions: toAny(http2ProtocolOptions(false))}
		}
		cls = append(cls, c)
	}
	return cls, eps
}

// meshServicePort is the Service whose hostname is host and its port port (nil when none).
func meshServicePort(mesh *model.Mesh, host string, port uint32) (*model.Service, model.ServicePort) {
	for _, s := range mesh.Services {
		if s.Hostname != host {
			continue
		}
		for _, p := range s.Ports {
			if p.Port == port {
				return s, p
			}
		}
	}
	return nil, model.ServicePort{}
}
