package authz

import (
	"errors"
	"strconv"
	"strings"

	"github.com/envoyproxy/envoy/contrib/golang/common/go/api"

	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/policies/extprovider"
)

// CustomFactory builds the filter's CUSTOM-match mode (authzconfig.CustomPluginName) for one
// request: it stands where istiod puts its CUSTOM shadow RBAC filter, before the chain's
// envoy.filters.http.ext_authz filters, and sets the dynamic metadata that filter sets, so
// that the provider's ext_authz filter runs for the requests a CUSTOM rule matches and for
// no other. It never calls a provider and never allows or denies, except that a CUSTOM rule
// naming a provider the mesh config lacks denies what it matches, as istiod's
// "-deny-due-to-bad-CUSTOM-action" RBAC filter does. config is what Parser returned for a
// config with CustomInChain set.
func CustomFactory(config any, callbacks api.FilterCallbackHandler) api.StreamFilter {
	f := Factory(config, callbacks).(*filter)
	f.match = true
	if f.cfg != nil && !f.cfg.customInChain {
		f.cfg, f.why = nil, "CUSTOM-match filter given a config without customInChain (the authz filter would call the providers too)"
	}
	return f
}

// CustomPolicyID is the value istiod's CUSTOM shadow RBAC filter stores for a request that
// rule rule of CUSTOM policy ns/name matches, the policy sending it to provider:
// istio-ext-authz-<provider>-ns[<ns>]-policy[<name>]-rule[<rule>].
func CustomPolicyID(provider, policy string, rule int) string {
	ns, name, _ := strings.Cut(policy, "/")
	return authzconfig.CustomIDPrefix + "-" + provider + "-ns[" + ns + "]-policy[" + name + "]-rule[" + strconv.Itoa(rule) + "]"
}

// customMatch marks the request as Envoy's RBAC filter marks it with shadow rules: the engine
// result ("allowed" when a rule matched, else "denied") and, on a match, the effective policy.
func (f *filter) customMatch(c *filterConfig, d *policies.Decision) api.StatusType {
	md := f.cb.StreamInfo().DynamicMetadata()
	if d.Custom.Policy == "" {
		md.Set(authzconfig.CustomMetadataFilter, authzconfig.CustomResultKey, "denied")
		return api.Continue
	}
	if !c.providers[d.CustomProvider] {
		ns, name, _ := strings.Cut(d.Custom.Policy, "/")
		f.cb.Log(api.Warn, authzconfig.CustomPluginName+": CUSTOM policy "+d.Custom.Policy+": provider "+d.CustomProvider+" is not in the mesh config: denying")
		return f.reply(c.metrics, denyStatus, denyBody, grpcDenied,
			"rbac_access_denied_matched_policy[ns["+ns+"]-policy["+name+"]-rule["+strconv.Itoa(d.Custom.Rule)+"]]")
	}
	md.Set(authzconfig.CustomMetadataFilter, authzconfig.CustomResultKey, "allowed")
	md.Set(authzconfig.CustomMetadataFilter, authzconfig.CustomPolicyIDKey, CustomPolicyID(d.CustomProvider, d.Custom.Policy, d.Custom.Rule))
	return api.Continue
}

// providerNames validates the providers a CustomInChain config lists and returns their names.
func providerNames(ps []extprovider.Provider) (map[string]bool, error) {
	names := make(map[string]bool, len(ps))
	for i := range ps {
		if err := ps[i].Validate(); err != nil {
			return nil, err
		}
		if names[ps[i].Name] {
			return nil, errors.New("provider " + ps[i].Name + ": given twice")
		}
		names[ps[i].Name] = true
	}
	return names, nil
}
