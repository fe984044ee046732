package state

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/policies/l4"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
)

const handsonManifests = "../../manifests/examples/handson/"

func load(t testing.TB, file string, opts ...Option) *State {
	t.Helper()
	s, err := LoadFile("testdata/"+file, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func byName(t testing.TB, s *State, ns, name string) *workloadapi.Workload {
	t.Helper()
	for _, w := range s.Resources().Workloads {
		if w.GetNamespace() == ns && w.GetName() == name {
			return w
		}
	}
	t.Fatalf("no workload %s/%s", ns, name)
	return nil
}

func names(ws []*workloadapi.Workload) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.GetName())
	}
	return out
}

func TestLookups(t *testing.T) {
	s := load(t, "handson.yaml")
	if w := s.WorkloadByIP(ip("10.244.2.5")); w.GetName() != "handson-blue" || w.GetNode() != "worker2" {
		t.Errorf("10.244.2.5 → %v", w)
	}
	if w := s.WorkloadByIP(ip("::ffff:10.244.1.3")); w.GetName() != "curl-allow" {
		t.Errorf("an IPv4-mapped address should find curl-allow, got %v", w)
	}
	if w := s.WorkloadByIP(ip("10.244.9.9")); w != nil {
		t.Errorf("unknown IP → %v", w)
	}
	svc := s.ServiceByVIP(ip("10.96.0.10"))
	if svc.GetHostname() != "handson.handson.svc.cluster.local" || s.Service("handson/handson.handson.svc.cluster.local") != svc {
		t.Fatalf("VIP 10.96.0.10 → %v", svc)
	}
	if s.ServiceByVIP(ip("10.244.2.5")) != nil {
		t.Error("a pod IP is not a VIP")
	}
	if tp, ok := s.ServicePort(svc, 8080); !ok || tp != 8080 {
		t.Errorf("port 8080 → %d %v", tp, ok)
	}
	if _, ok := s.ServicePort(svc, 9090); ok {
		t.Error("port 9090 is not declared")
	}
	if got := names(s.Endpoints(svc)); !slices.Equal(got, []string{"handson-blue"}) {
		t.Errorf("endpoints %v", got)
	}
	if got := s.VIPs(svc); !slices.Equal(got, []netip.Addr{ip("10.96.0.10")}) {
		t.Errorf("VIPs %v", got)
	}
	if got := s.Identity(byName(t, s, "handson", "handson-blue")); got != "spiffe://cluster.local/ns/handson/sa/handson" {
		t.Errorf("identity %q", got)
	}
}

// TestEndpoints: UNHEALTHY workloads are skipped; target ports come from the endpoint's own
// mapping, else the service's target port, else the service port.
func TestEndpoints(t *testing.T) {
	s := load(t, "routing.yaml")
	for _, tc := range []struct {
		svc  string
		eps  []string
		port uint16
		want []uint16 // target port per endpoint
	}{
		{"backend", []string{"backend-1", "backend-3"}, 80, []uint16{8080, 9090}},
		{"legacy", []string{"legacy"}, 80, []uint16{8000}},
		{"broken", nil, 80, nil},
		{"waypoint", []string{"waypoint-6c8d9f5b7-abcde"}, 15008, []uint16{15008}},
	} {
		t.Run(tc.svc, func(t *testing.T) {
			svc := s.Service("demo/" + tc.svc + ".demo.svc.cluster.local")
			eps := s.Endpoints(svc)
			if got := names(eps); !slices.Equal(got, tc.eps) {
				t.Fatalf("endpoints %v, want %v", got, tc.eps)
			}
			for i, ep := range eps {
				if got, ok := s.TargetPort(svc, ep, tc.port); !ok || got != tc.want[i] {
					t.Errorf("%s: target port %d %v, want %d", ep.GetName(), got, ok, tc.want[i])
				}
				if _, ok := s.TargetPort(svc, ep, 81); ok {
					t.Errorf("%s: port 81 is declared nowhere", ep.GetName())
				}
			}
		})
	}
	// ALLOW_ALL health policy keeps the UNHEALTHY endpoint.
	res := s.Resources()
	broken := proto.Clone(s.Service("demo/broken.demo.svc.cluster.local")).(*workloadapi.Service)
	broken.LoadBalancing = &workloadapi.LoadBalancing{HealthPolicy: workloadapi.LoadBalancing_ALLOW_ALL}
	for i, sv := range res.Services {
		if sv.GetName() == "broken" {
			res.Services[i] = broken
		}
	}
	s2, err := New(res)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(s2.Endpoints(broken)); !slices.Equal(got, []string{"broken-1"}) {
		t.Errorf("ALLOW_ALL endpoints %v", got)
	}
}

