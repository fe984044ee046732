package app

import (
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"

	golang "github.com/envoyproxy/go-control-plane/contrib/envoy/extensions/filters/http/golang/v3alpha"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/embedded/config"
	"github.com/goambient/goambient/xdsserver/model"
)

// ecds is a waypoint's TypedExtensionConfig made by hand: a plugin name and policies that
// xdsserver would never send (to check what the waypoint refuses).
func ecds(t testing.TB, pluginName, policies string) types.Resource {
	t.Helper()
	cfg, err := authzconfig.EncodeConfig(&authzconfig.Config{Namespace: "handson", Gateway: "handson", GatewayClass: "istio-waypoint", Policies: policies})
	if err != nil {
		t.Fatal(err)
	}
	gc, err := anypb.New(&golang.Config{LibraryId: authzconfig.LibraryID, LibraryPath: authzconfig.LibraryPath, PluginName: pluginName, PluginConfig: cfg})
	if err != nil {
		t.Fatal(err)
	}
	return &core.TypedExtensionConfig{Name: ecdsName, TypedConfig: gc}
}

// handson is handson's step 3 through the embedded waypoint: handson-blue's pod, the
// waypoint with xdsserver's translation of the scenario.
type handson struct {
	*waypoint
	m     *model.Mesh
	blue  *app
	peers chan string
}

const (
	hostname   = "handson.handson.svc.cluster.local"
	waypointSA = "handson-istio-waypoint"
	ecdsName   = "goambient.authz/handson/handson"
)

func setup(t testing.TB, cfg ...wpConfig) *handson {
	t.Helper()
	tmpl, err := os.ReadFile("testdata/handson.yaml")
	if err != nil {
		t.Fatal(err)
	}
	a := newAddrs()
	p := newPKI(t, "handson/"+waypointSA)
	h := &handson{m: buildMesh(t, a.render(string(tmpl)))}
	h.blue, h.peers = startPod(t, p, "handson-blue", "handson", "handson", a.of("blue"), 8080)
	h.waypoint = startWaypoint(t, a, p, "handson", waypointSA, waypointSA, 1, cfg...)
	return h
}

// configure serves the translation; without ECDS, the authz filter's config is held back.
func (h *handson) configure(t testing.TB, withECDS bool) {
	t.Helper()
	h.cp.serve(t, h.m, "handson/handson")
	if !withECDS {
		h.cp.set(t, config.ExtensionType, map[string]types.Resource{})
	}
}

func (h *handson) vip() netip.AddrPort { return netip.AddrPortFrom(h.a.of("vip"), 8080) }

func (h *handson) curlAddr() netip.AddrPort { return netip.AddrPortFrom(h.a.of("curl"), 40000) }

func (h *handson) connect(t testing.TB, sa string) *stream {
	t.Helper()
	return h.waypoint.connect(t, "handson", sa, h.vip(), "handson:8080", h.curlAddr())
}

const denied = "rbac_access_denied_matched_policy[ns[handson]-policy[layer7-authz]-rule[0]]"

