package wds

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"sigs.k8s.io/yaml"

	"github.com/goambient/goambient/xdsserver/internal/golden"
	"github.com/goambient/goambient/xdsserver/kubeobj"
	"github.com/goambient/goambient/xdsserver/model"
)

// translate builds the mesh of one input file with the default configuration.
func translate(t *testing.T, in string, opts Options) (*model.Mesh, *Resources) {
	t.Helper()
	data, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	set, problems, err := kubeobj.Load(data, in)
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Build(set, model.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	m.Errors = append(problems, m.Errors...)
	if err := m.Validate(); err != nil {
		t.Fatalf("the built mesh is not valid: %v", err)
	}
	return m, Translate(m, opts)
}

// render is the golden form: each resource's protojson (field names as in the .proto), with
// the addresses it carries decoded alongside for the reader.
func render(t *testing.T, m *model.Mesh, r *Resources) string {
	t.Helper()
	marshal := func(msg proto.Message) any {
		js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := json.Unmarshal(js, &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	type entry struct {
		Name     string   `json:"name"`
		IPs      []string `json:"ips,omitempty"`
		Waypoint string   `json:"waypoint,omitempty"`
		Resource any      `json:"resource"`
	}
	var out struct {
		Addresses      []entry  `json:"addresses"`
		Authorizations []entry  `json:"authorizations"`
		Errors         []string `json:"errors,omitempty"`
		Warnings       []string `json:"warnings,omitempty"`
	}
	out.Addresses, out.Authorizations = []entry{}, []entry{}
	for _, a := range r.Addresses {
		e := entry{Name: AddressName(a), Resource: marshal(a)}
		var wp *workloadapi.GatewayAddress
		if w := a.GetWorkload(); w != nil {
			for _, b := range w.GetAddresses() {
				e.IPs = append(e.IPs, ipString(b))
			}
			wp = w.GetWaypoint()
		}
		if s := a.GetService(); s != nil {
			for _, na := range s.GetAddresses() {
				e.IPs = append(e.IPs, ipString(na.GetAddress()))
			}
			wp = s.GetWaypoint()
		}
		if wp != nil {
			e.Waypoint = ipString(wp.GetAddress().GetAddress())
		}
		out.Addresses = append(out.Addresses, e)
	}
	for _, a := range r.Authorizations {
		out.Authorizations = append(out.Authorizations, entry{Name: AuthorizationName(a), Resource: marshal(a)})
	}
	for _, e := range m.Errors {
		out.Errors = append(out.Errors, e.Error())
	}
	for _, e := range append(m.Warnings, r.Warnings...) {
		out.Warnings = append(out.Warnings, e.Error())
	}
	y, err := yaml.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	return string(y)
}

func ipString(b []byte) string {
	ip, ok := netip.AddrFromSlice(b)
	if !ok {
		return "?"
	}
	return ip.String()
}

func TestTranslateGolden(t *testing.T) {
	ins, _ := filepath.Glob("testdata/*.in.yaml")
	if len(ins) == 0 {
		t.Fatal("no inputs")
	}
	for _, in := range ins {
		t.Run(strings.TrimSuffix(filepath.Base(in), ".in.yaml"), func(t *testing.T) {
			m, r := translate(t, in, Options{})
			golden.Check(t, strings.TrimSuffix(in, ".in.yaml")+".out.yaml", render(t, m, r))
			// The same mesh translates to the same resources.
			_, again := translate(t, in, Options{})
			for i := range r.Addresses {
				if !proto.Equal(r.Addresses[i], again.Addresses[i]) {
					t.Errorf("translation is not deterministic at %s", AddressName(r.Addresses[i]))
				}
			}
		})
	}
}

func TestGoldensHaveInputs(t *testing.T) {
	outs, _ := filepath.Glob("testdata/*.out.yaml")
	for _, o := range outs {
		if _, err := os.Stat(strings.TrimSuffix(o, ".out.yaml") + ".in.yaml"); err != nil {
			t.Errorf("%s has no input: delete it", o)
		}
	}
}

func TestWaypointHostnameAndByType(t *testing.T) {
	_, r := translate(t, "testdata/handson-waypoint.in.yaml", Options{WaypointHostname: true})
	byType := r.ByType()
	svc, ok := byType[AddressType]["handson/handson.handson.svc.cluster.local"].(*workloadapi.Address)
	if !ok {
		t.Fatalf("no service handson/handson.handson.svc.cluster.local in %v", byType[AddressType])
	}
	wp := svc.GetService().GetWaypoint()
	if h := wp.GetHostname(); h.GetNamespace() != "handson" || h.GetHostname() != "handson-istio-waypoint.handson.svc.cluster.local" || wp.GetHboneMtlsPort() != 15008 {
		t.Errorf("waypoint = %v", wp)
	}
	if _, ok := byType[AddressType]["Kubernetes//Pod/handson/handson-blue"]; !ok || len(byType[AddressType]) != len(r.Addresses) {
		t.Errorf("addresses by name: %d of %d", len(byType[AddressType]), len(r.Addresses))
	}
	_, r = translate(t, "testdata/handson-l4.in.yaml", Options{})
	if _, ok := r.ByType()[AuthorizationType]["handson/layer4-authz"]; !ok {
		t.Errorf("no authorization handson/layer4-authz")
	}
}
