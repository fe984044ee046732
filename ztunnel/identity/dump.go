package identity

import (
	"cmp"
	"crypto/x509"
	"slices"
	"time"

	"github.com/goambient/goambient/internal/pemfile"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// CertState is an identity's certificate state, as Istio's ztunnel reports it.
type CertState string

// States of CertState.
const (
	CertAvailable    CertState = "Available"    // an SVID is installed
	CertInitializing CertState = "Initializing" // the first fetch has not ended
	CertUnavailable  CertState = "Unavailable"  // the first fetch failed (the next use tries again)
)

// Certificates is what a Manager holds for one identity, without private keys: the chain (leaf
// first) of its current SVID, and the trust bundle's roots.
type Certificates struct {
	Identity spiffeid.ID
	State    CertState
	Chain    []*x509.Certificate
	Roots    []*x509.Certificate
	RotateAt time.Time // zero unless Available
}

// Certificates lists the identities the Manager holds, sorted, with their current chains and
// the roots (for a config dump: certificates, never keys).
func (m *Manager) Certificates() []Certificates {
	var roots []*x509.Certificate
	if b := m.Bundle(); b != nil {
		roots = b.X509Authorities()
	}
	m.mu.RLock()
	entries := make([]*entry, 0, len(m.entries))
	for _, e := range m.entries {
		entries = append(entries, e)
	}
	m.mu.RUnlock()
	out := make([]Certificates, 0, len(entries))
	for _, e := range entries {
		c := Certificates{Identity: e.id, State: CertInitializing, Roots: roots}
		if cur := e.cur.Load(); cur != nil {
			c.State, c.Chain, c.RotateAt = CertAvailable, cur.svid.Certificates, cur.rotateAt
		} else {
			select {
			case <-e.ready:
				c.State = CertUnavailable
			default:
			}
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b Certificates) int { return cmp.Compare(a.Identity.String(), b.Identity.String()) })
	return out
}

// CertsDump is one identity in a config dump, in Istio's ztunnel /config_dump shape
// ("certificates": identity, state, certChain, rootCerts).
type CertsDump struct {
	Identity  string     `json:"identity"`
	State     CertState  `json:"state"`
	CertChain []CertDump `json:"certChain"`
	RootCerts []CertDump `json:"rootCerts"`
}

// CertDump is one certificate: its PEM, serial number (decimal) and validity (RFC 3339).
type CertDump struct {
	PEM            string `json:"pem"`
	SerialNumber   string `json:"serialNumber"`
	ValidFrom      string `json:"validFrom"`
	ExpirationTime string `json:"expirationTime"`
}

// DumpCertificates is the Manager's certificates in Istio's dump shape (no keys).
func (m *Manager) DumpCertificates() []CertsDump {
	cs := m.Certificates()
	out := make([]CertsDump, 0, len(cs))
	conv := func(certs []*x509.Certificate) []CertDump {
		d := make([]CertDump, 0, len(certs))
		for _, c := range certs {
			d = append(d, CertDump{PEM: string(pemfile.Block("CERTIFICATE", c.Raw)), SerialNumber: c.SerialNumber.String(),
				ValidFrom: c.NotBefore.UTC().Format(time.RFC3339), ExpirationTime: c.NotAfter.UTC().Format(time.RFC3339)})
		}
		return d
	}
	for _, c := range cs {
		out = append(out, CertsDump{Identity: c.Identity.String(), State: c.State, CertChain: conv(c.Chain), RootCerts: conv(c.Roots)})
	}
	return out
}
