package policies

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"google.golang.org/protobuf/types/known/emptypb"
	securityv1beta1 "istio.io/api/security/v1beta1"
	"istio.io/istio/pkg/workloadapi/security"
)

// Names istiod gives the policies it derives from PeerAuthentication.
const (
	StaticStrictPolicyName   = "istio_converted_static_strict"
	convertedPeerAuthnPrefix = "converted_peer_authentication_"
	l7AllowBoilerplate       = "Within an ALLOW policy, rules matching HTTP attributes are omitted. This will be more restrictive than requested."
	l7DenyBoilerplate        = "DENY policy with HTTP attributes is enforced without the HTTP rules. This will be more restrictive than requested."
	l7WarningFormat          = "ztunnel does not support HTTP attributes (found: %s). In ambient mode you must use a waypoint proxy to enforce HTTP rules. %s"
	unsupportedActionFormat  = "ztunnel does not support the %s action"
	dryRunUnsupportedFormat  = "found policy %q using dry-run annotation, but support for ambient dry-run authorizationPolicies isn't enabled"
)

// Ztunnel is the L4 projection of a policy set: the istio.security.Authorization resources
// istiod would send to ztunnels, and which of them each workload references.
type Ztunnel struct {
	root      string
	auths     []*security.Authorization
	selectors map[string]map[string]string // "ns/name" of WORKLOAD_SELECTOR authorizations → selector
	peer      *PeerAuthn
	strict    *security.Authorization // the static STRICT policy, when some PeerAuthentication needs it
	peerAuthz map[string]*security.Authorization
	Warnings  []error // what ztunnel cannot enforce, in Istio's words
}

