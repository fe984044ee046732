package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// demoReply is the demo app's answer: its name, address, and each upstream call's result.
type demoReply struct {
	Name      string     `json:"name"`
	Address   string     `json:"address"`
	Upstreams []demoCall `json:"upstream_calls,omitempty"`
}

type demoCall struct {
	URI   string     `json:"uri"`
	Code  int        `json:"code"` // 0: no HTTP response
	Error string     `json:"error,omitempty"`
	Reply *demoReply `json:"reply,omitempty"`
}

// demoApp is the bookinfo-lite app: it calls each upstream through its node's SOCKS5 listener
// bound to its pod IP, and answers 200 with JSON naming itself and each upstream's status.
func demoApp(name, podIP, socks string, upstreams ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rep := demoReply{Name: name, Address: podIP}
		for _, u := range upstreams {
			c := demoCall{URI: u}
			code, body, err := curl(socks, podIP, u)
			if err != nil {
				c.Error = err.Error()
			} else {
				c.Code = code
				var sub demoReply
				if json.Unmarshal([]byte(body), &sub) == nil {
					c.Reply = &sub
				}
			}
			rep.Upstreams = append(rep.Upstreams, c)
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(rep)
	})
}

// chainOK checks that rep is name → each next name, every hop 200.
func chainOK(rep *demoReply, names ...string) error {
	for i, n := range names {
		if rep == nil || rep.Name != n {
			return fmt.Errorf("hop %d: want %s, got %+v", i, n, rep)
		}
		if i == len(names)-1 {
			return nil
		}
		if len(rep.Upstreams) != 1 || rep.Upstreams[0].Code != 200 {
			return fmt.Errorf("%s's upstream call: %+v", n, rep.Upstreams)
		}
		rep = rep.Upstreams[0].Reply
	}
	return nil
}

// TestBookinfoLiteLoopback runs shared/examples/bookinfo-lite with two ztunnels: node-a
// (web-api, purchase-history) and node-b (recommendation, sleep, notsleep); the chain
// sleep → web-api → recommendation → purchase-history crosses nodes at each hop.
func TestBookinfoLiteLoopback(t *testing.T) {
	bins := buildBinaries(t)
	dir := t.TempDir()
	svids := filepath.Join(dir, "svids")
	ex := "../manifests/examples/bookinfo-lite/"
	meshctl(t, bins["meshctl"], "certs", "root", "--dir", svids)
	meshctl(t, bins["meshctl"], "certs", "issue-from-mesh", "--dir", svids, "-f", ex+"mesh.yaml")

	n, _, _ := randomNet()
	nodeA, nodeB := n+".250", n+".251"
	socks := map[string]string{"node-a": nodeA + ":15080", "node-b": nodeB + ":15080"}
	pods := []podSpec{
		{"web-api-1", "default", "web-api", n + ".2", "node-a", map[string]string{"app": "web-api"}, []string{"web-api"}},
		{"recommendation-1", "default", "recommendation", n + ".3", "node-b", map[string]string{"app": "recommendation"}, []string{"recommendation"}},
		{"purchase-history-v1-1", "default", "purchase-history", n + ".4", "node-a", map[string]string{"app": "purchase-history", "version": "v1"}, []string{"purchase-history"}},
		{"sleep-1", "default", "sleep", n + ".5", "node-b", map[string]string{"app": "sleep"}, nil},
		{"notsleep-1", "default", "notsleep", n + ".6", "node-b", map[string]string{"app": "notsleep"}, nil},
	}
	svcs := []svcSpec{
		{"web-api", "default", n + ".200", [][2]int{{8080, 8081}}},
		{"recommendation", "default", n + ".201", [][2]int{{8080, 8081}}},
		{"purchase-history", "default", n + ".202", [][2]int{{8080, 8081}}},
	}
	up := map[string]string{"web-api-1": "http://recommendation:8080/", "recommendation-1": "http://purchase-history:8080/"}
	for _, p := range pods[:3] {
		var ups []string
		if u := up[p.name]; u != "" {
			ups = append(ups, u)
		}
		serveHTTP(t, appAddrOf(p.ip, 8081), demoApp(p.name, p.ip, socks[p.node], ups...))
	}
	sleep, notsleep := pods[3].ip, pods[4].ip

	stateFile := filepath.Join(dir, "state.json")
	writeAtomic(t, stateFile, scenarioState(t, pods, svcs, nil))
	a := startZtunnel(t, bins["ztunnel"], "node-a", nodeA, stateFile, svids)
	b := startZtunnel(t, bins["ztunnel"], "node-b", nodeB, stateFile, svids)

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

	// Step 1: mesh only, the whole chain answers 200.
	rep, code, err := get(sleep, "http://web-api:8080/")
	if err != nil || code != 200 {
		t.Fatalf("step 1: sleep → web-api: %d %v", code, err)
	}
	if err := chainOK(rep, "web-api-1", "recommendation-1", "purchase-history-v1-1"); err != nil {
		t.Fatalf("step 1: %v", err)
	}

	// Step 2: allow-nothing in default: sleep → web-api gets no HTTP response, node-a denies.
	allowNothing := readFile(t, ex+"allow-nothing.yaml")
	writeAtomic(t, stateFile, scenarioState(t, pods, svcs, loadPolicies(t, allowNothing)))
	for _, z := range []*ztunnelProc{a, b} {
		waitConfig(t, z, "with allow-nothing", func(d string) bool { return strings.Contains(d, "allow-nothing") })
	}
	if rep, code, err := get(sleep, "http://web-api:8080/"); err == nil {
		t.Fatalf("step 2: sleep → web-api got an HTTP response: %d %+v", code, rep)
	}
	eventually(t, 5*time.Second, "node-a's denial log", func() bool {
		return len(a.out.lines(`direction="inbound"`, `src.identity="spiffe://cluster.local/ns/default/sa/sleep"`,
			`dst.workload="web-api-1"`, "connection closed due to policy rejection: allow policies exist, but none allowed")) > 0
	})
	t.Logf("step 2 deny log: %s", a.out.lines("allow policies exist, but none allowed")[0])

	// Step 3: rbac.yaml too: sleep → web-api → ... all 200; notsleep → web-api and sleep →
	// recommendation get no HTTP response.
	writeAtomic(t, stateFile, scenarioState(t, pods, svcs, loadPolicies(t, allowNothing, readFile(t, ex+"rbac.yaml"))))
	for _, z := range []*ztunnelProc{a, b} {
		waitConfig(t, z, "with rbac", func(d string) bool {
			return strings.Contains(d, "purchase-history-rbac") && strings.Contains(d, "web-api-rbac")
		})
	}
	rep, code, err = get(sleep, "http://web-api:8080/")
	if err != nil || code != 200 {
		t.Fatalf("step 3: sleep → web-api: %d %v", code, err)
	}
	if err := chainOK(rep, "web-api-1", "recommendation-1", "purchase-history-v1-1"); err != nil {
		t.Fatalf("step 3: %v", err)
	}
	if rep, code, err := get(notsleep, "http://web-api:8080/"); err == nil {
		t.Fatalf("step 3: notsleep → web-api got an HTTP response: %d %+v", code, rep)
	}
	if rep, code, err := get(sleep, "http://recommendation:8080/"); err == nil {
		t.Fatalf("step 3: sleep → recommendation got an HTTP response: %d %+v", code, rep)
	}
	eventually(t, 5*time.Second, "the step 3 denial logs", func() bool {
		return len(a.out.lines(`src.identity="spiffe://cluster.local/ns/default/sa/notsleep"`, `dst.workload="web-api-1"`, "policy rejection")) > 0 &&
			len(b.out.lines(`direction="inbound"`, `src.identity="spiffe://cluster.local/ns/default/sa/sleep"`, `dst.workload="recommendation-1"`, "policy rejection")) > 0
	})
}

