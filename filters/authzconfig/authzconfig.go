// Package authzconfig is the configuration contract between xdsserver's waypoint translator and the goambient.authz Envoy Go filter.
package authzconfig

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	xdstype "github.com/cncf/xds/go/xds/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/goambient/goambient/policies/extprovider"
)

// Names shared by filters.so, envoy.yaml, docker-compose.yaml and xdsserver. If the plugin name
// Envoy is given is not the one registered in filters.so, Envoy passes every request through:
// every producer of configuration uses these constants, and a test checks envoy.yaml.
const (
	PluginName  = "goambient.authz"           // plugin_name; RegisterHttpFilterFactoryAndConfigParser's name
	LibraryID   = "goambient"                 // library_id: one .so per Envoy process
	LibraryPath = "/etc/envoy/filters.so"     // library_path in envoy.yaml and the waypoint image
	FilterName  = "envoy.filters.http.golang" // the HTTP filter that loads the library

	// ConfigTypeURL and RouteTypeURL are the type_url inside the xds.type.v3.TypedStruct that
	// carries each config; they name the schema (Config, Route), not a compiled proto.
	ConfigTypeURL = "type.googleapis.com/goambient.authz.v1.Config"
	RouteTypeURL  = "type.googleapis.com/goambient.authz.v1.Route"

	// PeerPrincipalKey is the filter-state key connect_terminate sets to the peer's URI SAN
	// (spiffe://td/ns/NS/sa/SA), as Istio's waypoint does.
	PeerPrincipalKey = "io.istio.peer_principal"

	// StatsPluginName is the plugin_name of filters/istiostats's filter (Istio's request
	// metrics), which xdsserver puts first in each service chain of main_internal.
	StatsPluginName = "goambient.stats"

	// CustomPluginName is the plugin_name of the authz filter's CUSTOM-match mode, which
	// xdsserver puts before the chain's envoy.filters.http.ext_authz filters in place of
	// istiod's CUSTOM shadow RBAC filter: it sets the dynamic metadata that filter would set
	// (CustomMetadataFilter / CustomPolicyIDKey) for the requests a CUSTOM rule matches.
	CustomPluginName = "goambient.authz.custom"
	// CustomMetadataFilter and CustomPolicyIDKey locate that metadata: istiod's ext_authz
	// filter_enabled_metadata reads envoy.filters.http.rbac's
	// istio_ext_authz_shadow_effective_policy_id, a value starting with
	// istio-ext-authz-<provider>- for the provider's ext_authz filter to run.
	CustomMetadataFilter = "envoy.filters.http.rbac"
	CustomPolicyIDKey    = "istio_ext_authz_shadow_effective_policy_id"
	CustomResultKey      = "istio_ext_authz_shadow_engine_result"
	CustomIDPrefix       = "istio-ext-authz"
)

// Config is the filter's plugin_config: who the waypoint is and the AuthorizationPolicies that
// may apply to it. xdsserver sends it per waypoint (one ECDS resource shared by every service
// chain); the filter's config parser loads, validates and compiles Policies once.
type Config struct {
	Namespace     string `json:"namespace"`               // the waypoint Gateway's namespace
	Gateway       string `json:"gateway"`                 // the waypoint Gateway's name
	GatewayClass  string `json:"gatewayClass,omitempty"`  // its class, for GatewayClass targetRefs
	RootNamespace string `json:"rootNamespace,omitempty"` // istio-system when empty
	TrustDomain   string `json:"trustDomain,omitempty"`   // cluster.local when empty
	// Policies is a YAML or JSON document stream (what policies.Load reads) holding the
	// AuthorizationPolicies of the mesh that can apply at this waypoint. Empty means no
	// policy: every request is allowed, as in Istio.
	Policies string `json:"policies,omitempty"`
	// Providers are the mesh config's extensionProviders the CUSTOM policies among Policies
	// name. A name with none: a matching CUSTOM rule denies, as istiod does for a provider it
	// cannot find.
	Providers []extprovider.Provider `json:"providers,omitempty"`
	// CustomInChain says that the chain enforces CUSTOM itself (Envoy: the CUSTOM-match filter
	// and envoy.filters.http.ext_authz before this filter): the filter then never calls a
	// provider and decides ALLOW and DENY only. The embedded waypoint, which has no ext_authz
	// filter, clears it and consults the providers itself.
	CustomInChain bool `json:"customInChain,omitempty"`
	// CustomPhase makes the filter run CUSTOM only, calling the providers itself: what the
	// embedded waypoint runs where Envoy's chain has the CUSTOM-match and ext_authz filters
	// (before jwt_authn), the config with CustomInChain then deciding DENY and ALLOW after
	// jwt_authn. xdsserver never sets it.
	CustomPhase bool `json:"customPhase,omitempty"`
}

