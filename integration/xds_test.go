package integration

// The three scenarios of manifests/examples with a real xdsserver (--loopback, --config-dir
// a folder the test fills step by step as the scenario's `kubectl apply` does) serving two
// real ztunnels over delta ADS. Nothing restarts between steps; each policy change is timed
// from the file write to the first observed change of behaviour (logged as LATENCY).

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// xdsInterval, when set, is passed to xdsserver as --interval (how often it looks at its
// folder). By default the tests run xdsserver's default (500 ms), which is most of the
// measured latency: -xds-interval=100ms shows the rest (push and ztunnels).
var xdsInterval = flag.String("xds-interval", "", "xdsserver --interval in the TestXDS* tests (default: xdsserver's)")

// xdsScenario is what every scenario test starts with: the binaries, the SVIDs of the mesh's
// service accounts, a config folder holding the scenario's first files, and an xdsserver on it.
type xdsScenario struct {
	bins   map[string]string
	svids  string
	config string
	xds    *xdsserverProc
	place  meshPlacement
	net    string // a random 127.a.b for the ztunnels' own listeners
}

func newXDSScenario(t *testing.T, example string, first ...string) *xdsScenario {
	t.Helper()
	s := &xdsScenario{bins: buildXDSBinaries(t)}
	dir := t.TempDir()
	s.svids = filepath.Join(dir, "svids")
	s.config = filepath.Join(dir, "config")
	ex := filepath.Join("..", "manifests", "examples", example)
	meshctl(t, s.bins["meshctl"], "certs", "root", "--dir", s.svids)
	meshctl(t, s.bins["meshctl"], "certs", "issue-from-mesh", "--dir", s.svids, "-f", filepath.Join(ex, "mesh.yaml"))
	if err := os.MkdirAll(s.config, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range first {
		applyFile(t, s.config, filepath.Join(ex, f))
	}
	s.place = placementOf(t, s.config)
	var extra []string
	if *xdsInterval != "" {
		extra = append(extra, "--interval", *xdsInterval)
	}
	s.xds = startXdsserver(t, s.bins["xdsserver"], s.config, extra...)
	s.net, _, _ = randomNet()
	return s
}

func (s *xdsScenario) ztunnel(t *testing.T, node, host string) *ztunnelProc {
	t.Helper()
	return startZtunnelXDS(t, s.bins["ztunnel"], node, host, s.xds.xds, s.svids)
}

// TestXDSHandson runs handson steps 1–2 (L4) with xdsserver serving ztunnels on worker and
// worker2.
func TestXDSHandson(t *testing.T) {
	ex := "../manifests/examples/handson/"
	s := newXDSScenario(t, "handson", "mesh.yaml")
	blue := s.place.pod(t, "handson/handson-blue")
	allow, deny := s.place.pod(t, "handson/curl-allow"), s.place.pod(t, "handson/curl-deny")
	serveHTTP(t, appAddrOf(blue, 8080), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "handson-blue: %s %s\n", r.Method, r.URL.Path)
	}))
	worker := s.ztunnel(t, "worker", s.net+".250")
	worker2 := s.ztunnel(t, "worker2", s.net+".251")
	socks := worker.host + ":15080"
	url := "http://handson:8080/"
	ok := func(from string) bool {
		code, body, err := curl(socks, from, url)
		return err == nil && code == 200 && strings.Contains(body, "handson-blue: GET /")
	}

	// Step 1: mesh only.
	for _, from := range []string{allow, deny} {
		if code, body, err := curl(socks, from, url); err != nil || code != 200 || !strings.Contains(body, "handson-blue: GET /") {
			t.Fatalf("step 1: GET %s from %s: %d %q %v", url, from, code, body, err)
		}
	}
	for _, sa := range []string{"curl-allow", "curl-deny"} {
		id := `src.identity="spiffe://cluster.local/ns/handson/sa/` + sa + `"`
		eventually(t, 5*time.Second, "worker2's inbound log of "+sa, func() bool {
			return len(worker2.out.lines("connection complete", `direction="inbound"`, id, `dst.workload="handson-blue"`)) > 0
		})
	}

	// Step 2: kubectl apply -f L4-authorization-policy.yaml.
	at := applyFile(t, s.config, ex+"L4-authorization-policy.yaml")
	changeLatency(t, "handson: L4 policy added, curl-deny denied", at, func() bool {
		_, _, err := curl(socks, deny, url)
		return err != nil
	})
	if !ok(allow) {
		t.Fatal("step 2: curl-allow is not answered")
	}
	if code, body, err := curl(socks, deny, url); err == nil {
		t.Fatalf("step 2: curl-deny got an HTTP response: %d %q", code, body)
	} else {
		t.Logf("step 2: curl-deny: %v", err)
	}
	eventually(t, 5*time.Second, "worker2's deny log", func() bool {
		return len(worker2.out.lines("connection complete", `direction="inbound"`,
			`src.identity="spiffe://cluster.local/ns/handson/sa/curl-deny"`,
			`connection closed due to policy rejection: explicitly denied by: handson/layer4-authz`)) > 0
	})
	eventually(t, 5*time.Second, "worker's outbound 401 log", func() bool {
		return len(worker.out.lines(`direction="outbound"`, `src.identity="spiffe://cluster.local/ns/handson/sa/curl-deny"`, `error="http status: 401 Unauthorized"`)) > 0
	})

	// kubectl delete -f L4-authorization-policy.yaml: curl-deny is answered again.
	at = deleteFile(t, s.config, "L4-authorization-policy.yaml")
	changeLatency(t, "handson: L4 policy removed, curl-deny answered", at, func() bool { return ok(deny) })
	if !ok(allow) {
		t.Fatal("after removing the policy: curl-allow is not answered")
	}
	s.noRestarts(t, worker, worker2)
}

