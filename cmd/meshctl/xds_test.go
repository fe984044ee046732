package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/source/files"
	"github.com/goambient/goambient/xdsserver/waypointxds"
	"github.com/goambient/goambient/xdsserver/wds"
)

const handson = examples + "handson/"

func runMeshctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// translated is what xdsserver --loopback would hold for the paths.
func translated(t *testing.T, paths ...string) (*model.Mesh, map[string]map[string]proto.Message) {
	t.Helper()
	cfg := model.DefaultConfig()
	cfg.Placement = model.LoopbackPlacement
	m, err := files.New(files.Options{Paths: paths, Model: cfg}).Load()
	if err != nil {
		t.Fatal(err)
	}
	return m, wds.Translate(m, wds.Options{}).ByType()
}

// TestXDSDumpZtunnel: the JSON dump of handson (steps 1–2) for worker2 is exactly the
// translated workload API, resource by resource; the YAML dump names them with their decoded
// addresses.
func TestXDSDumpZtunnel(t *testing.T) {
	files := []string{handson + "mesh.yaml", handson + "L4-authorization-policy.yaml"}
	args := []string{"xds", "dump", "--node", "worker2", "--loopback", "--config-dir", files[0], "--config-dir", files[1]}
	code, out, errOut := runMeshctl(t, append(args, "-o", "json")...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var d struct {
		Node      string
		Resources []struct {
			Type, Name string
			Addresses  []string
			Resource   json.RawMessage
		}
	}
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	_, want := translated(t, files...)
	got := map[string]int{}
	for _, r := range d.Resources {
		got[r.Type]++
		w, ok := want[r.Type][r.Name]
		if !ok {
			t.Errorf("dumped %s %s, which xdsserver does not send", r.Type, r.Name)
			continue
		}
		var m proto.Message = &workloadapi.Address{}
		if r.Type == wds.AuthorizationType {
			m = &security.Authorization{}
		}
		if err := protojson.Unmarshal(r.Resource, m); err != nil {
			t.Fatalf("%s: %v", r.Name, err)
		}
		if !proto.Equal(m, w) {
			t.Errorf("%s differs from the translation:\n got %v\nwant %v", r.Name, m, w)
		}
		if r.Type == wds.AddressType && (len(r.Addresses) == 0 || !strings.HasPrefix(r.Addresses[0], "127.")) {
			t.Errorf("%s: decoded addresses %v, want loopback ones", r.Name, r.Addresses)
		}
	}
	for typ, byName := range want {
		if got[typ] != len(byName) {
			t.Errorf("%s: dumped %d resources, xdsserver sends %d", typ, got[typ], len(byName))
		}
	}
	if d.Node != "worker2" || got[wds.AddressType] != 5 || got[wds.AuthorizationType] != 1 {
		t.Errorf("node %q, %v; want worker2 with 4 workloads + 1 service and 1 authorization", d.Node, got)
	}

	code, out, errOut = runMeshctl(t, args...)
	if code != 0 {
		t.Fatalf("yaml: exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"node: worker2", "name: Kubernetes//Pod/handson/handson-blue", "name: handson/handson.handson.svc.cluster.local",
		"name: handson/layer4-authz", "type: type.googleapis.com/istio.security.Authorization", "- handson/layer4-authz",
		"cluster.local/ns/handson/sa/curl-deny", "- 127.10.",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("yaml dump lacks %q:\n%s", want, out)
		}
	}
}

func TestXDSDumpOptions(t *testing.T) {
	mesh := handson + "mesh.yaml"
	for _, c := range []struct {
		name string
		args []string
		code int
		out  []string // in stdout when code is 0, else in stderr
		not  []string
	}{
		{"only authorizations", []string{"--node", "worker", "--config-dir", handson[:len(handson)-1], "--type", "authorization"}, 0,
			// layer7-authz targets the waypoint (targetRefs): ztunnels do not get it.
			[]string{"name: handson/layer4-authz"}, []string{"istio.workload.Address", "layer7-authz"}},
		{"a type URL", []string{"--node", "worker", "--config-dir", mesh, "--type", wds.AddressType}, 0,
			[]string{"name: Kubernetes//Pod/handson/curl"}, []string{"istio.security.Authorization"}},
		{"no loopback: kind's ranges", []string{"--node", "worker", "--config-dir", mesh, "--type", "Address"}, 0,
			[]string{"- 10.244.", "- 10.96."}, []string{"- 127.10."}},
		{"a node id", []string{"--node", "ztunnel~127.0.0.1~ztunnel-x.istio-system~istio-system.svc.cluster.local", "--config-dir", mesh}, 0,
			[]string{"name: Kubernetes//Pod/handson/handson-blue"}, nil},
		{"no --node", []string{"--config-dir", mesh}, 2, []string{"--node is required"}, nil},
		{"no --config-dir", []string{"--node", "worker"}, 2, []string{"exactly one of --config-dir and --xds-address is required"}, nil},
		{"bad -o", []string{"--node", "worker", "--config-dir", mesh, "-o", "xml"}, 2, []string{"-o must be yaml or json"}, nil},
		{"a type ztunnels do not get", []string{"--node", "worker", "--config-dir", mesh, "--type", "lds"}, 2, []string{`--type "lds": this node gets none of that type`}, nil},
		{"a missing folder", []string{"--node", "worker", "--config-dir", "nope/"}, 1, []string{"nope/: no such file or directory"}, nil},
		{"an unknown waypoint", []string{"--node", "waypoint~127.0.0.1~nope.handson~handson.svc.cluster.local", "--config-dir", mesh}, 1,
			[]string{"no waypoint runs pod handson/nope"}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out, errOut := runMeshctl(t, append([]string{"xds", "dump"}, c.args...)...)
			if code != c.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, c.code, out, errOut)
			}
			text := out
			if code != 0 {
				text = errOut
			}
			for _, w := range c.out {
				if !strings.Contains(text, w) {
					t.Errorf("output lacks %q:\n%s", w, text)
				}
			}
			for _, w := range c.not {
				if strings.Contains(text, w) {
					t.Errorf("output has %q:\n%s", w, text)
				}
			}
		})
	}
}

