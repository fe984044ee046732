package authz

import (
	"errors"
	"fmt"
	"strings"

	"github.com/envoyproxy/envoy/contrib/golang/common/go/api"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/extauthz"
	"github.com/goambient/goambient/policies"
)

// filterConfig is a parsed, compiled plugin_config, or one merged with a route's target.
// It is immutable: Merge returns a new one.
type filterConfig struct {
	engine  *policies.Engine
	target  policies.Target
	needs   needs
	metrics *metrics
	// clients are the ext_authz clients of the providers CUSTOM policies may name.
	clients map[string]extauthz.Client
	// customInChain: the chain's ext_authz filters enforce CUSTOM (authzconfig.Config's
	// CustomInChain); providers then lists the provider names the mesh config declares.
	customInChain bool
	providers     map[string]bool
	// customPhase: this filter runs CUSTOM only (authzconfig.Config's CustomPhase).
	customPhase bool
}

// routeConfig is a parsed per-route config: only a target, to be merged into a filterConfig.
type routeConfig struct{ route authzconfig.Route }

// denyConfig is what Merge returns when it cannot build a filterConfig: every request is denied.
type denyConfig struct{ why string }

// needs says which request attributes some policy reads, so that the per-request path skips
// the others (each is a cgo call, and headers and metadata allocate, in Envoy).
type needs struct {
	headers      bool     // request.headers[...] conditions
	auth         bool     // requestPrincipals or request.auth.* conditions
	sni          bool     // connection.sni conditions
	experimental []string // experimental.envoy.filters.* condition keys
}

// Parser parses the filter's configs for Envoy: an authzconfig.Config at the filter level
// (policies loaded, validated and compiled once), an authzconfig.Route per route.
type Parser struct{}

var _ api.StreamFilterConfigParser = Parser{}

// Parse parses a filter-level Config (callbacks non-nil) or a per-route Route (callbacks nil).
// An error makes Envoy reject the config and keep serving the last good one.
func (Parser) Parse(a *anypb.Any, callbacks api.ConfigCallbackHandler) (any, error) {
	if callbacks == nil {
		r, err := authzconfig.DecodeRoute(a)
		if err != nil {
			return nil, fmt.Errorf("%s: per-route config: %w", authzconfig.PluginName, err)
		}
		return &routeConfig{route: *r}, nil
	}
	c, err := authzconfig.DecodeConfig(a)
	if err != nil {
		return nil, fmt.Errorf("%s: plugin_config: %w", authzconfig.PluginName, err)
	}
	objs, errs := policies.Load([]byte(c.Policies), "plugin_config.policies")
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s: %w", authzconfig.PluginName, errors.Join(errs...))
	}
	var clients map[string]extauthz.Client
	var names map[string]bool
	if c.CustomInChain && c.CustomPhase {
		err = errors.New("customInChain and customPhase: the CUSTOM phase would never call its providers")
	} else if c.CustomInChain {
		names, err = providerNames(c.Providers)
	} else {
		clients, err = providers(c.Providers)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", authzconfig.PluginName, err)
	}
	return &filterConfig{
		clients:       clients,
		customInChain: c.CustomInChain,
		customPhase:   c.CustomPhase,
		providers:     names,
		engine:        policies.Compile(objs.AuthorizationPolicies, policies.Options{RootNamespace: c.RootNamespace}),
		target: policies.Target{
			Waypoint:     true,
			Namespace:    c.Namespace,
			Gateway:      c.Gateway,
			GatewayClass: c.GatewayClass,
		},
		needs:   needsOf(objs.AuthorizationPolicies),
		metrics: defineMetrics(callbacks),
	}, nil
}

// Merge gives parent's compiled policies child's Service target. Envoy merges the filter-level
// config with each route level in turn; a nil child (no route config, which Envoy never merges
// but a host may) leaves parent as is. Anything else (a route config with no filter-level config
// above it, a config of another plugin) yields a config that denies every request.
func (Parser) Merge(parent, child any) any {
	p, ok := parent.(*filterConfig)
	if !ok || p == nil {
		return &denyConfig{why: fmt.Sprintf("route config merged into %T, not a %s filter config", parent, authzconfig.PluginName)}
	}
	if child == nil {
		return p // no route-level config: the waypoint's own (Gateway, GatewayClass) policies
	}
	c, ok := child.(*routeConfig)
	if !ok || c == nil {
		return &denyConfig{why: fmt.Sprintf("merged a %T, not a %s route config", child, authzconfig.PluginName)}
	}
	m := *p
	m.target.Service = c.route.Service
	m.target.ServiceNamespace = c.route.ServiceNamespace
	m.target.ServiceKind = c.route.Kind
	return &m
}

func needsOf(aps []*policies.AuthorizationPolicy) needs {
	var n needs
	seen := map[string]bool{}
	for _, ap := range aps {
		for _, r := range ap.Spec.GetRules() {
			for _, f := range r.GetFrom() {
				s := f.GetSource()
				if len(s.GetRequestPrincipals()) > 0 || len(s.GetNotRequestPrincipals()) > 0 {
					n.auth = true
				}
			}
			for _, w := range r.GetWhen() {
				k := w.GetKey()
				switch {
				case strings.HasPrefix(k, "request.headers"):
					n.headers = true
				case strings.HasPrefix(k, "request.auth."):
					n.auth = true
				case k == "connection.sni":
					n.sni = true
				case strings.HasPrefix(k, "experimental.envoy.filters.") && !seen[k]:
					seen[k] = true
					n.experimental = append(n.experimental, k)
				}
			}
		}
	}
	return n
}

// experimentalKey splits "experimental.envoy.filters.network.mysql_proxy[db.table]" into the
// metadata namespace "envoy.filters.network.mysql_proxy" and the key "db.table", as Istio does.
func experimentalKey(k string) (filter, key string) {
	open := strings.IndexByte(k, '[')
	if open < 0 || !strings.HasSuffix(k, "]") {
		return "", ""
	}
	return strings.TrimPrefix(k[:open], "experimental."), k[open+1 : len(k)-1]
}
