package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/goambient/goambient/internal/pemfile"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var (
	td    = spiffeid.RequireTrustDomainFromString("cluster.local")
	t0    = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	idFoo = spiffeid.RequireFromString("spiffe://cluster.local/ns/foo/sa/bar")
)

func newTestCA(t *testing.T, clk *fakeClock) *CA {
	t.Helper()
	ca, err := NewCA(td, WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestCARootCreateLoadRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	clk := newFakeClock(t0)
	ca, created, err := LoadOrCreateCA(dir, td, WithClock(clk.Now))
	if err != nil || !created {
		t.Fatalf("LoadOrCreateCA = created %v, %v; want a new CA", created, err)
	}
	root := ca.Root()
	if !root.IsCA || !root.BasicConstraintsValid || root.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("root is not a signing CA: IsCA=%v KeyUsage=%v", root.IsCA, root.KeyUsage)
	}
	if _, ok := root.PublicKey.(*ecdsa.PublicKey); !ok || root.PublicKey.(*ecdsa.PublicKey).Curve != elliptic.P256() {
		t.Errorf("root key is %T, want ECDSA P-256", root.PublicKey)
	}
	if got := urls(root.URIs); !slices.Equal(got, []string{"spiffe://cluster.local"}) {
		t.Errorf("root URI SANs = %v", got)
	}
	if !root.NotBefore.Equal(t0) || !root.NotAfter.Equal(t0.Add(DefaultRootTTL)) {
		t.Errorf("root validity %s..%s", root.NotBefore, root.NotAfter)
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		t.Errorf("root is not self-signed: %v", err)
	}
	for name, perm := range map[string]os.FileMode{RootCertFile: 0o644, RootKeyFile: 0o600} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != perm {
			t.Errorf("%s mode %v, want %v", name, st.Mode().Perm(), perm)
		}
	}

	again, created, err := LoadOrCreateCA(dir, td, WithClock(clk.Now))
	if err != nil || created {
		t.Fatalf("second LoadOrCreateCA = created %v, %v; want the kept CA", created, err)
	}
	if !again.Root().Equal(root) {
		t.Error("the loaded root differs from the saved one")
	}
	// The loaded CA signs with the saved key.
	svid, err := again.IssueSVID(idFoo, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, ca.Bundle(), x509svid.WithTime(t0)); err != nil {
		t.Errorf("SVID of the loaded CA does not verify against the original bundle: %v", err)
	}

	other := spiffeid.RequireTrustDomainFromString("example.org")
	if _, err := LoadCA(dir, other); err == nil || !strings.Contains(err.Error(), `"cluster.local", not "example.org"`) {
		t.Errorf("LoadCA with another trust domain: %v", err)
	}
}

func TestLoadCAErrors(t *testing.T) {
	clk := newFakeClock(t0)
	a, b := newTestCA(t, clk), newTestCA(t, clk)

	onlyCert := t.TempDir()
	if err := a.Save(onlyCert); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(onlyCert, RootKeyFile))
	if _, _, err := LoadOrCreateCA(onlyCert, td); err == nil || !strings.Contains(err.Error(), RootKeyFile) {
		t.Errorf("a root without its key must not be replaced: %v", err)
	}

	mismatch := t.TempDir()
	if err := a.Save(mismatch); err != nil {
		t.Fatal(err)
	}
	keyOfB, _ := os.ReadFile(filepath.Join(saved(t, b), RootKeyFile))
	os.WriteFile(filepath.Join(mismatch, RootKeyFile), keyOfB, 0o600)
	if _, err := LoadCA(mismatch, td); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("mismatched key: %v", err)
	}

	notCA := t.TempDir()
	svid, _ := a.IssueSVID(idFoo, time.Hour)
	cert, key, _ := svid.Marshal()
	os.WriteFile(filepath.Join(notCA, RootCertFile), cert, 0o644)
	os.WriteFile(filepath.Join(notCA, RootKeyFile), key, 0o600)
	if _, err := LoadCA(notCA, td); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Errorf("leaf as root: %v", err)
	}
}

// An Istio-style root (no URI SAN, SEC 1 key) serves any trust domain.
func TestLoadCAIstioStyleRoot(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: newSerialT(t), Subject: pkix.Name{Organization: []string{"cluster.local"}},
		NotBefore: t0, NotAfter: t0.Add(24 * 365 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, RootCertFile), pemfile.Block("CERTIFICATE", der), 0o644)
	os.WriteFile(filepath.Join(dir, RootKeyFile), pemfile.Block("EC PRIVATE KEY", ecDER), 0o600)
	other := spiffeid.RequireTrustDomainFromString("example.org")
	ca, err := LoadCA(dir, other, WithClock(newFakeClock(t0).Now))
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://example.org/ns/a/sa/b")
	svid, err := ca.IssueSVID(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, ca.Bundle(), x509svid.WithTime(t0)); err != nil {
		t.Error(err)
	}
}

