package state

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"istio.io/istio/pkg/workloadapi"
)

// TestRoute covers every kind of outbound decision, on the handson scenario (without and with
// its waypoint) and on routing.yaml's edge cases. The picker takes the first endpoint (by uid)
// unless the case says otherwise.
func TestRoute(t *testing.T) {
	const (
		blueID     = "spiffe://cluster.local/ns/handson/sa/handson"
		handsonWP  = "spiffe://cluster.local/ns/handson/sa/handson-waypoint"
		demoWP     = "spiffe://cluster.local/ns/demo/sa/waypoint"
		backendID  = "spiffe://cluster.local/ns/demo/sa/backend"
		canarySAN  = "spiffe://cluster.local/ns/demo/sa/backend-canary"
		handsonSvc = "handson.handson.svc.cluster.local"
	)
	type want struct {
		kind              Kind
		dial, authority   string
		ids               []string
		workload, service string // names
		waypoint          string
		err               string
	}
	for _, tc := range []struct {
		name, file, dst, src string // src: a pod IP, or "" for an unknown source
		last                 bool   // pick the last endpoint
		want                 want
	}{
		// Handson step 1–2: curl-allow → handson:8080 resolves the VIP to handson-blue.
		{"VIP → pod over HBONE", "handson.yaml", "10.96.0.10:8080", "10.244.1.3", false,
			want{kind: Direct, dial: "10.244.2.5:15008", authority: "10.244.2.5:8080", ids: []string{blueID}, workload: "handson-blue", service: handsonSvc}},
		{"pod IP → pod over HBONE", "handson.yaml", "10.244.2.5:8080", "10.244.1.3", false,
			want{kind: Direct, dial: "10.244.2.5:15008", authority: "10.244.2.5:8080", ids: []string{blueID}, workload: "handson-blue"}},
		{"unknown source", "handson.yaml", "10.96.0.10:8080", "", false,
			want{kind: Direct, dial: "10.244.2.5:15008", authority: "10.244.2.5:8080", ids: []string{blueID}, workload: "handson-blue", service: handsonSvc}},
		{"outside the mesh", "handson.yaml", "93.184.216.34:443", "10.244.1.3", false,
			want{kind: Passthrough, dial: "93.184.216.34:443"}},
		{"VIP, undeclared port", "handson.yaml", "10.96.0.10:9999", "10.244.1.3", false,
			want{kind: Passthrough, dial: "10.96.0.10:9999", service: handsonSvc}},
		{"IPv4-mapped destination", "handson.yaml", "[::ffff:10.96.0.10]:8080", "10.244.1.3", false,
			want{kind: Direct, dial: "10.244.2.5:15008", authority: "10.244.2.5:8080", ids: []string{blueID}, workload: "handson-blue", service: handsonSvc}},

		// Handson step 3: the Service has a waypoint; :authority keeps the VIP.
		{"VIP → service waypoint", "handson-waypoint.yaml", "10.96.0.10:8080", "10.244.1.5", false,
			want{kind: ToServiceWaypoint, dial: "10.244.2.9:15008", authority: "10.96.0.10:8080", ids: []string{handsonWP}, service: handsonSvc, waypoint: "handson-waypoint-5d9c7b6f4-x2x8q"}},
		{"pod IP bypasses a service waypoint", "handson-waypoint.yaml", "10.244.2.5:8080", "10.244.1.5", false,
			want{kind: Direct, dial: "10.244.2.5:15008", authority: "10.244.2.5:8080", ids: []string{blueID}, workload: "handson-blue"}},
		{"the waypoint itself goes to the pod", "handson-waypoint.yaml", "10.96.0.10:8080", "10.244.2.9", false,
			want{kind: Direct, dial: "10.244.2.5:15008", authority: "10.244.2.5:8080", ids: []string{blueID}, workload: "handson-blue", service: handsonSvc}},

		// routing.yaml
		{"target port from the service", "routing.yaml", "10.96.1.10:80", "10.244.4.1", false,
			want{kind: Direct, dial: "10.244.3.1:15008", authority: "10.244.3.1:8080", ids: []string{backendID, canarySAN}, workload: "backend-1", service: "backend.demo.svc.cluster.local"}},
		{"target port from the endpoint, default trust domain", "routing.yaml", "10.96.1.10:80", "10.244.4.1", true,
			want{kind: Direct, dial: "10.244.3.3:15008", authority: "10.244.3.3:9090", ids: []string{backendID, canarySAN}, workload: "backend-3", service: "backend.demo.svc.cluster.local"}},
		{"pod without HBONE via its VIP", "routing.yaml", "10.96.1.20:80", "10.244.4.1", false,
			want{kind: Passthrough, dial: "10.244.3.20:8000", workload: "legacy", service: "legacy.demo.svc.cluster.local"}},
		{"pod without HBONE", "routing.yaml", "10.244.3.20:8000", "10.244.4.1", false,
			want{kind: Passthrough, dial: "10.244.3.20:8000", workload: "legacy"}},
		{"no healthy endpoint", "routing.yaml", "10.96.1.30:80", "10.244.4.1", false,
			want{err: "service demo/broken.demo.svc.cluster.local: no healthy upstream"}},
		{"load balancing PASSTHROUGH", "routing.yaml", "10.96.1.40:80", "10.244.4.1", false,
			want{kind: Passthrough, dial: "10.96.1.40:80", service: "headless.demo.svc.cluster.local"}},
		{"pod IP → workload waypoint", "routing.yaml", "10.244.3.40:5432", "10.244.4.1", false,
			want{kind: ToWorkloadWaypoint, dial: "10.244.3.100:15008", authority: "10.244.3.40:5432", ids: []string{demoWP}, workload: "db", waypoint: "waypoint-6c8d9f5b7-abcde"}},
		{"the workload waypoint itself goes to the pod", "routing.yaml", "10.244.3.40:5432", "10.244.3.100", false,
			want{kind: Direct, dial: "10.244.3.40:15008", authority: "10.244.3.40:5432", ids: []string{"spiffe://cluster.local/ns/demo/sa/db"}, workload: "db"}},
		{"service waypoint by hostname, own HBONE port", "routing.yaml", "10.96.1.50:443", "10.244.4.1", false,
			want{kind: ToServiceWaypoint, dial: "10.244.3.100:15009", authority: "10.96.1.50:443", ids: []string{demoWP}, service: "api.demo.svc.cluster.local", waypoint: "waypoint-6c8d9f5b7-abcde"}},
		{"the service waypoint itself goes to the pod", "routing.yaml", "10.96.1.50:443", "10.244.3.100", false,
			want{kind: Direct, dial: "10.244.3.50:15008", authority: "10.244.3.50:8443", ids: []string{"spiffe://cluster.local/ns/demo/sa/api"}, workload: "api-1", service: "api.demo.svc.cluster.local"}},
		{"missing waypoint", "routing.yaml", "10.96.1.60:80", "10.244.4.1", false,
			want{err: "waypoint demo/nowhere.demo.svc.cluster.local: no such service"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pick := func(n int) int { return 0 }
			if tc.last {
				pick = func(n int) int { return n - 1 }
			}
			s := load(t, tc.file, WithPicker(pick))
			var src *workloadapi.Workload
			if tc.src != "" {
				if src = s.WorkloadByIP(ip(tc.src)); src == nil {
					t.Fatalf("no source %s", tc.src)
				}
			}
			r, err := s.Route(ap(tc.dst), src)
			if tc.want.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want.err) {
					t.Fatalf("error %v, want %q (route %+v)", err, tc.want.err, r)
				}
				if strings.Contains(tc.want.err, "no healthy upstream") && !errors.Is(err, ErrNoHealthyUpstream) {
					t.Errorf("%v is not ErrNoHealthyUpstream", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := want{kind: r.Kind, dial: r.Dial.String(), ids: r.Identities, workload: r.Workload.GetName(), service: r.Service.GetHostname(), waypoint: r.Waypoint.GetName()}
			if r.Authority.IsValid() {
				got.authority = r.Authority.String()
			}
			if got.kind != tc.want.kind || got.dial != tc.want.dial || got.authority != tc.want.authority || !slices.Equal(got.ids, tc.want.ids) ||
				got.workload != tc.want.workload || got.service != tc.want.service || got.waypoint != tc.want.waypoint {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
			if r.HBONE() != (r.Kind != Passthrough) || (r.Kind == Passthrough && (r.Identities != nil || r.Authority.IsValid())) {
				t.Errorf("inconsistent route %+v", r)
			}
		})
	}
}

// TestRoundRobin: without a picker, successive connections to a VIP take the healthy
// endpoints in turn.
func TestRoundRobin(t *testing.T) {
	s := load(t, "routing.yaml")
	var got []string
	for range 4 {
		r, err := s.Route(ap("10.96.1.10:80"), nil)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, r.Workload.GetName())
	}
	if want := []string{"backend-1", "backend-3", "backend-1", "backend-3"}; !slices.Equal(got, want) {
		t.Errorf("%v, want %v", got, want)
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{Passthrough: "passthrough", Direct: "direct", ToServiceWaypoint: "service-waypoint", ToWorkloadWaypoint: "workload-waypoint", 9: "Kind(9)"} {
		if k.String() != want {
			t.Errorf("%d: %q", k, k.String())
		}
	}
}
