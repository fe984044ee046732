package integration

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goambient/goambient/xdsserver/ca/pki"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/goambient/goambient/ztunnel/hbone"
)

// twoNodes is a small mesh: node n2 has pod server (Service server: 8080 HTTP, 9000 TCP echo),
// node n1 has pods client and curl-deny; pod rogue is on node n3, which no test starts unless
// it needs it.
type twoNodes struct {
	bins                        map[string]string
	dir, svids, stateFile, net  string
	pods                        []podSpec
	svcs                        []svcSpec
	z1, z2                      *ztunnelProc
	server, client, deny, rogue string
	marker                      string       // in every answer of the server's HTTP app
	appRequests                 atomic.Int64 // requests the server's HTTP app got
}

func newTwoNodes(t *testing.T) *twoNodes {
	t.Helper()
	e := &twoNodes{bins: buildBinaries(t), dir: t.TempDir()}
	e.svids = filepath.Join(e.dir, "svids")
	meshctl(t, e.bins["meshctl"], "certs", "root", "--dir", e.svids)
	for _, sa := range []string{"server", "client", "curl-deny"} {
		meshctl(t, e.bins["meshctl"], "certs", "issue", "--dir", e.svids, "--ns", "default", "--sa", sa)
	}
	n, _, _ := randomNet()
	e.net = n
	e.server, e.client, e.deny, e.rogue = n+".2", n+".3", n+".4", n+".5"
	e.pods = []podSpec{
		{"server", "default", "server", e.server, "n2", map[string]string{"app": "server"}, []string{"server"}},
		{"client", "default", "client", e.client, "n1", map[string]string{"app": "client"}, nil},
		{"curl-deny", "default", "curl-deny", e.deny, "n1", map[string]string{"app": "curl-deny"}, nil},
		{"rogue", "default", "rogue", e.rogue, "n3", map[string]string{"app": "rogue"}, nil},
	}
	e.svcs = []svcSpec{{"server", "default", n + ".200", [][2]int{{8080, 8080}, {9000, 9000}}}}
	e.marker = fmt.Sprintf("server-marker-%d", time.Now().UnixNano())
	serveHTTP(t, appAddrOf(e.server, 8080), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.appRequests.Add(1)
		fmt.Fprintf(w, "%s %s %s\n", e.marker, r.Method, r.URL.Path)
	}))
	ln, err := net.Listen("tcp", appAddrOf(e.server, 9000))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	e.stateFile = filepath.Join(e.dir, "state.json")
	e.writeState(t)
	e.z1 = startZtunnel(t, e.bins["ztunnel"], "n1", n+".250", e.stateFile, e.svids)
	e.z2 = e.startServerNode(t)
	return e
}

func (e *twoNodes) startServerNode(t *testing.T) *ztunnelProc {
	return startZtunnel(t, e.bins["ztunnel"], "n2", e.net+".251", e.stateFile, e.svids)
}

// writeState writes the state with the policy documents given (none: no policy).
func (e *twoNodes) writeState(t *testing.T, policyDocs ...string) {
	t.Helper()
	if len(policyDocs) == 0 {
		writeAtomic(t, e.stateFile, scenarioState(t, e.pods, e.svcs, nil))
		return
	}
	writeAtomic(t, e.stateFile, scenarioState(t, e.pods, e.svcs, loadPolicies(t, policyDocs...)))
}

func (e *twoNodes) get(from, path string) (int, string, error) {
	return curl(e.z1.host+":15080", from, "http://server:8080"+path)
}

