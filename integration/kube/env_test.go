package kube_test

// The cluster these tests share (one API server per test binary, integration/kubeapi): the
// install bundle applied with server-side apply, the three scenarios of manifests/examples
// applied on top, and every pod given the status a kubelet would write (a loopback IP of this
// run, Running, Ready) and, when the ambient mesh enrolls it, the annotation istio-cni's node
// agent writes once it has redirected the pod. No kubelet, scheduler, controller manager or
// node agent runs: the bundle's Deployment and DaemonSet make no pods, and nothing deletes a
// namespace.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/goambient/goambient/integration/kubeapi"
)

const examples = "../../manifests/examples"

// scenarioFiles are the scenarios' files in the order they are applied (the namespace first).
var scenarioFiles = []string{
	"handson/mesh.yaml", "handson/L4-authorization-policy.yaml", "handson/L7-authorization-policy.yaml", "handson/k8s-gateway.yaml",
	"demo-strict/mesh.yaml", "demo-strict/authz-policy.yaml", "demo-strict/peer-authentication.yaml",
	"bookinfo-lite/mesh.yaml", "bookinfo-lite/rbac.yaml", "bookinfo-lite/allow-nothing.yaml",
}

// Node is the node of this run's ztunnel (handson's client pods run there).
const Node = "worker"

type env struct {
	s    *kubeapi.Server
	bins map[string]string // xdsserver, ztunnel
	dir  string            // this run's files
	net  string            // "127.a.b": the pods' addresses are 127.a.b.x
	ips  map[string]string // "ns/name" → pod IP
	// ztunnelPod is the pod a ztunnel of Node would be (istio-system, service account
	// ztunnel): its projected tokens are bound to it.
	ztunnelPod *corev1.Pod
	applyOut   string // kubectl's output for the bundle
	timings    string // how long the set-up's steps took
}

var setup struct {
	once sync.Once
	e    *env
	err  error
}

var cleanups []func()

func TestMain(m *testing.M) {
	code := kubeapi.Main(m)
	for _, f := range cleanups {
		f()
	}
	os.Exit(code)
}

// cluster returns the shared cluster, set up by its first caller; it skips without the
// Kubernetes binaries.
func cluster(t *testing.T) *env {
	t.Helper()
	t0 := time.Now()
	s := kubeapi.Shared(t)
	setup.once.Do(func() {
		t.Logf("API server started in %v", time.Since(t0).Round(time.Millisecond))
		dir, err := os.MkdirTemp("", "kubetest-")
		if err != nil {
			setup.err = err
			return
		}
		cleanups = append(cleanups, func() { os.RemoveAll(dir) })
		setup.e, setup.err = newEnv(s, dir)
		if setup.err == nil {
			t.Logf("cluster set up: %s", setup.e.timings)
		}
	})
	if setup.err != nil {
		t.Fatal(setup.err)
	}
	return setup.e
}

func newEnv(s *kubeapi.Server, dir string) (*env, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e := &env{s: s, dir: dir, bins: map[string]string{}, ips: map[string]string{}}
	e.net = fmt.Sprintf("127.%d.%d", 10+rand.IntN(90), 1+rand.IntN(250))
	// The binaries, while the bundle goes in.
	built := make(chan error, 1)
	go func() { _, err := buildBinaries(); built <- err }()
	t0 := time.Now()
	out, err := s.Apply(ctx, "-k", "../../manifests/install")
	if err != nil {
		return nil, err
	}
	e.applyOut = string(out)
	e.timings = fmt.Sprintf("bundle applied in %v", time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()
	// Namespaces first with their default ServiceAccount (a controller manager's job).
	for _, f := range scenarioFiles {
		for _, doc := range docs(filepath.Join(examples, f)) {
			var o struct {
				Kind     string
				Metadata struct{ Name string }
			}
			if yaml.Unmarshal(doc, &o) == nil && o.Kind == "Namespace" {
				if err := s.CreateNamespace(ctx, o.Metadata.Name, nil); err != nil {
					return nil, err
				}
			}
		}
	}
	// One kubectl, which applies the files in the order given.
	var args []string
	for _, f := range scenarioFiles {
		args = append(args, "-f", filepath.Join(examples, f))
	}
	if _, err := s.Apply(ctx, args...); err != nil {
		return nil, err
	}
	// A ztunnel's pod, for its bound tokens (the DaemonSet's pod a kubelet would run).
	if err := s.EnsureServiceAccount(ctx, "istio-system", "default"); err != nil {
		return nil, err
	}
	zp := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-" + Node, Namespace: "istio-system", Labels: map[string]string{"app": "ztunnel", "istio.io/dataplane-mode": "none"}},
		Spec:       corev1.PodSpec{ServiceAccountName: "ztunnel", NodeName: Node, Containers: []corev1.Container{{Name: "istio-proxy", Image: "goambient/ztunnel:dev"}}},
	}
	if _, err := s.Kube.CoreV1().Pods("istio-system").Create(ctx, zp, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	pods, err := s.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(pods.Items, func(a, b corev1.Pod) int { return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name) })
	for i := range pods.Items {
		p := &pods.Items[i]
		ip := fmt.Sprintf("%s.%d", e.net, i+1)
		running, err := s.SetPodRunning(ctx, p, ip)
		if err != nil {
			return nil, err
		}
		// istio-cni's node agent, once it has redirected an enrolled pod, annotates it: only
		// then does the control plane send HBONE for it (istiod's rule, and xdsserver's in
		// Kubernetes mode). No node agent runs here, so the set-up plays it.
		ns, err := s.Kube.CoreV1().Namespaces().Get(ctx, p.Namespace, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		if kubeapi.Enrolled(ns, running) {
			if running, err = s.SetRedirected(ctx, running); err != nil {
				return nil, err
			}
		}
		e.ips[p.Namespace+"/"+p.Name] = ip
		if p.Name == zp.Name && p.Namespace == zp.Namespace {
			e.ztunnelPod = running
		}
	}
	e.timings += fmt.Sprintf(", scenarios applied and pods running in %v", time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()
	if err := <-built; err != nil {
		return nil, err
	}
	e.timings += fmt.Sprintf(", then waited %v for the binaries", time.Since(t0).Round(time.Millisecond))
	e.bins, _ = buildBinaries()
	return e, nil
}

var built struct {
	once sync.Once
	bins map[string]string
	err  error
}

// buildBinaries builds xdsserver, ztunnel and meshctl once per test binary, into a folder
// removed by TestMain.
func buildBinaries() (map[string]string, error) {
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "kubetest-bin-")
		if err != nil {
			built.err = err
			return
		}
		cleanups = append(cleanups, func() { os.RemoveAll(dir) })
		cmd := exec.Command("go", "build", "-o", dir+"/", "../../cmd/xdsserver", "../../cmd/ztunnel", "../../cmd/meshctl")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			built.err = fmt.Errorf("go build: %w\n%s", err, out)
			return
		}
		built.bins = map[string]string{}
		for _, b := range []string{"xdsserver", "ztunnel", "meshctl"} {
			built.bins[b] = filepath.Join(dir, b)
		}
	})
	return built.bins, built.err
}

