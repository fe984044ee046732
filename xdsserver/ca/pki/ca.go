// Package pki is the mesh's certificate authority — a root that issues X.509-SVIDs and the control plane's serving certificate, kept in files or a Kubernetes Secret — used by xdsserver's CA, by meshctl and by tests, and never by the data plane, which gets its certificates over the CA's gRPC API.
package pki

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/goambient/goambient/internal/pemfile"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// File names of a CA kept on disk. RootCertFile is also the trust bundle of an SVID directory
// (ztunnel/identity.RootCertFile).
const (
	RootCertFile = "root-cert.pem"
	RootKeyFile  = "root-key.pem"
)

// Default lifetimes.
const (
	DefaultSVIDTTL = 24 * time.Hour
	DefaultRootTTL = 10 * 365 * 24 * time.Hour
)

// CA is a root certificate authority that issues X.509-SVIDs for one trust domain. It is safe
// for concurrent use.
type CA struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate // the signing certificate: the root, or an intermediate (plugged in)
	key  crypto.Signer
	// chain is what is sent after a leaf up to the root, which is not in it: empty for a root
	// CA, the signing certificate and the intermediates above it otherwise.
	chain []*x509.Certificate
	root  *x509.Certificate
	now   func() time.Time
}

// CAOption configures NewCA, LoadCA and LoadOrCreateCA.
type CAOption func(*caOptions)

type caOptions struct {
	now     func() time.Time
	rootTTL time.Duration
}

// WithClock makes the CA read the time from now (for validity periods); tests pass a fake.
func WithClock(now func() time.Time) CAOption { return func(o *caOptions) { o.now = now } }

// WithRootTTL sets the lifetime of a generated root (DefaultRootTTL otherwise).
func WithRootTTL(d time.Duration) CAOption { return func(o *caOptions) { o.rootTTL = d } }

func newCAOptions(opts []CAOption) caOptions {
	o := caOptions{now: time.Now, rootTTL: DefaultRootTTL}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// NewCA generates a self-signed root (ECDSA P-256) for td. The root carries the URI SAN
// spiffe://<td>: Istio's roots do not need one, and go-spiffe bundles accept any CA.
func NewCA(td spiffeid.TrustDomain, opts ...CAOption) (*CA, error) {
	if td.IsZero() {
		return nil, errors.New("pki: empty trust domain")
	}
	o := newCAOptions(opts)
	if o.rootTTL <= 0 {
		return nil, fmt.Errorf("pki: root lifetime must be positive, got %s", o.rootTTL)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generating the root key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := o.now().Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{td.Name()}, CommonName: "goambient root CA"},
		NotBefore:             now,
		NotAfter:              now.Add(o.rootTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("pki: signing the root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parsing the root: %w", err)
	}
	return &CA{td: td, cert: cert, key: key, root: cert, now: o.now}, nil
}

// LoadCA reads dir/root-cert.pem and dir/root-key.pem. The root must be a CA whose key matches;
// when it has a SPIFFE URI SAN, its trust domain must be td (a root without one, as Istio's
// are, serves any trust domain).
func LoadCA(dir string, td spiffeid.TrustDomain, opts ...CAOption) (*CA, error) {
	if td.IsZero() {
		return nil, errors.New("pki: empty trust domain")
	}
	o := newCAOptions(opts)
	certPath, keyPath := filepath.Join(dir, RootCertFile), filepath.Join(dir, RootKeyFile)
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	certs, err := pemfile.ParseCerts(certPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", certPath, err)
	}
	cert := certs[0]
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, fmt.Errorf("pki: %s: the certificate is not a CA", certPath)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", keyPath, err)
	}
	if !pemfile.PublicKeyEqual(key.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("pki: %s does not match the key of %s", keyPath, certPath)
	}
	if rootTD, ok := RootTrustDomain(cert); ok && rootTD != td {
		return nil, fmt.Errorf("pki: %s is the root of trust domain %q, not %q", certPath, rootTD.Name(), td.Name())
	}
	return &CA{td: td, cert: cert, key: key, root: cert, now: o.now}, nil
}