func TestIssueSVID(t *testing.T) {
	clk := newFakeClock(t0.Add(500 * time.Millisecond)) // certificates hold whole seconds
	ca := newTestCA(t, clk)
	for _, tc := range []struct {
		ttl, want time.Duration
	}{{0, DefaultSVIDTTL}, {90 * time.Minute, 90 * time.Minute}} {
		svid, err := ca.IssueSVID(idFoo, tc.ttl)
		if err != nil {
			t.Fatal(err)
		}
		checkLeaf(t, svid.Certificates[0], idFoo)
		if len(svid.Certificates) != 1 {
			t.Errorf("chain of %d certificates, want the leaf only", len(svid.Certificates))
		}
		leaf := svid.Certificates[0]
		if got := leaf.NotAfter.Sub(leaf.NotBefore); got != tc.want {
			t.Errorf("ttl %v: lifetime %v, want %v", tc.ttl, got, tc.want)
		}
		if !leaf.NotBefore.Equal(t0) {
			t.Errorf("NotBefore %v, want the CA's clock %v", leaf.NotBefore, t0)
		}
		id, _, err := x509svid.Verify(svid.Certificates, ca.Bundle(), x509svid.WithTime(clk.Now()))
		if err != nil || id != idFoo {
			t.Errorf("x509svid.Verify = %v, %v", id, err)
		}
		if !pemfile.PublicKeyEqual(svid.PrivateKey.Public(), leaf.PublicKey) {
			t.Error("the private key does not match the leaf")
		}
		// What meshctl writes and DirSource reads survives the PEM round trip.
		cert, key, err := svid.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := x509svid.Parse(cert, key); err != nil {
			t.Error(err)
		}
	}

	other := spiffeid.RequireFromString("spiffe://example.org/ns/foo/sa/bar")
	if _, err := ca.IssueSVID(other, 0); err == nil || !strings.Contains(err.Error(), "not in trust domain") {
		t.Errorf("foreign trust domain: %v", err)
	}
	if _, err := ca.IssueSVID(idFoo, time.Millisecond); err == nil || !strings.Contains(err.Error(), "at least 1s") {
		t.Errorf("sub-second ttl: %v", err)
	}
	if _, err := ca.IssueSVID(idFoo, 20*365*24*time.Hour); err == nil || !strings.Contains(err.Error(), "outlive the root") {
		t.Errorf("ttl past the root: %v", err)
	}
}

// checkLeaf asserts the shape of an SVID leaf: the URI SAN only, the key usages, not a CA.
func checkLeaf(t *testing.T, leaf *x509.Certificate, id spiffeid.ID) {
	t.Helper()
	if got := urls(leaf.URIs); !slices.Equal(got, []string{id.String()}) {
		t.Errorf("URI SANs = %v, want exactly %s", got, id)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("extra SANs: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if leaf.IsCA || !leaf.BasicConstraintsValid {
		t.Errorf("IsCA=%v BasicConstraintsValid=%v, want a non-CA leaf", leaf.IsCA, leaf.BasicConstraintsValid)
	}
	if want := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment; leaf.KeyUsage != want {
		t.Errorf("KeyUsage = %v, want %v", leaf.KeyUsage, want)
	}
	if want := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}; !slices.Equal(leaf.ExtKeyUsage, want) {
		t.Errorf("ExtKeyUsage = %v, want %v", leaf.ExtKeyUsage, want)
	}
}

