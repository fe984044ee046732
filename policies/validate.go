package policies

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
)

// validator collects the problems of one object.
type validator struct {
	origin Origin
	kind   string
	object string
	errs   []error
}

func (v *validator) add(field, format string, args ...any) {
	v.errs = append(v.errs, &Error{Origin: v.origin, Kind: v.kind, Object: v.object, Field: field, Reason: fmt.Sprintf(format, args...)})
}

// ValidateAuthorizationPolicy reports every problem Istio's validation would reject the policy for.
func ValidateAuthorizationPolicy(p *AuthorizationPolicy) []error {
	v := &validator{origin: p.Origin, kind: "AuthorizationPolicy", object: p.Key()}
	s := p.Spec
	if val, ok := p.Annotations[annotationDryRun]; ok {
		if _, err := strconv.ParseBool(val); err != nil {
			v.add("metadata.annotations["+annotationDryRun+"]", "must be true or false, got %q", val)
		}
	}
	v.binding(s.GetSelector(), s.GetTargetRef(), s.GetTargetRefs())

	switch s.GetAction() {
	case securityv1beta1.AuthorizationPolicy_CUSTOM:
		if s.Rules == nil {
			v.add("spec.rules", "CUSTOM action without `rules` is meaningless as it will never be triggered; add an empty rule `{}` to trigger it for every request")
		} else if s.GetProvider().GetName() == "" {
			v.add("spec.provider.name", "must not be empty with the CUSTOM action")
		}
	case securityv1beta1.AuthorizationPolicy_DENY:
		if s.Rules == nil {
			v.add("spec.rules", "DENY action without `rules` is meaningless as it will never be triggered; add an empty rule `{}` to trigger it for every request")
		}
	}
	if s.GetProvider() != nil && s.GetAction() != securityv1beta1.AuthorizationPolicy_CUSTOM {
		v.add("spec.provider", "must not be set with a non-CUSTOM action (found %s)", s.GetAction())
	}
	for i, r := range s.GetRules() {
		v.rule(fmt.Sprintf("spec.rules[%d]", i), r, s.GetAction() == securityv1beta1.AuthorizationPolicy_CUSTOM)
	}
	return v.errs
}

func (v *validator) selector(field string, sel *typev1beta1.WorkloadSelector) {
	for k := range sel.GetMatchLabels() {
		if k == "" {
			v.add(field+".matchLabels", "a label name must not be empty")
		}
	}
}

// binding checks what an object applies to, as istiod's webhook does for every policy kind:
// a selector, one targetRef or up to 16 targetRefs, never two of them.
func (v *validator) binding(sel *typev1beta1.WorkloadSelector, ref *typev1beta1.PolicyTargetReference, refs []*typev1beta1.PolicyTargetReference) {
	if ref != nil && len(refs) > 0 {
		v.add("spec.targetRef", "only one of targetRef or targetRefs can be set")
	}
	if sel != nil && (ref != nil || len(refs) > 0) {
		v.add("spec.selector", "only one of targetRefs or selector can be set")
	}
	v.selector("spec.selector", sel)
	if ref != nil {
		v.targetRef("spec.targetRef", ref)
	}
	if len(refs) > 16 {
		v.add("spec.targetRefs", "at most 16 target references are allowed, found %d", len(refs))
	}
	for i, r := range refs {
		v.targetRef(fmt.Sprintf("spec.targetRefs[%d]", i), r)
	}
}

func (v *validator) targetRef(field string, r *typev1beta1.PolicyTargetReference) {
	if r.GetName() == "" {
		v.add(field+".name", "must not be empty")
	}
	if r.GetNamespace() != "" { // istiod's validatePolicyTargetReference: even the policy's own namespace
		v.add(field+".namespace", "targetRef namespace must not be set; cross namespace referencing is not supported (found %q)", r.GetNamespace())
	}
	switch g, k := r.GetGroup(), r.GetKind(); {
	case k == "Gateway" && g == "gateway.networking.k8s.io":
	case k == "GatewayClass" && g == "gateway.networking.k8s.io":
	case k == "Service" && (g == "" || g == "core"):
	case k == "ServiceEntry" && g == "networking.istio.io":
	default:
		v.add(field, "kind %q in group %q is not supported; use Gateway or GatewayClass (gateway.networking.k8s.io), Service (core) or ServiceEntry (networking.istio.io)", k, g)
	}
}