// noRestarts checks that no process exited and each ztunnel opened one xDS stream.
func (s *xdsScenario) noRestarts(t *testing.T, zs ...*ztunnelProc) {
	t.Helper()
	for _, z := range zs {
		select {
		case <-z.exited:
			t.Fatalf("%s exited", z.name)
		default:
		}
		if n := len(z.out.lines("xds stream opened")); n != 1 {
			t.Errorf("%s opened %d xDS streams, want 1", z.name, n)
		}
	}
	select {
	case <-s.xds.exited:
		t.Fatal("xdsserver exited")
	default:
	}
	t.Logf("xdsserver pushed %d meshes", s.xds.pushes())
}

// TestXDSBookinfoLite runs bookinfo-lite's three steps with xdsserver serving node-a and
// node-b, then removes rbac.yaml and allow-nothing.yaml again.
func TestXDSBookinfoLite(t *testing.T) {
	ex := "../manifests/examples/bookinfo-lite/"
	s := newXDSScenario(t, "bookinfo-lite", "mesh.yaml")
	nodeA, nodeB := s.net+".250", s.net+".251"
	socks := map[string]string{"node-a": nodeA + ":15080", "node-b": nodeB + ":15080"}
	apps := []struct{ name, node, upstream string }{
		{"web-api-1", "node-a", "http://recommendation:8080/"},
		{"recommendation-1", "node-b", "http://purchase-history:8080/"},
		{"purchase-history-v1-1", "node-a", ""},
	}
	for _, a := range apps {
		ip := s.place.pod(t, "default/"+a.name)
		var ups []string
		if a.upstream != "" {
			ups = append(ups, a.upstream)
		}
		serveHTTP(t, appAddrOf(ip, 8081), demoApp(a.name, ip, socks[a.node], ups...))
	}
	sleep, notsleep := s.place.pod(t, "default/sleep-1"), s.place.pod(t, "default/notsleep-1")
	a := s.ztunnel(t, "node-a", nodeA)
	b := s.ztunnel(t, "node-b", nodeB)

	get := func(from, url string) (*demoReply, int, error) {
		code, body, err := curl(socks["node-b"], from, url)
		if err != nil {
			return nil, 0, err
		}
		var rep demoReply
		if err := json.Unmarshal([]byte(body), &rep); err != nil {
			return nil, code, fmt.Errorf("%v: %q", err, body)
		}
		return &rep, code, nil
	}
	chain := func() error {
		rep, code, err := get(sleep, "http://web-api:8080/")
		if err != nil || code != 200 {
			return fmt.Errorf("sleep → web-api: %d %v", code, err)
		}
		return chainOK(rep, "web-api-1", "recommendation-1", "purchase-history-v1-1")
	}
	denied := func(from, url string) bool { _, _, err := get(from, url); return err != nil }

	// Step 1: mesh only.
	if err := chain(); err != nil {
		t.Fatalf("step 1: %v", err)
	}

	// Step 2: allow-nothing.yaml.
	at := applyFile(t, s.config, ex+"allow-nothing.yaml")
	changeLatency(t, "bookinfo-lite: allow-nothing added, sleep → web-api denied", at, func() bool {
		return denied(sleep, "http://web-api:8080/")
	})
	eventually(t, 5*time.Second, "node-a's denial log", func() bool {
		return len(a.out.lines(`direction="inbound"`, `src.identity="spiffe://cluster.local/ns/default/sa/sleep"`,
			`dst.workload="web-api-1"`, "connection closed due to policy rejection: allow policies exist, but none allowed")) > 0
	})
	t.Logf("step 2 deny log: %s", a.out.lines("allow policies exist, but none allowed")[0])

	// Step 3: rbac.yaml too.
	at = applyFile(t, s.config, ex+"rbac.yaml")
	changeLatency(t, "bookinfo-lite: rbac added, the chain answers", at, func() bool { return chain() == nil })
	if !denied(notsleep, "http://web-api:8080/") {
		t.Fatal("step 3: notsleep → web-api got an HTTP response")
	}
	if !denied(sleep, "http://recommendation:8080/") {
		t.Fatal("step 3: sleep → recommendation got an HTTP response")
	}
	eventually(t, 5*time.Second, "the step 3 denial logs", func() bool {
		return len(a.out.lines(`src.identity="spiffe://cluster.local/ns/default/sa/notsleep"`, `dst.workload="web-api-1"`, "policy rejection")) > 0 &&
			len(b.out.lines(`direction="inbound"`, `src.identity="spiffe://cluster.local/ns/default/sa/sleep"`, `dst.workload="recommendation-1"`, "policy rejection")) > 0
	})

	// rbac.yaml removed: allow-nothing denies again; allow-nothing removed: all answer.
	at = deleteFile(t, s.config, "rbac.yaml")
	changeLatency(t, "bookinfo-lite: rbac removed, sleep → web-api denied", at, func() bool {
		return denied(sleep, "http://web-api:8080/")
	})
	at = deleteFile(t, s.config, "allow-nothing.yaml")
	changeLatency(t, "bookinfo-lite: allow-nothing removed, notsleep → web-api answered", at, func() bool {
		return !denied(notsleep, "http://web-api:8080/")
	})
	if err := chain(); err != nil {
		t.Fatalf("without policies: %v", err)
	}
	s.noRestarts(t, a, b)
}

