package main

import (
	"bytes"
	"strings"
	"testing"
)

const examples = "../../manifests/examples/"

func TestAuthz(t *testing.T) {
	l7 := examples + "handson/L7-authorization-policy.yaml"
	curl := "--source-principal=cluster.local/ns/handson/sa/curl"
	jwtSE := "testdata/presenter-serviceentry.yaml"
	for _, c := range []struct {
		name string
		args []string
		code int
		out  []string
	}{
		{"POST to the handson waypoint is denied", []string{"authz", "check", "-f", l7, "--waypoint", "handson", "--namespace", "handson", curl, "--method", "POST", "--path", "/"}, 1,
			[]string{"DENY", "policy=handson/layer7-authz rule=0", "rbac_access_denied_matched_policy[ns[handson]-policy[layer7-authz]-rule[0]]"}},
		{"GET is allowed", []string{"authz", "check", "-f", l7, "--waypoint", "handson/handson", curl, "--method", "GET", "--path", "/"}, 0,
			[]string{"ALLOW  reason=no-policies"}},
		{"explain lists the policy and its rule", []string{"authz", "check", "-f", examples, "--namespace", "default", "--workload-labels", "app=web-api", "--source-principal", "spiffe://cluster.local/ns/default/sa/notsleep", "--explain"}, 1,
			[]string{"rbac_access_denied_matched_policy[none]", "ALLOW default/web-api-rbac: applies", "rule[0]: no from.source matched", "DENY handson/layer7-authz: skipped: it has targetRefs"}},
		{"JSON output", []string{"authz", "check", "-f", examples + "bookinfo-lite", "--namespace", "default", "--workload-labels", "app=web-api", "--source-principal", "cluster.local/ns/default/sa/sleep", "--json"}, 0,
			[]string{`"policy": "default/web-api-rbac"`, `"reason": "allow-matched"`}},
		{"a %00 path is a bad request", []string{"authz", "check", "-f", l7, "--waypoint", "handson/handson", "--path", "/a%00"}, 1, []string{"400 bad request"}},
		{"a path with a fragment is a bad request", []string{"authz", "check", "-f", l7, "--waypoint", "handson/handson", "--path", "/a#b"}, 1, []string{"400 bad request", "fragment"}},
		{"azp and aud given as lists", []string{"authz", "check", "-f", jwtSE, "--waypoint", "shop/waypoint", "--jwt-issuer", "idp", "--jwt-subject", "bob",
			"--claim", "azp=web", "--claim", "azp=cli", "--claim", "aud=other", "--claim", "aud=shop"}, 0, []string{"ALLOW  reason=allow-matched policy=shop/cli-only"}},
		{"azp as one string", []string{"authz", "check", "-f", jwtSE, "--waypoint", "shop/waypoint", "--jwt-issuer", "idp", "--claim", "azp=cli", "--claim", "aud=shop"}, 0,
			[]string{"ALLOW  reason=allow-matched"}},
		{"the ServiceEntry's DENY applies to it", []string{"authz", "check", "-f", jwtSE, "--waypoint", "shop/waypoint", "--service-entry", "reviews", "--method", "DELETE",
			"--jwt-issuer", "idp", "--claim", "azp=cli", "--claim", "aud=shop"}, 1, []string{"DENY  reason=deny-matched policy=shop/se-no-delete"}},
		{"the ServiceEntry's DENY does not apply to a Service of that name", []string{"authz", "check", "-f", jwtSE, "--waypoint", "shop/waypoint", "--service", "reviews", "--method", "DELETE",
			"--jwt-issuer", "idp", "--claim", "azp=cli", "--claim", "aud=shop", "--explain"}, 0,
			[]string{"ALLOW  reason=allow-matched policy=shop/cli-only", "it names a ServiceEntry shop/reviews, but the request is for a Service of that name"}},
		{"--service and --service-entry", []string{"authz", "check", "-f", jwtSE, "--waypoint", "shop/waypoint", "--service", "a", "--service-entry", "b"}, 2, []string{"give one"}},
		{"missing -f", []string{"authz", "check", "--namespace", "x"}, 2, []string{"-f is required"}},
		{"bad IP", []string{"authz", "check", "-f", l7, "--namespace", "x", "--source-ip", "nope"}, 2, []string{`--source-ip: "nope" is not an IP address`}},
		{"no target", []string{"authz", "check", "-f", l7}, 2, []string{"--namespace (the destination workload's) or --waypoint is required"}},
		{"lint the examples", []string{"authz", "lint", "-f", examples}, 0, []string{"12 AuthorizationPolicy, 1 PeerAuthentication and 1 RequestAuthentication valid, 0 errors"}},
		{"lint invalid policies", []string{"authz", "lint", "-f", "../../policies/testdata/invalid.yaml"}, 1,
			[]string{"error: ../../policies/testdata/invalid.yaml:9 (document 2): AuthorizationPolicy foo/sa-with-principals: spec.rules[0].from[0].source.serviceAccounts"}},
		{"lint warns about HTTP attributes at ztunnel", []string{"authz", "lint", "-f", "../../policies/testdata/ztunnel/http-attributes.in.yaml"}, 0,
			[]string{"warning: ", "ztunnel does not support HTTP attributes (found: methods)", "ztunnel does not support the AUDIT action"}},
		{"lint explains the early ambient selector form (the Gateway API tutorial's policy)", []string{"authz", "lint", "-f", "testdata/gateway-name-selector.yaml"}, 0,
			[]string{"spec.selector.matchLabels.istio.io/gateway-name: selector {istio.io/gateway-name: appb} is how early ambient releases bound a policy to a waypoint",
				"current Istio ignores selector policies at waypoints", `targetRefs: [{kind: Service, group: "", name: appb}]`}},
		{"unknown subcommand", []string{"authz", "nope"}, 2, []string{"usage: meshctl authz"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(c.args, &out, &errOut)
			all := out.String() + errOut.String()
			if code != c.code {
				t.Errorf("exit %d, want %d\n%s", code, c.code, all)
			}
			for _, want := range c.out {
				if !strings.Contains(all, want) {
					t.Errorf("output lacks %q:\n%s", want, all)
				}
			}
		})
	}
}