// FromPEM makes a CA of Istio's CA files (the keys of the Secrets istio-ca-secret and cacerts):
// caCert (ca-cert.pem) signs with caKey (ca-key.pem); rootCert (root-cert.pem) is the root,
// caCert itself when empty; certChain (cert-chain.pem) holds the intermediates between caCert
// and the root (either may be listed in it too). caCert must chain to the root.
func FromPEM(td spiffeid.TrustDomain, caCert, caKey, certChain, rootCert []byte, opts ...CAOption) (*CA, error) {
	if td.IsZero() {
		return nil, errors.New("pki: CA: empty trust domain")
	}
	o := newCAOptions(opts)
	certs, err := pemfile.ParseCerts(caCert)
	if err != nil {
		return nil, fmt.Errorf("pki: ca-cert.pem: %w", err)
	}
	cert := certs[0]
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, errors.New("pki: ca-cert.pem: the certificate is not a CA")
	}
	key, err := parseKeyPEM(caKey)
	if err != nil {
		return nil, fmt.Errorf("pki: ca-key.pem: %w", err)
	}
	if !pemfile.PublicKeyEqual(key.Public(), cert.PublicKey) {
		return nil, errors.New("pki: ca-key.pem does not match ca-cert.pem")
	}
	ca := &CA{td: td, cert: cert, key: key, root: cert, now: o.now}
	if len(bytes.TrimSpace(rootCert)) == 0 {
		if err := cert.CheckSignatureFrom(cert); err != nil {
			return nil, fmt.Errorf("pki: ca-cert.pem is not self-signed and no root-cert.pem is given: %w", err)
		}
		return ca, nil
	}
	roots, err := pemfile.ParseCerts(rootCert)
	if err != nil {
		return nil, fmt.Errorf("pki: root-cert.pem: %w", err)
	}
	ca.root = roots[0]
	if cert.Equal(ca.root) {
		return ca, nil
	}
	ca.chain = []*x509.Certificate{cert}
	if len(bytes.TrimSpace(certChain)) > 0 {
		more, err := pemfile.ParseCerts(certChain)
		if err != nil {
			return nil, fmt.Errorf("pki: cert-chain.pem: %w", err)
		}
		for _, c := range more {
			if !c.Equal(cert) && !c.Equal(ca.root) {
				ca.chain = append(ca.chain, c)
			}
		}
	}
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	pool.AddCert(ca.root)
	for _, c := range ca.chain[1:] {
		inter.AddCert(c)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}, CurrentTime: o.now()}); err != nil {
		return nil, fmt.Errorf("pki: ca-cert.pem does not chain to root-cert.pem: %w", err)
	}
	return ca, nil
}

// PEM returns the signing certificate and its key (PKCS#8), for a Secret.
func (ca *CA) PEM() (certPEM, keyPEM []byte, err error) {
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: encoding the key: %w", err)
	}
	return pemfile.Block("CERTIFICATE", ca.cert.Raw), pemfile.Block("PRIVATE KEY", keyDER), nil
}

// RootPEM is the root certificate, PEM.
func (ca *CA) RootPEM() []byte { return pemfile.Block("CERTIFICATE", ca.root.Raw) }

// LoadOrCreateCA loads the CA kept in dir, or creates one and saves it there when neither of its
// files exists. created tells which happened.
func LoadOrCreateCA(dir string, td spiffeid.TrustDomain, opts ...CAOption) (ca *CA, created bool, err error) {
	_, certErr := os.Stat(filepath.Join(dir, RootCertFile))
	_, keyErr := os.Stat(filepath.Join(dir, RootKeyFile))
	if !errors.Is(certErr, fs.ErrNotExist) || !errors.Is(keyErr, fs.ErrNotExist) {
		ca, err = LoadCA(dir, td, opts...)
		return ca, false, err
	}
	if ca, err = NewCA(td, opts...); err != nil {
		return nil, false, err
	}
	if err = ca.Save(dir); err != nil {
		return nil, false, err
	}
	return ca, true, nil
}

// RootTrustDomain returns the trust domain named by a root's SPIFFE URI SAN, if it has one.
func RootTrustDomain(root *x509.Certificate) (spiffeid.TrustDomain, bool) {
	for _, u := range root.URIs {
		if td, err := spiffeid.TrustDomainFromURI(u); err == nil {
			return td, true
		}
	}
	return spiffeid.TrustDomain{}, false
}

