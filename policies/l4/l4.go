// Package l4 evaluates istio.security.Authorization resources for a connection, as ztunnel does.
package l4

import (
	"net/netip"
	"strings"

	"github.com/goambient/goambient/policies"
	"istio.io/istio/pkg/workloadapi/security"
)

// Conn is the L4 view of a connection arriving at a workload.
type Conn struct {
	SrcIdentity string // "spiffe://td/ns/x/sa/y"; empty for plaintext
	SrcIP       netip.Addr
	DstIP       netip.Addr
	DstPort     uint16
}

// Workload is the destination of a connection: its namespace and the selector-scoped
// policies it references (Workload.authorization_policies).
type Workload struct {
	Namespace string
	Policies  []string // "ns/name"
}

// Result is ztunnel's verdict on a connection.
type Result struct {
	Allowed bool
	Policy  string // "ns/name" of the matching DENY, or of the matching ALLOW
	Reason  string // Istio's wording, e.g. "explicitly denied by: ns/name"
}

// Engine is an immutable compiled set of authorizations; swap a new one in on change.
type Engine struct {
	global []*auth
	byNS   map[string][]*auth
	byKey  map[string]*auth
}

type auth struct {
	key    string
	denied string // "explicitly denied by: <key>", built once
	allows string // "allowed by: <key>"
	scope  security.Scope
	deny   bool
	dryRun bool
	groups [][][]match // group → clause (AND) → matches (OR)
}

type match struct {
	namespaces, notNamespaces []strMatch
	sas, notSAs               []saMatch
	principals, notPrincipals []strMatch
	srcIPs, notSrcIPs         []netip.Prefix
	dstIPs, notDstIPs         []netip.Prefix
	ports, notPorts           []uint16
}

type strMatch struct {
	kind int // 0 exact, 1 prefix, 2 suffix, 3 presence
	s    string
}

type saMatch struct{ ns, sa string }

// Compile builds an Engine. Resources that cannot be understood (a bad address) lose only that
// value, as ztunnel does.
func Compile(auths []*security.Authorization) *Engine {
	e := &Engine{byNS: map[string][]*auth{}, byKey: map[string]*auth{}}
	for _, a := range auths {
		c := compile(a)
		e.byKey[c.key] = c
		switch a.GetScope() {
		case security.Scope_GLOBAL:
			e.global = append(e.global, c)
		case security.Scope_NAMESPACE:
			e.byNS[a.GetNamespace()] = append(e.byNS[a.GetNamespace()], c)
		}
	}
	return e
}

func compile(a *security.Authorization) *auth {
	key := a.GetNamespace() + "/" + a.GetName()
	c := &auth{key: key, denied: "explicitly denied by: " + key, allows: "allowed by: " + key, scope: a.GetScope(), deny: a.GetAction() == security.Action_DENY, dryRun: a.GetDryRun()}
	for _, g := range a.GetGroups() {
		var clauses [][]match
		for _, r := range g.GetRules() {
			var ms []match
			for _, m := range r.GetMatches() {
				ms = append(ms, match{
					namespaces: strs(m.GetNamespaces()), notNamespaces: strs(m.GetNotNamespaces()),
					sas: sas(m.GetServiceAccounts()), notSAs: sas(m.GetNotServiceAccounts()),
					principals: strs(m.GetPrincipals()), notPrincipals: strs(m.GetNotPrincipals()),
					srcIPs: addrs(m.GetSourceIps()), notSrcIPs: addrs(m.GetNotSourceIps()),
					dstIPs: addrs(m.GetDestinationIps()), notDstIPs: addrs(m.GetNotDestinationIps()),
					ports: portList(m.GetDestinationPorts()), notPorts: portList(m.GetNotDestinationPorts()),
				})
			}
			clauses = append(clauses, ms)
		}
		c.groups = append(c.groups, clauses)
	}
	return c
}

// Check decides a connection to w as ztunnel's assert_rbac does: a matching DENY denies; if
// ALLOW policies apply, one must match. Dry-run policies are not enforced.
func (e *Engine) Check(w *Workload, c *Conn) Result {
	v := view{c: c}
	v.id, v.ok = parseIdentity(c.SrcIdentity)
	hasAllow := false
	var allowed *auth
	each := func(f func(a *auth) bool) {
		for _, a := range e.global {
			if f(a) {
				return
			}
		}
		for _, a := range e.byNS[w.Namespace] {
			if f(a) {
				return
			}
		}
		for _, k := range w.Policies {
			if a := e.byKey[k]; a != nil && a.scope == security.Scope_WORKLOAD_SELECTOR && f(a) {
				return
			}
		}
	}
	var denied *auth
	each(func(a *auth) bool {
		if a.dryRun || !a.deny {
			return false
		}
		if a.matches(&v) {
			denied = a
			return true
		}
		return false
	})
	if denied != nil {
		return Result{Policy: denied.key, Reason: denied.denied}
	}
	each(func(a *auth) bool {
		if a.dryRun || a.deny {
			return false
		}
		hasAllow = true
		if a.matches(&v) {
			allowed = a
			return true
		}
		return false
	})
	switch {
	case !hasAllow:
		return Result{Allowed: true, Reason: "no allow policies"}
	case allowed != nil:
		return Result{Allowed: true, Policy: allowed.key, Reason: allowed.allows}
	}
	return Result{Reason: "allow policies exist, but none allowed"}
}

