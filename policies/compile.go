package policies

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
)

// Options configure how a set of policies is compiled.
type Options struct {
	RootNamespace string // the mesh-wide namespace; "istio-system" when empty
}

// DefaultRootNamespace is Istio's default root namespace.
const DefaultRootNamespace = "istio-system"

// Engine is an immutable, compiled set of AuthorizationPolicies. It is safe for concurrent use;
// to change policies, compile a new Engine and swap it in.
type Engine struct {
	root      string
	byNS      map[string]*bucket    // workload targets: policies without targetRefs, by namespace
	byGateway map[objectRef]*bucket // waypoint targets: a Gateway (Kind empty)
	byClass   map[string]*bucket    // GatewayClass name (root-namespace policies)
	byService map[objectRef]*bucket // a Service or ServiceEntry
	policies  []*cpolicy
}

// bucket holds the compiled rules of the policies that share one attachment point. Policies
// without a selector are in all; those with one are indexed by their first label, so that a
// request only visits the policies whose selector can match.
type bucket struct {
	all     ruleSet
	selKeys []string                       // the label names bySel is indexed by
	bySel   map[string]map[string]*ruleSet // label name → value → policies whose first label it is
}

// ruleSet is a list of rules per action, each in Envoy's order.
type ruleSet struct {
	custom, audit, deny, allow []*entry
	allowPolicies              []*cpolicy // every ALLOW policy, rules or not: if one applies, ALLOW is required
	dryDeny, dryAllow          []*entry
	dryPolicies                []*cpolicy // dry-run ALLOW and DENY policies
	dryAllowPolicies           []*cpolicy
}

// cpolicy is the per-policy part of a compiled rule.
type cpolicy struct {
	src      *AuthorizationPolicy
	key      string  // ns/name
	selector []label // sorted by name
	hasSel   bool
	action   Action
	provider string
	dryRun   bool
}

type label struct{ name, value string }

func (p *cpolicy) selects(labels map[string]string) bool {
	for _, l := range p.selector {
		if got, ok := labels[l.name]; !ok || got != l.value {
			return false
		}
	}
	return true
}

// entry is one compiled rule; entries of a bucket are in Envoy's order (by name).
type entry struct {
	pol     *cpolicy
	idx     int
	name    string // ns[NS]-policy[NAME]-rule[IDX]
	details string // rbac_access_denied_matched_policy[<name>]
	rule    crule
}

type crule struct {
	from []csource
	to   []coperation
	when []ccondition
}

type csource struct {
	principals, notPrincipals []strMatch
	reqPrinc, notReqPrinc     []reqPrincipalMatch
	namespaces, notNamespaces []nsMatch
	sas, notSAs               []saMatch
	tds, notTDs               []tdMatch
	ips, notIPs               []netip.Prefix
	remoteIPs, notRemoteIPs   []netip.Prefix
}

type coperation struct {
	hosts, notHosts     []strMatch
	ports, notPorts     []uint16
	methods, notMethods []strMatch
	paths, notPaths     []pathMatch
}

// condKind says which request attribute a `when` condition reads.
type condKind uint8

const (
	condSourceIP condKind = iota
	condRemoteIP
	condDestIP
	condSourceNS
	condSourcePrincipal
	condSourceSA
	condSourceTD
	condDestPort
	condSNI
	condHeader
	condReqPrincipal
	condClaim // request.auth.claims[...], and request.auth.audiences / presenter (claims aud / azp)
	condMetadata
)

type ccondition struct {
	kind        condKind
	name        string   // header name (ASCII lower case) or metadata key
	claim       []string // claim path
	values, not cvalues
}

// cvalues are the compiled values of one side of a condition; only the slice for its kind is set.
type cvalues struct {
	n        int
	strs     []strMatch
	ns       []nsMatch
	tds      []tdMatch
	sas      []saMatch
	prefixes []netip.Prefix
	ports    []uint16
	reqPrinc []reqPrincipalMatch
}

// Compile builds an Engine from validated policies. Policies that failed validation must not
// be passed (Load leaves them out). Rules are ordered as Envoy orders RBAC policies.
func Compile(aps []*AuthorizationPolicy, opts Options) *Engine {
	e := &Engine{
		root:      cmp.Or(opts.RootNamespace, DefaultRootNamespace),
		byNS:      map[string]*bucket{},
		byGateway: map[objectRef]*bucket{},
		byClass:   map[string]*bucket{},
		byService: map[objectRef]*bucket{},
	}
	for _, ap := range aps {
		p := compilePolicy(ap)
		e.policies = append(e.policies, p)
		for _, b := range e.bucketsFor(ap) {
			b.add(p)
		}
	}
	for _, m := range []map[string]*bucket{e.byNS, e.byClass} {
		for _, b := range m {
			b.sort()
		}
	}
	for _, m := range []map[objectRef]*bucket{e.byGateway, e.byService} {
		for _, b := range m {
			b.sort()
		}
	}
	return e
}