// httpbinLite answers GET /get with 200 and GET /status/N with N.
var httpbinLite = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	if s, ok := strings.CutPrefix(r.URL.Path, "/status/"); ok {
		if code, err := strconv.Atoi(s); err == nil && code >= 100 && code < 600 {
			w.WriteHeader(code)
			return
		}
	}
	if r.URL.Path == "/get" {
		fmt.Fprintf(w, "{\"url\": %q}\n", r.URL.String())
		return
	}
	http.NotFound(w, r)
})

// TestDemoStrictLoopback runs shared/examples/demo-strict: node-1 (frontend-1, attacker) and
// node-2 (backend-1); curl-test is not in the mesh: it connects in plaintext, with no ztunnel,
// to the backend pod's port.
func TestDemoStrictLoopback(t *testing.T) {
	bins := buildBinaries(t)
	dir := t.TempDir()
	svids := filepath.Join(dir, "svids")
	ex := "../manifests/examples/demo-strict/"
	meshctl(t, bins["meshctl"], "certs", "root", "--dir", svids)
	meshctl(t, bins["meshctl"], "certs", "issue-from-mesh", "--dir", svids, "-f", ex+"mesh.yaml")

	n, _, _ := randomNet()
	node1, node2 := n+".250", n+".251"
	pods := []podSpec{
		{"backend-1", "demo", "backend", n + ".2", "node-2", map[string]string{"app": "backend"}, []string{"backend"}},
		{"frontend-1", "demo", "frontend", n + ".3", "node-1", map[string]string{"app": "frontend"}, nil},
		{"attacker", "demo", "attacker", n + ".4", "node-1", map[string]string{"app": "attacker", "env": "dev", "team": "platform"}, nil},
	}
	backend, frontend, attacker, curlTest := pods[0].ip, pods[1].ip, pods[2].ip, n+".9"
	svcs := []svcSpec{{"backend", "demo", n + ".200", [][2]int{{80, 8080}}}}
	serveHTTP(t, appAddrOf(backend, 8080), httpbinLite)

	strict := readFile(t, ex+"peer-authentication.yaml")
	permissive := strings.Replace(strict, "mode: STRICT", "mode: PERMISSIVE", 1)
	if permissive == strict {
		t.Fatal("peer-authentication.yaml has no mode: STRICT")
	}
	authz := readFile(t, ex+"authz-policy.yaml")
	stateFile := filepath.Join(dir, "state.json")
	writeAtomic(t, stateFile, scenarioState(t, pods, svcs, loadPolicies(t, strict, authz)))
	z1 := startZtunnel(t, bins["ztunnel"], "node-1", node1, stateFile, svids)
	z2 := startZtunnel(t, bins["ztunnel"], "node-2", node2, stateFile, svids)
	socks := node1 + ":15080"
	plainURL := "http://" + backend + ":8080/get"

	// Step 1: STRICT + the allow-list.
	for _, path := range []string{"/status/200", "/get"} {
		if code, body, err := curl(socks, frontend, "http://backend.demo"+path); err != nil || code != 200 {
			t.Fatalf("step 1: frontend → %s: %d %q %v", path, code, body, err)
		}
	}
	if code, body, err := curl(socks, frontend, "http://backend.demo/status/418"); err != nil || code != 418 {
		t.Fatalf("step 1: frontend → /status/418: %d %q %v", code, body, err)
	}
	if code, body, err := curl(socks, attacker, "http://backend.demo/get"); err == nil {
		t.Fatalf("step 1: attacker got an HTTP response: %d %q", code, body)
	}
	eventually(t, 5*time.Second, "node-2's denial of the attacker", func() bool {
		return len(z2.out.lines(`direction="inbound"`, `src.identity="spiffe://cluster.local/ns/demo/sa/attacker"`, "policy rejection")) > 0
	})
	eventually(t, 5*time.Second, "node-1's outbound 401 for the attacker", func() bool {
		return len(z1.out.lines(`direction="outbound"`, `src.identity="spiffe://cluster.local/ns/demo/sa/attacker"`, `error="http status: 401 Unauthorized"`)) > 0
	})
	if code, err := plainGet(curlTest, plainURL); err == nil {
		t.Fatalf("step 1: curl-test (plaintext) got an HTTP response under STRICT: %d", code)
	} else {
		t.Logf("step 1: curl-test: %v", err)
	}

	// Step 2: the authz policy removed: mTLS alone admits the attacker.
	writeAtomic(t, stateFile, scenarioState(t, pods, svcs, loadPolicies(t, strict)))
	waitConfig(t, z2, "without the allow-list", func(d string) bool {
		return !strings.Contains(d, "backend-allow-frontend-only") && strings.Contains(d, "istio_converted_static_strict")
	})
	if code, body, err := curl(socks, attacker, "http://backend.demo/get"); err != nil || code != 200 {
		t.Fatalf("step 2: attacker: %d %q %v", code, body, err)
	}
	if code, err := plainGet(curlTest, plainURL); err == nil {
		t.Fatalf("step 2: curl-test got an HTTP response under STRICT: %d", code)
	}

	// Step 3: PERMISSIVE: plaintext accepted; back to STRICT: refused again, no restart.
	writeAtomic(t, stateFile, scenarioState(t, pods, svcs, loadPolicies(t, permissive)))
	waitConfig(t, z2, "PERMISSIVE", func(d string) bool { return !strings.Contains(d, "istio_converted_static_strict") })
	if code, err := plainGet(curlTest, plainURL); err != nil || code != 200 {
		t.Fatalf("step 3: curl-test under PERMISSIVE: %d %v", code, err)
	}
	// A keep-alive plaintext connection opened under PERMISSIVE...
	kc, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(curlTest)}, Timeout: 5 * time.Second}).Dial("tcp", backend+":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	keepAliveGet := keepAliveGetter(kc)
	if resp, err := keepAliveGet(); err != nil || resp.StatusCode != 200 {
		t.Fatalf("step 3: keep-alive plaintext GET: %v %v", resp, err)
	}
	writeAtomic(t, stateFile, scenarioState(t, pods, svcs, loadPolicies(t, strict)))
	waitConfig(t, z2, "STRICT again", func(d string) bool { return strings.Contains(d, "istio_converted_static_strict") })
	// ... is closed by the re-check when STRICT comes back.
	eventually(t, 5*time.Second, "node-2 closing the plaintext connection", func() bool {
		return len(z2.out.lines("no longer allowed after a policy update", "dst.addr="+backend+":8080")) > 0 ||
			len(z2.out.lines("no longer allowed after a policy update", `dst.addr="`+backend+`:8080"`)) > 0
	})
	if resp, err := keepAliveGet(); err == nil {
		t.Fatalf("step 3: the plaintext keep-alive connection still answers under STRICT: %d", resp.StatusCode)
	}
	if code, err := plainGet(curlTest, plainURL); err == nil {
		t.Fatalf("step 3: curl-test got an HTTP response back under STRICT: %d", code)
	}
	if code, body, err := curl(socks, frontend, "http://backend.demo/get"); err != nil || code != 200 {
		t.Fatalf("step 3: frontend under STRICT: %d %q %v", code, body, err)
	}
	select {
	case <-z2.exited:
		t.Fatal("node-2 exited")
	default:
	}
}
