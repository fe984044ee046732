package waypointxds

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/policies/extprovider"
	"github.com/goambient/goambient/xdsserver/model"
)

// JWT filter facts, as istiod writes them.
const (
	JWTFilter          = "envoy.filters.http.jwt_authn"
	JWTPayloadKey      = "payload" // payload_in_metadata (istiod's filters.EnvoyJwtFilterPayload)
	jwksCacheDuration  = 5 * time.Minute
	defaultJWKSTimeout = 5 * time.Second
	// systemCABundle verifies an https issuer's certificate (Debian's and Envoy's images' path).
	systemCABundle = "/etc/ssl/certs/ca-certificates.crt"
)

// ApplicableRequestAuthentications lists the RequestAuthentications that apply to a service's
// chain at waypoint w, as istiod's NewBuilderForService matches them for a waypoint: targetRefs
// naming its Gateway (in its namespace), its GatewayClass (from the root namespace), or the
// Service (in the Service's namespace). Selector policies apply to workloads, not waypoints.
func ApplicableRequestAuthentications(mesh *model.Mesh, w *model.Waypoint, svc *model.Service) []*policies.RequestAuthentication {
	var svcNS, svcName string
	if svc != nil {
		svcNS, svcName = svc.Namespace, svc.Name
	}
	return RequestAuthenticationsAt(mesh.Policies.RequestAuthentications, mesh.RootNamespace, w.Namespace, w.Name, w.Class, svcNS, svcName)
}

// RequestAuthenticationsAt is ApplicableRequestAuthentications on names: the waypoint Gateway
// ns/name of class class, the Service svcNS/svc ("" for none), the root namespace root.
func RequestAuthenticationsAt(ras []*policies.RequestAuthentication, root, ns, name, class, svcNS, svc string) []*policies.RequestAuthentication {
	root = cmp.Or(root, "istio-system")
	var out []*policies.RequestAuthentication
	for _, ra := range ras {
		refs := ra.Spec.GetTargetRefs()
		if r := ra.Spec.GetTargetRef(); r != nil {
			refs = append(refs[:len(refs):len(refs)], r)
		}
		for _, ref := range refs {
			var applies bool
			switch ref.GetKind() {
			case "Gateway":
				applies = ref.GetGroup() == "gateway.networking.k8s.io" && ra.Namespace == ns && ref.GetName() == name
			case "GatewayClass":
				applies = ref.GetGroup() == "gateway.networking.k8s.io" && ra.Namespace == root && ref.GetName() == class
			case "Service":
				applies = (ref.GetGroup() == "" || ref.GetGroup() == "core") && svc != "" && ra.Namespace == svcNS && ref.GetName() == svc
			}
			if applies {
				out = append(out, ra)
				break
			}
		}
	}
	return out
}

// jwtFilter is istiod's convertToEnvoyJwtConfig for the rules of ras (nil when there are none):
// providers origins-<i> over the rules sorted by issuer, each required when its token is
// present (OR with allow_missing), payload_in_metadata "payload"; jwksUri as a remote JWKS
// through the cluster outbound|<port>||<host> (istiod's remote mode), inline jwks as local JWKS.
func jwtFilter(ras []*policies.RequestAuthentication) (*hcm.HttpFilter, error) {
	cfg, err := JWTConfig(ras)
	if cfg == nil || err != nil {
		return nil, err
	}
	return &hcm.HttpFilter{Name: JWTFilter, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: toAny(cfg)}}, nil
}

// JWTConfig is the jwt_authn config of ras, as jwtFilter puts it in a chain (nil when ras have
// no rule).
func JWTConfig(ras []*policies.RequestAuthentication) (*jwtv3.JwtAuthentication, error) {
	var rules []*securityv1beta1.JWTRule
	for _, ra := range ras {
		rules = append(rules, ra.Spec.GetJwtRules()...)
	}
	if len(rules) == 0 {
		return nil, nil
	}
	slices.SortStableFunc(rules, func(a, b *securityv1beta1.JWTRule) int { return cmp.Compare(a.GetIssuer(), b.GetIssuer()) })
	providers := map[string]*jwtv3.JwtProvider{}
	var inner, outer []*jwtv3.JwtRequirement
	for i, r := range rules {
		p := &jwtv3.JwtProvider{
			Issuer:               r.GetIssuer(),
			Audiences:            r.GetAudiences(),
			Forward:              r.GetForwardOriginalToken(),
			ForwardPayloadHeader: r.GetOutputPayloadToHeader(),
			PayloadInMetadata:    JWTPayloadKey,
			NormalizePayloadInMetadata: &jwtv3.JwtProvider_NormalizePayload{
				SpaceDelimitedClaims: append([]string{"scope", "permission"}, r.GetSpaceDelimitedClaims()...),
			},
			FromParams:  r.GetFromParams(),
			FromCookies: r.GetFromCookies(),
		}
		for _, ch := range r.GetOutputClaimToHeaders() {
			p.ClaimToHeaders = append(p.ClaimToHeaders, &jwtv3.JwtClaimToHeader{HeaderName: ch.GetHeader(), ClaimName: ch.GetClaim()})
		}
		for _, h := range r.GetFromHeaders() {
			p.FromHeaders = append(p.FromHeaders, &jwtv3.JwtHeader{Name: h.GetName(), ValuePrefix: h.GetPrefix()})
		}
		timeout := durationpb.New(defaultJWKSTimeout)
		if r.GetTimeout() != nil {
			timeout = r.GetTimeout()
		}
		switch {
		case r.GetJwks() != "":
			p.JwksSourceSpecifier = &jwtv3.JwtProvider_LocalJwks{LocalJwks: &core.DataSource{
				Specifier: &core.DataSource_InlineString{InlineString: r.GetJwks()}}}
		case r.GetJwksUri() != "":
			u, err := policies.ParseJwksURI(r.GetJwksUri())
			if err != nil {
				return nil, err
			}
			p.JwksSourceSpecifier = &jwtv3.JwtProvider_RemoteJwks{RemoteJwks: &jwtv3.RemoteJwks{
				HttpUri: &core.HttpUri{
					Uri:              r.GetJwksUri(),
					HttpUpstreamType: &core.HttpUri_Cluster{Cluster: JWKSClusterName(u)},
					Timeout:          timeout,
				},
				CacheDuration: durationpb.New(jwksCacheDuration),
			}}
		default:
			return nil, fmt.Errorf("jwtRule for issuer %q has neither jwks nor jwksUri (istiod would discover it over OpenID; goambient does not)", r.GetIssuer())
		}
		name := "origins-" + strconv.Itoa(i)
		providers[name] = p
		inner = append(inner, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAny{RequiresAny: &jwtv3.JwtRequirementOrList{
			Requirements: []*jwtv3.JwtRequirement{
				{RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: name}},
				{RequiresType: &jwtv3.JwtRequirement_AllowMissing{AllowMissing: &emptypb.Empty{}}},
			},
		}}})
		outer = append(outer, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: name}})
	}
	req := inner[0]
	if len(inner) > 1 {
		outer = append(outer, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAll{
			RequiresAll: &jwtv3.JwtRequirementAndList{Requirements: inner}}})
		req = &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAny{RequiresAny: &jwtv3.JwtRequirementOrList{Requirements: outer}}}
	}
	cfg := &jwtv3.JwtAuthentication{
		Rules: []*jwtv3.RequirementRule{{
			Match:           &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			RequirementType: &jwtv3.RequirementRule_Requires{Requires: req},
		}},
		Providers:           providers,
		BypassCorsPreflight: true,
	}
	return cfg, nil
}

