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
	if err := c.setPath(r.Path); err != nil {
		c.path = r.Path // Decide denies it (bad-request); the rules are explained on it as given
	}
	var out []Explanation
	for _, p := range e.policies {
		x := Explanation{Policy: p.key, Action: p.action, DryRun: p.dryRun}
		x.Applies, x.Why = e.applies(p, &r.Target)
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

func (e *Engine) applies(p *cpolicy, t *Target) (bool, string) {
	refs := targetRefs(p.src.Spec)
	ns := p.src.Namespace
	switch {
	case t.Waypoint && len(refs) == 0:
		return false, "it has no targetRefs, and waypoints only enforce policies that target them"
	case !t.Waypoint && len(refs) > 0:
		return false, "it has targetRefs, so only waypoints enforce it"
	case t.Waypoint:
		kindMismatch := ""
		for _, r := range refs {
			switch r.GetKind() {
			case "Gateway":
				if ns == t.Namespace && r.GetName() == t.Gateway {
					return true, "it targets the Gateway " + ns + "/" + t.Gateway
				}
			case "GatewayClass":
				if ns == e.root && r.GetName() == t.GatewayClass {
					return true, "it targets the GatewayClass " + t.GatewayClass
				}
			case KindService, KindServiceEntry:
				if t.Service != "" && ns == t.ServiceNS() && r.GetName() == t.Service {
					if r.GetKind() == t.ServiceKindOrDefault() {
						return true, "it targets the " + r.GetKind() + " " + ns + "/" + t.Service
					}
					kindMismatch = "; it names a " + r.GetKind() + " " + ns + "/" + t.Service + ", but the request is for a " + t.ServiceKindOrDefault() + " of that name"
				}
			}
		}
		return false, "none of its targetRefs names this waypoint, its GatewayClass or the addressed Service" + kindMismatch
	case ns != t.Namespace && ns != e.root:
		return false, fmt.Sprintf("it is in namespace %s, neither %s nor the root namespace %s", ns, t.Namespace, e.root)
	case !p.selects(t.Labels):
		return false, fmt.Sprintf("its selector %s does not match the workload labels %v", selectorString(p.selector), t.Labels)
	case p.hasSel:
		return true, fmt.Sprintf("its selector %s matches the workload", selectorString(p.selector))
	case ns == e.root:
		return true, "it is in the root namespace and has no selector"
	}
	return true, "it is in the workload's namespace and has no selector"
}

func selectorString(ls []label) string {
	var parts []string
	for _, l := range ls {
		parts = append(parts, l.name+"="+l.value)
	}
	return "{" + strings.Join(parts, ",") + "}"
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
