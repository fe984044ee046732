package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestGatewayAPIScenario plays the gateway-api scenario (manifests/examples/gateway-api) with
// the real binaries: meshctl demo builds xdsserver, ztunnel and cmd/waypoint and runs them as
// processes (two ztunnels, the embedded waypoint, and cmd/waypoint with a router~ node id as
// the ingress gateway); a plain HTTP client outside the mesh sends to the gateway's address.
// Every check of the scenario must pass: status codes, the waypoint's access log naming the
// gateway's identity, the fault VirtualService at the waypoint, the 403 with Istio's details
// for appa once the policy leaves it out while the gateway still passes.
func TestGatewayAPIScenario(t *testing.T) {
	if testing.Short() {
		t.Skip("plays a whole scenario with the built binaries")
	}
	bins := buildBinaries(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bins["meshctl"], "demo", "--scenario", "gateway-api", "--root", root)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "gateway-api: all 11 checks passed") {
		t.Fatalf("meshctl demo --scenario gateway-api: %v\n%s", err, out)
	}
	for _, want := range []string{
		"(gateway default/gateway has its listeners and routes)",
		"waypoint access log: authority=appb.opssec.in downstream_peer_uri_san=spiffe://cluster.local/ns/default/sa/gateway-istio",
		"rbac_access_denied_matched_policy[none]",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the run's output lacks %q", want)
		}
	}
}

// startGatewayProc runs cmd/waypoint as an ingress gateway with args and stops it at the end.
func startGatewayProc(t *testing.T, bin string, args ...string) *syncBuf {
	t.Helper()
	out := &syncBuf{}
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
			t.Logf("gateway log:\n%s", out)
		}
	})
	return out
}

// TestGatewayTLSSecureXDS runs the real xdsserver (its CA and secure listener, a bootstrap
// token for the Gateway) and cmd/waypoint as the ingress Gateway default/secure: its SVID from
// the CA (secure-istio), its configuration and its TLS certificate (the Secret's, over SDS)
// from the secure listener. HTTPS with SNI is terminated with the Secret's certificate, with
// ALPN h2 and http/1.1; the listener whose Secret is missing is not served. A second gateway
// process on the plaintext listener serves only the HTTP listener: the key never goes there.
func TestGatewayTLSSecureXDS(t *testing.T) {
	bins := buildXDSBinaries(t)
	wp := buildWaypoint(t, t.TempDir())
	dir := t.TempDir()
	net24, _, _ := randomNet()
	cfg, caDir, tokens, tok := filepath.Join(dir, "config"), filepath.Join(dir, "ca"), filepath.Join(dir, "tokens"), filepath.Join(dir, "token")
	if err := os.MkdirAll(cfg, 0o755); err != nil {
		t.Fatal(err)
	}
	const token = "7c1e0f9d2a3b4c5d6e7f8091a2b3c4d5"
	writeAtomic(t, tokens, token+" waypoint default/secure\n")
	writeAtomic(t, tok, token+"\n")
	certPEM, keyPEM := selfSignedPEM(t, "*.opssec.in")
	indent := func(b []byte) string {
		return "    " + strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", "\n    ")
	}
	writeAtomic(t, filepath.Join(cfg, "gateway.yaml"), `apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: secure, namespace: default}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, hostname: "*.opssec.in", port: 80, protocol: HTTP}
  - {name: https, hostname: "*.opssec.in", port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: opssec-cert}]}}
  - {name: missing, hostname: "other.example.com", port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: no-such-secret}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: redirect, namespace: default}
spec:
  parentRefs: [{name: secure}]
  hostnames: ["www.opssec.in"]
  rules:
  - filters: [{type: RequestRedirect, requestRedirect: {hostname: moved.opssec.in, statusCode: 302}}]
---
apiVersion: v1
kind: Secret
metadata: {name: opssec-cert, namespace: default}
type: kubernetes.io/tls
stringData:
  tls.crt: |
`+indent(certPEM)+`
  tls.key: |
`+indent(keyPEM)+"\n")
	_, plain, _, secure := startCAXdsserver(t, bins["xdsserver"], "--config-dir", cfg, "--loopback",
		"--xds-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--secure-listen", "127.0.0.1:0",
		"--ca-dir", caDir, "--bootstrap-tokens", tokens)
	root := filepath.Join(caDir, "root-cert.pem")
	gwArgs := func(ip, xdsAddr string, tlsXDS bool) []string {
		a := []string{"--node-id", "router~" + ip + "~secure.default~default.svc.cluster.local", "--xds-address", xdsAddr,
			"--ca-address", secure, "--ca-root", root, "--ca-token-file", tok, "--service-account", "secure-istio",
			"--ready-listen", ip + ":15021", "--access-log", filepath.Join(dir, ip+"-access.log")}
		if tlsXDS {
			a = append(a, "--xds-root", root, "--xds-token-file", tok)
		}
		return a
	}
	ipTLS, ipPlain := net24+".8", net24+".9"
	startGatewayProc(t, wp, gwArgs(ipTLS, secure, true)...)
	startGatewayProc(t, wp, gwArgs(ipPlain, plain, false)...)
	for _, ip := range []string{ipTLS, ipPlain} {
		eventually(t, 30*time.Second, "gateway "+ip+" ready", func() bool { return httpGetOK("http://" + ip + ":15021/healthz/ready") })
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	for _, protos := range [][]string{{"h2", "http/1.1"}, {"http/1.1"}} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "www.opssec.in", NextProtos: protos}, ForceAttemptHTTP2: protos[0] == "h2"}
		if protos[0] != "h2" {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		c := &http.Client{Timeout: 10 * time.Second, Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		var resp *http.Response
		eventually(t, 30*time.Second, "HTTPS through the gateway", func() bool {
			req, _ := http.NewRequest("GET", "https://"+ipTLS+":443/a?b=1", nil)
			req.Host = "www.opssec.in"
			var err error
			resp, err = c.Do(req)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return true
		})
		want := "https://moved.opssec.in/a?b=1"
		if resp.StatusCode != 302 || resp.Header.Get("Location") != want || resp.Proto != map[string]string{"h2": "HTTP/2.0", "http/1.1": "HTTP/1.1"}[protos[0]] {
			t.Errorf("ALPN %v: %d %s location %q, want 302 to %s", protos, resp.StatusCode, resp.Proto, resp.Header.Get("Location"), want)
		}
		if cs := resp.TLS; cs == nil || len(cs.PeerCertificates) == 0 || cs.PeerCertificates[0].Subject.CommonName != "*.opssec.in" {
			t.Errorf("the gateway did not present the Secret's certificate")
		}
	}
	if c, err := net.DialTimeout("tcp", ipTLS+":8443", 2*time.Second); err == nil {
		c.Close()
		t.Errorf("the listener whose Secret is missing is served")
	}
	// The gateway on the plaintext listener: HTTP served, HTTPS not (no certificate there).
	req, _ := http.NewRequest("GET", "http://"+ipPlain+":80/", nil)
	req.Host = "www.opssec.in"
	c := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if resp, err := c.Do(req); err != nil || resp.StatusCode != 302 {
		t.Errorf("plaintext gateway, HTTP: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if c, err := net.DialTimeout("tcp", ipPlain+":443", 2*time.Second); err == nil {
		c.Close()
		t.Errorf("the gateway on the plaintext xDS listener serves HTTPS: the certificate reached it")
	}
}

// selfSignedPEM is a self-signed certificate and key for a DNS name.
func selfSignedPEM(t *testing.T, name string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

func httpGetOK(url string) bool {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
