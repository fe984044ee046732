package policies

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// detailsNone is Envoy's details when ALLOW policies exist and none matched.
const detailsNone = "rbac_access_denied_matched_policy[none]"

// evalCtx is what one evaluation derives from a request once.
type evalCtx struct {
	r       *Request
	path    string // normalised, without the query
	remote  netip.Addr
	nsSites nsSites // of the peer principal, for namespaces matching
}

// Decide evaluates r and returns the decision. It allocates only for AUDIT matches; use
// Evaluate with a reused Decision to avoid that too.
func (e *Engine) Decide(r *Request) Decision {
	var d Decision
	e.Evaluate(r, &d)
	return d
}

// Evaluate decides r into d, reusing d.Audit's storage.
func (e *Engine) Evaluate(r *Request, d *Decision) {
	*d = Decision{Rule: -1, Audit: d.Audit[:0]}
	c := evalCtx{r: r, remote: r.remoteIP()}
	if err := c.setPath(r.Path); err != nil {
		d.Reason, d.Details = ReasonBadRequest, err.Error()
		return
	}

	var store [8]*ruleSet
	buckets := e.ruleSets(&r.Target, store[:0])
	labels := r.Target.Labels

	if en := firstMatch(buckets, func(b *ruleSet) []*entry { return b.custom }, labels, &c); en != nil {
		d.Custom = RuleRef{Policy: en.pol.key, Rule: en.idx}
		d.CustomProvider = en.pol.provider
	}
	for _, b := range buckets {
		for _, en := range b.audit {
			if en.pol.selects(labels) && en.rule.match(&c) {
				d.Audit = append(d.Audit, RuleRef{Policy: en.pol.key, Rule: en.idx})
			}
		}
	}
	if len(buckets) > 1 && len(d.Audit) > 1 {
		sortAudit(&d.Audit)
	}

	decide(buckets, labels, &c, false, func(allowed bool, reason Reason, en *entry) {
		d.Allowed, d.Reason = allowed, reason
		if en != nil {
			d.Action, d.Policy, d.Rule = en.pol.action, en.pol.key, en.idx
			if !allowed {
				d.Details = en.details
			}
		} else if reason == ReasonNoAllowMatched {
			d.Details = detailsNone
		}
	})
	if hasDryRun(buckets, labels) {
		d.DryRun = DryRun{Applied: true, Rule: -1}
		decide(buckets, labels, &c, true, func(allowed bool, reason Reason, en *entry) {
			d.DryRun.Allowed = allowed
			if en != nil {
				d.DryRun.Policy, d.DryRun.Rule = en.pol.key, en.idx
				if !allowed {
					d.DryRun.Details = en.details
				}
			} else if reason == ReasonNoAllowMatched {
				d.DryRun.Details = detailsNone
			}
		})
	}
}

// setPath sets c.path from a request's path. Callers normalise (the filter does, Envoy has);
// an engine that trusted them would let "/admin/../secret" past a DENY on "/secret" when one
// forgets, so a path that is not in normal form is normalised here, without allocating when it is.
func (c *evalCtx) setPath(raw string) error {
	p, query, _ := strings.Cut(raw, "?")
	if raw == "" || isNormal(p) && strings.IndexByte(query, '#') < 0 {
		c.path = p
		return nil
	}
	p, err := NormalizePath(raw)
	c.path = p
	return err
}

// ruleSets appends to out the rule sets whose policies may apply to t: the buckets of its
// attachment points, and within them the selector groups its labels can match.
func (e *Engine) ruleSets(t *Target, out []*ruleSet) []*ruleSet {
	var bs [3]*bucket
	for _, b := range bs[:e.applicable(t, &bs)] {
		out = append(out, &b.all)
		if t.Waypoint {
			continue // selectors never apply at waypoints
		}
		for _, k := range b.selKeys {
			if v, ok := t.Labels[k]; ok {
				if rs := b.bySel[k][v]; rs != nil {
					out = append(out, rs)
				}
			}
		}
	}
	return out
}

// applicable fills bs with the buckets whose policies may apply to t.
func (e *Engine) applicable(t *Target, bs *[3]*bucket) int {
	n := 0
	put := func(b *bucket) {
		if b != nil {
			bs[n] = b
			n++
		}
	}
	if !t.Waypoint {
		put(e.byNS[e.root])
		if t.Namespace != e.root {
			put(e.byNS[t.Namespace])
		}
		return n
	}
	if t.Gateway != "" {
		put(e.byGateway[objectRef{Namespace: t.Namespace, Name: t.Gateway}])
	}
	if t.GatewayClass != "" {
		put(e.byClass[t.GatewayClass])
	}
	if t.Service != "" {
		put(e.byService[objectRef{Kind: t.ServiceKindOrDefault(), Namespace: t.ServiceNS(), Name: t.Service}])
	}
	return n
}

