//go:build linux

package integration

// Namespace mode (istio-cni's in-pod mode): each node and each pod is a network namespace;
// a node's ztunnel runs in the node's namespace and opens each local pod's listeners inside
// the pod's namespace, whose iptables send outbound TCP to 15001 and inbound to 15006.
//
//	pod netns (eth0 10.1.N.k/24) ─veth─ node netns N (br0 10.1.N.1/24) ─veth "wire"─ node netns M
//	                                                   10.0.0.N/30            10.0.0.M/30
//
// Needs root and the ip and iptables commands; skipped otherwise.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/goambient/goambient/ztunnel/netns"
)

// nsTopo is the namespaces of one test: two nodes joined by a veth pair, pods on each.
type nsTopo struct {
	t     *testing.T
	id    string
	nodes []*nsNode
}

type nsNode struct {
	name   string // the mesh node name
	netns  string // its network namespace
	idx    int    // pods at 10.1.idx.x
	ns     *netns.NS
	pods   []*nsPod
	out    *syncBuf
	exited chan struct{}
}

type nsPod struct {
	name, ip, netns string
	mesh            bool // redirection rules installed, served by its node's ztunnel
	ns              *netns.NS
}

// requireNetns skips t unless namespaces, veth and iptables can be used.
func requireNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("namespace mode needs root (network namespaces, veth, iptables)")
	}
	for _, c := range []string{"ip", "iptables-restore"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("namespace mode needs %s (iproute2 / iptables, installed by .ci/run): %v", c, err)
		}
	}
}