type view struct {
	c  *Conn
	id identity
	ok bool // the peer has an identity ztunnel can parse
}

// identity is a peer identity as ztunnel parses it (Identity::from_str in src/identity): the
// URI spiffe://<td>/ns/<ns>/sa/<sa> split at '/' into exactly five parts, which may be empty.
// Any other form (extra segments, no spiffe://) is no identity: ztunnel does not accept such a
// peer at all, and here principals, namespaces and serviceAccounts then match nothing (their
// not-forms everything), failing closed.
type identity struct {
	principal           string // the URI without spiffe://, what principals match
	trustDomain, ns, sa string
}

func parseIdentity(uri string) (identity, bool) {
	rest, ok := strings.CutPrefix(uri, "spiffe://")
	if !ok {
		return identity{}, false
	}
	var parts [5]string
	r := rest
	for i := range 4 {
		if parts[i], r, ok = strings.Cut(r, "/"); !ok {
			return identity{}, false
		}
	}
	if strings.IndexByte(r, '/') >= 0 || parts[1] != "ns" || parts[3] != "sa" {
		return identity{}, false
	}
	return identity{principal: rest, ns: parts[2], sa: r}, true
}

// matches: any group whose clauses all match, a clause matching when any non-empty match
// matches (a clause without matches matches; empty matches are skipped).
func (a *auth) matches(v *view) bool {
	for _, g := range a.groups {
		ok := true
		for _, clause := range g {
			if len(clause) == 0 {
				continue
			}
			hit := false
			for i := range clause {
				if !clause[i].empty() && clause[i].match(v) {
					hit = true
					break
				}
			}
			if !hit {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func (m *match) empty() bool {
	return len(m.namespaces)+len(m.notNamespaces)+len(m.sas)+len(m.notSAs)+len(m.principals)+len(m.notPrincipals)+
		len(m.srcIPs)+len(m.notSrcIPs)+len(m.dstIPs)+len(m.notDstIPs)+len(m.ports)+len(m.notPorts) == 0
}

func (m *match) match(v *view) bool {
	c := v.c
	return both(m.dstIPs, m.notDstIPs, func(p netip.Prefix) bool { return p.Contains(c.DstIP.Unmap()) }) &&
		both(m.srcIPs, m.notSrcIPs, func(p netip.Prefix) bool { return p.Contains(c.SrcIP.Unmap()) }) &&
		both(m.ports, m.notPorts, func(p uint16) bool { return p == c.DstPort }) &&
		both(m.sas, m.notSAs, func(s saMatch) bool { return v.ok && s.ns == v.id.ns && s.sa == v.id.sa }) &&
		both(m.principals, m.notPrincipals, func(s strMatch) bool { return v.ok && s.match(v.id.principal) }) &&
		both(m.namespaces, m.notNamespaces, func(s strMatch) bool { return v.ok && s.match(v.id.ns) })
}

// both: some positive value matches (or there are none) and no negative value matches.
func both[T any](pos, neg []T, f func(T) bool) bool {
	if len(pos) > 0 {
		hit := false
		for _, p := range pos {
			if f(p) {
				hit = true
				break
			}
		}
		if !hit {
			return false
		}
	}
	for _, n := range neg {
		if f(n) {
			return false
		}
	}
	return true
}

func (s strMatch) match(v string) bool {
	switch s.kind {
	case 1:
		return strings.HasPrefix(v, s.s)
	case 2:
		return strings.HasSuffix(v, s.s)
	case 3:
		return v != ""
	}
	return v == s.s
}

func strs(in []*security.StringMatch) []strMatch {
	var out []strMatch
	for _, m := range in {
		switch t := m.GetMatchType().(type) {
		case *security.StringMatch_Exact:
			out = append(out, strMatch{0, t.Exact})
		case *security.StringMatch_Prefix:
			out = append(out, strMatch{1, t.Prefix})
		case *security.StringMatch_Suffix:
			out = append(out, strMatch{2, t.Suffix})
		case *security.StringMatch_Presence:
			out = append(out, strMatch{3, ""})
		}
	}
	return out
}

func sas(in []*security.ServiceAccountMatch) []saMatch {
	var out []saMatch
	for _, m := range in {
		out = append(out, saMatch{m.GetNamespace(), m.GetServiceAccount()})
	}
	return out
}

func addrs(in []*security.Address) []netip.Prefix {
	var out []netip.Prefix
	for _, a := range in {
		if p, ok := policies.AddressPrefix(a); ok {
			out = append(out, p)
		}
	}
	return out
}

func portList(in []uint32) []uint16 {
	var out []uint16
	for _, p := range in {
		out = append(out, uint16(p))
	}
	return out
}