func TestResolve(t *testing.T) {
	s := load(t, "routing.yaml", WithClusterDomain("cluster.local"))
	h := load(t, "handson.yaml")
	custom, err := New(Resources{Services: []*workloadapi.Service{{
		Name: "handson", Namespace: "handson", Hostname: "handson.handson.svc.mesh.example",
		Addresses: []*workloadapi.NetworkAddress{{Address: ip("10.96.0.10").AsSlice()}},
	}}}, WithClusterDomain("mesh.example."))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		st         *State
		name, from string
		want       string // hostname; "" when not found
	}{
		{h, "handson", "handson", "handson.handson.svc.cluster.local"},
		{h, "handson.handson", "default", "handson.handson.svc.cluster.local"},
		{h, "handson.handson.svc", "", "handson.handson.svc.cluster.local"},
		{h, "handson.handson.svc.cluster.local", "", "handson.handson.svc.cluster.local"},
		{h, "handson.handson.svc.cluster.local.", "", "handson.handson.svc.cluster.local"},
		{h, "HandsOn.Handson", "", "handson.handson.svc.cluster.local"},
		{h, "handson", "default", ""}, // a short name resolves in the client's namespace only
		{h, "handson.default", "handson", ""},
		{h, "handson.handson.svc.other.local", "", ""},
		{h, "curl", "handson", ""}, // a workload, not a service
		{h, "", "handson", ""},
		{custom, "handson", "handson", "handson.handson.svc.mesh.example"},
		{custom, "handson.handson.svc", "", "handson.handson.svc.mesh.example"},
		{custom, "handson.handson.svc.mesh.example", "", "handson.handson.svc.mesh.example"},
		{custom, "handson.handson.svc.cluster.local", "", ""}, // another cluster's domain
		{s, "backend", "demo", "backend.demo.svc.cluster.local"},
		{s, "api.demo.svc", "", "api.demo.svc.cluster.local"},
		{s, "example.com", "demo", "example.com"}, // a hostname as it is
		{s, "example.com", "other", "example.com"},
	} {
		svc, ok := tc.st.Resolve(tc.name, tc.from)
		if got := svc.GetHostname(); got != tc.want || ok != (tc.want != "") {
			t.Errorf("Resolve(%q, %q) = %q %v, want %q", tc.name, tc.from, got, ok, tc.want)
		}
	}
}

// TestAuthorizeHandson: step 2 of the handson scenario — the L4 DENY policy refuses curl-deny
// on 8080 and nothing else; without it everyone gets in.
func TestAuthorizeHandson(t *testing.T) {
	s := load(t, "handson.yaml")
	dst := s.WorkloadByIP(ip("10.244.2.5"))
	open := s.Resources()
	open.Authorizations = nil
	step1, err := New(open)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		from         string
		port         uint16
		step1, step2 bool
		policy       string
	}{
		{"curl-allow", 8080, true, true, ""},
		{"curl-deny", 8080, true, false, "handson/layer4-authz"},
		{"curl-deny", 9090, true, true, ""},
		{"curl", 8080, true, true, ""},
		{"", 8080, true, true, ""}, // plaintext: the principal does not match, so the DENY does not apply
	} {
		c := l4.Conn{SrcIP: ip("10.244.1.4"), DstIP: ip("10.244.2.5"), DstPort: tc.port}
		if tc.from != "" {
			c.SrcIdentity = "spiffe://cluster.local/ns/handson/sa/" + tc.from
		}
		if r := step1.Authorize(dst, c); r.Allowed != tc.step1 {
			t.Errorf("step 1: %s → :%d: %+v", tc.from, tc.port, r)
		}
		r := s.Authorize(dst, c)
		if r.Allowed != tc.step2 || (!r.Allowed && r.Policy != tc.policy) {
			t.Errorf("step 2: %s → :%d: %+v", tc.from, tc.port, r)
		}
		if !r.Allowed && r.Reason != "explicitly denied by: handson/layer4-authz" {
			t.Errorf("reason %q", r.Reason)
		}
	}
	if r := s.Authorize(nil, l4.Conn{}); r.Allowed {
		t.Error("an unknown destination must be denied")
	}
	// The policy applies to handson-blue only (it is selector-scoped).
	curl := s.WorkloadByIP(ip("10.244.1.5"))
	c := l4.Conn{SrcIdentity: "spiffe://cluster.local/ns/handson/sa/curl-deny", DstPort: 8080}
	if r := s.Authorize(curl, c); !r.Allowed {
		t.Errorf("curl-deny → curl: %+v", r)
	}
}

