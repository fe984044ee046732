// Package kubeapi runs a real Kubernetes API server (kube-apiserver and etcd, built by integration/kube/tools/build.sh and found through $GOAMBIENT_KUBE_BIN_DIR) on loopback for tests, with RBAC and service-account tokens but no kubelet nor controller manager.
package kubeapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// EnvBinDir names the folder holding kube-apiserver, kubectl and etcd (.ci/run sets it to the
// output of integration/kube/tools/build.sh).
const EnvBinDir = "GOAMBIENT_KUBE_BIN_DIR"

// Issuer is the service-account token issuer, and the API server's own audience.
const Issuer = "https://kubernetes.default.svc.cluster.local"

// Audiences are the API server's own audiences (--api-audiences), those of tokens requested
// without one (the automounted ones). Like a real cluster's, they do not include Istio's
// istio-ca: a token for the CA is asked for by name (TokenRequest audiences, as a projected
// volume does), and TokenReview checks it for istio-ca by name. With istio-ca here, every
// pod's automounted token would be accepted by the CA.
var Audiences = []string{Issuer}

// ReadyTimeout bounds the start of etcd and of the API server (both, on a loaded machine).
const ReadyTimeout = 3 * time.Minute

// Server is a running etcd and kube-apiserver.
type Server struct {
	// Config is an administrator's (group system:masters: RBAC does not apply to it).
	Config *rest.Config
	// Kube is a clientset of Config.
	Kube kubernetes.Interface
	// Kubeconfig is a kubeconfig file of Config, for kubectl.
	Kubeconfig string
	// BinDir holds the binaries (kubectl among them).
	BinDir string
	// Dir holds the logs (etcd.log, kube-apiserver.log), certificates and etcd's data.
	Dir string

	procs  []*proc
	ownDir bool
}

// BinDir returns the binaries' folder, or why it cannot be used.
func BinDir() (string, error) {
	dir := os.Getenv(EnvBinDir)
	if dir == "" {
		return "", fmt.Errorf("$%s is not set (run integration/kube/tools/build.sh, or `make kube-bins`, and point it at the folder it prints)", EnvBinDir)
	}
	for _, b := range []string{"kube-apiserver", "kubectl", "etcd"} {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.IsDir() {
			return "", fmt.Errorf("$%s=%s has no %s binary", EnvBinDir, dir, b)
		}
	}
	return dir, nil
}

// SkipIfMissing skips t when the binaries are not there.
func SkipIfMissing(t testing.TB) string {
	t.Helper()
	dir, err := BinDir()
	if err != nil {
		t.Skip("no Kubernetes API server for this test: " + err.Error())
	}
	return dir
}

// Start starts an API server for t alone, stopped when t ends (its logs printed if t failed).
// It skips t when the binaries are missing.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := SkipIfMissing(t)
	s, err := StartIn(bin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	s.LogOnFailure(t)
	return s
}

var shared struct {
	mu  sync.Mutex
	s   *Server
	err error
}

// Shared returns the test binary's one API server, started by its first caller (start-up takes
// ~15 s, so a package's tests can share one; they must then use namespaces of their own, since
// nothing deletes a namespace without a controller manager). The package's TestMain calls Main
// to stop it. It skips t when the binaries are missing.
func Shared(t testing.TB) *Server {
	t.Helper()
	bin := SkipIfMissing(t)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.s == nil && shared.err == nil {
		dir, err := os.MkdirTemp("", "kubeapi-")
		if err != nil {
			t.Fatal(err)
		}
		shared.s, shared.err = StartIn(bin, dir)
		if shared.err != nil {
			os.RemoveAll(dir)
		} else {
			shared.s.ownDir = true
		}
	}
	if shared.err != nil {
		t.Fatalf("the shared API server did not start: %v", shared.err)
	}
	shared.s.LogOnFailure(t)
	return shared.s
}

// Main runs the tests and then stops the shared API server, if one was started; a TestMain
// that uses Shared does os.Exit(kubeapi.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.s != nil {
		shared.s.Stop()
		shared.s = nil
	}
	return code
}