// RootNamespace is the namespace whose policies apply mesh-wide.
func (e *Engine) RootNamespace() string { return e.root }

// bucketsFor returns the attachment points of a policy, creating them as needed.
func (e *Engine) bucketsFor(ap *AuthorizationPolicy) []*bucket {
	get := func(m map[string]*bucket, k string) *bucket { return getBucket(m, k) }
	refs := targetRefs(ap.Spec)
	if len(refs) == 0 {
		return []*bucket{get(e.byNS, ap.Namespace)}
	}
	var out []*bucket
	for _, r := range refs {
		switch r.GetKind() {
		case "Gateway":
			out = append(out, getBucket(e.byGateway, objectRef{Namespace: ap.Namespace, Name: r.GetName()}))
		case "GatewayClass":
			if ap.Namespace == e.root {
				out = append(out, get(e.byClass, r.GetName()))
			}
		case "Service", "ServiceEntry":
			out = append(out, getBucket(e.byService, objectRef{Kind: r.GetKind(), Namespace: ap.Namespace, Name: r.GetName()}))
		}
	}
	return slices.Compact(out)
}

func compilePolicy(ap *AuthorizationPolicy) *cpolicy {
	s := ap.Spec
	p := &cpolicy{
		src:      ap,
		key:      ap.Key(),
		action:   Action(s.GetAction().String()),
		provider: s.GetProvider().GetName(),
		dryRun:   ap.DryRun(),
	}
	if sel := s.GetSelector(); sel != nil {
		p.hasSel = true
		for _, k := range slices.Sorted(maps.Keys(sel.GetMatchLabels())) {
			p.selector = append(p.selector, label{k, sel.GetMatchLabels()[k]})
		}
	}
	return p
}

func (b *bucket) add(p *cpolicy) {
	if len(p.selector) == 0 {
		b.all.add(p)
		return
	}
	first := p.selector[0]
	if b.bySel == nil {
		b.bySel = map[string]map[string]*ruleSet{}
	}
	if b.bySel[first.name] == nil {
		b.bySel[first.name] = map[string]*ruleSet{}
		b.selKeys = append(b.selKeys, first.name)
		slices.Sort(b.selKeys)
	}
	rs := b.bySel[first.name][first.value]
	if rs == nil {
		rs = &ruleSet{}
		b.bySel[first.name][first.value] = rs
	}
	rs.add(p)
}

func (b *bucket) sort() {
	b.all.sort()
	for _, byValue := range b.bySel {
		for _, rs := range byValue {
			rs.sort()
		}
	}
}

func (b *ruleSet) add(p *cpolicy) {
	if p.dryRun {
		if p.action != ActionAllow && p.action != ActionDeny {
			return
		}
		b.dryPolicies = append(b.dryPolicies, p)
		if p.action == ActionAllow {
			b.dryAllowPolicies = append(b.dryAllowPolicies, p)
		}
	} else if p.action == ActionAllow {
		b.allowPolicies = append(b.allowPolicies, p)
	}
	for i, r := range p.src.Spec.GetRules() {
		name := fmt.Sprintf("ns[%s]-policy[%s]-rule[%d]", p.src.Namespace, p.src.Name, i)
		en := &entry{pol: p, idx: i, name: name, details: "rbac_access_denied_matched_policy[" + name + "]", rule: compileRule(r, p.src.Namespace)}
		switch {
		case p.dryRun && p.action == ActionDeny:
			b.dryDeny = append(b.dryDeny, en)
		case p.dryRun:
			b.dryAllow = append(b.dryAllow, en)
		case p.action == ActionCustom:
			b.custom = append(b.custom, en)
		case p.action == ActionAudit:
			b.audit = append(b.audit, en)
		case p.action == ActionDeny:
			b.deny = append(b.deny, en)
		default:
			b.allow = append(b.allow, en)
		}
	}
}

func (b *ruleSet) sort() {
	byName := func(a, b *entry) int { return strings.Compare(a.name, b.name) }
	for _, es := range [][]*entry{b.custom, b.audit, b.deny, b.allow, b.dryDeny, b.dryAllow} {
		slices.SortFunc(es, byName)
	}
}