// TestXDSDemoStrict runs demo-strict with xdsserver serving node-1 and node-2: STRICT and
// the allow-list, the allow-list removed, PERMISSIVE, and STRICT again (closing a plaintext
// keep-alive connection opened under PERMISSIVE).
func TestXDSDemoStrict(t *testing.T) {
	ex := "../manifests/examples/demo-strict/"
	s := newXDSScenario(t, "demo-strict", "mesh.yaml", "peer-authentication.yaml", "authz-policy.yaml")
	backend := s.place.pod(t, "demo/backend-1")
	frontend, attacker := s.place.pod(t, "demo/frontend-1"), s.place.pod(t, "demo/attacker")
	curlTest := s.place.pod(t, "non-mesh/curl-test")
	serveHTTP(t, appAddrOf(backend, 8080), httpbinLite)
	z1 := s.ztunnel(t, "node-1", s.net+".250")
	z2 := s.ztunnel(t, "node-2", s.net+".251")
	socks := z1.host + ":15080"
	plainURL := "http://" + backend + ":8080/get"
	attackerOK := func() bool {
		code, _, err := curl(socks, attacker, "http://backend.demo/get")
		return err == nil && code == 200
	}
	strict := readFile(t, ex+"peer-authentication.yaml")
	permissive := strings.Replace(strict, "mode: STRICT", "mode: PERMISSIVE", 1)
	if permissive == strict {
		t.Fatal("peer-authentication.yaml has no mode: STRICT")
	}

	// Step 1: STRICT + the allow-list.
	for _, path := range []string{"/status/200", "/get"} {
		if code, body, err := curl(socks, frontend, "http://backend.demo"+path); err != nil || code != 200 {
			t.Fatalf("step 1: frontend → %s: %d %q %v", path, code, body, err)
		}
	}
	if code, body, err := curl(socks, attacker, "http://backend.demo/get"); err == nil {
		t.Fatalf("step 1: attacker got an HTTP response: %d %q", code, body)
	}
	eventually(t, 5*time.Second, "node-2's denial of the attacker", func() bool {
		return len(z2.out.lines(`direction="inbound"`, `src.identity="spiffe://cluster.local/ns/demo/sa/attacker"`, "policy rejection")) > 0
	})
	if code, err := plainGet(curlTest, plainURL); err == nil {
		t.Fatalf("step 1: curl-test (plaintext) got an HTTP response under STRICT: %d", code)
	}

	// Step 2: kubectl delete -f authz-policy.yaml: mTLS alone admits the attacker.
	at := deleteFile(t, s.config, "authz-policy.yaml")
	changeLatency(t, "demo-strict: allow-list removed, attacker answered", at, attackerOK)
	if code, err := plainGet(curlTest, plainURL); err == nil {
		t.Fatalf("step 2: curl-test got an HTTP response under STRICT: %d", code)
	}

	// Step 3: PERMISSIVE, then STRICT again.
	at = writeConfig(t, s.config, "peer-authentication.yaml", permissive)
	changeLatency(t, "demo-strict: PERMISSIVE, plaintext answered", at, func() bool {
		code, err := plainGet(curlTest, plainURL)
		return err == nil && code == 200
	})
	kc, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(curlTest)}, Timeout: 5 * time.Second}).Dial("tcp", backend+":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	keepAliveGet := keepAliveGetter(kc)
	if resp, err := keepAliveGet(); err != nil || resp.StatusCode != 200 {
		t.Fatalf("step 3: keep-alive plaintext GET: %v %v", resp, err)
	}
	at = writeConfig(t, s.config, "peer-authentication.yaml", strict)
	changeLatency(t, "demo-strict: STRICT again, plaintext refused", at, func() bool {
		_, err := plainGet(curlTest, plainURL)
		return err != nil
	})
	eventually(t, 5*time.Second, "node-2 closing the plaintext connection", func() bool {
		return len(z2.out.lines("no longer allowed after a policy update", backend+":8080")) > 0
	})
	if resp, err := keepAliveGet(); err == nil {
		t.Fatalf("step 3: the plaintext keep-alive connection still answers under STRICT: %d", resp.StatusCode)
	}
	if code, body, err := curl(socks, frontend, "http://backend.demo/get"); err != nil || code != 200 {
		t.Fatalf("step 3: frontend under STRICT: %d %q %v", code, body, err)
	}

	// kubectl apply -f authz-policy.yaml again: the attacker is denied again.
	at = applyFile(t, s.config, ex+"authz-policy.yaml")
	changeLatency(t, "demo-strict: allow-list added back, attacker denied", at, func() bool { return !attackerOK() })
	s.noRestarts(t, z1, z2)
}
