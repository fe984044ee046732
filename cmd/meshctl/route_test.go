package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestRouteLint(t *testing.T) {
	traffic := examples + "traffic/"
	for _, c := range []struct {
		name string
		args []string
		code int
		out  []string
	}{
		{"the canary", []string{"route", "lint", "-f", traffic + "mesh.yaml", "-f", traffic + "waypoint.yaml", "-f", traffic + "destination-rule.yaml", "-f", traffic + "virtual-service-canary.yaml"}, 0,
			[]string{"Service default/appb (waypoint default/waypoint):", "1. VirtualService default/appb: default/appb spec.http[0]", "DestinationRule default/appb, subsets [v1 v2]",
				"1 VirtualService, 0 HTTPRoute and 1 DestinationRule valid, 0 errors, 0 warnings"}},
		{"an HTTPRoute and a VirtualService for one Service: Istio's order explained", []string{"route", "lint", "-f", "../../xdsserver/waypointxds/testdata/routing.in.yaml"}, 0,
			[]string{"1. HTTPRoute bank/bank~accounts.bank.svc.cluster.local: bank/accounts-beta spec.rules[0]", "2. VirtualService bank/accounts:",
				"Istio puts Gateway API routes of the waypoint's namespace before VirtualServices"}},
		{"refused objects", []string{"route", "lint", "-f", "../../xdsserver/model/testdata/routing-invalid.yaml"}, 1,
			[]string{"error: ../../xdsserver/model/testdata/routing-invalid.yaml:17 (document 4): VirtualService shop/bad-regex: spec.http[0].match[0].uri.regex: error parsing regexp"}},
		{"missing -f", []string{"route", "lint"}, 2, []string{"-f is required"}},
		{"unknown subcommand", []string{"route", "nope"}, 2, []string{"usage: meshctl route lint"}},
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
