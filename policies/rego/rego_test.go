package rego

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/rego"
	"sigs.k8s.io/yaml"

	"github.com/goambient/goambient/policies"
)

// repoRoot is where manifests/examples lives, relative to this package.
const repoRoot = "../.."

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*(#.*)?$`)

// yamlPolicies converts the documents of YAML files to JSON objects and keeps the
// AuthorizationPolicies, as a user's `kubectl apply -f` would send them.
func yamlPolicies(t testing.TB, data ...[]byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, d := range data {
		for _, doc := range docSeparator.Split(string(d), -1) {
			js, err := yaml.YAMLToJSON([]byte(doc))
			if err != nil {
				t.Fatalf("YAML: %v\n%s", err, doc)
			}
			var obj map[string]any
			if err := json.Unmarshal(js, &obj); err != nil {
				t.Fatalf("JSON: %v\n%s", err, js)
			}
			if obj["kind"] == "AuthorizationPolicy" {
				out = append(out, obj)
			}
		}
	}
	return out
}

func readFiles(t testing.TB, files ...string) [][]byte {
	t.Helper()
	var out [][]byte
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(repoRoot, f))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// TestHandson is step 3 of examples/handson: the L7 policy at the handson waypoint denies
// POST and DELETE from curl with Envoy's details, and lets GET through. Step 2's L4 policy is
// checked at the destination ztunnel. The YAML files are the scenario's, unchanged.
func TestHandson(t *testing.T) {
	ctx := context.Background()
	files := readFiles(t,
		"manifests/examples/handson/mesh.yaml",
		"manifests/examples/handson/k8s-gateway.yaml",
		"manifests/examples/handson/L7-authorization-policy.yaml",
	)
	l7 := yamlPolicies(t, files...)
	if len(l7) != 1 {
		t.Fatalf("want 1 AuthorizationPolicy in the step 3 files, got %d", len(l7))
	}
	l4 := yamlPolicies(t, readFiles(t, "manifests/examples/handson/L4-authorization-policy.yaml")...)

	waypoint := policies.Target{
		Namespace: "handson", Waypoint: true, Gateway: "handson", GatewayClass: "istio-waypoint", Service: "handson",
	}
	workload := policies.Target{Namespace: "handson", Labels: map[string]string{"app": "handson", "version": "blue"}}
	const denyL7 = "rbac_access_denied_matched_policy[ns[handson]-policy[layer7-authz]-rule[0]]"
	http := func(method, path string) policies.Request {
		return policies.Request{
			Principal: "cluster.local/ns/handson/sa/curl",
			DestPort:  8080, Host: "handson:8080", Method: method, Path: path, Target: waypoint,
		}
	}
	tcp := func(sa string) policies.Request {
		return policies.Request{Principal: "cluster.local/ns/handson/sa/" + sa, DestPort: 8080, Target: workload}
	}
	denied := func(policy, details string) policies.Decision {
		return policies.Decision{Reason: policies.ReasonDenyMatched, Action: policies.ActionDeny, Policy: policy, Details: details}
	}
	allowed := policies.Decision{Allowed: true, Reason: policies.ReasonNoPolicies, Rule: -1}

	cases := []struct {
		name     string
		policies []map[string]any
		req      policies.Request
		want     policies.Decision
	}{
		{"step 3 POST denied", l7, http("POST", "/"), denied("handson/layer7-authz", denyL7)},
		{"step 3 DELETE denied", l7, http("DELETE", "/id/123"), denied("handson/layer7-authz", denyL7)},
		{"step 3 GET allowed", l7, http("GET", "/"), allowed},
		{"step 2 curl-deny reset", l4, tcp("curl-deny"),
			denied("handson/layer4-authz", "rbac_access_denied_matched_policy[ns[handson]-policy[layer4-authz]-rule[0]]")},
		{"step 2 curl-allow allowed", l4, tcp("curl-allow"), allowed},
		{"step 1 mesh only", nil, tcp("curl-deny"), allowed},
	}
	perCall, err := New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			prepared, err := NewWithPolicies(ctx, "istio-system", c.policies)
			if err != nil {
				t.Fatal(err)
			}
			for name, got := range map[string]func() (policies.Decision, error){
				"input": func() (policies.Decision, error) {
					return perCall.Decide(ctx, Input{RootNamespace: "istio-system", Policies: c.policies, Request: c.req})
				},
				"prepared": func() (policies.Decision, error) { return prepared.Decide(ctx, Input{Request: c.req}) },
			} {
				d, err := got()
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if mustJSON(d) != mustJSON(c.want) {
					t.Errorf("%s:\n got %s\nwant %s", name, mustJSON(d), mustJSON(c.want))
				}
			}
		})
	}
}

