//go:build linux

package integration

// The egress waypoint in namespace mode: a mesh pod's plain HTTP to a ServiceEntry host goes
// through its ztunnel over HBONE to the egress waypoint (the embedded waypoint, fed by
// xdsserver from the same YAML), which applies an L7 AuthorizationPolicy and originates TLS
// to the outside host (DestinationRule SIMPLE, the host's own CA): TLS on the wire, checked
// by capture.
//
//	node "worker":  client 10.1.1.2 (mesh, DNS captured), egress-waypoint 10.1.1.3 (its pod:
//	                the embedded waypoint and, beside it on its loopback, xdsserver)
//	node "vmnode":  outside 10.1.2.2 (HTTPS on 443 with its own CA, DNS on 53)

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goambient/goambient/ztunnel/netns"
)

const egressWaypointMesh = `apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: egress}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec: {nodeName: worker, serviceAccountName: client}
status: {podIP: CLIENT_IP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: egress-waypoint, namespace: egress, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: egress-waypoint
  namespace: egress
  labels: {gateway.networking.k8s.io/gateway-name: egress-waypoint, istio.io/dataplane-mode: none}
spec: {serviceAccountName: egress-waypoint, nodeName: worker}
status: {podIP: WAYPOINT_IP}
---
apiVersion: v1
kind: Service
metadata: {name: egress-waypoint, namespace: egress, labels: {gateway.networking.k8s.io/gateway-name: egress-waypoint}}
spec:
  clusterIP: 10.96.0.50
  selector: {gateway.networking.k8s.io/gateway-name: egress-waypoint}
  ports: [{name: mesh, port: 15008, appProtocol: hbone}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: api
  namespace: egress
  labels: {istio.io/use-waypoint: egress-waypoint}
spec:
  hosts: [api.external.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{name: http, number: 80, protocol: HTTP, targetPort: 443}]
  endpoints: [{address: OUTSIDE_IP}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api-tls, namespace: egress}
spec:
  host: api.external.test
  trafficPolicy:
    tls: {mode: SIMPLE, caCertificates: CA_FILE, sni: api.external.test}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: egress-paths, namespace: egress}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: egress-waypoint}]
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin*]}}]
`

// buildMore builds the named commands like buildBinaries does.
func buildMore(t *testing.T, names ...string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	bins := map[string]string{}
	for _, name := range names {
		out := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", out, "../cmd/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", name, err, b)
		}
		bins[name] = out
	}
	return bins
}

// runIn starts bin with args inside a namespace (ip netns exec), killed when t ends.
func runIn(t *testing.T, nsName, name, bin string, args ...string) *syncBuf {
	t.Helper()
	out, exited := &syncBuf{}, make(chan struct{})
	cmd := exec.Command("ip", append([]string{"netns", "exec", nsName, bin}, args...)...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("%s log:\n%s", name, out)
		}
	})
	return out
}

