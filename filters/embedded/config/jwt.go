package config

import (
	"fmt"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/goambient/goambient/filters/jwtauthn"
)

// mainInternal is the listener whose service chains carry the HTTP filters before the authz
// filter (Istio's main_internal).
const mainInternal = "main_internal"

// jwtFilters compiles the jwt_authn filter of each service chain of main_internal, by the
// chain's name (its RDS route name). A chain without the filter has none; a filter the
// embedded waypoint cannot run is an error (a NACK), never skipped.
func (s *Store) jwtFilters(res map[string]*anypb.Any) (map[string]*jwtauthn.Filter, error) {
	out := map[string]*jwtauthn.Filter{}
	a, ok := res[mainInternal]
	if !ok {
		return out, nil
	}
	var l listener.Listener
	if err := a.UnmarshalTo(&l); err != nil {
		return nil, fmt.Errorf("%s: %w", mainInternal, err)
	}
	keep := map[string]bool{}
	for _, fc := range l.GetFilterChains() {
		for _, nf := range fc.GetFilters() {
			var m hcm.HttpConnectionManager
			if nf.GetTypedConfig() == nil || nf.GetTypedConfig().UnmarshalTo(&m) != nil {
				continue
			}
			for _, hf := range m.GetHttpFilters() {
				if hf.GetName() != jwtauthn.Name {
					continue
				}
				var cfg jwtv3.JwtAuthentication
				if hf.GetTypedConfig() == nil {
					return nil, fmt.Errorf("%s: filter chain %s: %s has no typed_config", mainInternal, fc.GetName(), jwtauthn.Name)
				}
				if err := hf.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
					return nil, fmt.Errorf("%s: filter chain %s: %s: %w", mainInternal, fc.GetName(), jwtauthn.Name, err)
				}
				f, err := jwtauthn.Compile(&cfg, jwtauthn.Options{Remotes: s.remotes, Log: s.log.With("filter", jwtauthn.Name, "chain", fc.GetName())})
				if err != nil {
					return nil, fmt.Errorf("%s: filter chain %s: %s: %w", mainInternal, fc.GetName(), jwtauthn.Name, err)
				}
				for _, p := range cfg.GetProviders() {
					if u := p.GetRemoteJwks().GetHttpUri().GetUri(); u != "" {
						keep[u] = true
					}
				}
				out[fc.GetName()] = f
			}
		}
	}
	s.remotes.Retain(keep)
	return out, nil
}
