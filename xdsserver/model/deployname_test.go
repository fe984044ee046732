package model

import (
	"fmt"
	"strings"
	"testing"
)

func TestGatewayDeployedNames(t *testing.T) {
	// handson's namespace: a Service and a ServiceAccount named handson, the user's.
	userObjects := map[string]bool{"Service/handson": true, "ServiceAccount/handson": true, "Service/taken-istio-waypoint": true}
	taken := func(name, sa string) string {
		var in []string
		if userObjects["Service/"+name] {
			in = append(in, fmt.Sprintf("Service %q", name))
		}
		if sa != "" && userObjects["ServiceAccount/"+sa] {
			in = append(in, fmt.Sprintf("ServiceAccount %q", sa))
		}
		return strings.Join(in, " and ")
	}
	for _, tc := range []struct {
		name, gw, class, prefer string
		noSuffix                bool
		ann                     map[string]string
		want, wantSA, fallback  string // fallback: a part of the message
		err                     string
	}{
		{name: "free waypoint name", gw: "waypoint", class: "istio-waypoint", noSuffix: true, want: "waypoint", wantSA: "waypoint"},
		{name: "handson falls back", gw: "handson", class: "istio-waypoint", noSuffix: true, want: "handson-istio-waypoint", wantSA: "handson-istio-waypoint",
			fallback: `already has Service "handson" and ServiceAccount "handson", which this Gateway does not own; its Deployment and Service are named "handson-istio-waypoint" instead of "handson"`},
		{name: "override wins", gw: "handson", class: "istio-waypoint", noSuffix: true, ann: map[string]string{AnnotationNameOverride: "wp"}, want: "wp", wantSA: "wp"},
		{name: "override taken", gw: "x", class: "istio-waypoint", noSuffix: true, ann: map[string]string{AnnotationNameOverride: "handson"},
			err: `the names "handson" are taken by Service "handson" and ServiceAccount "handson"`},
		{name: "fallback name free but first free too", gw: "taken", class: "istio-waypoint", noSuffix: true, prefer: "", want: "taken", wantSA: "taken"},
		{name: "ingress has the suffix", gw: "handson", class: "istio", want: "handson-istio", wantSA: "handson-istio"},
		{name: "user's service account used, not checked", gw: "waypoint", class: "istio-waypoint", noSuffix: true,
			ann: map[string]string{AnnotationServiceAccount: "handson"}, want: "waypoint", wantSA: "handson"},
		{name: "kept name stays", gw: "waypoint", class: "istio-waypoint", noSuffix: true, prefer: "waypoint-istio-waypoint", want: "waypoint-istio-waypoint",
			wantSA: "waypoint-istio-waypoint", fallback: `keep the name "waypoint-istio-waypoint"`},
		{name: "prefer not a candidate", gw: "waypoint", class: "istio-waypoint", noSuffix: true, prefer: "other", want: "waypoint", wantSA: "waypoint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := GatewayDeployedNames(tc.gw, tc.class, tc.ann, tc.noSuffix, tc.prefer, taken)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || got.Name != tc.want || got.ServiceAccount != tc.wantSA || !strings.Contains(got.Fallback, tc.fallback) || (tc.fallback == "") != (got.Fallback == "") {
				t.Fatalf("got %+v, %v; want %s/%s fallback %q", got, err, tc.want, tc.wantSA, tc.fallback)
			}
		})
	}
	both := func(name, _ string) string { return "Service " + name }
	if _, err := GatewayDeployedNames("a", "istio-waypoint", nil, true, "", both); err == nil || !strings.Contains(err.Error(), `"a" and "a-istio-waypoint"`) {
		t.Errorf("every name taken: %v", err)
	}
}