func nsRun(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// addNetns creates the network namespace gm-<id>-<suffix>, deleted when t ends (with its
// veth ends and iptables rules), and opens it.
func (tp *nsTopo) addNetns(suffix string) (string, *netns.NS) {
	t := tp.t
	name := "gm-" + tp.id + "-" + suffix
	nsRun(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	nsRun(t, "ip", "-n", name, "link", "set", "lo", "up")
	ns, err := netns.Open("/var/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return name, ns
}

// newNSTopo creates the two nodes named a and b.
func newNSTopo(t *testing.T, a, b string) *nsTopo {
	requireNetns(t)
	tp := &nsTopo{t: t, id: fmt.Sprintf("%06x", rand.IntN(1<<24))}
	for i, name := range []string{a, b} {
		n := &nsNode{name: name, idx: i + 1}
		n.netns, n.ns = tp.addNetns(fmt.Sprintf("n%d", i+1))
		nsRun(t, "ip", "-n", n.netns, "link", "add", "br0", "type", "bridge")
		nsRun(t, "ip", "-n", n.netns, "addr", "add", fmt.Sprintf("10.1.%d.1/24", n.idx), "dev", "br0")
		nsRun(t, "ip", "-n", n.netns, "link", "set", "br0", "up")
		nsRun(t, "ip", "netns", "exec", n.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		tp.nodes = append(tp.nodes, n)
	}
	n1, n2 := tp.nodes[0], tp.nodes[1]
	nsRun(t, "ip", "-n", n1.netns, "link", "add", "wire", "type", "veth", "peer", "name", "wire", "netns", n2.netns)
	for _, n := range tp.nodes {
		other := tp.nodes[2-n.idx]
		nsRun(t, "ip", "-n", n.netns, "addr", "add", fmt.Sprintf("10.0.0.%d/30", n.idx), "dev", "wire")
		nsRun(t, "ip", "-n", n.netns, "link", "set", "wire", "up")
		nsRun(t, "ip", "-n", n.netns, "route", "add", fmt.Sprintf("10.1.%d.0/24", other.idx), "via", fmt.Sprintf("10.0.0.%d", other.idx))
	}
	return tp
}

func (tp *nsTopo) node(name string) *nsNode {
	for _, n := range tp.nodes {
		if n.name == name {
			return n
		}
	}
	tp.t.Fatalf("no node %s", name)
	return nil
}

// addPod creates a pod namespace on node at the next 10.1.idx.x; mesh installs the in-pod
// redirection rules (netns.Apply) and hands it to the node's ztunnel (--pod-netns).
func (tp *nsTopo) addPod(node, name string, mesh bool) *nsPod {
	t := tp.t
	n := tp.node(node)
	k := len(n.pods) + 2
	p := &nsPod{name: name, ip: fmt.Sprintf("10.1.%d.%d", n.idx, k), mesh: mesh}
	p.netns, p.ns = tp.addNetns(fmt.Sprintf("n%dp%d", n.idx, k))
	veth := fmt.Sprintf("v%d", k)
	nsRun(t, "ip", "-n", n.netns, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", p.netns)
	nsRun(t, "ip", "-n", n.netns, "link", "set", veth, "master", "br0", "up")
	nsRun(t, "ip", "-n", p.netns, "addr", "add", p.ip+"/24", "dev", "eth0")
	nsRun(t, "ip", "-n", p.netns, "link", "set", "eth0", "up")
	nsRun(t, "ip", "-n", p.netns, "route", "add", "default", "via", fmt.Sprintf("10.1.%d.1", n.idx))
	if mesh {
		if err := netns.Apply(context.Background(), p.netns); err != nil {
			t.Fatal(err)
		}
	}
	n.pods = append(n.pods, p)
	return p
}

// serve runs h as the pod's application on podIP:port, inside the pod's namespace.
func (p *nsPod) serve(t *testing.T, port int, h http.Handler) {
	t.Helper()
	ln, err := p.ns.Listen(context.Background(), "tcp", fmt.Sprintf("%s:%d", p.ip, port))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// client is an HTTP client whose connections start inside the pod's namespace, unmarked, as
// the application's own: the pod's iptables capture them.
func (p *nsPod) client() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: p.ns.Dialer(0), DisableKeepAlives: true,
	}}
}

// get does GET url from the pod.
func (p *nsPod) get(url string) (int, string, error) {
	resp, err := p.client().Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// startZtunnel runs the node's ztunnel inside the node's namespace (`ip netns exec`), serving
// the node's mesh pods in their namespaces (--pod-netns), and waits until it is ready.
func (n *nsNode) startZtunnel(t *testing.T, bin, stateFile, svidDir string) {
	t.Helper()
	var pods []string
	for _, p := range n.pods {
		if p.mesh {
			pods = append(pods, "--pod-netns", p.ip+"=/var/run/netns/"+p.netns)
		}
	}
	n.runZtunnel(t, bin, stateFile, svidDir, pods...)
}

// runZtunnel runs the node's ztunnel inside the node's namespace with the given flags naming
// its pods (--pod-netns ..., or --zds-socket PATH), and waits until it is ready.
func (n *nsNode) runZtunnel(t *testing.T, bin, stateFile, svidDir string, podFlags ...string) {
	t.Helper()
	n.out, n.exited = &syncBuf{}, make(chan struct{})
	args := append([]string{"netns", "exec", n.netns, bin, "--node", n.name, "--config-file", stateFile, "--svid-dir", svidDir,
		"--socks5", "", "--drain-grace", "1s"}, podFlags...)
	cmd := exec.Command("ip", args...) // ip execs the ztunnel: the same process
	cmd.Stdout, cmd.Stderr = n.out, n.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(n.exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-n.exited
		if t.Failed() {
			t.Logf("%s log:\n%s", n.name, n.out)
		}
	})
	eventually(t, 10*time.Second, n.name+" ready", func() bool {
		code, _, err := n.get(":15021/healthz/ready")
		return err == nil && code == 200
	})
}

// get does GET http://127.0.0.1<path> inside the node's namespace (the ztunnel's admin,
// metrics and readiness listeners).
func (n *nsNode) get(path string) (int, string, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: n.ns.Dialer(0), DisableKeepAlives: true}}
	resp, err := c.Get("http://127.0.0.1" + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func (n *nsNode) waitConfig(t *testing.T, what string, cond func(dump string) bool) {
	t.Helper()
	eventually(t, 10*time.Second, n.name+" /config_dump "+what, func() bool {
		code, b, err := n.get(":15000/config_dump")
		return err == nil && code == 200 && cond(b)
	})
}

// wireCapture records the packets arriving at each node over the node-to-node veth (AF_PACKET
// sockets opened inside the node namespaces): together, both directions of everything that
// crosses between the nodes.
type wireCapture struct{ caps []*loCapture }

func captureWire(t *testing.T, tp *nsTopo) *wireCapture {
	t.Helper()
	w := &wireCapture{}
	for _, n := range tp.nodes {
		var fd int
		err := n.ns.Do(func() error {
			ifc, err := net.InterfaceByName("wire")
			if err != nil {
				return err
			}
			if fd, err = syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW, int(htons(syscall.ETH_P_ALL))); err != nil {
				return err
			}
			if err := syscall.Bind(fd, &syscall.SockaddrLinklayer{Protocol: htons(syscall.ETH_P_ALL), Ifindex: ifc.Index}); err != nil {
				syscall.Close(fd)
				return err
			}
			return nil
		})
		if err != nil {
			t.Fatalf("capture in %s: %v", n.netns, err)
		}
		syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, 8<<20)
		tv := syscall.NsecToTimeval(int64(100 * time.Millisecond))
		syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
		c := &loCapture{fd: fd, done: make(chan struct{})}
		stop := make(chan struct{})
		go c.run(stop) // keeps the incoming packets only: each node sees one direction
		t.Cleanup(func() { close(stop); <-c.done; syscall.Close(fd) })
		w.caps = append(w.caps, c)
	}
	return w
}

// streams merges the nodes' captures (see loCapture.streams).
func (w *wireCapture) streams(dst string, port uint16, toDst bool) map[netip4Port][]byte {
	out := map[netip4Port][]byte{}
	for _, c := range w.caps {
		for k, v := range c.streams(net.ParseIP(dst), port, toDst) {
			out[k] = append(out[k], v...)
		}
	}
	return out
}

// contains reports whether the payload of a captured segment contains s, leaving out the
// segments from or to the addresses skip.
func (w *wireCapture) contains(s string, skip ...string) bool {
	var out []netip4Port
	for _, ip := range skip {
		var a netip4Port
		copy(a.ip[:], net.ParseIP(ip).To4())
		out = append(out, a)
	}
	skipped := func(p netip4Port) bool {
		for _, a := range out {
			if a.ip == p.ip {
				return true
			}
		}
		return false
	}
	for _, c := range w.caps {
		c.mu.Lock()
		for _, seg := range c.segs {
			if !skipped(seg.src) && !skipped(seg.dst) && bytes.Contains(seg.payload, []byte(s)) {
				c.mu.Unlock()
				return true
			}
		}
		c.mu.Unlock()
	}
	return false
}

// checkHBONETLS checks that both directions of every connection to podIP:15008 seen on the
// wire are TLS records from the first byte and carry none of bad in the clear.
func (w *wireCapture) checkHBONETLS(t *testing.T, podIP string, bad ...string) {
	t.Helper()
	var to, from map[netip4Port][]byte
	eventually(t, 10*time.Second, "HBONE streams to "+podIP+":15008 on the wire", func() bool {
		to, from = w.streams(podIP, 15008, true), w.streams(podIP, 15008, false)
		return len(to) > 0 && len(from) > 0
	})
	for dir, streams := range map[string]map[netip4Port][]byte{"to": to, "from": from} {
		for peer, b := range streams {
			if len(b) < 3 || b[0] != 0x16 || b[1] != 0x03 {
				t.Errorf("stream %s %s:15008 (peer %v) does not start with a TLS handshake record: % x", dir, podIP, peer.ip, b[:min(len(b), 16)])
			}
			for _, s := range bad {
				if bytes.Contains(b, []byte(s)) {
					t.Errorf("stream %s %s:15008 (peer %v) carries %q in the clear", dir, podIP, peer.ip, s)
				}
			}
			t.Logf("wire: %s %s:15008, peer %v: %d bytes, starts % x", dir, podIP, peer.ip, len(b), b[:min(len(b), 5)])
		}
	}
}

// setupSVIDs writes the root and the SVIDs of mesh.yaml's workloads.
func setupSVIDs(t *testing.T, meshctlBin, dir, meshYAML string) string {
	svids := filepath.Join(dir, "svids")
	meshctl(t, meshctlBin, "certs", "root", "--dir", svids)
	meshctl(t, meshctlBin, "certs", "issue-from-mesh", "--dir", svids, "-f", meshYAML)
	return svids
}

// nsHandson is handson's mesh in namespace mode: nodes worker (curl-allow, curl-deny) and
// worker2 (handson-blue, serving on 8080), the handson Service at vip, SVIDs, and the state
// file; no ztunnel yet.
type nsHandson struct {
	tp                    *nsTopo
	bins                  map[string]string
	dir, svids, stateFile string
	vip                   string
	blue, allow, deny     *nsPod
	pods                  []podSpec // the state's workloads and services
	svcs                  []svcSpec
}

func newNSHandson(t *testing.T, vip string) *nsHandson {
	t.Helper()
	h := &nsHandson{tp: newNSTopo(t, "worker", "worker2"), bins: buildBinaries(t), dir: t.TempDir(), vip: vip}
	start := time.Now()
	t.Cleanup(func() { t.Logf("scenario (after the build) took %v", time.Since(start)) })
	h.svids = setupSVIDs(t, h.bins["meshctl"], h.dir, "../manifests/examples/handson/mesh.yaml")
	h.blue = h.tp.addPod("worker2", "handson-blue", true)
	h.allow = h.tp.addPod("worker", "curl-allow", true)
	h.deny = h.tp.addPod("worker", "curl-deny", true)
	h.pods = []podSpec{
		{"handson-blue", "handson", "handson", h.blue.ip, "worker2", map[string]string{"app": "handson", "version": "blue"}, []string{"handson"}},
		{"curl-allow", "handson", "curl-allow", h.allow.ip, "worker", map[string]string{"app": "curl-allow"}, nil},
		{"curl-deny", "handson", "curl-deny", h.deny.ip, "worker", map[string]string{"app": "curl-deny"}, nil},
	}
	h.svcs = []svcSpec{{"handson", "handson", vip, [][2]int{{8080, 8080}}}}
	h.blue.serve(t, 8080, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "handson-blue: %s %s from %s\n", r.Method, r.URL.Path, r.RemoteAddr)
	}))
	h.stateFile = filepath.Join(h.dir, "state.json")
	writeAtomic(t, h.stateFile, scenarioState(t, h.pods, h.svcs, nil))
	return h
}