func (v *validator) rule(field string, r *securityv1beta1.Rule, custom bool) {
	if r == nil {
		v.add(field, "must not be null")
		return
	}
	if r.From != nil && len(r.From) == 0 {
		v.add(field+".from", "must not be empty")
	}
	for i, f := range r.From {
		ff := fmt.Sprintf("%s.from[%d].source", field, i)
		if f.GetSource() == nil {
			v.add(ff, "must not be null")
			continue
		}
		v.source(ff, f.GetSource(), custom)
	}
	if r.To != nil && len(r.To) == 0 {
		v.add(field+".to", "must not be empty")
	}
	for i, t := range r.To {
		tf := fmt.Sprintf("%s.to[%d].operation", field, i)
		if t.GetOperation() == nil {
			v.add(tf, "must not be null")
			continue
		}
		v.operation(tf, t.GetOperation())
	}
	for i, c := range r.When {
		v.condition(fmt.Sprintf("%s.when[%d]", field, i), c, custom)
	}
}

func (v *validator) source(field string, s *securityv1beta1.Source, custom bool) {
	lists := []struct {
		name   string
		values []string
		check  func(field string, values []string)
	}{
		{"principals", s.Principals, v.nonEmpty},
		{"notPrincipals", s.NotPrincipals, v.nonEmpty},
		{"requestPrincipals", s.RequestPrincipals, v.nonEmpty},
		{"notRequestPrincipals", s.NotRequestPrincipals, v.nonEmpty},
		{"namespaces", s.Namespaces, v.nonEmpty},
		{"notNamespaces", s.NotNamespaces, v.nonEmpty},
		{"serviceAccounts", s.ServiceAccounts, v.serviceAccounts},
		{"notServiceAccounts", s.NotServiceAccounts, v.serviceAccounts},
		{"trustDomains", s.TrustDomains, v.trustDomains},
		{"notTrustDomains", s.NotTrustDomains, v.trustDomains},
		{"ipBlocks", s.IpBlocks, v.ips},
		{"notIpBlocks", s.NotIpBlocks, v.ips},
		{"remoteIpBlocks", s.RemoteIpBlocks, v.ips},
		{"notRemoteIpBlocks", s.NotRemoteIpBlocks, v.ips},
	}
	set := 0
	for _, l := range lists {
		set += len(l.values)
		l.check(field+"."+l.name, l.values)
	}
	if set == 0 {
		v.add(field, "must not be empty")
	}
	if len(s.Principals)+len(s.NotPrincipals)+len(s.Namespaces)+len(s.NotNamespaces) > 0 && len(s.ServiceAccounts)+len(s.NotServiceAccounts) > 0 {
		v.add(field+".serviceAccounts", "cannot be set together with namespaces or principals")
	}
	if custom {
		for _, l := range lists {
			if len(l.values) > 0 && !strings.Contains(strings.ToLower(l.name), "ipblocks") {
				v.add(field+"."+l.name, "is not supported with the CUSTOM action")
			}
		}
	}
}

func (v *validator) operation(field string, o *securityv1beta1.Operation) {
	if len(o.Hosts)+len(o.NotHosts)+len(o.Ports)+len(o.NotPorts)+len(o.Methods)+len(o.NotMethods)+len(o.Paths)+len(o.NotPaths) == 0 {
		v.add(field, "must not be empty")
	}
	v.nonEmpty(field+".hosts", o.Hosts)
	v.nonEmpty(field+".notHosts", o.NotHosts)
	v.nonEmpty(field+".methods", o.Methods)
	v.nonEmpty(field+".notMethods", o.NotMethods)
	v.ports(field+".ports", o.Ports)
	v.ports(field+".notPorts", o.NotPorts)
	v.paths(field+".paths", o.Paths)
	v.paths(field+".notPaths", o.NotPaths)
}