// ToZtunnel converts AuthorizationPolicies and PeerAuthentications as istiod does for ambient:
// targetRefs policies are not sent; AUDIT, CUSTOM (and dry-run) policies are not supported; in
// an ALLOW policy a rule using HTTP attributes is dropped, in a DENY policy the HTTP attributes
// are removed; PeerAuthentication STRICT becomes a reference to a static DENY of plaintext.
func ToZtunnel(objs Objects, opts Options) *Ztunnel {
	z := &Ztunnel{root: cmp.Or(opts.RootNamespace, DefaultRootNamespace), selectors: map[string]map[string]string{}, peerAuthz: map[string]*security.Authorization{}}
	for _, ap := range objs.AuthorizationPolicies {
		a, warn := convertAuthorizationPolicy(z.root, ap)
		if warn != "" {
			z.Warnings = append(z.Warnings, &Warning{Origin: ap.Origin, Kind: "AuthorizationPolicy", Object: ap.Key(), Reason: warn})
		}
		if a == nil {
			continue
		}
		z.auths = append(z.auths, a)
		if a.Scope == security.Scope_WORKLOAD_SELECTOR {
			z.selectors[ap.Key()] = ap.Spec.GetSelector().GetMatchLabels()
		}
	}
	z.peer = CompilePeerAuthentications(objs.PeerAuthentications, opts)
	for _, pa := range objs.PeerAuthentications {
		if modeOf(pa.Spec.GetMtls()) == MTLSStrict || slices.ContainsFunc(slices.Collect(maps.Values(pa.Spec.GetPortLevelMtls())), func(m *securityv1beta1.PeerAuthentication_MutualTLS) bool { return modeOf(m) == MTLSStrict }) {
			z.strict = staticStrict(z.root)
		}
		_, nsPol, _ := z.peer.levels(pa.Namespace, nil)
		if a := convertPeerAuthentication(z.root, pa, nsPol, z.peer.mesh); a != nil {
			z.peerAuthz[pa.Namespace+"/"+a.Name] = a
		}
	}
	if z.strict != nil {
		z.auths = append(z.auths, z.strict)
	}
	for _, k := range slices.Sorted(maps.Keys(z.peerAuthz)) {
		z.auths = append(z.auths, z.peerAuthz[k])
	}
	slices.SortFunc(z.auths, func(a, b *security.Authorization) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return z
}

// Authorizations are the resources to send, ordered by namespace and name. Do not modify them.
func (z *Ztunnel) Authorizations() []*security.Authorization { return z.auths }

// WorkloadPolicies lists the "ns/name" of the selector-scoped authorizations that apply to a
// workload (Workload.authorization_policies): selector policies of its namespace and of the root
// namespace, and those derived from PeerAuthentication. Namespace and mesh-wide ones apply by scope.
func (z *Ztunnel) WorkloadPolicies(ns string, labels map[string]string) []string {
	var out []string
	for key, sel := range z.selectors {
		keyNS, _, _ := strings.Cut(key, "/")
		if (keyNS == ns || keyNS == z.root) && selects(sel, labels) {
			out = append(out, key)
		}
	}
	out = append(out, z.peerAuthnKeys(ns, labels)...)
	slices.Sort(out)
	return slices.Compact(out)
}

// peerAuthnKeys follows istiod's convertedSelectorPeerAuthentications.
func (z *Ztunnel) peerAuthnKeys(ns string, labels map[string]string) []string {
	mesh, nsPol, wl := z.peer.levels(ns, labels)
	strict := modeOf(mesh.GetSpec().GetMtls()) == MTLSStrict
	if m := modeOf(nsPol.GetSpec().GetMtls()); m != "" {
		strict = m == MTLSStrict
	}
	portKey := ""
	if wl != nil {
		spec := wl.Spec
		switch modeOf(spec.GetMtls()) {
		case MTLSStrict:
			strict = true
		case MTLSPermissive, MTLSDisable:
			strict = false
		}
		portModes := slices.Collect(maps.Values(spec.GetPortLevelMtls()))
		has := func(ms ...MTLSMode) bool {
			return slices.ContainsFunc(portModes, func(m *securityv1beta1.PeerAuthentication_MutualTLS) bool { return slices.Contains(ms, modeOf(m)) })
		}
		key := wl.Namespace + "/" + convertedPeerAuthnPrefix + wl.Name
		if len(portModes) > 0 {
			switch modeOf(spec.GetMtls()) {
			case MTLSStrict:
				if has(MTLSPermissive, MTLSDisable) {
					portKey, strict = key, false
				}
			case MTLSPermissive, MTLSDisable:
				if has(MTLSStrict) {
					portKey = key
				}
			default:
				if strict {
					if has(MTLSPermissive) {
						portKey, strict = key, false
					}
				} else if has(MTLSStrict) {
					portKey = key
				}
			}
		}
	}
	var keys []string
	if strict && z.strict != nil {
		keys = append(keys, z.root+"/"+StaticStrictPolicyName)
	}
	if portKey != "" && z.peerAuthz[portKey] != nil {
		keys = append(keys, portKey)
	}
	return keys
}

func staticStrict(root string) *security.Authorization {
	return &security.Authorization{
		Name: StaticStrictPolicyName, Namespace: root, Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_DENY,
		Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{NotPrincipals: []*security.StringMatch{presence()}}}}}}},
	}
}

func presence() *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}
}

