package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// IssueServingCert issues a TLS server certificate for the control plane itself: a new ECDSA
// P-256 key, the URI SAN id and the DNS SANs dnsNames (istiod's certificate carries
// istiod.istio-system.svc so that clients verify it by name), valid for ttl (DefaultSVIDTTL when
// 0). The returned certificate's chain is the leaf and the CA's intermediates; its Leaf is set.
func (ca *CA) IssueServingCert(id spiffeid.ID, dnsNames []string, ttl time.Duration) (*tls.Certificate, error) {
	if id.TrustDomain() != ca.td {
		return nil, fmt.Errorf("pki: serving certificate %s is not in trust domain %q", id, ca.td.Name())
	}
	if len(dnsNames) == 0 {
		return nil, fmt.Errorf("pki: serving certificate %s: no DNS name", id)
	}
	if ttl == 0 {
		ttl = DefaultSVIDTTL
	}
	if ttl < time.Second {
		return nil, fmt.Errorf("pki: serving certificate %s: lifetime must be at least 1s, got %s", id, ttl)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: serving certificate %s: %w", id, err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := ca.now().Truncate(time.Second)
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              dnsNames,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("pki: signing serving certificate %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parsing serving certificate %s: %w", id, err)
	}
	chain := [][]byte{der}
	for _, c := range ca.chain {
		chain = append(chain, c.Raw)
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}
