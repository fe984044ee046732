package state

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
)

// TestBadFiles: each bad file is refused with an error naming the file, the list and index,
// and the field.
func TestBadFiles(t *testing.T) {
	for _, tc := range []struct {
		file string
		want string
	}{
		{"malformed.yaml", "testdata/bad/malformed.yaml: not valid YAML or JSON: yaml: line 3"},
		{"unknown-field.yaml", `testdata/bad/unknown-field.yaml: workloads[1].waypoint.hostname.hostnme: unknown field "hostnme" of istio.workload.NamespacedHostname`},
		{"unknown-list.yaml", `testdata/bad/unknown-list.yaml: unknown field "workload" (the lists are workloads, services, authorizations)`},
		{"bad-ip.yaml", `testdata/bad/bad-ip.yaml: services[0].addresses[0].address: "10.96.0.300" is not an IP address`},
		{"bad-enum.yaml", `testdata/bad/bad-enum.yaml: workloads[0]: invalid value for enum field tunnelProtocol: "HBONEX"`},
		{"duplicate-address.yaml", "testdata/bad/duplicate-address.yaml: workloads[1].addresses[0]: 10.0.0.1 is already the address of workload Kubernetes//Pod/demo/a"},
		{"no-uid.yaml", "testdata/bad/no-uid.yaml: workloads[0].uid: required"},
		{"empty.yaml", "testdata/bad/empty.yaml: empty document"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			s, err := LoadFile(filepath.Join("testdata/bad", tc.file))
			if err == nil || s != nil {
				t.Fatalf("loaded: %v", s)
			}
			if !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("error:\n%v\nwant it to start with:\n%s", err, tc.want)
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.File != "testdata/bad/"+tc.file {
				t.Errorf("not a FieldError with the file: %#v", err)
			}
		})
	}
	if _, err := LoadFile("testdata/bad/nope.yaml"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := Parse([]byte(""), "x.yaml"); err == nil || !strings.Contains(err.Error(), "empty file") {
		t.Errorf("empty file: %v", err)
	}
	for doc, want := range map[string]string{
		"[1, 2]":              "the document must be a map",
		"workloads: {uid: a}": "workloads: must be a list",
		"workloads: [a]":      "workloads[0]: must be a map",
		"services: [{ports: [{servicePort: 80, bogus: 1}]}]": `services[0].ports[0].bogus: unknown field "bogus" of istio.workload.Port`,
		"workloads: [{services: {a/b: {ports: [{x: 1}]}}}]":  `workloads[0].services["a/b"].ports[0].x: unknown field "x"`,
	} {
		if _, err := Parse([]byte(doc), "x.yaml"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", doc, err, want)
		}
	}
	// Every problem of a file is reported, not only the first.
	_, err := Parse([]byte("workloads: [{uid: a, addresses: [1.2.3.4.5]}, {uid: b, nope: 1}]"), "x.yaml")
	if err == nil || !strings.Contains(err.Error(), "workloads[0].addresses[0]") || !strings.Contains(err.Error(), "workloads[1].nope") {
		t.Errorf("%v", err)
	}
}

// TestEmptyState: `{}` and empty lists are a valid state with nothing in it.
func TestEmptyState(t *testing.T) {
	for _, doc := range []string{"{}", "workloads: []\nservices: []\nauthorizations: []", "workloads:"} {
		s, err := Parse([]byte(doc), "x.yaml")
		if err != nil {
			t.Fatalf("%q: %v", doc, err)
		}
		if r := s.Resources(); len(r.Workloads)+len(r.Services)+len(r.Authorizations) != 0 {
			t.Errorf("%q: %+v", doc, r)
		}
	}
}

