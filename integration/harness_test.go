package integration

// Helpers shared by the loopback tests of the real binaries.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/proxy"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/goambient/goambient/policies"
)

// buildBinaries builds ztunnel and meshctl into a temporary folder of t (meta_test.go owns
// TestMain) and returns their paths by name.
func buildBinaries(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	bins := map[string]string{}
	for _, name := range []string{"ztunnel", "meshctl"} {
		out := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", out, "../cmd/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as `make build` builds them
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", name, err, b)
		}
		bins[name] = out
	}
	return bins
}

// syncBuf is a process's output, readable while it runs.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// lines returns the lines of the log that contain every one of subs.
func (s *syncBuf) lines(subs ...string) []string {
	var out []string
next:
	for _, l := range strings.Split(s.String(), "\n") {
		for _, sub := range subs {
			if !strings.Contains(l, sub) {
				continue next
			}
		}
		out = append(out, l)
	}
	return out
}

// eventually polls cond every 50ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type ztunnelProc struct {
	name   string
	cmd    *exec.Cmd
	out    *syncBuf
	host   string // the loopback address of its socks5/admin/metrics/readiness listeners
	exited chan struct{}
}

func startZtunnel(t *testing.T, bin, node, host, stateFile, svidDir string, extra ...string) *ztunnelProc {
	t.Helper()
	return runZtunnel(t, bin, node, host, append([]string{"--config-file", stateFile, "--svid-dir", svidDir}, extra...)...)
}