// conditionKeys are the keys of `when`, with whether they are HTTP-only and how values are checked.
var conditionKeys = map[string]func(v *validator, field string, values []string){
	"source.ip":              (*validator).ips,
	"remote.ip":              (*validator).ips,
	"source.namespace":       (*validator).nonEmpty,
	"source.serviceAccount":  (*validator).serviceAccounts,
	"source.principal":       (*validator).nonEmpty,
	"source.trustDomain":     (*validator).trustDomains,
	"request.auth.principal": (*validator).nonEmpty,
	"request.auth.audiences": (*validator).nonEmpty,
	"request.auth.presenter": (*validator).nonEmpty,
	"destination.ip":         (*validator).ips,
	"destination.port":       (*validator).ports,
	"connection.sni":         (*validator).nonEmpty,
}

// Prefixes of condition keys that take a name in brackets.
const (
	keyHeaders      = "request.headers"
	keyClaims       = "request.auth.claims"
	keyExperimental = "experimental.envoy.filters."
)

func (v *validator) condition(field string, c *securityv1beta1.Condition, custom bool) {
	if c == nil {
		v.add(field, "must not be null")
		return
	}
	key := c.GetKey()
	if key == "" {
		v.add(field+".key", "must not be empty")
		return
	}
	if len(c.Values) == 0 && len(c.NotValues) == 0 {
		v.add(field, "at least one of `values` or `notValues` must be set for key %s", key)
		return
	}
	check, ok := conditionKeys[key]
	switch {
	case ok:
	case strings.HasPrefix(key, keyHeaders), strings.HasPrefix(key, keyClaims), strings.HasPrefix(key, keyExperimental):
		if _, err := bracketNames(key); err != nil {
			v.add(field+".key", "%v", err)
			return
		}
		check = (*validator).nonEmpty
	case key == "destination.namespace":
		v.add(field+".key", "attribute %s is replaced by metadata.namespace", key)
		return
	case strings.HasPrefix(key, "destination.labels"):
		v.add(field+".key", "attribute %s is replaced by the workload selector", key)
		return
	case key == "destination.name" || key == "destination.user":
		v.add(field+".key", "deprecated attribute %s: only supported in v1alpha1", key)
		return
	default:
		v.add(field+".key", "unknown attribute: %s", key)
		return
	}
	check(v, field+".values", c.Values)
	check(v, field+".notValues", c.NotValues)
	if custom && (strings.HasPrefix(key, "source.") && key != "source.ip" || strings.HasPrefix(key, "request.auth.")) {
		v.add(field+".key", "%s is not supported with the CUSTOM action", key)
	}
}

// bracketNames splits "prefix[a][b]" into [a b]; the prefix must be followed by at least one [name].
func bracketNames(key string) ([]string, error) {
	open := strings.IndexByte(key, '[')
	if open <= 0 || !strings.HasSuffix(key, "]") || open >= len(key)-2 {
		return nil, fmt.Errorf("bad key %q: should have the form a[b]", key)
	}
	inner := key[open+1 : len(key)-1]
	if strings.HasPrefix(key, keyClaims+"[") {
		names := strings.Split(inner, "][")
		for _, n := range names {
			if n == "" || strings.ContainsAny(n, "[]") {
				return nil, fmt.Errorf("bad key %q: should have the form request.auth.claims[a][b]", key)
			}
		}
		return names, nil
	}
	if strings.ContainsAny(inner, "[]") {
		return nil, fmt.Errorf("bad key %q: should have the form a[b]", key)
	}
	return []string{inner}, nil
}

func (v *validator) nonEmpty(field string, values []string) {
	for i, s := range values {
		if s == "" {
			v.add(fmt.Sprintf("%s[%d]", field, i), "empty value not allowed")
		}
	}
}