// convertPeerAuthentication turns a workload PeerAuthentication with port-level mTLS into a
// DENY policy, as istiod's convertPeerAuthentication does; other PeerAuthentications give nil.
func convertPeerAuthentication(root string, pa, nsPol, mesh *PeerAuthentication) *security.Authorization {
	spec := pa.Spec
	if pa.Namespace == root || len(spec.GetSelector().GetMatchLabels()) == 0 || len(spec.GetPortLevelMtls()) == 0 {
		return nil
	}
	mode := modeOf(spec.GetMtls())
	nsMode, meshMode := modeOf(nsPol.GetSpec().GetMtls()), modeOf(mesh.GetSpec().GetMtls())
	var rules []*security.Rules
	var groups []*security.Group
	notPlaintext := func(ports ...uint32) *security.Match {
		return &security.Match{NotPrincipals: []*security.StringMatch{presence()}, DestinationPorts: ports}
	}
	if mode == MTLSStrict {
		rules = append(rules, &security.Rules{Matches: []*security.Match{notPlaintext()}})
	}
	foundNonStrict := false
	for _, port := range slices.Sorted(maps.Keys(spec.GetPortLevelMtls())) {
		switch portMode := modeOf(spec.GetPortLevelMtls()[port]); portMode {
		case MTLSStrict:
			if mode == MTLSStrict || mode == "" && (nsMode == MTLSStrict || (nsMode == "" && meshMode == MTLSStrict)) {
				continue // the parent is already STRICT
			}
			groups = append(groups, &security.Group{Rules: []*security.Rules{{Matches: []*security.Match{notPlaintext(port)}}}})
		case MTLSPermissive, MTLSDisable:
			if mode == MTLSPermissive || mode == MTLSDisable {
				continue
			}
			if mode == "" && (nsPol != nil && nsMode != MTLSStrict || nsPol == nil && mesh != nil && meshMode != MTLSStrict || nsPol == nil && mesh == nil) {
				continue
			}
			foundNonStrict = true
			rules = append(rules, &security.Rules{Matches: []*security.Match{{NotDestinationPorts: []uint32{port}}}})
		}
	}
	if mode == MTLSStrict && !foundNonStrict {
		return nil
	}
	if len(rules) == 0 && len(groups) == 0 {
		return nil
	}
	mergeStrict := mesh != nil && meshMode == MTLSStrict && (nsPol == nil || nsMode == "" || nsMode == MTLSStrict) || nsPol != nil && nsMode == MTLSStrict
	if mergeStrict && foundNonStrict {
		rules = append(rules, &security.Rules{Matches: []*security.Match{notPlaintext()}})
	}
	if len(rules) > 0 {
		groups = append(groups, &security.Group{Rules: rules})
	}
	return &security.Authorization{
		Name: convertedPeerAuthnPrefix + pa.Name, Namespace: pa.Namespace,
		Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_DENY, Groups: groups,
	}
}

// convertAuthorizationPolicy is istiod's convertAuthorizationPolicy; the warning is its status message.
func convertAuthorizationPolicy(root string, ap *AuthorizationPolicy) (*security.Authorization, string) {
	spec := ap.Spec
	if ap.DryRun() {
		return nil, fmt.Sprintf(dryRunUnsupportedFormat, ap.Key())
	}
	if len(targetRefs(spec)) > 0 {
		return nil, "" // enforced by waypoints only
	}
	scope := security.Scope_WORKLOAD_SELECTOR
	if spec.GetSelector() == nil {
		scope = security.Scope_NAMESPACE
		if ap.Namespace == root {
			scope = security.Scope_GLOBAL
		}
	}
	action, boilerplate := security.Action_ALLOW, l7AllowBoilerplate
	switch spec.GetAction() {
	case securityv1beta1.AuthorizationPolicy_ALLOW:
	case securityv1beta1.AuthorizationPolicy_DENY:
		action, boilerplate = security.Action_DENY, l7DenyBoilerplate
	default:
		return nil, fmt.Sprintf(unsupportedActionFormat, spec.GetAction())
	}
	out := &security.Authorization{Name: ap.Name, Namespace: ap.Namespace, Scope: scope, Action: action}
	var l7 []string
	for _, r := range spec.GetRules() {
		rules, found := convertRule(action, r, ap.Namespace)
		if rules != nil {
			out.Groups = append(out.Groups, &security.Group{Rules: rules})
		}
		l7 = append(l7, found...)
	}
	if len(l7) == 0 {
		return out, ""
	}
	slices.Sort(l7)
	return out, fmt.Sprintf(l7WarningFormat, strings.Join(slices.Compact(l7), ", "), boilerplate)
}

// l4Conditions are the `when` keys ztunnel enforces.
var l4Conditions = map[string]bool{"source.ip": true, "source.namespace": true, "source.principal": true, "destination.ip": true, "destination.port": true}

