package rego

import (
	"fmt"
	"strings"
	"testing"

	"github.com/goambient/goambient/policies"
)

// TestGeneratorCoverage checks that the generator's first sets are all valid for
// policies.Load and, between them, use every field and not-field, every `when` key, every
// attachment and action, and reach every outcome, so a quiet differential test means something.
func TestGeneratorCoverage(t *testing.T) {
	const sets = 1000
	seen := map[string]int{}
	for i := range sets {
		c := makeCase(1, i)
		objs, errs := policies.Load(multiDoc(c.policies), fmt.Sprint("case-", i))
		if len(errs) > 0 {
			t.Fatalf("case %d: policies.Load rejects a generated policy: %v\n%s", i, errs, policiesYAML(c.policies))
		}
		for _, p := range c.policies {
			features(p, seen)
		}
		eng := policies.Compile(objs.AuthorizationPolicies, policies.Options{RootNamespace: rootNS})
		for j := range c.requests {
			d := eng.Decide(&c.requests[j])
			seen["reason:"+string(d.Reason)]++
			if d.Custom.Policy != "" {
				seen["outcome:custom"]++
			}
			if len(d.Audit) > 0 {
				seen["outcome:audit"]++
			}
			if d.DryRun.Applied {
				seen[fmt.Sprintf("outcome:dry_run.allowed=%v", d.DryRun.Allowed)]++
			}
			if c.requests[j].Target.Waypoint && d.Reason != policies.ReasonNoPolicies {
				seen["outcome:waypoint-policy"]++
			}
		}
	}
	want := []string{
		"action:", "action:ALLOW", "action:DENY", "action:AUDIT", "action:CUSTOM", "provider",
		"dry-run:true", "dry-run:True", "dry-run:false", "spec:{}", "rules:none", "rule:{}", "rules:>10",
		"selector", "selector:{}", "targetRef", "targetRefs",
		"ref:Gateway", "ref:GatewayClass", "ref:Service", "ref:ServiceEntry",
		"path:template", "path:{**}",
		"reason:no-policies", "reason:deny-matched", "reason:allow-matched", "reason:no-allow-matched",
		"outcome:custom", "outcome:audit", "outcome:dry_run.allowed=true", "outcome:dry_run.allowed=false",
		"outcome:waypoint-policy",
	}
	for _, f := range append(sourceFieldNames, opFieldNames...) {
		want = append(want, "field:"+f, "field:"+notField(f))
	}
	for _, k := range conditionKeys {
		want = append(want, "when:"+k)
	}
	want = append(want, "when:values", "when:notValues")
	for _, f := range want {
		if seen[f] == 0 {
			t.Errorf("no generated case has %s", f)
		}
	}
	t.Logf("%d sets: %v", sets, seen)
}

// features tallies what one generated policy uses.
func features(p map[string]any, seen map[string]int) {
	if ann, ok := p["metadata"].(map[string]any)["annotations"].(map[string]any); ok {
		seen["dry-run:"+ann["istio.io/dry-run"].(string)]++
	}
	spec := p["spec"].(map[string]any)
	if len(spec) == 0 {
		seen["spec:{}"]++
		return
	}
	action, _ := spec["action"].(string)
	seen["action:"+action]++
	if _, ok := spec["provider"]; ok {
		seen["provider"]++
	}
	if sel, ok := spec["selector"].(map[string]any); ok {
		seen["selector"]++
		if len(sel["matchLabels"].(map[string]any)) == 0 {
			seen["selector:{}"]++
		}
	}
	if ref, ok := spec["targetRef"].(map[string]any); ok {
		seen["targetRef"]++
		seen["ref:"+ref["kind"].(string)]++
	}
	if refs, ok := spec["targetRefs"].([]any); ok {
		seen["targetRefs"]++
		for _, r := range refs {
			seen["ref:"+r.(map[string]any)["kind"].(string)]++
		}
	}
	rules, _ := spec["rules"].([]any)
	switch {
	case len(rules) == 0:
		seen["rules:none"]++
	case len(rules) > 10:
		seen["rules:>10"]++
	}
	for _, r := range rules {
		rule := r.(map[string]any)
		if len(rule) == 0 {
			seen["rule:{}"]++
		}
		from, _ := rule["from"].([]any)
		for _, f := range from {
			for k := range f.(map[string]any)["source"].(map[string]any) {
				seen["field:"+k]++
			}
		}
		to, _ := rule["to"].([]any)
		for _, o := range to {
			for k, v := range o.(map[string]any)["operation"].(map[string]any) {
				seen["field:"+k]++
				if strings.HasSuffix(strings.ToLower(k), "paths") {
					for _, path := range v.([]string) {
						if strings.Contains(path, "{*}") || strings.Contains(path, "{**}") {
							seen["path:template"]++
						}
						if strings.Contains(path, "{**}") {
							seen["path:{**}"]++
						}
					}
				}
			}
		}
		when, _ := rule["when"].([]any)
		for _, w := range when {
			c := w.(map[string]any)
			seen["when:"+c["key"].(string)]++
			for _, k := range []string{"values", "notValues"} {
				if _, ok := c[k]; ok {
					seen["when:"+k]++
				}
			}
		}
	}
}
