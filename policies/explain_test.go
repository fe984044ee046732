package policies

import (
	"strings"
	"testing"
)

func TestExplainSaysWhy(t *testing.T) {
	objs, errs := LoadPath("../manifests/examples")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	e := Compile(objs.AuthorizationPolicies, Options{})
	r := Request{Principal: "cluster.local/ns/default/sa/notsleep", Target: Target{Namespace: "default", Labels: map[string]string{"app": "web-api"}}}
	got := map[string]Explanation{}
	for _, x := range e.Explain(&r) {
		got[x.Policy] = x
	}
	for policy, want := range map[string]string{
		"default/web-api-rbac":             "matches the workload; rule[0]: no from.source matched",
		"default/recommendation-rbac":      "does not match the workload labels",
		"default/allow-nothing":            "no rules, so it matches nothing",
		"handson/layer7-authz":             "only waypoints enforce it",
		"demo/backend-allow-frontend-only": "neither default nor the root namespace",
	} {
		x := got[policy]
		text := x.Why
		for i, r := range x.Rules {
			text += "; rule[" + string(rune('0'+i)) + "]: " + r
		}
		for _, part := range strings.Split(want, "; ") {
			if !strings.Contains(text, part) {
				t.Errorf("%s: %q does not say %q", policy, text, part)
			}
		}
	}
}