// Save writes root-cert.pem (0644) and root-key.pem (0600, PKCS#8) into dir, creating it. Only
// a root CA can be saved so.
func (ca *CA) Save(dir string) error {
	if len(ca.chain) > 0 {
		return errors.New("pki: CA: an intermediate CA is not kept as root-cert.pem and root-key.pem")
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return fmt.Errorf("pki: encoding the root key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := pemfile.WriteAtomic(filepath.Join(dir, RootKeyFile), pemfile.Block("PRIVATE KEY", keyDER), 0o600); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := pemfile.WriteAtomic(filepath.Join(dir, RootCertFile), pemfile.Block("CERTIFICATE", ca.cert.Raw), 0o644); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}

// TrustDomain is the trust domain the CA issues for.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Root is the root certificate.
func (ca *CA) Root() *x509.Certificate { return ca.root }

// Bundle is the trust bundle of the CA's trust domain: the root.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.root})
}

// IssueSVID generates an ECDSA P-256 key and issues an X.509-SVID for id, valid for ttl from
// now (DefaultSVIDTTL when ttl is 0).
func (ca *CA) IssueSVID(id spiffeid.ID, ttl time.Duration) (*x509svid.SVID, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generating a key for %s: %w", id, err)
	}
	leaf, err := ca.sign(key.Public(), id, ttl)
	if err != nil {
		return nil, err
	}
	return &x509svid.SVID{ID: id, Certificates: append([]*x509.Certificate{leaf}, ca.chain...), PrivateKey: key}, nil
}

// SignCSR issues a certificate for id, valid for ttl (DefaultSVIDTTL when 0), to the public key
// of a DER certificate request. The caller decides the identity: the CSR's subject and SANs are
// ignored. The CSR's signature must verify and its key must be ECDSA P-256/P-384/P-521,
// RSA of at least 2048 bits, or Ed25519. It returns the chain, leaf first, without the root (see
// Bundle): for a root CA, just the leaf.
func (ca *CA) SignCSR(csrDER []byte, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("pki: CSR for %s: %w", id, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("pki: CSR for %s: bad signature: %w", id, err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("pki: CSR for %s: %w", id, err)
	}
	leaf, err := ca.sign(csr.PublicKey, id, ttl)
	if err != nil {
		return nil, err
	}
	return append([]*x509.Certificate{leaf}, ca.chain...), nil
}

// SignCSRPEM is SignCSR for a PEM "CERTIFICATE REQUEST", as Istio's CreateCertificate sends.
func (ca *CA) SignCSRPEM(csrPEM []byte, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil || (block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST") {
		return nil, fmt.Errorf("pki: CSR for %s: no PEM CERTIFICATE REQUEST block", id)
	}
	return ca.SignCSR(block.Bytes, id, ttl)
}

// sign issues the leaf: the URI SAN only, digitalSignature|keyEncipherment, serverAuth and
// clientAuth, not a CA, NotAfter-NotBefore = ttl.
func (ca *CA) sign(pub crypto.PublicKey, id spiffeid.ID, ttl time.Duration) (*x509.Certificate, error) {
	if id.IsZero() {
		return nil, errors.New("pki: empty SPIFFE ID")
	}
	if id.TrustDomain() != ca.td {
		return nil, fmt.Errorf("pki: %s is not in trust domain %q", id, ca.td.Name())
	}
	if ttl == 0 {
		ttl = DefaultSVIDTTL
	}
	if ttl < time.Second {
		return nil, fmt.Errorf("pki: lifetime of %s must be at least 1s, got %s", id, ttl)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := ca.now().Truncate(time.Second)
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		return nil, fmt.Errorf("pki: %s would outlive the root (expires %s)", id, ca.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{id.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("pki: signing %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parsing %s: %w", id, err)
	}
	return leaf, nil
}

func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("unsupported ECDSA curve %s", k.Curve.Params().Name)
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits is too short (at least 2048)", k.N.BitLen())
		}
		return nil
	case ed25519.PublicKey:
		return nil
	}
	return fmt.Errorf("unsupported public key type %T", pub)
}

func newSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("pki: serial number: %w", err)
	}
	return serial.Add(serial, big.NewInt(1)), nil // never 0
}

// parseKeyPEM reads a PKCS#8, SEC 1 (EC) or PKCS#1 (RSA) private key.
func parseKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM private key block")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unsupported PEM block %q", block.Type)
	}
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported private key type %T", key)
	}
	return signer, nil
}

// Source issues SVIDs from a CA in the same process (ztunnel/identity.Source): for tests and
// single-process local runs.
type Source struct {
	CA  *CA
	TTL time.Duration // SVID lifetime; DefaultSVIDTTL when 0
}

// NewSource issues SVIDs of lifetime ttl (DefaultSVIDTTL when 0) from ca.
func NewSource(ca *CA, ttl time.Duration) *Source { return &Source{CA: ca, TTL: ttl} }

// FetchSVID issues a new SVID for id.
func (s *Source) FetchSVID(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("pki: SVID for %s: %w", id, err)
	}
	return s.CA.IssueSVID(id, s.TTL)
}

// FetchBundle returns the CA's root.
func (s *Source) FetchBundle(context.Context) (*x509bundle.Bundle, error) {
	return s.CA.Bundle(), nil
}