// decide runs the DENY then ALLOW steps over the enforced or the dry-run policies.
func decide(buckets []*ruleSet, labels map[string]string, c *evalCtx, dry bool, out func(bool, Reason, *entry)) {
	deny := func(b *ruleSet) []*entry { return b.deny }
	allow := func(b *ruleSet) []*entry { return b.allow }
	allowPolicies := func(b *ruleSet) []*cpolicy { return b.allowPolicies }
	if dry {
		deny = func(b *ruleSet) []*entry { return b.dryDeny }
		allow = func(b *ruleSet) []*entry { return b.dryAllow }
		allowPolicies = func(b *ruleSet) []*cpolicy { return b.dryAllowPolicies }
	}
	if en := firstMatch(buckets, deny, labels, c); en != nil {
		out(false, ReasonDenyMatched, en)
		return
	}
	if !anySelects(buckets, allowPolicies, labels) {
		out(true, ReasonNoPolicies, nil)
		return
	}
	if en := firstMatch(buckets, allow, labels, c); en != nil {
		out(true, ReasonAllowMatched, en)
		return
	}
	out(false, ReasonNoAllowMatched, nil)
}

// firstMatch is the matching rule that comes first in Envoy's order across the buckets.
func firstMatch(buckets []*ruleSet, list func(*ruleSet) []*entry, labels map[string]string, c *evalCtx) *entry {
	var best *entry
	for _, b := range buckets {
		for _, en := range list(b) {
			if best != nil && en.name >= best.name {
				break
			}
			if en.pol.selects(labels) && en.rule.match(c) {
				best = en
				break
			}
		}
	}
	return best
}

func anySelects(buckets []*ruleSet, list func(*ruleSet) []*cpolicy, labels map[string]string) bool {
	for _, b := range buckets {
		for _, p := range list(b) {
			if p.selects(labels) {
				return true
			}
		}
	}
	return false
}

func hasDryRun(buckets []*ruleSet, labels map[string]string) bool {
	return anySelects(buckets, func(b *ruleSet) []*cpolicy { return b.dryPolicies }, labels)
}