// TestHandsonNamespaces runs handson steps 1–2 in namespace mode: node worker (curl-allow,
// curl-deny; outsider, not in the mesh) and node worker2 (handson-blue). The curls call the
// Service VIP as plain HTTP from inside their pods; the pods' iptables hand the connections to
// their node's ztunnel, which carries them over HBONE.
func TestHandsonNamespaces(t *testing.T) {
	h := newNSHandson(t, "10.96.0.10")
	tp, bins, svids, stateFile, vip := h.tp, h.bins, h.svids, h.stateFile, h.vip
	blue, allow, deny := h.blue, h.allow, h.deny
	outsider := tp.addPod("worker", "outsider", false)
	worker, worker2 := tp.node("worker"), tp.node("worker2")
	worker.startZtunnel(t, bins["ztunnel"], stateFile, svids)
	worker2.startZtunnel(t, bins["ztunnel"], stateFile, svids)
	wire := captureWire(t, tp)
	url := "http://" + vip + ":8080/"

	// Step 1: no policy: both curls get the app's answer.
	for _, p := range []*nsPod{allow, deny} {
		code, body, err := p.get(url)
		if err != nil || code != 200 || !strings.Contains(body, "handson-blue: GET /") {
			t.Fatalf("step 1: GET %s from %s: %d %q %v", url, p.name, code, body, err)
		}
	}
	for _, p := range []*nsPod{allow, deny} {
		id := `src.identity="spiffe://cluster.local/ns/handson/sa/` + p.name + `"`
		eventually(t, 10*time.Second, "worker2's inbound log of "+p.name, func() bool {
			// src.addr is the curl pod's own address: the HBONE connection left from its namespace.
			return len(worker2.out.lines("connection complete", `direction="inbound"`, id, `dst.workload="handson-blue"`, "src.addr="+p.ip+":")) > 0
		})
		eventually(t, 10*time.Second, "worker's outbound log of "+p.name, func() bool {
			return len(worker.out.lines("connection complete", `direction="outbound"`, id, `dst.service="handson.handson.svc.cluster.local"`, "dst.hbone_addr="+blue.ip+":8080")) > 0
		})
	}

	// Step 2: the L4 policy denies curl-deny on 8080.
	writeAtomic(t, stateFile, scenarioState(t, h.pods, h.svcs, loadPolicies(t, readFile(t, "../manifests/examples/handson/L4-authorization-policy.yaml"))))
	for _, n := range []*nsNode{worker, worker2} {
		n.waitConfig(t, "with the policy", func(d string) bool { return strings.Contains(d, "ns/handson/sa/curl-deny") })
	}
	if code, body, err := allow.get(url); err != nil || code != 200 || !strings.Contains(body, "handson-blue: GET /") {
		t.Fatalf("step 2: curl-allow: %d %q %v", code, body, err)
	}
	if code, body, err := deny.get(url); err == nil {
		t.Fatalf("step 2: curl-deny got an HTTP response: %d %q", code, body)
	} else {
		t.Logf("step 2: curl-deny: %v", err)
	}
	eventually(t, 10*time.Second, "worker2's deny log", func() bool {
		return len(worker2.out.lines("connection complete", `direction="inbound"`,
			`src.identity="spiffe://cluster.local/ns/handson/sa/curl-deny"`, `dst.workload="handson-blue"`,
			`connection closed due to policy rejection: explicitly denied by: handson/layer4-authz`)) > 0
	})
	eventually(t, 10*time.Second, "worker's outbound 401 log", func() bool {
		return len(worker.out.lines(`direction="outbound"`, `src.identity="spiffe://cluster.local/ns/handson/sa/curl-deny"`, `error="http status: 401 Unauthorized"`)) > 0
	})

	// The wire between the nodes: HBONE is TLS, and no plaintext HTTP crossed it.
	wire.checkHBONETLS(t, blue.ip, "GET /", "HTTP/1.1", "handson-blue", "CONNECT")
	if wire.contains("GET /") || wire.contains("handson-blue:") {
		t.Error("plaintext HTTP crossed the wire between the nodes")
	}
	// Control: a pod outside the mesh calls the app in plaintext (15006, no STRICT policy):
	// the capture sees that request, so it would have seen a leak.
	if code, body, err := outsider.get("http://" + blue.ip + ":8080/outsider"); err != nil || code != 200 {
		t.Fatalf("outsider plaintext GET: %d %q %v", code, body, err)
	}
	eventually(t, 10*time.Second, "the outsider's plaintext request on the wire", func() bool { return wire.contains("GET /outsider") })
	eventually(t, 10*time.Second, "worker2's plaintext inbound log", func() bool {
		return len(worker2.out.lines("connection complete", `direction="inbound"`, "src.addr="+outsider.ip+":", `dst.workload="handson-blue"`)) > 0
	})
}