// runZtunnel starts a loopback ztunnel for node with its own listeners on host and the given
// state and identity flags, kills it at the end of the test (printing its log if the test
// failed), and waits until it is ready.
func runZtunnel(t *testing.T, bin, node, host string, flags ...string) *ztunnelProc {
	t.Helper()
	z := &ztunnelProc{name: node, out: &syncBuf{}, host: host, exited: make(chan struct{})}
	args := append([]string{"--node", node,
		"--loopback", "--socks5", host + ":15080", "--admin", host + ":15000", "--metrics", host + ":15020",
		"--readiness", host + ":15021", "--drain-grace", "1s"}, flags...)
	z.cmd = exec.Command(bin, args...)
	z.cmd.Stdout, z.cmd.Stderr = z.out, z.out
	if err := z.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { z.cmd.Wait(); close(z.exited) }()
	t.Cleanup(func() {
		z.cmd.Process.Kill()
		<-z.exited
		if t.Failed() {
			t.Logf("%s log:\n%s", node, z.out)
		}
	})
	eventually(t, 10*time.Second, node+" ready", func() bool {
		resp, err := http.Get("http://" + host + ":15021/healthz/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return z
}

func (z *ztunnelProc) get(t *testing.T, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + z.host + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// curl does GET url through the SOCKS5 listener at socks, from the pod address podIP (its
// forward dialer is bound to it, which is how the ztunnel knows the source workload).
func curl(socks, podIP, url string) (int, string, error) {
	fwd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(podIP)}, Timeout: 5 * time.Second}
	d, err := proxy.SOCKS5("tcp", socks, nil, fwd)
	if err != nil {
		return 0, "", err
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext:       d.(proxy.ContextDialer).DialContext,
		DisableKeepAlives: true,
	}}
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func writeAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// meshctl runs meshctl with args and fails t if it fails.
func meshctl(t *testing.T, bin string, args ...string) {
	t.Helper()
	if b, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
		t.Fatalf("meshctl %v: %v\n%s", args, err, b)
	}
}

// randomNet returns a random loopback /24 "127.a.b" for one run, and a (for app addresses,
// which the default --app-offset puts at 127.(a+100).b.x).
func randomNet() (string, int, int) {
	a, b := 10+rand.IntN(90), 1+rand.IntN(250)
	return fmt.Sprintf("127.%d.%d", a, b), a, b
}

// appAddrOf is where, in loopback mode with the default --app-offset, the application of
// pod ip listens on port.
func appAddrOf(ip string, port int) string {
	var a, b, c, d int
	fmt.Sscanf(ip, "%d.%d.%d.%d", &a, &b, &c, &d)
	return fmt.Sprintf("%d.%d.%d.%d:%d", a, (b+100)%256, c, d, port)
}

// podSpec is one workload of a loopback state file.
type podSpec struct {
	name, ns, sa, ip, node string
	labels                 map[string]string
	svcs                   []string // Service names (in ns) this pod is an endpoint of
}

// svcSpec is one Service: port → targetPort.
type svcSpec struct {
	name, ns, vip string
	ports         [][2]int
}

func (s svcSpec) hostname() string { return s.name + "." + s.ns + ".svc.cluster.local" }

// scenarioState is a state file (JSON) of pods, services and the policies of z (nil: none): each
// workload references the selector policies that apply to it, as istiod would compute.
func scenarioState(t *testing.T, pods []podSpec, svcs []svcSpec, z *policies.Ztunnel, extraAuths ...string) string {
	t.Helper()
	type m = map[string]any
	byName := map[string]svcSpec{}
	for _, s := range svcs {
		byName[s.ns+"/"+s.name] = s
	}
	var wls, ss []m
	for _, p := range pods {
		w := m{"uid": "Kubernetes//Pod/" + p.ns + "/" + p.name, "name": p.name, "namespace": p.ns,
			"addresses": []string{p.ip}, "node": p.node, "tunnelProtocol": "HBONE", "serviceAccount": p.sa,
			"workloadType": "POD", "workloadName": p.name, "canonicalName": p.labels["app"], "clusterId": "Kubernetes"}
		services := m{}
		for _, name := range p.svcs {
			s, ok := byName[p.ns+"/"+name]
			if !ok {
				t.Fatalf("pod %s: no service %s", p.name, name)
			}
			var ports []m
			for _, pt := range s.ports {
				ports = append(ports, m{"servicePort": pt[0], "targetPort": pt[1]})
			}
			services[s.ns+"/"+s.hostname()] = m{"ports": ports}
		}
		if len(services) > 0 {
			w["services"] = services
		}
		if z != nil {
			if refs := z.WorkloadPolicies(p.ns, p.labels); len(refs) > 0 {
				w["authorizationPolicies"] = refs
			}
		}
		wls = append(wls, w)
	}
	for _, s := range svcs {
		var ports []m
		for _, pt := range s.ports {
			ports = append(ports, m{"servicePort": pt[0], "targetPort": pt[1]})
		}
		ss = append(ss, m{"name": s.name, "namespace": s.ns, "hostname": s.hostname(),
			"addresses": []m{{"address": s.vip}}, "ports": ports})
	}
	auths := []json.RawMessage{}
	if z != nil {
		for _, a := range z.Authorizations() {
			js, err := protojson.Marshal(a)
			if err != nil {
				t.Fatal(err)
			}
			auths = append(auths, js)
		}
	}
	for _, a := range extraAuths {
		auths = append(auths, json.RawMessage(a))
	}
	out, err := json.MarshalIndent(m{"workloads": wls, "services": ss, "authorizations": auths}, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// loadPolicies converts Istio policy YAML documents as istiod would for ztunnels.
func loadPolicies(t *testing.T, docs ...string) *policies.Ztunnel {
	t.Helper()
	objs, errs := policies.Load([]byte(strings.Join(docs, "\n---\n")), "scenario.yaml")
	for _, e := range errs {
		t.Fatal(e)
	}
	z := policies.ToZtunnel(objs, policies.Options{})
	for _, w := range z.Warnings {
		t.Logf("policy warning: %v", w)
	}
	return z
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// waitConfig waits until z's /config_dump satisfies cond (a state file change was loaded).
func waitConfig(t *testing.T, z *ztunnelProc, what string, cond func(dump string) bool) {
	t.Helper()
	eventually(t, 5*time.Second, z.name+" /config_dump "+what, func() bool {
		resp, err := http.Get("http://" + z.host + ":15000/config_dump")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return cond(string(b))
	})
}

// serveHTTP serves h on addr until the test ends.
func serveHTTP(t *testing.T, addr string, h http.Handler) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// socksDial opens a TCP stream to addr through the SOCKS5 listener socks, from podIP.
func socksDial(socks, podIP, addr string) (net.Conn, error) {
	fwd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(podIP)}, Timeout: 5 * time.Second}
	d, err := proxy.SOCKS5("tcp", socks, nil, fwd)
	if err != nil {
		return nil, err
	}
	return d.Dial("tcp", addr)
}

// plainGet does GET url directly (no ztunnel on the client side) from the address from.
func plainGet(from, url string) (int, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext:       (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}).DialContext,
		DisableKeepAlives: true,
	}}
	resp, err := client.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// keepAliveGetter returns a function that sends GET /get (Host: backend) on the open
// connection c and reads the whole response: requests on one keep-alive connection, each
// bounded by 5 s.
func keepAliveGetter(c net.Conn) func() (*http.Response, error) {
	r := bufio.NewReader(c)
	return func() (*http.Response, error) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintf(c, "GET /get HTTP/1.1\r\nHost: backend\r\n\r\n"); err != nil {
			return nil, err
		}
		resp, err := http.ReadResponse(r, nil)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return resp, err
	}
}