// Route is the per-route config (typed_per_filter_config on a service's virtual host): which
// Service the requests of that chain are addressed to. The filter merges it into Config.
type Route struct {
	Service          string `json:"service"`          // the Service's name
	ServiceNamespace string `json:"serviceNamespace"` // its namespace
	// Kind is "Service" (when empty) or "ServiceEntry": a policy's Service targetRef attaches
	// only to a Kubernetes Service, a ServiceEntry targetRef only to a ServiceEntry.
	Kind string `json:"kind,omitempty"`
}

// Validate reports the first missing or malformed field of c.
func (c *Config) Validate() error {
	var errs []error
	if c.Namespace == "" {
		errs = append(errs, errors.New("namespace: required"))
	}
	if c.Gateway == "" {
		errs = append(errs, errors.New("gateway: required"))
	}
	if strings.Contains(c.TrustDomain, "/") {
		errs = append(errs, fmt.Errorf("trustDomain: %q is not a trust domain", c.TrustDomain))
	}
	return errors.Join(errs...)
}

// Validate reports the first missing field of r.
func (r *Route) Validate() error {
	var errs []error
	if r.Service == "" {
		errs = append(errs, errors.New("service: required"))
	}
	if r.ServiceNamespace == "" {
		errs = append(errs, errors.New("serviceNamespace: required"))
	}
	if r.Kind != "" && r.Kind != "Service" && r.Kind != "ServiceEntry" {
		errs = append(errs, fmt.Errorf("kind: %q is neither Service nor ServiceEntry", r.Kind))
	}
	return errors.Join(errs...)
}

// EncodeConfig packs c as a TypedStruct in an Any, the form Envoy passes to the config parser.
func EncodeConfig(c *Config) (*anypb.Any, error) { return encode(ConfigTypeURL, c) }

// EncodeRoute packs r as a TypedStruct in an Any.
func EncodeRoute(r *Route) (*anypb.Any, error) { return encode(RouteTypeURL, r) }

// DecodeConfig unpacks what EncodeConfig packed; unknown fields are an error.
func DecodeConfig(a *anypb.Any) (*Config, error) {
	var c Config
	if err := decode(a, ConfigTypeURL, &c); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// DecodeRoute unpacks what EncodeRoute packed; unknown fields are an error.
func DecodeRoute(a *anypb.Any) (*Route, error) {
	var r Route
	if err := decode(a, RouteTypeURL, &r); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// IsRoute reports whether a carries a Route (rather than a Config), without decoding it fully.
func IsRoute(a *anypb.Any) bool {
	var ts xdstype.TypedStruct
	return a != nil && a.UnmarshalTo(&ts) == nil && ts.GetTypeUrl() == RouteTypeURL
}

func encode(typeURL string, v any) (*anypb.Any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	s, err := structpb.NewStruct(m)
	if err != nil {
		return nil, err
	}
	return anypb.New(&xdstype.TypedStruct{TypeUrl: typeURL, Value: s})
}

func decode(a *anypb.Any, typeURL string, v any) error {
	if a == nil {
		return errors.New("no config")
	}
	var ts xdstype.TypedStruct
	if err := a.UnmarshalTo(&ts); err != nil {
		return fmt.Errorf("config is a %s, want xds.type.v3.TypedStruct: %w", a.GetTypeUrl(), err)
	}
	if ts.GetTypeUrl() != typeURL {
		return fmt.Errorf("TypedStruct type_url is %q, want %q", ts.GetTypeUrl(), typeURL)
	}
	b, err := ts.GetValue().MarshalJSON()
	if err != nil {
		return err
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("value: %w", err)
	}
	return nil
}