// decisionCase is one case of policies/testdata/decisions.yaml, the native engine's table.
type decisionCase struct {
	Name     string            `json:"name"`
	Files    []string          `json:"files"`
	Policies string            `json:"policies"`
	Request  policies.Request  `json:"request"`
	Want     policies.Decision `json:"want"`
}

// TestDecisionsTable runs the native engine's table through the reference: the two engines
// must agree on hand-written cases too, not only on random ones. Requests whose path is not
// normalised are skipped: the Rego input contract takes paths already normalised (the Go
// engine normalises defensively). For %00 both deny with bad-request; the details of that
// denial are the Go engine's error text and not part of the contract.
func TestDecisionsTable(t *testing.T) {
	data, err := os.ReadFile("../testdata/decisions.yaml")
	if os.IsNotExist(err) {
		t.Skip("policies/testdata/decisions.yaml is absent")
	}
	if err != nil {
		t.Fatal(err)
	}
	var cases []decisionCase
	if err := yaml.Unmarshal(data, &cases); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ev, err := New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			path, _, _ := strings.Cut(c.Request.Path, "?")
			if n, err := policies.NormalizePath(path); path != "" && err == nil && n != path {
				t.Skipf("path %q is not normalised (%q)", path, n)
			}
			objs := yamlPolicies(t, append(readFiles(t, c.Files...), []byte(c.Policies))...)
			got, err := ev.Decide(ctx, Input{Policies: objs, Request: c.Request})
			if err != nil {
				t.Fatal(err)
			}
			want := c.Want
			if want.Rule == 0 && want.Policy == "" {
				want.Rule = -1
			}
			if want.DryRun.Applied && want.DryRun.Policy == "" {
				want.DryRun.Rule = -1
			}
			if want.Reason == policies.ReasonBadRequest {
				want.Details = ""
			}
			if mustJSON(got) != mustJSON(want) {
				t.Errorf("\n got %s\nwant %s", mustJSON(got), mustJSON(want))
			}
		})
	}
}

func TestDecodeRejectsUnknownFields(t *testing.T) {
	if _, err := decode(map[string]any{"allowed": true, "reason": "no-policies", "rule": -1, "extra": 1}); err == nil {
		t.Error("decode accepted a field policies.Decision does not have")
	}
	d, err := decode(map[string]any{"allowed": true, "reason": "allow-matched", "rule": json.Number("3")})
	if err != nil || !d.Allowed || d.Rule != 3 {
		t.Errorf("decode = %+v, %v", d, err)
	}
}

// TestRegoCasesOnNative runs the hand-written field cases of fields_test.rego through the Go
// engine: each case is an ALLOW policy with one rule and a request, and the rule must match
// exactly when the case says so. Cases whose policy policies.Load rejects (Rego tests may use
// values Istio's validation refuses) are skipped.
func TestRegoCasesOnNative(t *testing.T) {
	ctx := context.Background()
	pq, err := rego.New(
		rego.Query("data.goambient.authz_test.all_cases"),
		rego.Load([]string{"authz.rego", "scenarios_test.rego", "fields_test.rego"}, nil),
	).PrepareForEval(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := pq.Eval(ctx)
	if err != nil || len(rs) != 1 {
		t.Fatalf("all_cases: %v %v", rs, err)
	}
	var cases []struct {
		Name    string           `json:"name"`
		Policy  map[string]any   `json:"policy"`
		Request policies.Request `json:"request"`
		Want    bool             `json:"want"`
	}
	b, _ := json.Marshal(rs[0].Expressions[0].Value)
	if err := json.Unmarshal(b, &cases); err != nil {
		t.Fatal(err)
	}
	if len(cases) < 100 {
		t.Fatalf("only %d cases", len(cases))
	}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			objs, errs := policies.Load(multiDoc([]map[string]any{c.Policy}), c.Name)
			if len(errs) > 0 {
				t.Skipf("not a valid policy for Istio: %v", errs)
			}
			d := policies.Compile(objs.AuthorizationPolicies, policies.Options{RootNamespace: rootNS}).Decide(&c.Request)
			if got := d.Reason == policies.ReasonAllowMatched; got != c.Want {
				t.Errorf("rule matched = %v, want %v\npolicy %s\nrequest %s\ndecision %s", got, c.Want, mustJSON(c.Policy), mustJSON(c.Request), mustJSON(d))
			}
		})
	}
}