// TestHandsonPolicyIsTheConversion keeps testdata/handson.yaml's authorization equal to what
// policies.ToZtunnel makes of the example's L4-authorization-policy.yaml, and handson-blue's
// authorization_policies equal to what it says the pod references.
func TestHandsonPolicyIsTheConversion(t *testing.T) {
	objs, errs := policies.LoadPath(handsonManifests + "L4-authorization-policy.yaml")
	for _, e := range errs {
		t.Fatal(e)
	}
	z := policies.ToZtunnel(objs, policies.Options{})
	s := load(t, "handson.yaml")
	got := s.Resources().Authorizations
	want := z.Authorizations()
	if len(got) != len(want) || !slices.EqualFunc(got, want, func(a, b *security.Authorization) bool { return proto.Equal(a, b) }) {
		var js []string
		for _, a := range want {
			b, _ := protojson.Marshal(a)
			js = append(js, string(b))
		}
		t.Errorf("testdata/handson.yaml authorizations differ from the conversion; want:\n%s", strings.Join(js, "\n"))
	}
	blue := byName(t, s, "handson", "handson-blue")
	if want := z.WorkloadPolicies("handson", map[string]string{"app": "handson", "version": "blue"}); !slices.Equal(blue.GetAuthorizationPolicies(), want) {
		t.Errorf("handson-blue authorizationPolicies %v, want %v", blue.GetAuthorizationPolicies(), want)
	}
}

func TestWaypoint(t *testing.T) {
	h := load(t, "handson-waypoint.yaml")
	r := load(t, "routing.yaml")
	for _, tc := range []struct {
		st      *State
		gw      *workloadapi.GatewayAddress
		addr    string
		svc, wl string
		err     string
	}{
		{h, h.ServiceByVIP(ip("10.96.0.10")).GetWaypoint(), "10.96.0.20:15008", "handson-waypoint", "", ""},
		{r, r.WorkloadByIP(ip("10.244.3.40")).GetWaypoint(), "10.96.1.100:15008", "waypoint", "", ""},
		{r, r.ServiceByVIP(ip("10.96.1.50")).GetWaypoint(), "10.96.1.100:15009", "waypoint", "", ""},
		{r, &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Address{Address: &workloadapi.NetworkAddress{Address: ip("10.244.3.100").AsSlice()}}}, "10.244.3.100:15008", "", "waypoint-6c8d9f5b7-abcde", ""},
		{r, r.ServiceByVIP(ip("10.96.1.60")).GetWaypoint(), "", "", "", "nowhere.demo.svc.cluster.local: no such service"},
		{r, &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Address{Address: &workloadapi.NetworkAddress{Address: ip("192.0.2.1").AsSlice()}}}, "", "", "", "192.0.2.1: no service or workload"},
		{r, nil, "", "", "", "no waypoint"},
	} {
		w, err := tc.st.Waypoint(tc.gw)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: error %v, want %q", tc.gw, err, tc.err)
			}
			continue
		}
		if err != nil || w.Addr.String() != tc.addr || w.Service.GetName() != tc.svc || w.Workload.GetName() != tc.wl {
			t.Errorf("%v: %v %v/%v %v", tc.gw, w.Addr, w.Service.GetName(), w.Workload.GetName(), err)
		}
	}
}