func (v *validator) serviceAccounts(field string, values []string) {
	if len(values) > 16 {
		v.add(field, "may not have more than 16 values")
	}
	for i, s := range values {
		f := fmt.Sprintf("%s[%d]", field, i)
		ns, sa, hasNS := strings.Cut(s, "/")
		switch {
		case s == "":
			v.add(f, "empty value not allowed")
		case strings.Contains(s, "*"):
			v.add(f, "wildcard not allowed in %q", s)
		case strings.Count(s, "/") > 1, hasNS && (ns == "" || sa == ""):
			v.add(f, "expected 'serviceAccount' or 'namespace/serviceAccount', found %q", s)
		case len(s) > 320:
			v.add(f, "value cannot exceed 320 characters")
		}
	}
}

func (v *validator) trustDomains(field string, values []string) {
	for i, s := range values {
		f := fmt.Sprintf("%s[%d]", field, i)
		switch n := strings.Count(s, "*"); {
		case s == "":
			v.add(f, "empty value not allowed")
		case n > 1:
			v.add(f, "at most one wildcard is allowed, found %q", s)
		case n == 1 && s != "*" && !strings.HasPrefix(s, "*") && !strings.HasSuffix(s, "*"):
			v.add(f, "wildcard is only allowed at the start or end, found %q", s)
		case strings.Contains(s, "/"):
			v.add(f, "trust domain must not contain '/', found %q", s)
		}
	}
}

func (v *validator) ips(field string, values []string) {
	for i, s := range values {
		if _, err := parseCIDR(s); err != nil {
			v.add(fmt.Sprintf("%s[%d]", field, i), "%v", err)
		}
	}
}

// parseCIDR accepts an IP (a /32 or /128) or a CIDR.
func parseCIDR(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, fmt.Errorf("empty value not allowed")
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("bad CIDR range %q", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("bad IP address %q", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func (v *validator) ports(field string, values []string) {
	for i, s := range values {
		if _, err := parsePort(s); err != nil {
			v.add(fmt.Sprintf("%s[%d]", field, i), "%v", err)
		}
	}
}

func parsePort(s string) (uint16, error) {
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("bad port %q: must be a number from 0 to 65535", s)
	}
	return uint16(p), nil
}

var pathLiteral = regexp.MustCompile(`^[a-zA-Z0-9-._~%!$&'()+,;:@=]+$`)

func (v *validator) paths(field string, values []string) {
	for i, s := range values {
		f := fmt.Sprintf("%s[%d]", field, i)
		if s == "" {
			v.add(f, "empty value not allowed")
			continue
		}
		if err := checkPathTemplate(s); err != nil {
			v.add(f, "%v", err)
		}
	}
}

// checkPathTemplate applies Istio's rules for `{*}` / `{**}` templates.
func checkPathTemplate(path string) error {
	template := isTemplate(path)
	seenAny := false
	for _, seg := range strings.Split(strings.Trim(path, "/"), "/") {
		switch {
		case (seg == "{*}" || seg == "{**}") && seenAny:
			return fmt.Errorf("invalid path template %q: {**} must be the last operator", path)
		case seg == "{*}":
			continue
		case seg == "{**}":
			seenAny = true
			continue
		case strings.ContainsAny(seg, "{}"):
			return fmt.Errorf("invalid path template %q: '{' or '}' outside a whole-segment {*} or {**}", path)
		case template && !pathLiteral.MatchString(seg):
			return fmt.Errorf("invalid path template %q: segment %q is not a valid literal", path, seg)
		}
	}
	return nil
}

func isTemplate(path string) bool {
	return strings.Contains(path, "{*}") || strings.Contains(path, "{**}")
}

// ValidatePeerAuthentication reports every problem Istio's validation would reject the policy for.
func ValidatePeerAuthentication(p *PeerAuthentication) []error {
	v := &validator{origin: p.Origin, kind: "PeerAuthentication", object: p.Key()}
	s := p.Spec
	v.selector("spec.selector", s.GetSelector())
	if len(s.GetPortLevelMtls()) > 0 && len(s.GetSelector().GetMatchLabels()) == 0 {
		v.add("spec.portLevelMtls", "port-level mTLS requires a workload selector")
	}
	for port := range s.GetPortLevelMtls() {
		if port == 0 || port > 65535 {
			v.add(fmt.Sprintf("spec.portLevelMtls[%d]", port), "port must be from 1 to 65535")
		}
	}
	return v.errs
}