// docs splits a YAML file into its documents.
func docs(path string) [][]byte {
	b, _ := os.ReadFile(path)
	return bytes.Split(b, []byte("\n---"))
}

// proc is a started binary of this repository, killed at the end of the test.
type proc struct {
	cmd    *exec.Cmd
	log    *syncBuf
	exited chan struct{}
}

// kill ends the process by its PID and waits for it.
func (p *proc) kill() {
	p.cmd.Process.Kill()
	<-p.exited
}

func start(t *testing.T, name, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), log: &syncBuf{}}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.exited = make(chan struct{})
	go func() { p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s log:\n%s", name, p.log)
		}
	})
	return p
}

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

// eventually polls cond every 50 ms until it holds or d passes.
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

func httpOK(url string) bool {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// xdsserver is a running xdsserver binary reading the cluster as its own ServiceAccount.
type xdsserver struct {
	*proc
	host           string // its listeners: host:15010 (plaintext), :15012 (TLS, CA), :15014
	caDir, rootPEM string
}

// startXdsserver runs xdsserver with a kubeconfig holding a token of the bundle's ServiceAccount
// istio-system/xdsserver (TokenRequest), so that only the bundle's RBAC applies, with its CA.
func (e *env) startXdsserver(t *testing.T, host string) *xdsserver {
	t.Helper()
	caDir := filepath.Join(t.TempDir(), "ca")
	x := runXdsserver(t, e.s, e.bins["xdsserver"], host, "--ca-dir", caDir)
	x.caDir = caDir
	root, err := os.ReadFile(filepath.Join(x.caDir, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	x.rootPEM = string(root)
	return x
}

// runXdsserver runs the xdsserver binary against s with a token of the bundle's ServiceAccount
// istio-system/xdsserver (only the bundle's RBAC applies), listening on host's 15010, 15012
// and 15014, with args added, and waits until it is ready.
func runXdsserver(t *testing.T, s *kubeapi.Server, bin, host string, args ...string) *xdsserver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tok, err := s.Token(ctx, "istio-system", "xdsserver", nil, nil, 3600)
	if err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := kubeapi.WriteKubeconfig(kc, s.ConfigFor(tok)); err != nil {
		t.Fatal(err)
	}
	x := &xdsserver{host: host}
	x.proc = start(t, "xdsserver", bin, append([]string{"--kubeconfig", kc,
		"--xds-listen", host + ":15010", "--secure-listen", host + ":15012", "--http-listen", host + ":15014", "--log-level", "debug"}, args...)...)
	eventually(t, 2*time.Minute, "xdsserver ready", func() bool { return httpOK("http://" + host + ":15014/healthz/ready") })
	return x
}

// noForbidden fails t when xdsserver was refused anything by RBAC.
func (x *xdsserver) noForbidden(t *testing.T) {
	t.Helper()
	for _, l := range strings.Split(x.log.String(), "\n") {
		if strings.Contains(l, "is forbidden: User") { // the API server's RBAC refusal
			t.Errorf("xdsserver was refused by RBAC: %s", l)
		}
	}
}

// objectsYAML dumps the cluster's objects the mesh is read from as one multi-document YAML
// file, for the files source (status of policies left out: the files source reads specs).
func (e *env) objectsYAML(t *testing.T, path string) { objectsYAML(t, e.s, path) }

// objectsYAML dumps s's objects the mesh is read from into one YAML file (see env.objectsYAML).
func objectsYAML(t *testing.T, s *kubeapi.Server, path string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := s.Kubectl(ctx, "get", "-A", "-o", "json",
		"namespaces,nodes,serviceaccounts,services,pods,endpointslices,gateways.gateway.networking.k8s.io,gatewayclasses.gateway.networking.k8s.io,"+
			"authorizationpolicies.security.istio.io,peerauthentications.security.istio.io")
	if err != nil {
		t.Fatal(err)
	}
	var list struct{ Items []map[string]any }
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for _, it := range list.Items {
		if md, ok := it["metadata"].(map[string]any); ok {
			delete(md, "managedFields")
		}
		if k := it["kind"]; k == "AuthorizationPolicy" || k == "PeerAuthentication" {
			delete(it, "status")
		}
		y, err := yaml.Marshal(it)
		if err != nil {
			t.Fatal(err)
		}
		buf.WriteString("---\n")
		buf.Write(y)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}