// sortAudit orders audit matches from several rule sets as Envoy would and drops duplicates
// (a policy attached to two targets of the same request), without allocating.
func sortAudit(a *[]RuleRef) {
	s := *a
	for i := 1; i < len(s); i++ { // insertion sort: tiny lists
		for j := i; j > 0 && auditLess(s[j], s[j-1]); j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	*a = slices.Compact(s)
}

// auditLess compares two rules as their names "ns[NS]-policy[NAME]-rule[IDX]" compare.
func auditLess(x, y RuleRef) bool {
	xn, xp, _ := strings.Cut(x.Policy, "/")
	yn, yp, _ := strings.Cut(y.Policy, "/")
	if xn != yn {
		return lessBracketed(xn, yn)
	}
	if xp != yp {
		return lessBracketed(xp, yp)
	}
	var xb, yb [20]byte
	return lessBracketed(string(strconv.AppendInt(xb[:0], int64(x.Rule), 10)), string(strconv.AppendInt(yb[:0], int64(y.Rule), 10)))
}

// lessBracketed reports whether a+"]" < b+"]" without building the strings.
func lessBracketed(a, b string) bool {
	n := min(len(a), len(b))
	if a[:n] != b[:n] {
		return a[:n] < b[:n]
	}
	next := func(s string) byte {
		if len(s) > n {
			return s[n]
		}
		return ']'
	}
	return next(a) < next(b)
}

func (r *crule) match(c *evalCtx) bool {
	if len(r.from) > 0 {
		ok := false
		for i := range r.from {
			if r.from[i].match(c) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(r.to) > 0 {
		ok := false
		for i := range r.to {
			if r.to[i].match(c) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	for i := range r.when {
		if !r.when[i].match(c) {
			return false
		}
	}
	return true
}

func (s *csource) match(c *evalCtx) bool {
	p, r := c.r.Principal, c.r
	if len(s.principals) > 0 && !anyPrincipal(s.principals, p) {
		return false
	}
	if len(s.notPrincipals) > 0 && anyPrincipal(s.notPrincipals, p) {
		return false
	}
	if len(s.reqPrinc) > 0 && !anyReqPrincipal(s.reqPrinc, &r.Auth) {
		return false
	}
	if len(s.notReqPrinc) > 0 && anyReqPrincipal(s.notReqPrinc, &r.Auth) {
		return false
	}
	if len(s.namespaces) > 0 && !anyNS(s.namespaces, p, &c.nsSites) {
		return false
	}
	if len(s.notNamespaces) > 0 && anyNS(s.notNamespaces, p, &c.nsSites) {
		return false
	}
	if len(s.sas) > 0 && !anySA(s.sas, p) {
		return false
	}
	if len(s.notSAs) > 0 && anySA(s.notSAs, p) {
		return false
	}
	if len(s.tds) > 0 && !anyTD(s.tds, p) {
		return false
	}
	if len(s.notTDs) > 0 && anyTD(s.notTDs, p) {
		return false
	}
	if len(s.ips) > 0 && !anyPrefix(s.ips, r.SourceIP) {
		return false
	}
	if len(s.notIPs) > 0 && anyPrefix(s.notIPs, r.SourceIP) {
		return false
	}
	if len(s.remoteIPs) > 0 && !anyPrefix(s.remoteIPs, c.remote) {
		return false
	}
	if len(s.notRemoteIPs) > 0 && anyPrefix(s.notRemoteIPs, c.remote) {
		return false
	}
	return true
}

func (o *coperation) match(c *evalCtx) bool {
	r := c.r
	if len(o.hosts) > 0 && !anyPresent(o.hosts, r.Host) {
		return false
	}
	if len(o.notHosts) > 0 && anyPresent(o.notHosts, r.Host) {
		return false
	}
	if len(o.ports) > 0 && !anyPort(o.ports, r.DestPort) {
		return false
	}
	if len(o.notPorts) > 0 && anyPort(o.notPorts, r.DestPort) {
		return false
	}
	if len(o.methods) > 0 && !anyPresent(o.methods, r.Method) {
		return false
	}
	if len(o.notMethods) > 0 && anyPresent(o.notMethods, r.Method) {
		return false
	}
	if len(o.paths) > 0 && !anyPath(o.paths, c.path) {
		return false
	}
	if len(o.notPaths) > 0 && anyPath(o.notPaths, c.path) {
		return false
	}
	return true
}

func (w *ccondition) match(c *evalCtx) bool {
	if w.values.n > 0 && !w.values.match(w, c) {
		return false
	}
	if w.not.n > 0 && w.not.match(w, c) {
		return false
	}
	return true
}

// match reports whether some value matches the condition's attribute.
func (v *cvalues) match(w *ccondition, c *evalCtx) bool {
	r := c.r
	switch w.kind {
	case condSourceIP:
		return anyPrefix(v.prefixes, r.SourceIP)
	case condRemoteIP:
		return anyPrefix(v.prefixes, c.remote)
	case condDestIP:
		return anyPrefix(v.prefixes, r.DestIP)
	case condSourceNS:
		return anyNS(v.ns, r.Principal, &c.nsSites)
	case condSourcePrincipal:
		return anyPrincipal(v.strs, r.Principal)
	case condSourceSA:
		return anySA(v.sas, r.Principal)
	case condSourceTD:
		return anyTD(v.tds, r.Principal)
	case condDestPort:
		return anyPort(v.ports, r.DestPort)
	case condSNI:
		return r.SNI != "" && anyStr(v.strs, r.SNI)
	case condHeader:
		h, ok := r.Headers[w.name]
		return ok && anyStr(v.strs, h)
	case condReqPrincipal:
		return anyReqPrincipal(v.reqPrinc, &r.Auth)
	case condClaim:
		return claimMatches(r.Auth.Claims, w.claim, v.strs)
	case condMetadata:
		m, ok := r.Metadata[w.name]
		return ok && anyStr(v.strs, m)
	}
	return false
}

// anyPrincipal: some value matches the peer principal; without one (plaintext), none does.
func anyPrincipal(ms []strMatch, principal string) bool {
	return principal != "" && anyStr(ms, principal)
}

// anyPresent: the attribute (host, method) is present and some value matches it.
func anyPresent(ms []strMatch, v string) bool {
	return v != "" && anyStr(ms, v)
}
