package app

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testCA is a CA of the test's own (the external server's, unrelated to the mesh's).
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // its PEM
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

// TestEgressTLSOrigination: a ServiceEntry bound to an egress waypoint, the client speaking
// plain HTTP to its VIP: the waypoint applies its L7 policy (403 for /admin), originates TLS to
// the external HTTPS server (its own CA, SNI from the DestinationRule), applies a policy
// attached to the ServiceEntry (targetRefs kind ServiceEntry: 403 for POST), and refuses a server
// its CA did not sign (503). The peer is a Go HTTPS server on loopback.
func TestEgressTLSOrigination(t *testing.T) {
	dir := t.TempDir()
	good, other := newTestCA(t, dir, "good-ca"), newTestCA(t, dir, "other-ca")
	a := newAddrs()
	ln, err := net.Listen("tcp", netip.AddrPortFrom(a.of("ext"), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "external: %s %s host=%s sni=%s", r.Method, r.URL.Path, r.Host, r.TLS.ServerName)
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{good.serverCert(t, "api.external.test")}},
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	port := ln.Addr().(*net.TCPAddr).Port

	tmpl, err := os.ReadFile("testdata/egress.yaml")
	if err != nil {
		t.Fatal(err)
	}
	y := strings.NewReplacer("EXT_PORT", strconv.Itoa(port), "GOOD_CA", good.file, "OTHER_CA", other.file).Replace(string(tmpl))
	m := buildMesh(t, a.render(y))
	p := newPKI(t, "egress/egress-waypoint")
	w := startWaypoint(t, a, p, "egress", "egress-waypoint", "egress-waypoint", 1)
	w.cp.serve(t, m, "egress/egress-waypoint")
	eventually(t, "readiness 200", func() bool { return w.ready() == http.StatusOK })

	vips := map[string]netip.Addr{}
	for _, s := range m.ServiceEntries[0].Services {
		vips[s.Hostname] = s.VIPs[0]
	}
	src := netip.AddrPortFrom(a.of("client"), 40000)
	api := w.connect(t, "shop", "client", netip.AddrPortFrom(vips["api.external.test"], 80), "api.external.test", src)
	if code, body := api.do(t, "GET", "/get", ""); code != 200 || body != "external: GET /get host=api.external.test sni=api.external.test" {
		t.Fatalf("GET /get = %d %q, want 200 from the external server over TLS", code, body)
	}
	if code, body := api.do(t, "GET", "/admin/users", ""); code != 403 || body != "RBAC: access denied" {
		t.Fatalf("GET /admin/users = %d %q, want 403 from the egress policy", code, body)
	}
	if code, body := api.do(t, "POST", "/post", "{}"); code != 403 || body != "RBAC: access denied" {
		t.Fatalf("POST /post = %d %q, want 403 from the ServiceEntry's policy", code, body)
	}
	bad := w.connect(t, "shop", "client", netip.AddrPortFrom(vips["bad.external.test"], 80), "bad.external.test", src)
	if code, body := bad.do(t, "GET", "/get", ""); code != 503 {
		t.Fatalf("GET through a DestinationRule whose CA did not sign the server = %d %q, want 503", code, body)
	}
	logs := w.log.entries(t)
	if len(logs) != 4 {
		t.Fatalf("%d access-log lines, want 4: %v", len(logs), logs)
	}
	ext := netip.AddrPortFrom(a.of("ext"), uint16(port)).String()
	for i, want := range []map[string]any{
		{"response_code": 200.0, "upstream_cluster": "inbound-vip|80|http|api.external.test", "upstream_host": ext},
		{"response_code": 403.0, "response_code_details": "rbac_access_denied_matched_policy[ns[egress]-policy[egress-paths]-rule[0]]"},
		{"response_code": 403.0, "response_code_details": "rbac_access_denied_matched_policy[ns[egress]-policy[api-readonly]-rule[0]]"},
		{"response_code": 503.0, "upstream_cluster": "inbound-vip|80|http|bad.external.test"},
	} {
		for k, v := range want {
			if logs[i][k] != v {
				t.Errorf("access-log line %d: %s = %#v, want %#v", i, k, logs[i][k], v)
			}
		}
	}
}