func convertRule(action security.Action, r *securityv1beta1.Rule, ns string) ([]*security.Rules, []string) {
	var l7 []string
	note := func(name string, n int) {
		if n > 0 {
			l7 = append(l7, name)
		}
	}
	var to, from []*security.Match
	for _, t := range r.GetTo() {
		op := t.GetOperation()
		note("hosts", len(op.Hosts))
		note("notHosts", len(op.NotHosts))
		note("methods", len(op.Methods))
		note("notMethods", len(op.NotMethods))
		note("paths", len(op.Paths))
		note("notPaths", len(op.NotPaths))
		to = append(to, &security.Match{DestinationPorts: l4Ports(op.Ports), NotDestinationPorts: l4Ports(op.NotPorts)})
	}
	for _, f := range r.GetFrom() {
		s := f.GetSource()
		note("remoteIpBlocks", len(s.RemoteIpBlocks))
		note("notRemoteIpBlocks", len(s.NotRemoteIpBlocks))
		note("requestPrincipals", len(s.RequestPrincipals))
		note("notRequestPrincipals", len(s.NotRequestPrincipals))
		from = append(from, &security.Match{
			SourceIps: l4Addresses(s.IpBlocks), NotSourceIps: l4Addresses(s.NotIpBlocks),
			Namespaces: l4Strings(s.Namespaces), NotNamespaces: l4Strings(s.NotNamespaces),
			ServiceAccounts: l4ServiceAccounts(s.ServiceAccounts, ns), NotServiceAccounts: l4ServiceAccounts(s.NotServiceAccounts, ns),
			Principals: l4Strings(s.Principals), NotPrincipals: l4Strings(s.NotPrincipals),
		})
	}
	rules := []*security.Rules{} // non-nil: an empty rule is a group that matches everything
	if len(to) > 0 {
		rules = append(rules, &security.Rules{Matches: to})
	}
	if len(from) > 0 {
		rules = append(rules, &security.Rules{Matches: from})
	}
	for _, w := range r.GetWhen() {
		if !l4Conditions[w.GetKey()] {
			l7 = append(l7, w.GetKey())
		}
		m := &security.Match{}
		pos, neg := w.GetValues(), w.GetNotValues()
		switch w.GetKey() {
		case "source.namespace":
			m.Namespaces, m.NotNamespaces = l4Strings(pos), l4Strings(neg)
		case "source.principal":
			m.Principals, m.NotPrincipals = l4Strings(pos), l4Strings(neg)
		case "source.ip":
			m.SourceIps, m.NotSourceIps = l4Addresses(pos), l4Addresses(neg)
		case "destination.ip":
			m.DestinationIps, m.NotDestinationIps = l4Addresses(pos), l4Addresses(neg)
		case "destination.port":
			m.DestinationPorts, m.NotDestinationPorts = l4Ports(pos), l4Ports(neg)
		}
		rules = append(rules, &security.Rules{Matches: []*security.Match{m}})
	}
	if action == security.Action_ALLOW && len(l7) > 0 {
		rules = nil
	}
	return rules, l7
}

func l4Strings(values []string) []*security.StringMatch {
	var out []*security.StringMatch
	for _, v := range values {
		m := &security.StringMatch{}
		switch {
		case v == "*":
			m = presence()
		case strings.HasPrefix(v, "*"):
			m.MatchType = &security.StringMatch_Suffix{Suffix: v[1:]}
		case strings.HasSuffix(v, "*"):
			m.MatchType = &security.StringMatch_Prefix{Prefix: v[:len(v)-1]}
		default:
			m.MatchType = &security.StringMatch_Exact{Exact: v}
		}
		out = append(out, m)
	}
	return out
}

func l4ServiceAccounts(values []string, ns string) []*security.ServiceAccountMatch {
	var out []*security.ServiceAccountMatch
	for _, m := range saMatches(values, ns) {
		out = append(out, &security.ServiceAccountMatch{Namespace: m.ns, ServiceAccount: m.sa})
	}
	return out
}

func l4Ports(values []string) []uint32 {
	var out []uint32
	for _, p := range ports(values) {
		out = append(out, uint32(p))
	}
	return out
}

func l4Addresses(values []string) []*security.Address {
	var out []*security.Address
	for _, p := range prefixes(values) {
		out = append(out, &security.Address{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())})
	}
	return out
}

// AddressPrefix converts a workload API address back to a prefix.
func AddressPrefix(a *security.Address) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(a.GetAddress())
	if !ok {
		return netip.Prefix{}, false
	}
	p, err := ip.Prefix(int(a.GetLength()))
	return p, err == nil
}