// Options change where the API server listens, for a cluster whose pods reach it (a real
// node, integration/node); the zero value is the loopback server of StartIn.
type Options struct {
	// Host is the address etcd and the API server bind (default: a random 127.x.y.z). The
	// API server advertises it as the kubernetes Service's endpoint when it is not loopback.
	Host string
	// ServiceCIDR is --service-cluster-ip-range (default 10.96.0.0/16); its first address is
	// in the serving certificate.
	ServiceCIDR string
	// KubeletClient gives the API server the administrator's client certificate for the
	// kubelets' API (kubectl exec, logs), whose authentication is then by certificate only,
	// reached at their InternalIP.
	KubeletClient bool
}

// StartIn starts etcd and kube-apiserver from binDir, with their files in dir, on a random
// loopback address with free ports, and waits until /readyz answers ok.
func StartIn(binDir, dir string) (*Server, error) { return StartWith(binDir, dir, Options{}) }

// StartWith is StartIn with options.
func StartWith(binDir, dir string, o Options) (*Server, error) {
	var err error
	for range 3 { // a port taken between its choice and the server's bind: try other ports
		var s *Server
		if s, err = startOnce(binDir, dir, o); err == nil {
			return s, nil
		}
		if !errors.Is(err, errPortTaken) {
			return nil, err
		}
	}
	return nil, err
}

var errPortTaken = errors.New("address already in use")

func startOnce(binDir, dir string, o Options) (*Server, error) {
	host := o.Host
	if host == "" {
		host = fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(250), 1+rand.IntN(250), 1+rand.IntN(250))
	}
	serviceCIDR := o.ServiceCIDR
	if serviceCIDR == "" {
		serviceCIDR = "10.96.0.0/16"
	}
	_, svcNet, err := net.ParseCIDR(serviceCIDR)
	if err != nil {
		return nil, fmt.Errorf("kubeapi: service CIDR: %w", err)
	}
	apiVIP := append(net.IP(nil), svcNet.IP.To4()...)
	apiVIP[3]++
	// On loopback no kubelet reaches this address: the kubernetes Service gets no endpoint.
	reconciler := "none"
	if !net.ParseIP(host).IsLoopback() {
		reconciler = "lease"
	}
	ports, err := FreePorts(host, 3)
	if err != nil {
		return nil, err
	}
	etcdURL := fmt.Sprintf("http://%s:%d", host, ports[0])
	peerURL := fmt.Sprintf("http://%s:%d", host, ports[1])
	apiURL := fmt.Sprintf("https://%s:%d", host, ports[2])
	p, err := newPKI(host, apiVIP)
	if err != nil {
		return nil, fmt.Errorf("kubeapi: credentials: %w", err)
	}
	certDir := filepath.Join(dir, "pki")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return nil, err
	}
	files, err := p.write(certDir)
	if err != nil {
		return nil, err
	}
	s := &Server{BinDir: binDir, Dir: dir}
	etcd, err := startProc(filepath.Join(binDir, "etcd"), filepath.Join(dir, "etcd.log"),
		"--name=default", "--data-dir="+filepath.Join(dir, "etcd-data"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=default="+peerURL, "--log-level=warn",
		"--unsafe-no-fsync", // a test cluster: its data need not survive a crash
	)
	if err != nil {
		return nil, err
	}
	s.procs = append(s.procs, etcd)
	if err := waitFor(etcd, func() bool { return httpOK(http.DefaultClient, etcdURL+"/health") }); err != nil {
		s.Stop()
		return nil, fmt.Errorf("kubeapi: etcd: %w", err)
	}
	apiArgs := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + host, "--advertise-address=" + host, "--secure-port=" + strconv.Itoa(ports[2]),
		"--tls-cert-file=" + files["serving.crt"], "--tls-private-key-file=" + files["serving.key"],
		"--client-ca-file=" + files["ca.crt"],
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=" + Issuer,
		"--service-account-key-file=" + files["sa.key"],
		"--service-account-signing-key-file=" + files["sa.key"],
		"--api-audiences=" + strings.Join(Audiences, ","),
		"--service-cluster-ip-range=" + serviceCIDR,
		"--endpoint-reconciler-type=" + reconciler,
		"--allow-privileged=true", // the ztunnel DaemonSet is privileged-ish (capabilities)
		"--profiling=false", "-v=1",
	}
	if o.KubeletClient {
		apiArgs = append(apiArgs, "--kubelet-client-certificate="+files["admin.crt"], "--kubelet-client-key="+files["admin.key"],
			// the node's address, not its name (which no DNS of the host knows)
			"--kubelet-preferred-address-types=InternalIP")
	}
	api, err := startProc(filepath.Join(binDir, "kube-apiserver"), filepath.Join(dir, "kube-apiserver.log"), apiArgs...)
	if err != nil {
		s.Stop()
		return nil, err
	}
	s.procs = append(s.procs, api)
	s.Config = &rest.Config{
		Host:            apiURL,
		TLSClientConfig: rest.TLSClientConfig{CAData: p.caPEM, CertData: p.adminCert, KeyData: p.adminKey},
		QPS:             100, Burst: 200,
	}
	hc, err := rest.HTTPClientFor(s.Config)
	if err != nil {
		s.Stop()
		return nil, err
	}
	if err := waitFor(api, func() bool { return httpOK(hc, apiURL+"/readyz") }); err != nil {
		s.Stop()
		return nil, fmt.Errorf("kubeapi: kube-apiserver: %w", err)
	}
	if s.Kube, err = kubernetes.NewForConfig(s.Config); err != nil {
		s.Stop()
		return nil, err
	}
	s.Kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := WriteKubeconfig(s.Kubeconfig, s.Config); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// Stop kills the API server and etcd (by their PIDs) and waits for them; a folder Shared