// TestHandsonStep3 is handson's step 3 through the embedded waypoint: GET → 200 from
// handson-blue, POST and DELETE from curl → 403 RBAC: access denied with Istio's details, POST
// from another identity → 200; the access log says so with Envoy's field names.
func TestHandsonStep3(t *testing.T) {
	f := setup(t)
	if got := f.ready(); got != http.StatusServiceUnavailable {
		t.Fatalf("readiness before any config = %d, want 503", got)
	}
	f.configure(t, true)
	eventually(t, "readiness 200", func() bool { return f.ready() == http.StatusOK })

	s := f.connect(t, "curl")
	if code, body := s.do(t, "GET", "/", ""); code != 200 || body != "handson-blue GET / 0" {
		t.Fatalf("GET / = %d %q, want 200 from handson-blue", code, body)
	}
	// The same stream carries the next requests (keep-alive).
	if code, body := s.do(t, "POST", "/", "{}"); code != 403 || body != "RBAC: access denied" {
		t.Fatalf("POST / = %d %q, want 403 RBAC: access denied", code, body)
	}
	if code, _ := s.do(t, "DELETE", "/id/123", ""); code != 403 {
		t.Fatalf("DELETE /id/123 = %d, want 403", code)
	}
	if code, body := f.connect(t, "curl-allow").do(t, "POST", "/", "{}"); code != 200 || body != "handson-blue POST / 2" {
		t.Fatalf("POST / from curl-allow = %d %q, want 200", code, body)
	}
	if got := f.blue.requests(); strings.Join(got, ",") != "GET /,POST /" {
		t.Errorf("handson-blue saw %v, want the GET and curl-allow's POST only", got)
	}
	peer := <-f.peers
	if want := "spiffe://cluster.local/ns/handson/sa/" + waypointSA + " " + f.a.of("blue").String() + ":8080 for=\"" + f.curlAddr().String() + "\";host=" + hostname; peer != want {
		t.Errorf("handson-blue's ztunnel saw %q, want %q", peer, want)
	}

	logs := f.log.entries(t)
	if len(logs) != 4 {
		t.Fatalf("%d access-log lines, want 4: %v", len(logs), logs)
	}
	get, post, del := logs[0], logs[1], logs[2]
	check := func(name string, e map[string]any, want map[string]any) {
		t.Helper()
		for k, v := range want {
			if e[k] != v {
				t.Errorf("%s: %s = %#v, want %#v", name, k, e[k], v)
			}
		}
	}
	cluster := "inbound-vip|8080|http|" + hostname
	check("GET", get, map[string]any{
		"method": "GET", "path": "/", "response_code": 200.0, "response_code_details": "via_upstream", "protocol": "HTTP/1.1",
		"upstream_cluster": cluster, "upstream_host": "envoy://connect_originate/" + f.a.of("blue").String() + ":8080",
		"authority": "handson:8080", "downstream_remote_address": f.curlAddr().String(), "route_name": "default", "response_flags": "-",
		"downstream_local_address": f.vip().String(), "bytes_received": 0.0, "bytes_sent": 20.0,
	})
	check("POST", post, map[string]any{
		"method": "POST", "response_code": 403.0, "response_code_details": denied, "upstream_cluster": cluster,
		"upstream_host": nil, "bytes_received": 2.0, "bytes_sent": 19.0,
	})
	check("DELETE", del, map[string]any{"method": "DELETE", "path": "/id/123", "response_code": 403.0, "response_code_details": denied})
	for _, k := range []string{"start_time", "duration"} {
		if _, ok := post[k]; !ok {
			t.Errorf("no %s in %v", k, post)
		}
	}
}

// TestFailClosedAndBadConfig: before the filter config arrives every request is denied and the
// waypoint is not ready; a config the parser rejects is NACKed and the previous one goes on.
func TestFailClosedAndBadConfig(t *testing.T) {
	f := setup(t)
	f.configure(t, false)
	eventually(t, "routes and addresses", func() bool {
		snap := f.wp.Store.Load()
		return len(snap.Tables) == 1 && snap.State.ServiceByVIP(f.vip().Addr()) != nil
	})
	if got := f.ready(); got != http.StatusServiceUnavailable {
		t.Fatalf("readiness without a filter config = %d, want 503", got)
	}
	s := f.connect(t, "curl-allow")
	if code, body := s.do(t, "GET", "/", ""); code != 403 || body != "RBAC: access denied" {
		t.Fatalf("GET without a filter config = %d %q, want 403 (fail closed)", code, body)
	}

	f.configure(t, true)
	eventually(t, "readiness 200", func() bool { return f.ready() == http.StatusOK })
	if code, _ := s.do(t, "GET", "/", ""); code != 200 {
		t.Fatalf("GET with the config = %d, want 200", code)
	}

	// A policy document the filter's parser rejects, then a plugin_name Envoy would not find.
	bad := map[string]types.Resource{ecdsName: ecds(t, authzconfig.PluginName, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: handson}\nspec: {action: NOPE}\n")}
	f.cp.set(t, config.ExtensionType, bad)
	if msg := <-f.cp.nacks; !strings.Contains(msg, ecdsName) {
		t.Errorf("NACK %q does not name the resource", msg)
	}
	f.cp.set(t, config.ExtensionType, map[string]types.Resource{ecdsName: ecds(t, "authz", "")})
	if msg := <-f.cp.nacks; !strings.Contains(msg, "plugin_name") {
		t.Errorf("NACK %q does not say plugin_name", msg)
	}
	if code, body := f.connect(t, "curl").do(t, "POST", "/", "{}"); code != 403 || body != "RBAC: access denied" {
		t.Fatalf("POST after rejected configs = %d %q, want the old config's 403", code, body)
	}
	if !f.wp.Store.Ready() || f.wp.XDS.Stats().NACKs < 2 {
		t.Errorf("ready=%v nacks=%d, want ready with 2 NACKs", f.wp.Store.Ready(), f.wp.XDS.Stats().NACKs)
	}
}
