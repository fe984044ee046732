package xds

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"istio.io/istio/pkg/workloadapi"

	"github.com/goambient/goambient/policies/l4"
	"github.com/goambient/goambient/ztunnel/state"
)

// FuzzWorkloadAPI applies arbitrary istio.workload.Address and istio.security.Authorization
// resources (their bytes, as a control plane would send them) to a ztunnel's state, as delta
// responses: two addresses, then an authorization, then, when asked, the removal of the first
// address. No panic; a response that is refused changes nothing and its error names the
// resource; a State that is accepted answers every lookup the proxy makes and dumps to a file
// that loads back as the same resources.
func FuzzWorkloadAPI(f *testing.F) {
	for _, file := range []string{"handson.yaml", "handson-waypoint.yaml", "routing.yaml"} {
		st, err := state.LoadFile(filepath.Join("..", "state", "testdata", file))
		if err != nil {
			f.Fatal(err)
		}
		r := st.Resources()
		var addrs [][]byte
		for _, w := range r.Workloads {
			addrs = append(addrs, mustMarshal(f, &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}))
		}
		for _, s := range r.Services {
			addrs = append(addrs, mustMarshal(f, &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}}))
		}
		authz := []byte{}
		if len(r.Authorizations) > 0 {
			authz = mustMarshal(f, r.Authorizations[0])
		}
		for i := 0; i+1 < len(addrs); i += 2 {
			f.Add(addrs[i], addrs[i+1], authz, i%4 == 0)
		}
	}
	f.Fuzz(func(t *testing.T, addr1, addr2, authz []byte, remove bool) {
		store := state.NewStore(nil)
		c, err := New(Options{Address: "fuzz:1", Store: store})
		if err != nil {
			t.Fatal(err)
		}
		res := func(name string, b []byte, typ string) *discovery.Resource {
			return &discovery.Resource{Name: name, Version: "1", Resource: &anypb.Any{TypeUrl: typ, Value: b}}
		}
		steps := []*discovery.DeltaDiscoveryResponse{
			{TypeUrl: AddressType, Resources: []*discovery.Resource{res("addr/1", addr1, AddressType), res("addr/2", addr2, AddressType)}},
			{TypeUrl: AuthorizationType, Resources: []*discovery.Resource{res("authz/1", authz, AuthorizationType)}},
		}
		if remove {
			steps = append(steps, &discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, RemovedResources: []string{"addr/1"}})
		}
		for _, resp := range steps {
			before := store.Load()
			err := c.apply(resp)
			after := store.Load()
			if err != nil {
				if after != before {
					t.Fatalf("a refused response (%v) changed the state", err)
				}
				if !namesResource(err.Error(), resp) {
					t.Errorf("error %q names none of the response's resources", err)
				}
				continue
			}
			exercise(t, after)
		}
	})
}

func mustMarshal(f *testing.F, m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// namesResource reports whether msg names one of resp's resources (or the removed one whose
// absence broke the set, which is one of the accepted resources: "addr/").
func namesResource(msg string, resp *discovery.DeltaDiscoveryResponse) bool {
	for _, r := range resp.GetResources() {
		if strings.Contains(msg, r.GetName()) {
			return true
		}
	}
	return strings.Contains(msg, "addr/") || strings.Contains(msg, "authz/")
}

// exercise makes the lookups the proxy makes on st, for every address it holds, and checks
// that its dump loads back.
func exercise(t *testing.T, st *state.State) {
	r := st.Resources()
	for _, w := range r.Workloads {
		st.Identity(w)
		for _, ip := range st.Addresses(w) {
			st.WorkloadByIP(ip)
			for _, port := range []uint16{80, 8080} {
				dst := netip.AddrPortFrom(ip, port)
				st.Route(dst, w)
				st.Route(dst, nil)
				st.Authorize(w, l4.Conn{SrcIdentity: st.Identity(w), SrcIP: ip, DstIP: ip, DstPort: port})
			}
		}
		if gw := w.GetWaypoint(); gw != nil {
			st.Waypoint(gw)
		}
	}
	for _, s := range r.Services {
		st.Endpoints(s)
		st.Resolve(s.GetHostname(), s.GetNamespace())
		for _, vip := range st.VIPs(s) {
			for _, p := range s.GetPorts() {
				st.Route(netip.AddrPortFrom(vip, uint16(p.GetServicePort())), nil)
				for _, ep := range st.Endpoints(s) {
					st.TargetPort(s, ep, uint16(p.GetServicePort()))
				}
			}
		}
		if gw := s.GetWaypoint(); gw != nil {
			st.Waypoint(gw)
		}
	}
	dump, err := st.ConfigDump()
	if err != nil {
		t.Fatalf("config dump: %v", err)
	}
	back, err := state.Parse(dump, "dump")
	if err != nil {
		t.Fatalf("the config dump of an accepted state does not load back: %v\n%s", err, dump)
	}
	br := back.Resources()
	if !equalMsgs(r.Workloads, br.Workloads) || !equalMsgs(r.Services, br.Services) || !equalMsgs(r.Authorizations, br.Authorizations) {
		t.Errorf("the config dump loads back as another state:\n%s", dump)
	}
}

// equalMsgs compares the messages without their unknown fields, which a dump (protojson)
// does not carry.
func equalMsgs[M proto.Message](a, b []M) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x := proto.Clone(a[i])
		dropUnknown(x.ProtoReflect())
		if !proto.Equal(x, b[i]) {
			return false
		}
	}
	return true
}

func dropUnknown(m protoreflect.Message) {
	m.SetUnknown(nil)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := range v.List().Len() {
				dropUnknown(v.List().Get(i).Message())
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				dropUnknown(mv.Message())
				return true
			})
		case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
			dropUnknown(v.Message())
		}
		return true
	})
}

// A resource that state.New refuses is named in the error (the NACK), not only its index in
// a list the control plane never sees; the state stays the last good one.
func TestRefusedResourceIsNamed(t *testing.T) {
	store := state.NewStore(nil)
	c, err := New(Options{Address: "x:1", Store: store})
	if err != nil {
		t.Fatal(err)
	}
	wl := func(uid string, addr []byte) []byte {
		b, err := proto.Marshal(&workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{Uid: uid, Addresses: [][]byte{addr}}}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := &discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Resources: []*discovery.Resource{
		{Name: "Kubernetes//Pod/ns/a", Resource: &anypb.Any{TypeUrl: AddressType, Value: wl("a", []byte{10, 0, 0, 1})}},
	}}
	if err := c.apply(good); err != nil {
		t.Fatal(err)
	}
	last := store.Load()
	bad := &discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Resources: []*discovery.Resource{
		{Name: "Kubernetes//Pod/ns/b", Resource: &anypb.Any{TypeUrl: AddressType, Value: wl("b", []byte{10, 0, 0})}},
	}}
	err = c.apply(bad)
	want := "Kubernetes//Pod/ns/b: workloads[1].addresses[0]: 3 bytes is not an IPv4 or IPv6 address"
	if err == nil || err.Error() != want {
		t.Errorf("error %v, want %q", err, want)
	}
	if store.Load() != last {
		t.Error("the refused response changed the state")
	}
}
