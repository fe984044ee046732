package app

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/goambient/goambient/cmd/waypoint/internal/authzhost"
	"github.com/goambient/goambient/cmd/waypoint/internal/config"
	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/ztunnel/hbone"
)

const l7Policy = "../../../../manifests/examples/handson/L7-authorization-policy.yaml"

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// entries returns the access-log lines as maps.
func (s *syncBuf) entries(t testing.TB) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("access log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type fixture struct {
	m      mesh
	p      *pki
	app    *app
	peers  chan string
	cp     *cp
	wp     *App
	log    *syncBuf
	client *hbone.Client
}

func setup(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{m: newMesh(), log: &syncBuf{}}
	f.p = newPKI(t, waypointSA)
	f.app = startApp(t)
	f.peers = startDest(t, f.p, f.m, f.app.addr)
	f.cp = startCP(t)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	wp, err := Start(context.Background(), Options{
		XDSAddress: f.cp.addr, NodeID: f.m.nodeID(), Listen: netip.AddrPortFrom(f.m.waypoint, 0).String(), ReadyListen: "127.0.0.1:0",
		SVIDDir: f.p.dir, AccessLog: f.log, Logger: logger, Host: authzhost.New(logger),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(wp.Stop)
	f.wp = wp
	f.client, err = hbone.NewClient(hbone.ClientConfig{Bundle: f.p.ca.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.client.Close() })
	return f
}

func (f *fixture) ready() int {
	resp, err := http.Get("http://" + f.wp.ReadyAddr().String() + "/healthz/ready")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (f *fixture) configure(t testing.TB, withECDS bool) {
	t.Helper()
	f.cp.set(t, config.AddressType, addresses(f.m))
	f.cp.set(t, config.RouteType, map[string]types.Resource{routeName: rds(t)})
	if withECDS {
		pol, err := os.ReadFile(l7Policy)
		if err != nil {
			t.Fatal(err)
		}
		f.cp.set(t, config.ExtensionType, map[string]types.Resource{ecdsName: ecds(t, authzconfig.PluginName, string(pol))})
	}
}

// stream is one CONNECT to the waypoint carrying HTTP/1.1 requests, as a source ztunnel opens it.
type stream struct {
	c  *hbone.Conn
	br *bufio.Reader
}

func (f *fixture) connect(t testing.TB, sa string) *stream {
	t.Helper()
	wpID := spiffeid.RequireFromString("spiffe://cluster.local/ns/handson/sa/" + waypointSA)
	c, err := f.client.Dial(context.Background(), hbone.Target{
		Source: f.p.svid(t, sa), Address: netip.MustParseAddrPort(f.wp.Addr().String()), Identities: []spiffeid.ID{wpID},
		Authority: netip.AddrPortFrom(f.m.vip, 8080).String(), SourceAddr: netip.AddrPortFrom(f.m.curl, 40000), Host: hostname,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &stream{c: c, br: bufio.NewReader(c)}
}

func (s *stream) do(t testing.TB, method, path, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://handson:8080"+path, strings.NewReader(body))
	if body == "" {
		req.Body = nil
	}
	if err := req.Write(s.c); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(s.br, req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
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
	if got := f.app.requests(); strings.Join(got, ",") != "GET /,POST /" {
		t.Errorf("handson-blue saw %v, want the GET and curl-allow's POST only", got)
	}
	peer := <-f.peers
	if want := "spiffe://cluster.local/ns/handson/sa/" + waypointSA + " " + f.m.blue.String() + ":8080 for=\"" + f.m.curl.String() + ":40000\";host=" + hostname; peer != want {
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
		"upstream_cluster": cluster, "upstream_host": "envoy://connect_originate/" + f.m.blue.String() + ":8080",
		"authority": "handson:8080", "downstream_remote_address": f.m.curl.String() + ":40000",
		"downstream_local_address": f.m.vip.String() + ":8080", "bytes_received": 0.0, "bytes_sent": 20.0,
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
		return len(snap.Routes) == 1 && snap.State.ServiceByVIP(f.m.vip) != nil
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