// JWKSClusterName is the cluster a remote JWKS is fetched through: istiod's
// outbound|<port>||<host>.
func JWKSClusterName(u policies.JwksURI) string {
	return "outbound|" + strconv.Itoa(int(u.Port)) + "||" + u.Hostname
}

// jwksClusters are the clusters of the remote JWKS of ras: a DNS cluster to the issuer's
// host and port, TLS when the URI is https (SNI the host), as the ServiceEntry istiod expects
// for an issuer outside the mesh would give.
func jwksClusters(ras []*policies.RequestAuthentication) []*cluster.Cluster {
	seen := map[string]bool{}
	var out []*cluster.Cluster
	for _, ra := range ras {
		for _, r := range ra.Spec.GetJwtRules() {
			if r.GetJwksUri() == "" || r.GetJwks() != "" {
				continue
			}
			u, err := policies.ParseJwksURI(r.GetJwksUri())
			if err != nil {
				continue
			}
			name := JWKSClusterName(u)
			if seen[name] {
				continue
			}
			seen[name] = true
			c := &cluster.Cluster{
				Name:                 name,
				ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STRICT_DNS},
				ConnectTimeout:       durationpb.New(defaultJWKSTimeout),
				LoadAssignment: &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{{
					LbEndpoints: []*endpoint.LbEndpoint{{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
						Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
							Address: u.Hostname, PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(u.Port)}}}},
					}}}},
				}}},
			}
			if u.UseSSL {
				c.TransportSocket = &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{
					TypedConfig: toAny(&tlsv3.UpstreamTlsContext{Sni: u.Hostname, CommonTlsContext: &tlsv3.CommonTlsContext{
						ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
							TrustedCa: &core.DataSource{Specifier: &core.DataSource_Filename{Filename: systemCABundle}},
						}},
					}})}}
			}
			out = append(out, c)
		}
	}
	return out
}

// authnFilters sets the jwt_authn filter of a service port's chain.
func authnFilters(mesh *model.Mesh, w *model.Waypoint, sp *servicePort) error {
	f, err := jwtFilter(ApplicableRequestAuthentications(mesh, w, sp.svc))
	if err != nil {
		return err
	}
	if f != nil {
		sp.pre = append(sp.pre, f)
	}
	return nil
}

// authnClusters are the JWKS clusters the waypoint's chains fetch through.
func authnClusters(mesh *model.Mesh, w *model.Waypoint, ports []servicePort) []*cluster.Cluster {
	var ras []*policies.RequestAuthentication
	seen := map[*policies.RequestAuthentication]bool{}
	for _, sp := range ports {
		for _, ra := range ApplicableRequestAuthentications(mesh, w, sp.svc) {
			if !seen[ra] {
				seen[ra] = true
				ras = append(ras, ra)
			}
		}
	}
	return jwksClusters(ras)
}

// customProviders are the providers the authz filter needs: the mesh config's
// extensionProviders the CUSTOM policies among aps name, by name (a name with no provider is
// left to the filter, which denies what such a policy matches, as istiod does).
func customProviders(mesh *model.Mesh, aps []*policies.AuthorizationPolicy) []extprovider.Provider {
	if mesh.MeshConfig == nil {
		return nil
	}
	var names []string
	for _, ap := range aps {
		if ap.Spec.GetAction() == securityv1beta1.AuthorizationPolicy_CUSTOM {
			names = append(names, ap.Spec.GetProvider().GetName())
		}
	}
	slices.Sort(names)
	var out []extprovider.Provider
	for _, n := range slices.Compact(names) {
		if p := mesh.MeshConfig.Providers[n]; p != nil {
			out = append(out, *p)
		}
	}
	return out
}
