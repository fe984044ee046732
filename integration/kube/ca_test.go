package kube_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/goambient/goambient/integration/kubeapi"
	"github.com/goambient/goambient/xdsserver/ca/pki"
	"github.com/goambient/goambient/ztunnel/identity"
)

// forgedToken is a service-account token with every claim the API server's own would have,
// signed by a key the API server does not trust.
func forgedToken(t *testing.T, ns, sa string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	now := time.Now().Unix()
	signed := enc(map[string]string{"alg": "ES256", "typ": "JWT", "kid": "forged"}) + "." + enc(map[string]any{
		"iss": kubeapi.Issuer, "aud": []string{"istio-ca"}, "sub": "system:serviceaccount:" + ns + ":" + sa,
		"iat": now, "nbf": now, "exp": now + 3600,
		"kubernetes.io": map[string]any{"namespace": ns, "serviceaccount": map[string]string{"name": sa, "uid": "00000000-0000-0000-0000-000000000000"}},
	})
	h := sha256.Sum256([]byte(signed))
	r, s, err := ecdsa.Sign(rand.Reader, key, h[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// TestCAWithTokenReview: xdsserver's CA (its TLS listener) authenticates real service-account
// tokens through the API server's TokenReview. A projected token of the ztunnel's
// ServiceAccount bound to its pod on Node gets the identity of an ambient workload on Node;
// refused are: another ServiceAccount's token, a token for the API server's audience instead
// of istio-ca, a token bound to a pod since deleted (what a kubelet's token becomes when its
// pod is gone: the API server's minimum lifetime, 600 s, is too long to wait for an expiry),
// and a token signed by a key the API server does not trust. Then a real ztunnel binary on
// Node, with that token, takes its workloads and their certificates from xdsserver over TLS.
func TestCAWithTokenReview(t *testing.T) {
	e := cluster(t)
	x := e.startXdsserver(t, e.net+".241")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	root := filepath.Join(x.caDir, "root-cert.pem")
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/handson/sa/curl-allow") // ambient, on Node
	fetch := func(name, token string) error {
		file := filepath.Join(dir, name)
		if err := os.WriteFile(file, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := identity.NewGRPCSource(identity.GRPCSourceOptions{Address: x.host + ":15012", RootFile: root, TokenFile: file, TrustDomain: id.TrustDomain()})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		_, err = s.FetchSVID(fctx, id)
		return err
	}
	token := func(ns, sa string, aud []string, pod *corev1.Pod) string {
		tok, err := e.s.Token(ctx, ns, sa, aud, pod, 3600)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	ztunnelTok := token("istio-system", "ztunnel", []string{"istio-ca"}, e.ztunnelPod)

	gone := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-gone", Namespace: "istio-system"},
		Spec: corev1.PodSpec{ServiceAccountName: "ztunnel", NodeName: Node, Containers: []corev1.Container{{Name: "istio-proxy", Image: "goambient/ztunnel:dev"}}}}
	gone, err := e.s.Kube.CoreV1().Pods("istio-system").Create(ctx, gone, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The API server caches a successful review for 10 s: the token checked while the pod
	// lives is not the one checked after it is gone.
	if err := fetch("gone-alive", token("istio-system", "ztunnel", []string{"istio-ca"}, gone)); err != nil {
		t.Fatalf("a token bound to a live ztunnel pod on %s was refused: %v", Node, err)
	}
	goneTok := token("istio-system", "ztunnel", []string{"istio-ca"}, gone)
	if err := e.s.Kube.CoreV1().Pods("istio-system").Delete(ctx, gone.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the pod deleted", func() bool {
		_, err := e.s.Kube.CoreV1().Pods("istio-system").Get(ctx, gone.Name, metav1.GetOptions{})
		return err != nil
	})

	for _, tc := range []struct {
		name, token string
		want        codes.Code
	}{
		{"ztunnel", ztunnelTok, codes.OK},
		{"another-service-account", token("handson", "curl-deny", []string{"istio-ca"}, nil), codes.PermissionDenied},
		{"api-server-audience", token("istio-system", "ztunnel", nil, e.ztunnelPod), codes.Unauthenticated}, // as an automounted token
		{"bound-pod-deleted", goneTok, codes.Unauthenticated},
		{"untrusted-signer", forgedToken(t, "istio-system", "ztunnel"), codes.Unauthenticated},
	} {
		if got := status.Code(fetch(tc.name, tc.token)); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}

	// A ztunnel of Node, as the DaemonSet runs it (TLS to 15012 for both the workload API and
	// the CA, the projected token), here in loopback mode.
	tokFile := filepath.Join(dir, "istio-token")
	os.WriteFile(tokFile, []byte(ztunnelTok), 0o600)
	zhost := e.net + ".250"
	z := start(t, "ztunnel", e.bins["ztunnel"], "--node", Node, "--loopback",
		"--xds-address", x.host+":15012", "--xds-root", root, "--xds-token-file", tokFile,
		"--ca-address", x.host+":15012", "--ca-root", root, "--ca-token-file", tokFile,
		"--socks5", zhost+":15080", "--admin", zhost+":15000", "--metrics", zhost+":15020", "--readiness", zhost+":15021")
	eventually(t, 2*time.Minute, "ztunnel ready", func() bool { return httpOK("http://" + zhost + ":15021/healthz/ready") })
	// A TLS handshake with curl-allow's inbound listener: the ztunnel presents the pod's SVID,
	// which it asks the CA for.
	var chain []*x509.Certificate
	eventually(t, time.Minute, "curl-allow's SVID from the ztunnel's inbound listener", func() bool {
		conn, err := tls.Dial("tcp", e.ips["handson/curl-allow"]+":15008", &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"},
			MinVersion: tls.VersionTLS13, VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				chain = nil
				for _, r := range raw {
					c, err := x509.ParseCertificate(r)
					if err != nil {
						return err
					}
					chain = append(chain, c)
				}
				return nil
			}})
		if err == nil {
			conn.Close()
		}
		return len(chain) > 0
	})
	if len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != id.String() {
		t.Errorf("the inbound listener of curl-allow presented %v, want %s", chain[0].URIs, id)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(x.rootPEM))
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("curl-allow's SVID does not chain to xdsserver's root: %v", err)
	}
	// The handshake can finish before the ztunnel's log line reaches the pipe the test reads.
	eventually(t, time.Minute, "the ztunnel's log line about fetching the SVID", func() bool {
		return strings.Contains(z.log.String(), "fetched SVID")
	})
	resp, err := http.Get("http://" + zhost + ":15000/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	dump, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"Kubernetes//Pod/handson/curl-allow", "Kubernetes//Pod/handson/curl-deny", "Kubernetes//Pod/default/web-api"} {
		if !strings.Contains(string(dump), want) {
			t.Errorf("the ztunnel's config_dump lacks %s", want)
		}
	}
	x.noForbidden(t)
}

// TestCAInSecrets: in cluster mode without --ca-dir, xdsserver keeps its CA where istiod does,
// with the bundle's RBAC only. First start: a self-signed root generated and stored in
// istio-system/istio-ca-secret (type istio.io/ca-root, istiod's keys), and published in the
// namespaces' istio-ca-root-cert; a restart loads the same root. Then the user plugs an
// intermediate CA into istio-system/cacerts: the next start signs with it, publishes the
// user's root, and a workload's SVID (its own token, through the CA's gRPC API) carries the
// intermediate and chains to that root.
func TestCAInSecrets(t *testing.T) {
	e := cluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	secrets := e.s.Kube.CoreV1().Secrets("istio-system")
	t.Cleanup(func() {
		for _, n := range []string{"istio-ca-secret", "cacerts"} {
			secrets.Delete(context.Background(), n, metav1.DeleteOptions{})
		}
	})
	rootIn := func(ns string) string {
		cm, err := e.s.Kube.CoreV1().ConfigMaps(ns).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		if err != nil {
			return ""
		}
		return cm.Data["root-cert.pem"]
	}
	stop := func(x *xdsserver) {
		x.noForbidden(t)
		x.kill()
	}
	x := runXdsserver(t, e.s, e.bins["xdsserver"], e.net+".242")
	s, err := secrets.Get(ctx, "istio-ca-secret", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Type != "istio.io/ca-root" || len(s.Data["ca-key.pem"]) == 0 || string(s.Data["root-cert.pem"]) != string(s.Data["ca-cert.pem"]) ||
		len(s.Data["cert-chain.pem"]) != 0 || len(s.Data["key.pem"]) != 0 {
		t.Errorf("istio-ca-secret: type %s, keys %v", s.Type, mapKeys(s.Data))
	}
	root := string(s.Data["ca-cert.pem"])
	eventually(t, time.Minute, "the generated root in handson's istio-ca-root-cert", func() bool { return rootIn("handson") == root })
	if !strings.Contains(x.log.String(), "created=true") {
		t.Error("the first start did not say it created the root")
	}
	stop(x)
	x = runXdsserver(t, e.s, e.bins["xdsserver"], e.net+".243")
	if !strings.Contains(x.log.String(), `secret=istio-system/istio-ca-secret created=false`) {
		t.Errorf("the restart did not load istio-ca-secret:\n%s", x.log)
	}
	stop(x)

	// The user's CA: an intermediate of the user's root, in cacerts.
	userRoot, err := pki.NewCA(spiffeid.RequireTrustDomainFromString("cluster.local"))
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, rootKeyPEM, _ := userRoot.PEM()
	rootKeyBlock, _ := pem.Decode(rootKeyPEM)
	rootKey, err := x509.ParsePKCS8PrivateKey(rootKeyBlock.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ikey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: "the user's intermediate"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(30 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, userRoot.Root(), ikey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	ikeyDER, _ := x509.MarshalPKCS8PrivateKey(ikey)
	interPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if _, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "cacerts"}, Data: map[string][]byte{
		"ca-cert.pem": interPEM, "ca-key.pem": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ikeyDER}),
		"cert-chain.pem": append(append([]byte{}, interPEM...), rootPEM...), "root-cert.pem": rootPEM,
	}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	x = runXdsserver(t, e.s, e.bins["xdsserver"], e.net+".244")
	defer stop(x)
	eventually(t, time.Minute, "the user's root in handson's istio-ca-root-cert", func() bool { return rootIn("handson") == string(rootPEM) })
	rootFile := filepath.Join(t.TempDir(), "root-cert.pem")
	os.WriteFile(rootFile, rootPEM, 0o644)
	tok, err := e.s.Token(ctx, "handson", "curl", []string{"istio-ca"}, nil, 3600)
	if err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokFile, []byte(tok), 0o600)
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/handson/sa/curl")
	src, err := identity.NewGRPCSource(identity.GRPCSourceOptions{Address: x.host + ":15012", RootFile: rootFile, TokenFile: tokFile, TrustDomain: id.TrustDomain()})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	svid, err := src.FetchSVID(ctx, id)
	if err != nil {
		t.Fatalf("a workload's own SVID from the plugged-in CA: %v", err)
	}
	if len(svid.Certificates) != 2 || svid.Certificates[1].Subject.CommonName != "the user's intermediate" {
		t.Fatalf("chain of %d certificates: %v", len(svid.Certificates), svid.Certificates)
	}
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	pool.AddCert(userRoot.Root())
	inter.AddCert(svid.Certificates[1])
	if _, err := svid.Certificates[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("the SVID does not chain to the user's root: %v", err)
	}
}

func mapKeys[V any](m map[string]V) []string {
	var k []string
	for key := range m {
		k = append(k, key)
	}
	slices.Sort(k)
	return k
}