// TestNewRejects: keys and addresses must be unique, and present.
func TestNewRejects(t *testing.T) {
	wl := func(uid, addr string) *workloadapi.Workload {
		return &workloadapi.Workload{Uid: uid, Namespace: "demo", Addresses: [][]byte{ip(addr).AsSlice()}}
	}
	svc := func(host, vip string) *workloadapi.Service {
		return &workloadapi.Service{Namespace: "demo", Hostname: host, Addresses: []*workloadapi.NetworkAddress{{Address: ip(vip).AsSlice()}}}
	}
	for _, tc := range []struct {
		name string
		res  Resources
		err  string
	}{
		{"duplicate uid", Resources{Workloads: []*workloadapi.Workload{wl("a", "10.0.0.1"), wl("a", "10.0.0.2")}}, `workloads[1].uid: "a" is used by another workload`},
		{"short address", Resources{Workloads: []*workloadapi.Workload{{Uid: "a", Addresses: [][]byte{{10, 0, 0}}}}}, "workloads[0].addresses[0]: 3 bytes is not an IPv4 or IPv6 address"},
		{"VIP is a pod IP", Resources{Workloads: []*workloadapi.Workload{wl("a", "10.0.0.1")}, Services: []*workloadapi.Service{svc("s.demo.svc.cluster.local", "10.0.0.1")}}, "services[0].addresses[0].address: 10.0.0.1 is already the address of workload a"},
		{"duplicate service", Resources{Services: []*workloadapi.Service{svc("s", "10.96.0.1"), svc("s", "10.96.0.2")}}, "services[1].hostname: service demo/s is defined twice"},
		{"service without hostname", Resources{Services: []*workloadapi.Service{{Namespace: "demo"}}}, "services[0]: namespace and hostname are required"},
		{"duplicate authorization", Resources{Authorizations: []*security.Authorization{{Name: "p", Namespace: "demo"}, {Name: "p", Namespace: "demo"}}}, "authorizations[1].name: authorization demo/p is defined twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.res)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("error %v, want %q", err, tc.err)
			}
		})
	}
	// Host-network workloads share the node's IP and are not looked up by it.
	hn := wl("b", "10.0.0.1")
	hn.NetworkMode = workloadapi.NetworkMode_HOST_NETWORK
	s, err := New(Resources{Workloads: []*workloadapi.Workload{wl("a", "10.0.0.1"), hn}})
	if err != nil {
		t.Fatal(err)
	}
	if s.WorkloadByIP(ip("10.0.0.1")).GetUid() != "a" {
		t.Error("the pod-network workload owns the IP")
	}
}

// TestLookupsDoNotAllocate: the per-connection lookups are map reads.
func TestLookupsDoNotAllocate(t *testing.T) {
	s := load(t, "handson.yaml", WithPicker(func(int) int { return 0 }))
	dst := s.WorkloadByIP(ip("10.244.2.5"))
	svc := s.ServiceByVIP(ip("10.96.0.10"))
	src := s.WorkloadByIP(ip("10.244.1.3"))
	for name, f := range map[string]func(){
		"WorkloadByIP": func() { _ = s.WorkloadByIP(ip("10.244.2.5")) },
		"ServiceByVIP": func() { _ = s.ServiceByVIP(ip("10.96.0.10")) },
		"Endpoints":    func() { _ = s.Endpoints(svc) },
		"TargetPort":   func() { _, _ = s.TargetPort(svc, dst, 8080) },
		"Resolve":      func() { _, _ = s.Resolve("handson.handson.svc.cluster.local", "handson") },
		"Route":        func() { _, _ = s.Route(ap("10.96.0.10:8080"), src) },
	} {
		if n := testing.AllocsPerRun(100, f); n != 0 {
			t.Errorf("%s allocates %.0f times", name, n)
		}
	}
}