// TestTextualIPs: a textual IP is the same as protojson's base64 bytes; proto field names work
// as well as JSON names; a CIDR in an authorization sets the length.
func TestTextualIPs(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString(ip(s).AsSlice()) }
	text, err := Parse([]byte(`
workloads: [{uid: a, namespace: demo, addresses: ["10.0.0.1", "fd00::1"], waypoint: {address: {address: "10.96.0.9"}}}]
services: [{namespace: demo, hostname: s, addresses: [{address: "10.96.0.1"}]}]
authorizations: [{name: p, namespace: demo, groups: [{rules: [{matches: [{sourceIps: [{address: "10.1.0.0/16"}], not_destination_ips: [{address: "10.2.0.1", length: 32}]}]}]}]}]
`), "text.yaml")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := Parse([]byte(`{
"workloads": [{"uid": "a", "namespace": "demo", "addresses": ["`+b64("10.0.0.1")+`", "`+b64("fd00::1")+`"], "waypoint": {"address": {"address": "`+b64("10.96.0.9")+`"}}}],
"services": [{"namespace": "demo", "hostname": "s", "addresses": [{"address": "`+b64("10.96.0.1")+`"}]}],
"authorizations": [{"name": "p", "namespace": "demo", "groups": [{"rules": [{"matches": [{"sourceIps": [{"address": "`+b64("10.1.0.0")+`", "length": 16}], "notDestinationIps": [{"address": "`+b64("10.2.0.1")+`", "length": 32}]}]}]}]}]
}`), "raw.json")
	if err != nil {
		t.Fatal(err)
	}
	a, b := text.Resources(), raw.Resources()
	if !proto.Equal(a.Workloads[0], b.Workloads[0]) || !proto.Equal(a.Services[0], b.Services[0]) || !proto.Equal(a.Authorizations[0], b.Authorizations[0]) {
		t.Errorf("textual and base64 forms differ:\n%v\n%v", a, b)
	}
	if text.WorkloadByIP(ip("fd00::1")).GetUid() != "a" {
		t.Error("IPv6 address not indexed")
	}
}

// TestConfigDumpRoundTrip: /config_dump is the file format: it loads back to the same state.
func TestConfigDumpRoundTrip(t *testing.T) {
	for _, f := range []string{"handson.yaml", "handson-waypoint.yaml", "routing.yaml"} {
		t.Run(f, func(t *testing.T) {
			s := load(t, f)
			js, err := s.ConfigDump()
			if err != nil {
				t.Fatal(err)
			}
			back, err := Parse(js, "dump.json")
			if err != nil {
				t.Fatalf("%v\n%s", err, js)
			}
			a, b := s.Resources(), back.Resources()
			if len(a.Workloads) != len(b.Workloads) || len(a.Services) != len(b.Services) || len(a.Authorizations) != len(b.Authorizations) {
				t.Fatalf("counts differ")
			}
			for i := range a.Workloads {
				if !proto.Equal(a.Workloads[i], b.Workloads[i]) {
					t.Errorf("workload %d differs", i)
				}
			}
			for i := range a.Services {
				if !proto.Equal(a.Services[i], b.Services[i]) {
					t.Errorf("service %d differs", i)
				}
			}
			for i := range a.Authorizations {
				if !proto.Equal(a.Authorizations[i], b.Authorizations[i]) {
					t.Errorf("authorization %d differs", i)
				}
			}
			if !strings.Contains(string(js), `"uid": "Kubernetes//Pod/`) {
				t.Errorf("dump does not look like protojson:\n%s", js)
			}
		})
	}
	js, err := Empty().ConfigDump()
	if err != nil || strings.Join(strings.Fields(string(js)), "") != `{"workloads":[],"services":[],"authorizations":[]}` {
		t.Errorf("empty dump %s %v", js, err)
	}
}

// Strings with characters JSON allows raw but YAML refuses or reads as line breaks (found by
// ztunnel/xds FuzzWorkloadAPI: a DEL in a hostname) dump to a file that loads back the same.
func TestConfigDumpOddCharacters(t *testing.T) {
	host := "a\x7fb\u0085c\u2028d\u0090e.svc"
	st, err := New(Resources{Services: []*workloadapi.Service{{Namespace: "ns", Hostname: host}}})
	if err != nil {
		t.Fatal(err)
	}
	dump, err := st.ConfigDump()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(dump, "dump")
	if err != nil {
		t.Fatalf("the dump does not load back: %v\n%s", err, dump)
	}
	if got := back.Resources().Services[0].GetHostname(); got != host {
		t.Errorf("hostname %q after the round trip, want %q", got, host)
	}
}
