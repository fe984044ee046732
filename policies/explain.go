package policies

import (
	"fmt"
	"strings"
)

// Explanation says, for one policy, whether it applied to a request and how each rule fared.
type Explanation struct {
	Policy  string   `json:"policy"` // ns/name
	Action  Action   `json:"action"`
	DryRun  bool     `json:"dryRun,omitempty"`
	Applies bool     `json:"applies"`
	Why     string   `json:"why"`             // why it applies or not
	Rules   []string `json:"rules,omitempty"` // per rule: "matched", or what did not match
}

// Explain reports every policy of the engine and why it did or did not match r. It is for
// humans (meshctl authz check --explain), not for the request path.
func (e *Engine) Explain(r *Request) []Explanation {
	c := evalCtx{r: r, remote: r.remoteIP()}
	c.peer, c.peerOK = ParsePrincipal(r.Principal)
	c.path, _, _ = strings.Cut(r.Path, "?")
	var bs [3]*bucket
	buckets := bs[:e.applicable(&r.Target, &bs)]
	var out []Explanation
	for _, p := range e.policies {
		x := Explanation{Policy: p.key, Action: p.action, DryRun: p.dryRun}
		x.Applies, x.Why = e.applies(p, buckets, &r.Target)
		if x.Applies {
			rules := p.src.Spec.GetRules()
			if len(rules) == 0 {
				x.Why += "; it has no rules, so it matches nothing"
			}
			for i := range rules {
				x.Rules = append(x.Rules, explainRule(compileRule(rules[i], p.src.Namespace), &c))
			}
		}
		out = append(out, x)
	}
	return out
}

func (e *Engine) applies(p *cpolicy, buckets []*bucket, t *Target) (bool, string) {
	inBucket := false
	for _, b := range buckets {
		for _, list := range [][]*cpolicy{b.allowPolicies, b.dryPolicies} {
			for _, q := range list {
				inBucket = inBucket || q == p
			}
		}
		for _, list := range [][]*entry{b.custom, b.audit, b.deny, b.allow, b.dryDeny, b.dryAllow} {
			for _, en := range list {
				inBucket = inBucket || en.pol == p
			}
		}
	}
	refs := len(targetRefs(p.src.Spec)) > 0
	switch {
	case t.Waypoint && !refs:
		return false, "it has no targetRefs, and waypoints only enforce policies that target them"
	case !t.Waypoint && refs:
		return false, "it has targetRefs, so only waypoints enforce it"
	case !inBucket && refs:
		return false, "none of its targetRefs names this waypoint, its GatewayClass or the addressed Service"
	case !inBucket:
		return false, fmt.Sprintf("it is in namespace %s, neither %s nor the root namespace %s", p.src.Namespace, t.Namespace, e.root)
	case !t.Waypoint && !p.selects(t.Labels):
		return false, fmt.Sprintf("its selector %v does not match the workload labels %v", p.selector, t.Labels)
	case refs:
		return true, "one of its targetRefs names this waypoint target"
	case p.hasSel:
		return true, fmt.Sprintf("its selector %v matches the workload", p.selector)
	case p.src.Namespace == e.root:
		return true, "it is in the root namespace and has no selector"
	}
	return true, "it is in the workload's namespace and has no selector"
}

func explainRule(r crule, c *evalCtx) string {
	if len(r.from) > 0 && !anyOf(len(r.from), func(i int) bool { return r.from[i].match(c) }) {
		return "no from.source matched (principal " + quoteOrNone(c.r.Principal) + ")"
	}
	if len(r.to) > 0 && !anyOf(len(r.to), func(i int) bool { return r.to[i].match(c) }) {
		return fmt.Sprintf("no to.operation matched (%s %s, host %s, port %d)", c.r.Method, c.path, quoteOrNone(c.r.Host), c.r.DestPort)
	}
	for i := range r.when {
		if !r.when[i].match(c) {
			return fmt.Sprintf("when[%d] did not match", i)
		}
	}
	return "matched"
}

func anyOf(n int, f func(int) bool) bool {
	for i := range n {
		if f(i) {
			return true
		}
	}
	return false
}

func quoteOrNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return fmt.Sprintf("%q", s)
}