// hboneClient returns an in-process HBONE client trusting bundle.
func hboneClient(t *testing.T, bundle x509bundle.Source) *hbone.Client {
	t.Helper()
	c, err := hbone.NewClient(hbone.ClientConfig{Bundle: bundle})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (e *twoNodes) meshBundle(t *testing.T) *x509bundle.Bundle {
	t.Helper()
	b, err := x509bundle.Load(spiffeid.RequireTrustDomainFromString("cluster.local"), filepath.Join(e.svids, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// dialServer opens an HBONE stream as src to the server pod's port with the client given.
func (e *twoNodes) dialServer(c *hbone.Client, src *x509svid.SVID, port uint16) (*hbone.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ip := netip.MustParseAddr(e.server)
	return c.Dial(ctx, hbone.Target{
		Source: src, Address: netip.AddrPortFrom(ip, 15008), Authority: netip.AddrPortFrom(ip, port).String(),
		Identities: []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/server")},
	})
}

func loadSVID(t *testing.T, dir, ns, sa string) *x509svid.SVID {
	t.Helper()
	s, err := x509svid.Load(filepath.Join(dir, ns, sa, "cert-chain.pem"), filepath.Join(dir, ns, sa, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// httpOver sends GET path over c and returns the status line it gets (or the error).
func httpOver(c net.Conn, path string) (string, error) {
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n", path); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}

// TestHBONEFaultsLoopback: what the destination ztunnel (real binary) does with bad peers.
func TestHBONEFaultsLoopback(t *testing.T) {
	e := newTwoNodes(t)
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	clientID := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/client")
	good := loadSVID(t, e.svids, "default", "client")
	mesh := e.meshBundle(t)

	// The valid SVID works end to end with the in-process client: the baseline of the faults.
	c, err := e.dialServer(hboneClient(t, mesh), good, 8080)
	if err != nil {
		t.Fatalf("valid SVID: %v", err)
	}
	if line, err := httpOver(c, "/ok"); err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Fatalf("valid SVID: %q %v", line, err)
	}
	c.Close()

	refused := func(name string, client *hbone.Client, src *x509svid.SVID) {
		t.Helper()
		before := e.appRequests.Load()
		conn, err := e.dialServer(client, src, 8080)
		if err == nil {
			line, rerr := httpOver(conn, "/"+name)
			conn.Close()
			if rerr == nil {
				t.Errorf("%s: got an answer: %q", name, line)
				return
			}
			err = rerr
		}
		var se hbone.StatusError
		if errors.As(err, &se) {
			t.Errorf("%s: the CONNECT was answered (%v): the TLS handshake should have failed", name, err)
		}
		if got := e.appRequests.Load(); got != before {
			t.Errorf("%s: the app got a request", name)
		}
		t.Logf("%s: %v", name, err)
	}

	t.Run("other trust domain", func(t *testing.T) {
		other := spiffeid.RequireTrustDomainFromString("evil.example")
		ca, err := pki.NewCA(other)
		if err != nil {
			t.Fatal(err)
		}
		svid, err := ca.IssueSVID(spiffeid.RequireFromString("spiffe://evil.example/ns/default/sa/client"), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		// The client trusts both roots, so it accepts the server: the refusal is the server's.
		refused("other-td", hboneClient(t, x509bundle.NewSet(mesh, ca.Bundle())), svid)
	})
	t.Run("other root, same trust domain", func(t *testing.T) {
		ca, err := pki.NewCA(td)
		if err != nil {
			t.Fatal(err)
		}
		svid, err := ca.IssueSVID(clientID, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		both := x509bundle.FromX509Authorities(td, append(mesh.X509Authorities(), ca.Root()))
		refused("other-root", hboneClient(t, both), svid)
	})
	t.Run("expired", func(t *testing.T) {
		ca, err := pki.LoadCA(e.svids, td, pki.WithClock(func() time.Time { return time.Now().Add(-2 * time.Hour) }))
		if err != nil {
			t.Fatal(err)
		}
		svid, err := ca.IssueSVID(clientID, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if !svid.Certificates[0].NotAfter.Before(time.Now()) {
			t.Fatal("the SVID is not expired")
		}
		refused("expired", hboneClient(t, mesh), svid)
	})
	t.Run("no SPIFFE ID", func(t *testing.T) {
		root := mesh.X509Authorities()[0]
		key := readRootKey(t, filepath.Join(e.svids, "root-key.pem"))
		leafKey := good.PrivateKey
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "client"},
			NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
			DNSNames:    []string{"client.default.svc"},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, root, leafKey.Public(), key)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: certPool(root), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Fatalf("the non-SPIFFE certificate should chain to the mesh root: %v", err)
		}
		refused("no-spiffe-id", hboneClient(t, mesh), &x509svid.SVID{ID: clientID, Certificates: []*x509.Certificate{leaf}, PrivateKey: leafKey})
	})
	eventually(t, 5*time.Second, "n2's handshake failure logs", func() bool {
		return len(e.z2.out.lines("connection failed", `dst.addr="`+e.server+`:15008"`)) >= 4
	})

	t.Run("plaintext to 15008", func(t *testing.T) {
		before := e.appRequests.Load()
		c, err := net.DialTimeout("tcp", e.server+":15008", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "CONNECT %s:8080 HTTP/1.1\r\nHost: %s:8080\r\n\r\nGET / HTTP/1.1\r\nHost: server\r\n\r\n", e.server, e.server)
		b, err := io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("the connection was not closed: read %q", b)
		}
		if strings.Contains(string(b), "HTTP/1.1") || strings.Contains(string(b), e.marker) {
			t.Fatalf("plaintext got an HTTP answer: %q", b)
		}
		if e.appRequests.Load() != before {
			t.Fatal("the app got a request")
		}
		t.Logf("plaintext to 15008: closed after %d bytes (%x), %v", len(b), b, err)
	})
	t.Run("CONNECT to a closed port", func(t *testing.T) {
		_, err := e.dialServer(hboneClient(t, mesh), good, 9999)
		var se hbone.StatusError
		if !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable {
			t.Fatalf("want hbone.StatusError{503}, got %v", err)
		}
	})
}

func certPool(c *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}

func readRootKey(t *testing.T, path string) any {
	t.Helper()
	block, _ := pem.Decode([]byte(readFile(t, path)))
	if block == nil {
		t.Fatalf("%s: no PEM", path)
	}
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		return k
	}
	k, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestRogueZtunnelLoopback: a ztunnel binary whose SVIDs come from another root (it trusts the
// mesh root too, so it accepts the destination) gets no response: the destination refuses it.
func TestRogueZtunnelLoopback(t *testing.T) {
	e := newTwoNodes(t)
	rogueDir := filepath.Join(e.dir, "rogue-svids")
	meshctl(t, e.bins["meshctl"], "certs", "root", "--dir", rogueDir)
	meshctl(t, e.bins["meshctl"], "certs", "issue", "--dir", rogueDir, "--ns", "default", "--sa", "rogue")
	bundle := readFile(t, filepath.Join(rogueDir, "root-cert.pem")) + readFile(t, filepath.Join(e.svids, "root-cert.pem"))
	if err := os.WriteFile(filepath.Join(rogueDir, "root-cert.pem"), []byte(bundle), 0o644); err != nil {
		t.Fatal(err)
	}
	z3 := startZtunnel(t, e.bins["ztunnel"], "n3", e.net+".252", e.stateFile, rogueDir)
	if code, body, err := curl(z3.host+":15080", e.rogue, "http://server:8080/"); err == nil {
		t.Fatalf("rogue got an HTTP response: %d %q", code, body)
	}
	if e.appRequests.Load() != 0 {
		t.Fatal("the app got a request")
	}
	eventually(t, 5*time.Second, "n2's handshake refusal", func() bool {
		return len(e.z2.out.lines("connection failed", `dst.addr="`+e.server+`:15008"`)) > 0
	})
	t.Logf("n2: %s", e.z2.out.lines("connection failed")[0])
	// The mesh's own client still gets through.
	if code, body, err := e.get(e.client, "/"); err != nil || code != 200 {
		t.Fatalf("client: %d %q %v", code, body, err)
	}
}

const denyCurlDeny = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-curl-deny, namespace: default}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/curl-deny]}`

// TestPolicyClosesOpenConnectionLoopback: a TCP stream open through SOCKS5 and HBONE is closed
// by the destination when a policy that denies it arrives; others stay open.
func TestPolicyClosesOpenConnectionLoopback(t *testing.T) {
	e := newTwoNodes(t)
	socks := e.z1.host + ":15080"
	open := func(from string) (net.Conn, *bufio.Reader) {
		c, err := socksDial(socks, from, "server:9000")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		r := bufio.NewReader(c)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "hello from %s\n", from)
		if line, err := r.ReadString('\n'); err != nil || line != "hello from "+from+"\n" {
			t.Fatalf("echo from %s: %q %v", from, line, err)
		}
		return c, r
	}
	dc, dr := open(e.deny)
	ac, ar := open(e.client)

	e.writeState(t, denyCurlDeny)
	waitConfig(t, e.z2, "with the deny policy", func(d string) bool { return strings.Contains(d, "deny-curl-deny") })

	dc.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(dc, "still there?\n") // may or may not be written: the stream is closing
	line, err := dr.ReadString('\n')
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("curl-deny's stream was not closed after the policy: read %q", line)
	}
	if err == nil {
		// An echo that raced with the close: the next read must end.
		if _, err = dr.ReadString('\n'); errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("curl-deny's stream was not closed after the policy")
		}
	}
	eventually(t, 5*time.Second, "n2's policy-update log", func() bool {
		return len(e.z2.out.lines("no longer allowed after a policy update", "ns/default/sa/curl-deny")) > 0
	})
	// The allowed stream is untouched.
	ac.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(ac, "again\n")
	if line, err := ar.ReadString('\n'); err != nil || line != "again\n" {
		t.Fatalf("client's stream after the policy: %q %v", line, err)
	}
	// New connections from curl-deny are refused.
	if code, body, err := e.get(e.deny, "/"); err == nil {
		t.Fatalf("curl-deny got an HTTP response: %d %q", code, body)
	}
}

// TestZtunnelRestartLoopback: the destination ztunnel is killed and started again on the same
// addresses; a client retrying in a bounded loop succeeds once it is back.
func TestZtunnelRestartLoopback(t *testing.T) {
	e := newTwoNodes(t)
	if code, _, err := e.get(e.client, "/before"); err != nil || code != 200 {
		t.Fatalf("before: %d %v", code, err)
	}
	e.z2.cmd.Process.Kill()
	<-e.z2.exited
	if code, body, err := e.get(e.client, "/down"); err == nil {
		t.Fatalf("got an HTTP response while n2 is down: %d %q", code, body)
	}
	result := make(chan error, 1)
	go func() {
		deadline := time.Now().Add(15 * time.Second)
		var err error
		for attempt := 1; time.Now().Before(deadline); attempt++ {
			var code int
			if code, _, err = e.get(e.client, fmt.Sprintf("/retry/%d", attempt)); err == nil && code == 200 {
				result <- nil
				return
			}
			time.Sleep(100 * time.Millisecond) // the client's retry interval, not synchronisation
		}
		result <- fmt.Errorf("no success before the deadline: last %v", err)
	}()
	z2 := e.startServerNode(t)
	if err := <-result; err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the restarted n2's inbound log", func() bool {
		return len(z2.out.lines("connection complete", `direction="inbound"`, "/ns/default/sa/client")) > 0
	})
}