// TestXDSDumpWaypoint: handson step 3's waypoint node gets Istio's waypoint listeners, its
// service's cluster and the authz filter's extension config.
func TestXDSDumpWaypoint(t *testing.T) {
	paths := []string{handson + "mesh.yaml", handson + "k8s-gateway.yaml", handson + "L7-authorization-policy.yaml"}
	m, _ := translated(t, paths...)
	if len(m.Waypoints) != 1 || len(m.Waypoints[0].Instances) != 1 {
		t.Fatalf("want one waypoint with one pod, got %+v", m.Waypoints)
	}
	pod := m.Waypoints[0].Instances[0]
	node := waypointxds.NodeID(pod.IPs[0].String(), pod.Name, pod.Namespace, "cluster.local")
	args := []string{"xds", "dump", "--node", node, "--loopback"}
	for _, p := range paths {
		args = append(args, "--config-dir", p)
	}
	code, out, errOut := runMeshctl(t, args...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"waypoint: handson/handson", "name: " + waypointxds.ConnectTerminate, "name: " + waypointxds.MainInternal,
		"name: " + waypointxds.ServiceName(8080, "handson.handson.svc.cluster.local"),
		"name: " + waypointxds.ExtensionConfigName("handson", "handson"),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("waypoint dump lacks %q", want)
		}
	}
	code, out, _ = runMeshctl(t, append(args, "--type", "lds")...)
	if code != 0 || strings.Contains(out, "envoy.config.cluster.v3.Cluster") || !strings.Contains(out, "envoy.config.listener.v3.Listener") {
		t.Errorf("--type lds: exit %d, output:\n%s", code, out)
	}
}
