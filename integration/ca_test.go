package integration

// The control plane's CA end to end: a real xdsserver with --ca-dir serves the CA and delta ADS
// on its TLS listener, and real ztunnels get their workloads' certificates from it.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/goambient/goambient/xdsserver/ca/pki"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/goambient/goambient/ztunnel/identity"
)

const (
	caTokenA = "catest-token-node-a-4f1e9c2b7d"
	caTokenB = "catest-token-node-b-8a3d6e0f5c"
)

// caMesh is one ambient namespace with a client pod on node-a and a server pod on node-b.
func caMesh(clientIP, serverIP string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: catest, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: catest}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: server, namespace: catest}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: catest, labels: {app: client}}
spec:
  serviceAccountName: client
  nodeName: node-a
  containers: [{name: client, image: curl}]
status: {podIP: %s}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: catest, labels: {app: server}}
spec:
  serviceAccountName: server
  nodeName: node-b
  containers: [{name: server, image: echo, ports: [{containerPort: 8080}]}]
status: {podIP: %s}
`, clientIP, serverIP)
}

var caStartedRE = regexp.MustCompile(`xdsserver started.* xds=(\S+) http=(\S+).* secure=(\S+)`)

// startCAXdsserver runs xdsserver with the CA on; it returns its log and the ADS, HTTP and
// secure addresses once it is ready.
func startCAXdsserver(t *testing.T, bin string, args ...string) (out *syncBuf, xds, httpAddr, secure string) {
	t.Helper()
	out = &syncBuf{}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("xdsserver log:\n%s", out)
		}
	})
	eventually(t, 10*time.Second, "xdsserver's listeners", func() bool {
		m := caStartedRE.FindStringSubmatch(out.String())
		if m == nil {
			return false
		}
		xds, httpAddr, secure = m[1], m[2], m[3]
		return true
	})
	eventually(t, 10*time.Second, "xdsserver ready", func() bool {
		resp, err := http.Get("http://" + httpAddr + "/healthz/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return out, xds, httpAddr, secure
}

// startCAZtunnel starts a ztunnel for node with its state from xdsAddr and its certificates
// from the CA at caAddr, and waits until it is ready; extra flags are added.
func startCAZtunnel(t *testing.T, bin, node, host, xdsAddr, caAddr, root, tokenFile string, extra ...string) *ztunnelProc {
	t.Helper()
	return runZtunnel(t, bin, node, host, append([]string{"--xds-address", xdsAddr,
		"--ca-address", caAddr, "--ca-root", root, "--ca-token-file", tokenFile}, extra...)...)
}

// TestCAIssuesToZtunnels: two ztunnels get their workloads' SVIDs from xdsserver's CA over
// TLS with bootstrap tokens, a call between the two workloads succeeds over HBONE, and node A's
// token cannot obtain node B's workload identity.
// caEnv is xdsserver with its CA and secure listener serving the catest mesh from a folder,
// bootstrap tokens for node-a and node-b, and the server workload's app; no ztunnel yet.
type caEnv struct {
	bins                             map[string]string
	dir, cfg, caDir, tokens          string
	root, tokA, tokB                 string
	clientIP, serverIP, hostA, hostB string
	xlog                             *syncBuf
	plain, httpAddr, secure          string // xdsserver's plaintext ADS, HTTP and TLS listeners
}

func newCAEnv(t *testing.T) *caEnv {
	t.Helper()
	e := &caEnv{bins: buildXDSBinaries(t), dir: t.TempDir()}
	net24, _, _ := randomNet()
	e.clientIP, e.serverIP, e.hostA, e.hostB = net24+".10", net24+".20", net24+".1", net24+".2"
	e.cfg, e.caDir, e.tokens = filepath.Join(e.dir, "config"), filepath.Join(e.dir, "ca"), filepath.Join(e.dir, "tokens")
	if err := os.MkdirAll(e.cfg, 0o755); err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, filepath.Join(e.cfg, "mesh.yaml"), caMesh(e.clientIP, e.serverIP))
	writeAtomic(t, e.tokens, "# bootstrap tokens\n"+caTokenA+" ztunnel node-a\n"+caTokenB+" ztunnel node-b\n")
	e.tokA, e.tokB = filepath.Join(e.dir, "token-a"), filepath.Join(e.dir, "token-b")
	writeAtomic(t, e.tokA, caTokenA+"\n")
	writeAtomic(t, e.tokB, caTokenB+"\n")
	e.xlog, e.plain, e.httpAddr, e.secure = e.startXdsserver(t)
	e.root = filepath.Join(e.caDir, identity.RootCertFile)
	return e
}

// startXdsserver starts an xdsserver on e's folder, CA directory and tokens.
func (e *caEnv) startXdsserver(t *testing.T) (out *syncBuf, plain, httpAddr, secure string) {
	t.Helper()
	return startCAXdsserver(t, e.bins["xdsserver"], "--config-dir", e.cfg, "--loopback",
		"--xds-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--secure-listen", "127.0.0.1:0",
		"--ca-dir", e.caDir, "--bootstrap-tokens", e.tokens)
}

// call serves greeting from the server workload's app and waits until the client workload,
// through node-a's ztunnel, gets it.
func (e *caEnv) call(t *testing.T, greeting string) {
	t.Helper()
	serveHTTP(t, appAddrOf(e.serverIP, 8080), http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, greeting)
	}))
	var code int
	var body string
	eventually(t, 15*time.Second, "client → server through both ztunnels", func() bool {
		var err error
		code, body, err = curl(e.hostA+":15080", e.clientIP, "http://"+e.serverIP+":8080/")
		return err == nil && code == 200
	})
	if body != greeting {
		t.Fatalf("body %q, want %q", body, greeting)
	}
}

func TestCAIssuesToZtunnels(t *testing.T) {
	e := newCAEnv(t)
	bins, dir, secure, root, tokA, tokB, xlog := e.bins, e.dir, e.secure, e.root, e.tokA, e.tokB, e.xlog
	if st, err := os.Stat(filepath.Join(e.caDir, pki.RootKeyFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("root key: %v %v, want mode 0600", st, err)
	}
	za := startCAZtunnel(t, bins["ztunnel"], "node-a", e.hostA, e.plain, secure, root, tokA)
	zb := startCAZtunnel(t, bins["ztunnel"], "node-b", e.hostB, e.plain, secure, root, tokB)
	e.call(t, "hello from server\n")
	for _, id := range []string{"spiffe://cluster.local/ns/catest/sa/client", "spiffe://cluster.local/ns/catest/sa/server"} {
		if len(xlog.lines("certificate issued", id)) == 0 {
			t.Errorf("xdsserver did not log issuing %s", id)
		}
	}
	if len(za.out.lines("fetched SVID", "ns/catest/sa/client")) == 0 || len(zb.out.lines("fetched SVID", "ns/catest/sa/server")) == 0 {
		t.Error("the ztunnels did not log their SVIDs")
	}

	// Node A's token cannot have node B's workload; node B's can; a bad token nothing.
	serverID := spiffeid.RequireFromString("spiffe://cluster.local/ns/catest/sa/server")
	fetch := func(tokenFile string) error {
		s, err := identity.NewGRPCSource(identity.GRPCSourceOptions{Address: secure, RootFile: root, TokenFile: tokenFile,
			TrustDomain: serverID.TrustDomain()})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = s.FetchSVID(ctx, serverID)
		return err
	}
	bad := filepath.Join(dir, "token-bad")
	writeAtomic(t, bad, "not-a-token-anyone-knows\n")
	for _, tt := range []struct {
		token string
		want  codes.Code
	}{{tokA, codes.PermissionDenied}, {tokB, codes.OK}, {bad, codes.Unauthenticated}} {
		err := fetch(tt.token)
		if got := status.Code(err); got != tt.want {
			t.Errorf("%s asking for %s: %v, want %v", filepath.Base(tt.token), serverID, err, tt.want)
		}
	}
	if len(xlog.lines("certificate refused", "ztunnel of node node-a", "catest/server")) == 0 {
		t.Error("xdsserver did not log the refusal naming the node and the identity")
	}
	// The secure listener also serves the delta ADS, to node-b's ztunnel by its token, and to
	// nobody without one.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(readFile(t, root)))
	conn, err := grpc.NewClient(secure, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: pool, ServerName: identity.DefaultCAServerName})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nodeB, err := structpb.NewStruct(map[string]any{"NODE_NAME": "node-b"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{"", caTokenB} {
		ctx := ctx
		if tok != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
		}
		ads, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = ads.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "ztunnel~127.0.0.1~ztunnel-node-b.istio-system~istio-system.svc.cluster.local", Metadata: nodeB},
			TypeUrl: "type.googleapis.com/istio.workload.Address"})
		dr, err := ads.Recv()
		if tok == "" {
			if status.Code(err) != codes.Unauthenticated {
				t.Errorf("delta ADS over the secure listener without a token: %v, want Unauthenticated", err)
			}
			continue
		}
		if err != nil || len(dr.GetResources()) == 0 {
			t.Fatalf("delta ADS over the secure listener: %d resources, %v", len(dr.GetResources()), err)
		}
	}

	resp, err := http.Get("http://" + e.httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, reason := range []string{"forbidden", "unauthenticated"} {
		re := regexp.MustCompile(`(?m)^goambient_ca_certificates_refused_total\{reason="` + reason + `"\} [1-9]`)
		if !re.Match(m) {
			t.Errorf("/metrics: no refusal counted as %s", reason)
		}
	}

	// A restart keeps the root: the new server's certificates verify against the same file.
	before := readFile(t, root)
	_, _, _, secure2 := e.startXdsserver(t)
	if readFile(t, root) != before {
		t.Fatal("the root changed across a restart")
	}
	secure = secure2
	if err := fetch(tokB); err != nil {
		t.Fatalf("after a restart: %v", err)
	}
}