func TestSignCSR(t *testing.T) {
	clk := newFakeClock(t0)
	ca := newTestCA(t, clk)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	// The CSR asks for other names; the caller's id wins.
	csrDER := csr(t, key, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: "evil"},
		DNSNames: []string{"evil.example"},
		URIs:     []*url.URL{spiffeid.RequireFromString("spiffe://cluster.local/ns/kube-system/sa/admin").URL()},
	})
	chain, err := ca.SignCSR(csrDER, idFoo, 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	checkLeaf(t, leaf, idFoo)
	if leaf.Subject.CommonName != "" {
		t.Errorf("subject %q copied from the CSR", leaf.Subject)
	}
	if !pemfile.PublicKeyEqual(key.Public(), leaf.PublicKey) {
		t.Error("the certificate is not for the CSR's key")
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != 2*time.Hour {
		t.Errorf("lifetime %v", got)
	}
	if _, _, err := x509svid.Verify(chain, ca.Bundle(), x509svid.WithTime(t0)); err != nil {
		t.Error(err)
	}
	// Istio's CreateCertificate sends PEM.
	if _, err := ca.SignCSRPEM(pemfile.Block("CERTIFICATE REQUEST", csrDER), idFoo, 0); err != nil {
		t.Errorf("SignCSRPEM: %v", err)
	}
}

func TestSignCSRRejects(t *testing.T) {
	ca := newTestCA(t, newFakeClock(t0))
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := csr(t, ec, &x509.CertificateRequest{})
	tampered := slices.Clone(good)
	tampered[len(tampered)-1] ^= 0xff // the last byte of the signature
	rsaSmall, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	for name, tc := range map[string]struct {
		der  []byte
		want string
	}{
		"bad signature": {tampered, "bad signature"},
		"short RSA key": {csr(t, rsaSmall, &x509.CertificateRequest{}), "RSA key of 1024 bits is too short"},
		"weak curve":    {csr(t, p224, &x509.CertificateRequest{}), "unsupported ECDSA curve P-224"},
		"not a CSR":     {[]byte("garbage"), "CSR for " + idFoo.String()},
		"empty":         {nil, "CSR for " + idFoo.String()},
		"PEM, not DER":  {pemfile.Block("CERTIFICATE REQUEST", good), "CSR for"},
	} {
		if _, err := ca.SignCSR(tc.der, idFoo, 0); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, tc.want)
		}
	}
	if _, err := ca.SignCSRPEM(pemfile.Block("CERTIFICATE", good), idFoo, 0); err == nil || !strings.Contains(err.Error(), "CERTIFICATE REQUEST") {
		t.Errorf("SignCSRPEM of a wrong block: %v", err)
	}
	if _, err := ca.SignCSR(good, spiffeid.ID{}, 0); err == nil {
		t.Error("SignCSR for an empty ID succeeded")
	}
}

func csr(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func saved(t *testing.T, ca *CA) string {
	t.Helper()
	dir := t.TempDir()
	if err := ca.Save(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

func newSerialT(t *testing.T) *big.Int {
	t.Helper()
	s, err := newSerial()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func urls(us []*url.URL) []string {
	var out []string
	for _, u := range us {
		out = append(out, u.String())
	}
	return out
}

// fakeClock is a time that moves only when a test says.
type fakeClock struct{ now time.Time }

func newFakeClock(t time.Time) *fakeClock { return &fakeClock{now: t} }
func (c *fakeClock) Now() time.Time       { return c.now }

// TestFromPEM: Istio's CA files. A self-signed ca-cert.pem alone is a root CA; a plugged-in
// intermediate (cacerts: ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem) signs, and
// its SVIDs carry the intermediate and verify against the root only; a key of another
// certificate, or an intermediate of another root, is refused.
func TestFromPEM(t *testing.T) {
	clk := newFakeClock(t0)
	root := newTestCA(t, clk)
	certPEM, keyPEM, err := root.PEM()
	if err != nil {
		t.Fatal(err)
	}
	self, err := FromPEM(td, certPEM, keyPEM, nil, nil, WithClock(clk.Now))
	if err != nil || !self.Root().Equal(root.Root()) {
		t.Fatalf("self-signed: %v", err)
	}
	// An intermediate signed by root.
	ikey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: newSerialT(t), Subject: pkix.Name{CommonName: "intermediate"}, NotBefore: t0, NotAfter: t0.Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.cert, ikey.Public(), root.key)
	if err != nil {
		t.Fatal(err)
	}
	ikeyDER, _ := x509.MarshalPKCS8PrivateKey(ikey)
	interPEM, ikeyPEM := pemfile.Block("CERTIFICATE", der), pemfile.Block("PRIVATE KEY", ikeyDER)
	inter, err := FromPEM(td, interPEM, ikeyPEM, append(interPEM, certPEM...), certPEM, WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	svid, err := inter.IssueSVID(idFoo, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(svid.Certificates) != 2 || !svid.Certificates[1].Equal(inter.cert) || !inter.Root().Equal(root.Root()) {
		t.Fatalf("chain %d certificates, root %v", len(svid.Certificates), inter.Root().Subject)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, inter.Bundle(), x509svid.WithTime(clk.Now())); err != nil {
		t.Errorf("the SVID does not verify against the root: %v", err)
	}
	if err := inter.Save(t.TempDir()); err == nil {
		t.Error("an intermediate CA was saved as a root")
	}
	other := newTestCA(t, clk)
	otherPEM, _, _ := other.PEM()
	for name, tc := range map[string][4][]byte{
		"key of another certificate": {interPEM, keyPEM, nil, certPEM},
		"another root":               {interPEM, ikeyPEM, nil, otherPEM},
		"no root, not self-signed":   {interPEM, ikeyPEM, nil, nil},
	} {
		if _, err := FromPEM(td, tc[0], tc[1], tc[2], tc[3], WithClock(clk.Now)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
