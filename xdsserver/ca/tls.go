package ca

import (
	"crypto/tls"
	"encoding/pem"
	"sync"
	"time"

	"github.com/goambient/goambient/xdsserver/ca/pki"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/goambient/goambient/ztunnel/identity"
)

// Names of the control plane's serving certificate, as istiod's.
const (
	ServerDNSName   = identity.DefaultCAServerName
	ServerNamespace = "istio-system"
	ServerAccount   = "istiod"
)

// ServingCert is the control plane's TLS certificate, issued by its own CA for
// istiod.istio-system.svc (DNS SAN) and spiffe://<td>/ns/istio-system/sa/istiod (URI SAN), and
// reissued at half its lifetime. Use GetCertificate in a tls.Config.
type ServingCert struct {
	ca  *pki.CA
	id  spiffeid.ID
	dns []string
	ttl time.Duration
	now func() time.Time

	mu  sync.Mutex
	cur *tls.Certificate
}

// NewServingCert issues the first serving certificate, valid for ttl (DefaultTTL when 0), with
// the DNS names dns (ServerDNSName when none).
func NewServingCert(ca *pki.CA, ttl time.Duration, dns ...string) (*ServingCert, error) {
	if len(dns) == 0 {
		dns = []string{ServerDNSName}
	}
	id, err := identity.WorkloadID(ca.TrustDomain(), ServerNamespace, ServerAccount)
	if err != nil {
		return nil, err
	}
	s := &ServingCert{ca: ca, id: id, dns: dns, ttl: ttl, now: time.Now}
	if s.ttl == 0 {
		s.ttl = DefaultTTL
	}
	if _, err := s.GetCertificate(nil); err != nil {
		return nil, err
	}
	return s, nil
}

// GetCertificate returns the current certificate, reissuing it past half its lifetime.
func (s *ServingCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.cur; c != nil {
		half := c.Leaf.NotBefore.Add(c.Leaf.NotAfter.Sub(c.Leaf.NotBefore) / 2)
		if s.now().Before(half) {
			return c, nil
		}
	}
	c, err := s.ca.IssueServingCert(s.id, s.dns, s.ttl)
	if err != nil {
		return nil, err
	}
	s.cur = c
	return c, nil
}

// TLSConfig is the server side of the secure listener: this certificate, TLS 1.2 or later, no
// client certificate asked for (callers authenticate with a token).
func (s *ServingCert) TLSConfig() *tls.Config {
	return &tls.Config{GetCertificate: s.GetCertificate, MinVersion: tls.VersionTLS12, ClientAuth: tls.NoClientCert}
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