func compileRule(r *securityv1beta1.Rule, ns string) crule {
	var c crule
	for _, f := range r.GetFrom() {
		s := f.GetSource()
		c.from = append(c.from, csource{
			principals:    principalMatches(s.Principals),
			notPrincipals: principalMatches(s.NotPrincipals),
			reqPrinc:      reqPrincipalMatches(s.RequestPrincipals),
			notReqPrinc:   reqPrincipalMatches(s.NotRequestPrincipals),
			namespaces:    nsMatches(s.Namespaces),
			notNamespaces: nsMatches(s.NotNamespaces),
			sas:           saMatches(s.ServiceAccounts, ns),
			notSAs:        saMatches(s.NotServiceAccounts, ns),
			tds:           tdMatches(s.TrustDomains),
			notTDs:        tdMatches(s.NotTrustDomains),
			ips:           prefixes(s.IpBlocks),
			notIPs:        prefixes(s.NotIpBlocks),
			remoteIPs:     prefixes(s.RemoteIpBlocks),
			notRemoteIPs:  prefixes(s.NotRemoteIpBlocks),
		})
	}
	for _, t := range r.GetTo() {
		o := t.GetOperation()
		c.to = append(c.to, coperation{
			hosts:      headerMatches(o.Hosts, true),
			notHosts:   headerMatches(o.NotHosts, true),
			ports:      ports(o.Ports),
			notPorts:   ports(o.NotPorts),
			methods:    headerMatches(o.Methods, false),
			notMethods: headerMatches(o.NotMethods, false),
			paths:      pathMatches(o.Paths),
			notPaths:   pathMatches(o.NotPaths),
		})
	}
	for _, w := range r.GetWhen() {
		c.when = append(c.when, compileCondition(w, ns))
	}
	return c
}

func compileCondition(w *securityv1beta1.Condition, ns string) ccondition {
	key := w.GetKey()
	c := ccondition{}
	switch key {
	case "source.ip":
		c.kind = condSourceIP
	case "remote.ip":
		c.kind = condRemoteIP
	case "destination.ip":
		c.kind = condDestIP
	case "source.namespace":
		c.kind = condSourceNS
	case "source.principal":
		c.kind = condSourcePrincipal
	case "source.serviceAccount":
		c.kind = condSourceSA
	case "source.trustDomain":
		c.kind = condSourceTD
	case "destination.port":
		c.kind = condDestPort
	case "connection.sni":
		c.kind = condSNI
	case "request.auth.principal":
		c.kind = condReqPrincipal
	case "request.auth.audiences": // istiod matches the JWT claim aud, a string or a list
		c.kind, c.claim = condClaim, []string{"aud"}
	case "request.auth.presenter": // the claim azp, likewise
		c.kind, c.claim = condClaim, []string{"azp"}
	default:
		names, _ := bracketNames(key)
		switch {
		case strings.HasPrefix(key, keyHeaders):
			c.kind, c.name = condHeader, toLowerASCII(names[0])
		case strings.HasPrefix(key, keyClaims):
			c.kind, c.claim = condClaim, names
		default:
			c.kind, c.name = condMetadata, key
		}
	}
	c.values = compileValues(c.kind, w.GetValues(), ns)
	c.not = compileValues(c.kind, w.GetNotValues(), ns)
	return c
}

func compileValues(k condKind, values []string, ns string) cvalues {
	v := cvalues{n: len(values)}
	switch k {
	case condSourceIP, condRemoteIP, condDestIP:
		v.prefixes = prefixes(values)
	case condSourceNS:
		v.ns = nsMatches(values)
	case condSourceTD:
		v.tds = tdMatches(values)
	case condSourcePrincipal:
		v.strs = principalMatches(values)
	case condHeader:
		v.strs = headerMatches(values, false)
	case condSourceSA:
		v.sas = saMatches(values, ns)
	case condDestPort:
		v.ports = ports(values)
	case condReqPrincipal:
		v.reqPrinc = reqPrincipalMatches(values)
	default:
		v.strs = strMatches(values, false)
	}
	return v
}

// objectRef keys the buckets of Gateways, Services and ServiceEntries: a struct, so that a
// request's lookup builds no string.
type objectRef struct{ Kind, Namespace, Name string }

func getBucket[K comparable](m map[K]*bucket, k K) *bucket {
	b := m[k]
	if b == nil {
		b = &bucket{}
		m[k] = b
	}
	return b
}

// targetRefs is targetRefs plus the deprecated targetRef.
func targetRefs(s *securityv1beta1.AuthorizationPolicy) []*typev1beta1.PolicyTargetReference {
	refs := s.GetTargetRefs()
	if r := s.GetTargetRef(); r != nil {
		refs = append(slices.Clip(refs), r)
	}
	return refs
}
