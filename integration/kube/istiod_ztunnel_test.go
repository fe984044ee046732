package kube_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/proxy"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// testZtunnelUnderIstiod: two ztunnel binaries (loopback mode), one per node, take both their
// workload API and their workloads' SVIDs from istiod's 15012 (TLS, a projected-style token
// bound to their ztunnel pod, the clusterid metadata) and pass handson's L4 steps: with
// layer4-authz, curl-allow → handson:8080 is 200 and curl-deny gets no response (the
// destination ztunnel answers 401, naming the policy istiod sent); the SVID handson-blue's
// ztunnel presents chains to istiod's root; the policy deleted, curl-deny gets 200.
func testZtunnelUnderIstiod(t *testing.T, p *peerEnv) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	blueIP := p.ips["handson/handson-blue"]
	serveApp(t, loopbackApp(blueIP, 8080))
	z := map[string]*proc{}
	for i, node := range []string{Node, Node2} {
		tok := p.ztunnelToken(t, node)
		host := fmt.Sprintf("%s.%d", p.net, 250+i)
		z[node] = start(t, "ztunnel "+node, p.bins["ztunnel"], "--node", node, "--loopback",
			"--xds-address", p.istiod.Secure, "--xds-root", p.istiod.RootFile, "--xds-token-file", tok,
			"--ca-address", p.istiod.Secure, "--ca-root", p.istiod.RootFile, "--ca-token-file", tok,
			"--socks5", host+":15080", "--admin", host+":15000", "--metrics", host+":15020", "--readiness", host+":15021",
			"--drain-grace", "1s", "--log-level", "debug")
		eventually(t, 2*time.Minute, "ztunnel of "+node+" ready (the workload API from istiod)", func() bool {
			return httpOK("http://" + host + ":15021/healthz/ready")
		})
	}
	socks := p.net + ".250:15080"
	svc, err := p.s.Kube.CoreV1().Services("handson").Get(ctx, "handson", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + net.JoinHostPort(svc.Spec.ClusterIP, "8080") + "/"
	get := func(client string) (int, error) { return socksGet(socks, p.ips["handson/"+client], url) }

	// Step 2: layer4-authz (applied with the scenarios) denies curl-deny on 8080.
	eventually(t, 2*time.Minute, "curl-allow → handson:8080 = 200", func() bool {
		code, _ := get("curl-allow")
		return code == 200
	})
	if code, err := get("curl-deny"); err == nil {
		t.Errorf("curl-deny → handson:8080 = %d, want no response (denied by layer4-authz)", code)
	}
	eventually(t, time.Minute, "the destination ztunnel's denial naming handson/layer4-authz", func() bool {
		return strings.Contains(z[Node2].log.String(), "handson/layer4-authz") && strings.Contains(z[Node2].log.String(), "curl-deny")
	})

	// The SVIDs come from istiod's CA: handson-blue's inbound listener presents one that
	// chains to istiod's root.
	root, err := os.ReadFile(p.istiod.RootFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(root)
	conn, err := tls.Dial("tcp", blueIP+":15008", &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	chain := conn.ConnectionState().PeerCertificates
	conn.Close()
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("handson-blue's SVID does not chain to istiod's root: %v", err)
	}
	if id := chain[0].URIs; len(id) != 1 || id[0].String() != "spiffe://cluster.local/ns/handson/sa/handson" {
		t.Errorf("handson-blue's SVID names %v", id)
	}

	// The policy deleted: curl-deny gets 200 (istiod pushes, nothing restarts).
	if _, err := p.s.Kubectl(ctx, "delete", "authorizationpolicies.security.istio.io", "-n", "handson", "layer4-authz"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "curl-deny → handson:8080 = 200 once the policy is deleted", func() bool {
		code, _ := get("curl-deny")
		return code == 200
	})
}

// loopbackApp is where, in loopback mode with the default --app-offset, the application of
// pod ip listens on port: 127.(b+100).c.d.
func loopbackApp(ip string, port int) string {
	var a, b, c, d int
	fmt.Sscanf(ip, "%d.%d.%d.%d", &a, &b, &c, &d)
	return fmt.Sprintf("%d.%d.%d.%d:%d", a, (b+100)%256, c, d, port)
}

// serveApp answers 200 to GET / on addr until the test ends.
func serveApp(t *testing.T, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		io.WriteString(w, "handson-blue\n")
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// socksGet does GET url through the SOCKS5 listener socks, from the pod address podIP (how
// the ztunnel knows the source workload).
func socksGet(socks, podIP, url string) (int, error) {
	fwd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(podIP)}, Timeout: 5 * time.Second}
	d, err := proxy.SOCKS5("tcp", socks, nil, fwd)
	if err != nil {
		return 0, err
	}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: d.(proxy.ContextDialer).DialContext, DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode, nil
}
