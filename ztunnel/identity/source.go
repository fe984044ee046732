// Package identity supplies ztunnel's workload identities: X.509-SVIDs from a source (a folder of files or the control plane's CA), kept in memory and rotated before they expire.
package identity

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/goambient/goambient/internal/pemfile"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Source supplies the X.509-SVID of a workload identity and the trust bundle it chains to. Each
// FetchSVID returns the source's current SVID (a CA source issues a new one each time). Errors
// name the SPIFFE ID; fetches return when ctx is done. A gRPC client of the control plane's CA (Istio's CreateCertificate, with
// the identity as ImpersonatedIdentity) is one more implementation.
type Source interface {
	FetchSVID(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error)
	FetchBundle(ctx context.Context) (*x509bundle.Bundle, error)
}

// WorkloadID is spiffe://<td>/ns/<ns>/sa/<sa>, Istio's identity of a service account.
func WorkloadID(td spiffeid.TrustDomain, ns, sa string) (spiffeid.ID, error) {
	if ns == "" || sa == "" {
		return spiffeid.ID{}, fmt.Errorf("identity: namespace %q and service account %q must not be empty", ns, sa)
	}
	id, err := spiffeid.FromSegments(td, "ns", ns, "sa", sa)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity: ns %q sa %q: %w", ns, sa, err)
	}
	return id, nil
}

// ParseWorkloadID returns the namespace and service account of an Istio workload identity.
func ParseWorkloadID(id spiffeid.ID) (ns, sa string, err error) {
	seg := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(seg) != 4 || seg[0] != "ns" || seg[2] != "sa" || seg[1] == "" || seg[3] == "" {
		return "", "", fmt.Errorf("identity: %s is not a workload identity (spiffe://<trust-domain>/ns/<ns>/sa/<sa>)", id)
	}
	return seg[1], seg[3], nil
}

// File names of an SVID directory (see README.md): <dir>/root-cert.pem, and per identity
// <dir>/<ns>/<sa>/cert-chain.pem and <dir>/<ns>/<sa>/key.pem.
const (
	CertChainFile = "cert-chain.pem"
	KeyFile       = "key.pem"
)

// SVIDPaths returns where an SVID directory keeps id's certificate chain and key.
func SVIDPaths(dir string, id spiffeid.ID) (certPath, keyPath string, err error) {
	ns, sa, err := ParseWorkloadID(id)
	if err != nil {
		return "", "", err
	}
	d := filepath.Join(dir, ns, sa)
	return filepath.Join(d, CertChainFile), filepath.Join(d, KeyFile), nil
}

// WriteSVID writes svid into an SVID directory: cert-chain.pem (0644, leaf first) and key.pem
// (0600, PKCS#8), each replaced atomically. It returns the certificate's path.
func WriteSVID(dir string, svid *x509svid.SVID) (string, error) {
	certPath, keyPath, err := SVIDPaths(dir, svid.ID)
	if err != nil {
		return "", err
	}
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		return "", fmt.Errorf("identity: %s: %w", svid.ID, err)
	}
	if err := os.MkdirAll(filepath.Dir(certPath), 0o755); err != nil {
		return "", fmt.Errorf("identity: %s: %w", svid.ID, err)
	}
	// One file after the other: a reader in between sees a key that does not match the chain,
	// an error (x509svid.Parse checks the pair) that the Manager retries.
	if err := pemfile.WriteAtomic(keyPath, keyPEM, 0o600); err != nil {
		return "", fmt.Errorf("identity: %s: %w", svid.ID, err)
	}
	if err := pemfile.WriteAtomic(certPath, certPEM, 0o644); err != nil {
		return "", fmt.Errorf("identity: %s: %w", svid.ID, err)
	}
	return certPath, nil
}

// RootCertFile is the trust bundle's file in an SVID directory (see README.md).
const RootCertFile = "root-cert.pem"

// DirSource reads SVIDs from a directory written by `meshctl certs issue` (layout in README.md).
// It keeps no cache: every fetch reads the files again, so a file rewritten on disk is what the
// next fetch returns (the Manager fetches on first use, at rotation time and, when its
// RefreshInterval is set, periodically).
type DirSource struct {
	dir string
	td  spiffeid.TrustDomain
}

// NewDirSource reads SVIDs of trust domain td from dir.
func NewDirSource(dir string, td spiffeid.TrustDomain) *DirSource {
	return &DirSource{dir: dir, td: td}
}

// FetchSVID reads <dir>/<ns>/<sa>/cert-chain.pem and key.pem, and checks that they hold an SVID
// for id with a matching key.
func (s *DirSource) FetchSVID(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	if id.TrustDomain() != s.td {
		return nil, fmt.Errorf("identity: %s is not in trust domain %q of %s", id, s.td.Name(), s.dir)
	}
	certPath, keyPath, err := SVIDPaths(s.dir, id)
	if err != nil {
		return nil, err
	}
	certPEM, certErr := os.ReadFile(certPath)
	keyPEM, keyErr := os.ReadFile(keyPath)
	if err := errors.Join(certErr, keyErr); err != nil {
		return nil, fmt.Errorf("identity: no SVID for %s: looked for %s and %s: %w", id, certPath, keyPath, err)
	}
	svid, err := x509svid.Parse(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("identity: SVID for %s in %s: %w", id, filepath.Dir(certPath), err)
	}
	if svid.ID != id {
		return nil, fmt.Errorf("identity: %s holds an SVID for %s, not %s", certPath, svid.ID, id)
	}
	return svid, nil
}

// FetchBundle reads <dir>/root-cert.pem (one or more root certificates).
func (s *DirSource) FetchBundle(ctx context.Context) (*x509bundle.Bundle, error) {
	path := filepath.Join(s.dir, RootCertFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("identity: trust bundle of %q: %w", s.td.Name(), err)
	}
	certs, err := pemfile.ParseCerts(data)
	if err != nil {
		return nil, fmt.Errorf("identity: trust bundle of %q: %s: %w", s.td.Name(), path, err)
	}
	return x509bundle.FromX509Authorities(s.td, certs), nil
}