// TestDemoStrictNamespaces runs demo-strict in namespace mode: node-1 (frontend-1, attacker;
// curl-test, not in the mesh) and node-2 (backend-1).
func TestDemoStrictNamespaces(t *testing.T) {
	tp := newNSTopo(t, "node-1", "node-2")
	bins := buildBinaries(t)
	start := time.Now()
	defer func() { t.Logf("scenario (after the build) took %v", time.Since(start)) }()
	dir := t.TempDir()
	ex := "../manifests/examples/demo-strict/"
	svids := setupSVIDs(t, bins["meshctl"], dir, ex+"mesh.yaml")

	backend := tp.addPod("node-2", "backend-1", true)
	frontend := tp.addPod("node-1", "frontend-1", true)
	attacker := tp.addPod("node-1", "attacker", true)
	curlTest := tp.addPod("node-1", "curl-test", false)
	pods := []podSpec{
		{"backend-1", "demo", "backend", backend.ip, "node-2", map[string]string{"app": "backend"}, []string{"backend"}},
		{"frontend-1", "demo", "frontend", frontend.ip, "node-1", map[string]string{"app": "frontend"}, nil},
		{"attacker", "demo", "attacker", attacker.ip, "node-1", map[string]string{"app": "attacker", "env": "dev", "team": "platform"}, nil},
	}
	const vip = "10.96.0.20"
	svcs := []svcSpec{{"backend", "demo", vip, [][2]int{{80, 8080}}}}
	backend.serve(t, 8080, httpbinLite)

	strict := readFile(t, ex+"peer-authentication.yaml")
	permissive := strings.Replace(strict, "mode: STRICT", "mode: PERMISSIVE", 1)
	if permissive == strict {
		t.Fatal("peer-authentication.yaml has no mode: STRICT")
	}
	authz := readFile(t, ex+"authz-policy.yaml")
	stateFile := filepath.Join(dir, "state.json")
	writeAtomic(t, stateFile, scenarioState(t, pods, svcs, loadPolicies(t, strict, authz)))
	n1, n2 := tp.node("node-1"), tp.node("node-2")
	n1.startZtunnel(t, bins["ztunnel"], stateFile, svids)
	n2.startZtunnel(t, bins["ztunnel"], stateFile, svids)
	wire := captureWire(t, tp)
	svcURL := "http://" + vip
	plainURL := "http://" + backend.ip + ":8080/get"

	// Step 1: STRICT + the allow-list.
	for _, path := range []string{"/status/200", "/get"} {
		if code, body, err := frontend.get(svcURL + path); err != nil || code != 200 {
			t.Fatalf("step 1: frontend → %s: %d %q %v", path, code, body, err)
		}
	}
	if code, body, err := frontend.get(svcURL + "/status/418"); err != nil || code != 418 {
		t.Fatalf("step 1: frontend → /status/418: %d %q %v", code, body, err)
	}
	if code, body, err := attacker.get(svcURL + "/get"); err == nil {
		t.Fatalf("step 1: attacker got an HTTP response: %d %q", code, body)
	}
	eventually(t, 10*time.Second, "node-2's denial of the attacker", func() bool {
		return len(n2.out.lines(`direction="inbound"`, `src.identity="spiffe://cluster.local/ns/demo/sa/attacker"`,
			"src.addr="+attacker.ip+":", "policy rejection")) > 0
	})
	eventually(t, 10*time.Second, "node-1's outbound 401 for the attacker", func() bool {
		return len(n1.out.lines(`direction="outbound"`, `src.identity="spiffe://cluster.local/ns/demo/sa/attacker"`, `error="http status: 401 Unauthorized"`)) > 0
	})
	eventually(t, 10*time.Second, "node-2's inbound log of the frontend", func() bool {
		return len(n2.out.lines("connection complete", `direction="inbound"`, `src.identity="spiffe://cluster.local/ns/demo/sa/frontend"`,
			`dst.workload="backend-1"`, "src.addr="+frontend.ip+":")) > 0
	})
	if code, _, err := curlTest.get(plainURL); err == nil {
		t.Fatalf("step 1: curl-test (plaintext) got an HTTP response under STRICT: %d", code)
	}
	eventually(t, 10*time.Second, "node-2's plaintext denial", func() bool {
		return len(n2.out.lines(`direction="inbound"`, "src.addr="+curlTest.ip+":", "policy rejection")) > 0
	})

	// Step 2: the authz policy removed: mTLS alone admits the attacker.
	writeAtomic(t, stateFile, scenarioState(t, pods, svcs, loadPolicies(t, strict)))
	n2.waitConfig(t, "without the allow-list", func(d string) bool {
		return !strings.Contains(d, "backend-allow-frontend-only") && strings.Contains(d, "istio_converted_static_strict")
	})
	if code, body, err := attacker.get(svcURL + "/get"); err != nil || code != 200 {
		t.Fatalf("step 2: attacker: %d %q %v", code, body, err)
	}
	if code, _, err := curlTest.get(plainURL); err == nil {
		t.Fatalf("step 2: curl-test got an HTTP response under STRICT: %d", code)
	}

	// Up to here every mesh request crossed the wire inside HBONE only (curl-test's refused
	// attempts are plaintext by its own choice: it is not in the mesh; whether their request
	// bytes were sent before the close depends on timing).
	wire.checkHBONETLS(t, backend.ip, "GET /", "HTTP/1.1", "/status/", "CONNECT")
	if wire.contains("GET /", curlTest.ip) || wire.contains("HTTP/1.1", curlTest.ip) {
		t.Error("plaintext HTTP between mesh pods crossed the wire between the nodes")
	}

	// Step 3: PERMISSIVE: plaintext accepted (and seen on the wire: the capture works); back to
	// STRICT: an open plaintext connection is closed and new ones refused, no restart.
	writeAtomic(t, stateFile, scenarioState(t, pods, svcs, loadPolicies(t, permissive)))
	n2.waitConfig(t, "PERMISSIVE", func(d string) bool { return !strings.Contains(d, "istio_converted_static_strict") })
	if code, _, err := curlTest.get(plainURL); err != nil || code != 200 {
		t.Fatalf("step 3: curl-test under PERMISSIVE: %d %v", code, err)
	}
	eventually(t, 10*time.Second, "curl-test's plaintext request on the wire (the capture would see a leak)", func() bool {
		return wire.contains("GET /get")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kc, err := curlTest.ns.Dialer(0)(ctx, "tcp", backend.ip+":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	keepAliveGet := keepAliveGetter(kc)
	if resp, err := keepAliveGet(); err != nil || resp.StatusCode != 200 {
		t.Fatalf("step 3: keep-alive plaintext GET: %v %v", resp, err)
	}
	writeAtomic(t, stateFile, scenarioState(t, pods, svcs, loadPolicies(t, strict)))
	n2.waitConfig(t, "STRICT again", func(d string) bool { return strings.Contains(d, "istio_converted_static_strict") })
	eventually(t, 10*time.Second, "node-2 closing the plaintext connection", func() bool {
		return len(n2.out.lines("no longer allowed after a policy update", backend.ip+":8080")) > 0
	})
	if resp, err := keepAliveGet(); err == nil {
		t.Fatalf("step 3: the plaintext keep-alive connection still answers under STRICT: %d", resp.StatusCode)
	}
	if code, _, err := curlTest.get(plainURL); err == nil {
		t.Fatalf("step 3: curl-test got an HTTP response back under STRICT: %d", code)
	}
	if code, body, err := frontend.get(svcURL + "/get"); err != nil || code != 200 {
		t.Fatalf("step 3: frontend under STRICT: %d %q %v", code, body, err)
	}
	select {
	case <-n2.exited:
		t.Fatal("node-2 exited")
	default:
	}
}