func TestEgressWaypointNamespaces(t *testing.T) {
	tp := newNSTopo(t, "worker", "vmnode")
	bins := buildBinaries(t)
	for k, v := range buildMore(t, "xdsserver", "waypoint") {
		bins[k] = v
	}
	dir := t.TempDir()
	client := tp.addPod("worker", "client", true)
	wp := tp.addPod("worker", "egress-waypoint", false)
	outside := tp.addPod("vmnode", "outside", false)
	if err := netns.ApplyDNS(context.Background(), client.netns); err != nil {
		t.Fatal(err)
	}
	serveDNS(t, outside)
	ca := newTestCA(t, dir, "outside-ca")
	ln, err := outside.ns.Listen(context.Background(), "tcp", outside.ip+":443")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "outside: %s %s%s tls=%v sni=%s\n", r.Method, r.Host, r.URL.Path, r.TLS != nil, r.TLS.ServerName)
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{ca.serverCert(t, "api.external.test")}},
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })

	yaml := strings.NewReplacer("CLIENT_IP", client.ip, "WAYPOINT_IP", wp.ip, "OUTSIDE_IP", outside.ip, "CA_FILE", ca.file).Replace(egressWaypointMesh)
	configDir := filepath.Join(dir, "config")
	os.MkdirAll(configDir, 0o755)
	writeAtomic(t, filepath.Join(configDir, "mesh.yaml"), yaml)
	svids := filepath.Join(dir, "svids")
	meshctl(t, bins["meshctl"], "certs", "root", "--dir", svids)
	for _, id := range [][2]string{{"shop", "client"}, {"egress", "egress-waypoint"}} {
		meshctl(t, bins["meshctl"], "certs", "issue", "--dir", svids, "--ns", id[0], "--sa", id[1])
	}
	stateFile := filepath.Join(dir, "state.json")
	writeAtomic(t, stateFile, egressStateOf(t, yaml, nil))
	resolvConf := filepath.Join(dir, "resolv.conf")
	os.WriteFile(resolvConf, []byte("nameserver "+outside.ip+"\n"), 0o644)

	// xdsserver and the waypoint in the waypoint pod's namespace (xdsserver on its loopback).
	runIn(t, wp.netns, "xdsserver", bins["xdsserver"], "--config-dir", configDir, "--xds-listen", "127.0.0.1:15010",
		"--http-listen", "127.0.0.1:15014", "--secure-listen", "", "--interval", "200ms")
	wplog := filepath.Join(dir, "access.log")
	runIn(t, wp.netns, "waypoint", bins["waypoint"], "--xds-address", "127.0.0.1:15010",
		"--node-id", "waypoint~"+wp.ip+"~egress-waypoint.egress~egress.svc.cluster.local", "--listen", wp.ip+":15008",
		"--svid-dir", svids, "--ready-listen", "127.0.0.1:15021", "--access-log", wplog)
	wpHTTP := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: wp.ns.Dialer(0), DisableKeepAlives: true}}
	eventually(t, 20*time.Second, "the waypoint ready", func() bool {
		resp, err := wpHTTP.Get("http://127.0.0.1:15021/healthz/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	worker := tp.node("worker")
	worker.runZtunnel(t, bins["ztunnel"], stateFile, svids, "--pod-netns", client.ip+"=/var/run/netns/"+client.netns,
		"--dns-capture", "--resolv-conf", resolvConf)
	wire := captureWire(t, tp)
	r := client.resolver(outside.ip)

	// Plain HTTP in the pod; the waypoint originates TLS with the outside's CA and SNI.
	code, body, err := client.getByName(r, "http://api.external.test/get")
	if err != nil || code != 200 || !strings.Contains(body, "outside: GET api.external.test/get tls=true sni=api.external.test") {
		t.Fatalf("GET api.external.test/get from the pod: %d %q %v", code, body, err)
	}
	// The egress policy at the waypoint denies one path.
	if code, body, err := client.getByName(r, "http://api.external.test/admin/users"); err != nil || code != 403 || body != "RBAC: access denied" {
		t.Fatalf("GET /admin/users: %d %q %v, want 403 from the egress waypoint", code, body, err)
	}
	eventually(t, 10*time.Second, "worker's outbound log through the waypoint", func() bool {
		return len(worker.out.lines("connection complete", `direction="outbound"`, `dst.service="api.external.test"`, "dst.addr="+wp.ip+":15008",
			`dst.identity="spiffe://cluster.local/ns/egress/sa/egress-waypoint"`)) > 0
	})
	eventually(t, 10*time.Second, "the waypoint's access log", func() bool {
		b, _ := os.ReadFile(wplog)
		return strings.Contains(string(b), `"upstream_host":"`+outside.ip+`:443"`) && strings.Contains(string(b), `"response_code":403`)
	})
	// On the wire to the outside host: TLS from the first byte, the SNI in the ClientHello, no
	// plaintext HTTP.
	var toOutside map[netip4Port][]byte
	eventually(t, 10*time.Second, "streams to "+outside.ip+":443 on the wire", func() bool {
		toOutside = wire.streams(outside.ip, 443, true)
		return len(toOutside) > 0
	})
	for peer, b := range toOutside {
		if len(b) < 3 || b[0] != 0x16 || b[1] != 0x03 {
			t.Errorf("stream to %s:443 from %v does not start with a TLS handshake record: % x", outside.ip, peer.ip, b[:min(len(b), 16)])
		}
		if !strings.Contains(string(b), "api.external.test") {
			t.Errorf("stream to %s:443 from %v: no SNI api.external.test in the ClientHello", outside.ip, peer.ip)
		}
		if strings.Contains(string(b), "GET /") {
			t.Errorf("stream to %s:443 from %v carries plaintext HTTP", outside.ip, peer.ip)
		}
		t.Logf("wire: to %s:443 from %v: %d bytes, starts % x", outside.ip, peer.ip, len(b), b[:min(len(b), 5)])
	}
}

// testCA is the outside host's own CA (unrelated to the mesh's).
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // its PEM, the DestinationRule's caCertificates
}

func newTestCA(t *testing.T, dir, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	file := filepath.Join(dir, name+".pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, file: file}
}

// serverCert is a certificate for dnsName signed by the CA.
func (c *testCA) serverCert(t *testing.T, dnsName string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: dnsName}, DNSNames: []string{dnsName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
