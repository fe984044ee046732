package identity

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/goambient/goambient/internal/pemfile"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
)

// Names on the wire of Istio's CreateCertificate, as Istio's ztunnel sends them.
const (
	// ImpersonatedIdentityKey is the request metadata field naming the identity a node proxy asks
	// a certificate for.
	ImpersonatedIdentityKey = "ImpersonatedIdentity"
	// DefaultCAServerName is the DNS name the control plane's serving certificate carries.
	DefaultCAServerName = "istiod.istio-system.svc"
	// ClusterIDKey is the gRPC metadata naming the caller's cluster. istiod authenticates the
	// token without it, but then looks for the node authorizer (which checks that the identity
	// asked for runs on the caller's node) of the empty cluster, finds none and refuses every
	// impersonation: Istio's ztunnel always sends it.
	ClusterIDKey = "clusterid"
	// DefaultClusterID is Istio's default cluster id (CLUSTER_ID).
	DefaultClusterID = "Kubernetes"
)

// GRPCSourceOptions configure a GRPCSource. Address, RootFile and TrustDomain are required.
type GRPCSourceOptions struct {
	Address     string               // the CA, host:port (the control plane's 15012)
	RootFile    string               // PEM roots that verify the CA's serving certificate; also the initial trust bundle
	TokenFile   string               // bearer token, read again on every request ("" sends none)
	ServerName  string               // name verified in the CA's certificate (DefaultCAServerName when "")
	TrustDomain spiffeid.TrustDomain // of the identities fetched
	ClusterID   string               // sent as the clusterid metadata (DefaultClusterID when "")
	// TTL is the validity asked for (validity_duration); 0 leaves it to the CA.
	TTL time.Duration
	// DialOptions are added after the transport credentials (tests).
	DialOptions []grpc.DialOption
}

// GRPCSource obtains SVIDs from the control plane's CA with Istio's
// istio.v1.auth.IstioCertificateService/CreateCertificate: for each fetch it generates a new
// ECDSA P-256 key and sends a CSR with the identity as ImpersonatedIdentity, authenticated by a
// bearer token, with the caller's cluster id (ClusterIDKey); the CA answers with the chain, root
// last. It issues a new SVID on every fetch, so a Manager over it needs no RefreshInterval. It is safe for concurrent use; Close it.
type GRPCSource struct {
	o      GRPCSourceOptions
	conn   *grpc.ClientConn
	client pb.IstioCertificateServiceClient
	roots  []*x509.Certificate // of RootFile

	mu     sync.Mutex
	caRoot *x509.Certificate // the root the CA returned last
}

// NewGRPCSource reads o.RootFile and prepares the connection to o.Address (dialled on first use).
func NewGRPCSource(o GRPCSourceOptions) (*GRPCSource, error) {
	if o.Address == "" || o.RootFile == "" {
		return nil, errors.New("identity: CA source: the address and the root file are required")
	}
	if o.TrustDomain.IsZero() {
		return nil, errors.New("identity: CA source: empty trust domain")
	}
	data, err := os.ReadFile(o.RootFile)
	if err != nil {
		return nil, fmt.Errorf("identity: CA source: root file: %w", err)
	}
	roots, err := pemfile.ParseCerts(data)
	if err != nil {
		return nil, fmt.Errorf("identity: CA source: root file %s: %w", o.RootFile, err)
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	tc := &tls.Config{RootCAs: pool, ServerName: cmp.Or(o.ServerName, DefaultCAServerName), MinVersion: tls.VersionTLS12}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tc))}, o.DialOptions...)
	conn, err := grpc.NewClient(o.Address, opts...)
	if err != nil {
		return nil, fmt.Errorf("identity: CA source: %s: %w", o.Address, err)
	}
	return &GRPCSource{o: o, conn: conn, client: pb.NewIstioCertificateServiceClient(conn), roots: roots}, nil
}

// Close closes the connection to the CA.
func (s *GRPCSource) Close() error { return s.conn.Close() }

// FetchSVID asks the CA for a new SVID of id, for a key generated here.
func (s *GRPCSource) FetchSVID(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	if id.TrustDomain() != s.o.TrustDomain {
		return nil, fmt.Errorf("identity: CA source: %s is not in trust domain %q", id, s.o.TrustDomain.Name())
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: CA source: key for %s: %w", id, err)
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, fmt.Errorf("identity: CA source: CSR for %s: %w", id, err)
	}
	md, err := structpb.NewStruct(map[string]any{ImpersonatedIdentityKey: id.String()})
	if err != nil {
		return nil, fmt.Errorf("identity: CA source: metadata for %s: %w", id, err)
	}
	ctx = metadata.AppendToOutgoingContext(ctx, ClusterIDKey, cmp.Or(s.o.ClusterID, DefaultClusterID))
	if s.o.TokenFile != "" {
		tok, err := os.ReadFile(s.o.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("identity: CA source: SVID for %s: token: %w", id, err)
		}
		if t := strings.TrimSpace(string(tok)); t != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+t)
		}
	}
	resp, err := s.client.CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr:              string(pemfile.Block("CERTIFICATE REQUEST", csrDER)),
		ValidityDuration: int64(s.o.TTL / time.Second),
		Metadata:         md,
	})
	if err != nil {
		return nil, fmt.Errorf("identity: CA source: SVID for %s from %s: %w", id, s.o.Address, err)
	}
	var certs []*x509.Certificate
	for i, p := range resp.GetCertChain() {
		cs, err := pemfile.ParseCerts([]byte(p))
		if err != nil {
			return nil, fmt.Errorf("identity: CA source: SVID for %s: cert_chain[%d]: %w", id, i, err)
		}
		certs = append(certs, cs...)
	}
	if len(certs) < 2 {
		return nil, fmt.Errorf("identity: CA source: SVID for %s: cert_chain has %d certificates, want the leaf and the root", id, len(certs))
	}
	root := certs[len(certs)-1]
	if !root.IsCA {
		return nil, fmt.Errorf("identity: CA source: SVID for %s: the last certificate of cert_chain is not a CA", id)
	}
	chain := certs[:len(certs)-1]
	got, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		return nil, fmt.Errorf("identity: CA source: SVID for %s: %w", id, err)
	}
	if got != id {
		return nil, fmt.Errorf("identity: CA source: asked for %s, the CA issued %s", id, got)
	}
	if !pemfile.PublicKeyEqual(chain[0].PublicKey, key.Public()) {
		return nil, fmt.Errorf("identity: CA source: SVID for %s: the certificate is not for the key sent", id)
	}
	s.mu.Lock()
	s.caRoot = root
	s.mu.Unlock()
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, nil
}

// FetchBundle returns the roots of RootFile and the root the CA returned last (the CA is
// authenticated by RootFile, so the root it serves is trusted: this is how a new root reaches
// ztunnel).
func (s *GRPCSource) FetchBundle(ctx context.Context) (*x509bundle.Bundle, error) {
	certs := append([]*x509.Certificate(nil), s.roots...)
	s.mu.Lock()
	r := s.caRoot
	s.mu.Unlock()
	if r != nil {
		dup := false
		for _, c := range certs {
			dup = dup || bytes.Equal(c.Raw, r.Raw)
		}
		if !dup {
			certs = append(certs, r)
		}
	}
	return x509bundle.FromX509Authorities(s.o.TrustDomain, certs), nil
}