// made is removed.
func (s *Server) Stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		s.procs[i].kill()
	}
	s.procs = nil
	if s.ownDir {
		os.RemoveAll(s.Dir)
	}
}

// LogOnFailure prints the end of the API server's and etcd's logs when t fails.
func (s *Server) LogOnFailure(t testing.TB) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, name := range []string{"etcd.log", "kube-apiserver.log"} {
			t.Logf("%s (last lines):\n%s", name, Tail(filepath.Join(s.Dir, name), 60))
		}
	})
}

// ConfigFor returns a client configuration that authenticates with a bearer token (a
// service account's, from Token), nothing else.
func (s *Server) ConfigFor(token string) *rest.Config {
	c := rest.AnonymousClientConfig(s.Config)
	c.BearerToken = token
	return c
}

// Kubectl runs kubectl as the administrator with args, and returns its combined output.
func (s *Server) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(s.BinDir, "kubectl"), append([]string{"--kubeconfig", s.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return out, nil
}

// Apply runs `kubectl apply --server-side` with args (-f FILE, -k DIR, ...) as the
// administrator, then waits until every CRD is Established (so that objects of the kinds it
// defines can be created next), and returns kubectl's output.
func (s *Server) Apply(ctx context.Context, args ...string) ([]byte, error) {
	out, err := s.Kubectl(ctx, append([]string{"apply", "--server-side"}, args...)...)
	if err != nil {
		return out, err
	}
	if w, err := s.Kubectl(ctx, "wait", "--for=condition=Established", "crd", "--all", "--timeout=120s"); err != nil && !strings.Contains(string(w), "no matching resources") {
		return out, err
	}
	return out, nil
}

// WriteKubeconfig writes a kubeconfig file of c (certificates and token inline).
func WriteKubeconfig(path string, c *rest.Config) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: c.Host, CertificateAuthorityData: c.CAData}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{ClientCertificateData: c.CertData, ClientKeyData: c.KeyData, Token: c.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	kc.CurrentContext = "test"
	return clientcmd.WriteToFile(*kc, path)
}

// FreePorts returns n ports that were free on host a moment ago.
func FreePorts(host string, n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, fmt.Errorf("kubeapi: %w", err)
		}
		lns = append(lns, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func httpOK(c *http.Client, url string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode == http.StatusOK
}

// waitFor polls ready every 100 ms until it holds, p exits, or ReadyTimeout passes.
func waitFor(p *proc, ready func() bool) error {
	deadline := time.Now().Add(ReadyTimeout)
	for !ready() {
		select {
		case <-p.exited:
			err := fmt.Errorf("exited (%v); log %s:\n%s", p.cmd.ProcessState, p.log, Tail(p.log, 40))
			if strings.Contains(Tail(p.log, 40), "address already in use") {
				err = fmt.Errorf("%w: %w", errPortTaken, err)
			}
			return err
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v; log %s:\n%s", ReadyTimeout, p.log, Tail(p.log, 40))
		}
	}
	return nil
}

// Tail returns the last n lines of a file.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
