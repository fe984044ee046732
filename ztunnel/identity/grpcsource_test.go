package identity

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"

	"github.com/goambient/goambient/internal/pemfile"
	"github.com/goambient/goambient/xdsserver/ca/pki"
)

// fakeCAServer is an in-process IstioCertificateService over a CA: it issues the
// ImpersonatedIdentity it is asked for (no authorization: the control plane's CA does that) and
// records what it received. mangle, when set, changes the answer. cluster, when set, is the
// only clusterid it serves, as istiod, which has a node authorizer for its own cluster only and
// refuses an impersonation from any other (the empty one included).
type fakeCAServer struct {
	pb.UnimplementedIstioCertificateServiceServer
	ca      *pki.CA
	mangle  func(id spiffeid.ID, chain []string) ([]string, error)
	cluster string

	mu       sync.Mutex
	tokens   []string
	imps     []string
	validity []int64
}

func (f *fakeCAServer) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	imp := req.GetMetadata().GetFields()[ImpersonatedIdentityKey].GetStringValue()
	f.mu.Lock()
	f.tokens = append(f.tokens, strings.Join(md.Get("authorization"), ","))
	f.imps = append(f.imps, imp)
	f.validity = append(f.validity, req.GetValidityDuration())
	f.mu.Unlock()
	if got := strings.Join(md.Get(ClusterIDKey), ","); f.cluster != "" && got != f.cluster {
		// istiod's words (security/pkg/server/ca/node_auth.go, server.go).
		return nil, status.Errorf(codes.Unauthenticated, "request authenticate failure: serverca impersonation failed: no node authorizer for cluster %q", got)
	}
	id, err := spiffeid.FromString(imp)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	certs, err := f.ca.SignCSRPEM([]byte(req.GetCsr()), id, time.Duration(req.GetValidityDuration())*time.Second)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	var chain []string
	for _, c := range certs {
		chain = append(chain, string(pemfile.Block("CERTIFICATE", c.Raw)))
	}
	chain = append(chain, string(pemfile.Block("CERTIFICATE", f.ca.Root().Raw)))
	if f.mangle != nil {
		if chain, err = f.mangle(id, chain); err != nil {
			return nil, err
		}
	}
	return &pb.IstioCertificateResponse{CertChain: chain}, nil
}

func (f *fakeCAServer) last() (token, imp string, validity int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.imps) - 1
	return f.tokens[n], f.imps[n], f.validity[n]
}

// startFakeCA serves f over TLS on 127.0.0.1:0 with a serving certificate of f.ca, and returns
// the address and a folder holding root-cert.pem and a token file.
func startFakeCA(t *testing.T, f *fakeCAServer) (addr, rootFile, tokenFile string) {
	t.Helper()
	cert, err := f.ca.IssueServingCert(spiffeid.RequireFromString("spiffe://cluster.local/ns/istio-system/sa/istiod"),
		[]string{DefaultCAServerName}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := cert.Leaf.DNSNames; len(got) != 1 || got[0] != DefaultCAServerName {
		t.Fatalf("serving certificate DNS names %v", got)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewServerTLSFromCert(cert)))
	pb.RegisterIstioCertificateServiceServer(g, f)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	dir := t.TempDir()
	if err := f.ca.Save(dir); err != nil {
		t.Fatal(err)
	}
	tokenFile = filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("tok-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return ln.Addr().String(), filepath.Join(dir, RootCertFile), tokenFile
}

func newGRPCSource(t *testing.T, o GRPCSourceOptions) *GRPCSource {
	t.Helper()
	o.TrustDomain = td
	s, err := NewGRPCSource(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestGRPCSourceFetches(t *testing.T) {
	ca, err := pki.NewCA(td)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeCAServer{ca: ca}
	addr, root, tok := startFakeCA(t, f)
	s := newGRPCSource(t, GRPCSourceOptions{Address: addr, RootFile: root, TokenFile: tok, TTL: time.Hour})
	ctx := context.Background()

	svid, err := s.FetchSVID(ctx, idFoo)
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != idFoo || len(svid.Certificates) != 1 {
		t.Fatalf("SVID %s with %d certificates, want %s with the leaf only", svid.ID, len(svid.Certificates), idFoo)
	}
	if gotTok, imp, v := f.last(); gotTok != "Bearer tok-1" || imp != idFoo.String() || v != 3600 {
		t.Errorf("sent authorization %q, ImpersonatedIdentity %q, validity %d", gotTok, imp, v)
	}
	if l := svid.Certificates[0]; l.NotAfter.Sub(l.NotBefore) != time.Hour {
		t.Errorf("lifetime %s, want 1h", l.NotAfter.Sub(l.NotBefore))
	}

	// The token file is read again on each call; each certificate has a new key.
	if err := os.WriteFile(tok, []byte("tok-2"), 0o600); err != nil {
		t.Fatal(err)
	}
	svid2, err := s.FetchSVID(ctx, idFoo)
	if err != nil {
		t.Fatal(err)
	}
	if gotTok, _, _ := f.last(); gotTok != "Bearer tok-2" {
		t.Errorf("after the token file changed, sent %q", gotTok)
	}
	if pemfile.PublicKeyEqual(svid2.Certificates[0].PublicKey, svid.Certificates[0].PublicKey) {
		t.Error("the second certificate reuses the first one's key")
	}

	b, err := s.FetchBundle(ctx)
	if err != nil || len(b.X509Authorities()) != 1 || !b.X509Authorities()[0].Equal(ca.Root()) {
		t.Fatalf("bundle %v (%v), want the root", b, err)
	}
}

// TestGRPCSourceClusterID: the CA client names its cluster (Istio's default, Kubernetes, or the
// one configured) in the clusterid metadata; a CA that has a node authorizer for that cluster
// only (istiod) issues, and one of another cluster refuses.
func TestGRPCSourceClusterID(t *testing.T) {
	ca, err := pki.NewCA(td)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, sent, served string
		ok                 bool
	}{
		{"default", "", DefaultClusterID, true},
		{"configured", "east", "east", true},
		{"another cluster", "east", DefaultClusterID, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, root, tok := startFakeCA(t, &fakeCAServer{ca: ca, cluster: tc.served})
			s := newGRPCSource(t, GRPCSourceOptions{Address: addr, RootFile: root, TokenFile: tok, ClusterID: tc.sent})
			_, err := s.FetchSVID(context.Background(), idFoo)
			if (err == nil) != tc.ok {
				t.Fatalf("cluster %q to a CA of %q: %v", tc.sent, tc.served, err)
			}
			if !tc.ok && status.Code(errors.Unwrap(err)) != codes.Unauthenticated {
				t.Errorf("refused with %v, want Unauthenticated", err)
			}
		})
	}
}

func TestGRPCSourceRejects(t *testing.T) {
	ca, err := pki.NewCA(td)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA(td)
	if err != nil {
		t.Fatal(err)
	}
	otherDir := t.TempDir()
	if err := other.Save(otherDir); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		mangle    func(spiffeid.ID, []string) ([]string, error)
		otherRoot bool
		noToken   bool
		wantErr   string
	}{
		{name: "refused", wantErr: "PermissionDenied", mangle: func(spiffeid.ID, []string) ([]string, error) {
			return nil, status.Error(codes.PermissionDenied, "no")
		}},
		{name: "another identity", wantErr: "the CA issued spiffe://cluster.local/ns/foo/sa/other", mangle: func(spiffeid.ID, []string) ([]string, error) {
			s, err := ca.IssueSVID(spiffeid.RequireFromString("spiffe://cluster.local/ns/foo/sa/other"), 0)
			if err != nil {
				return nil, err
			}
			return []string{string(pemfile.Block("CERTIFICATE", s.Certificates[0].Raw)), string(pemfile.Block("CERTIFICATE", ca.Root().Raw))}, nil
		}},
		{name: "another key", wantErr: "not for the key sent", mangle: func(id spiffeid.ID, _ []string) ([]string, error) {
			s, err := ca.IssueSVID(id, 0)
			if err != nil {
				return nil, err
			}
			return []string{string(pemfile.Block("CERTIFICATE", s.Certificates[0].Raw)), string(pemfile.Block("CERTIFICATE", ca.Root().Raw))}, nil
		}},
		{name: "no root", wantErr: "want the leaf and the root", mangle: func(_ spiffeid.ID, c []string) ([]string, error) { return c[:1], nil }},
		{name: "not PEM", wantErr: "cert_chain[0]", mangle: func(_ spiffeid.ID, c []string) ([]string, error) { return []string{"x", c[1]}, nil }},
		{name: "server not trusted", otherRoot: true, wantErr: "certificate"},
		{name: "token file missing", noToken: true, wantErr: "token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, root, tok := startFakeCA(t, &fakeCAServer{ca: ca, mangle: tt.mangle})
			if tt.otherRoot {
				root = filepath.Join(otherDir, RootCertFile)
			}
			if tt.noToken {
				tok = filepath.Join(t.TempDir(), "missing")
			}
			s := newGRPCSource(t, GRPCSourceOptions{Address: addr, RootFile: root, TokenFile: tok})
			_, err := s.FetchSVID(context.Background(), idFoo)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), idFoo.String()) {
				t.Fatalf("error %v, want one naming %s and containing %q", err, idFoo, tt.wantErr)
			}
		})
	}
	if _, err := NewGRPCSource(GRPCSourceOptions{Address: "x:1", RootFile: "/nonexistent", TrustDomain: td}); err == nil {
		t.Error("a missing root file was accepted")
	}
	s := newGRPCSource(t, GRPCSourceOptions{Address: "127.0.0.1:1", RootFile: filepath.Join(otherDir, RootCertFile)})
	if _, err := s.FetchSVID(context.Background(), spiffeid.RequireFromString("spiffe://other.org/ns/a/sa/b")); err == nil {
		t.Error("an identity of another trust domain was fetched")
	}
}

// TestGRPCSourceRotates: a Manager over the CA client replaces each SVID at half its lifetime
// with a new certificate for a new key.
func TestGRPCSourceRotates(t *testing.T) {
	clk := newFakeClock(time.Now()) // the serving certificate must be valid for the real TLS handshake
	ca, err := pki.NewCA(td, pki.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	addr, root, tok := startFakeCA(t, &fakeCAServer{ca: ca})
	s := newGRPCSource(t, GRPCSourceOptions{Address: addr, RootFile: root, TokenFile: tok, TTL: time.Hour})
	m, updates := newTestManager(t, clk, s, ManagerOptions{})
	old := mustGet(t, m, idFoo)
	recv(t, updates)
	clk.waitTimers(t, 1)
	clk.Advance(30 * time.Minute)
	u := recv(t, updates)
	cur := mustGet(t, m, idFoo)
	if u.svid != cur || serial(cur).Cmp(serial(old)) == 0 {
		t.Fatalf("after half-life: serial %s, old %s", serial(cur), serial(old))
	}
	if pemfile.PublicKeyEqual(cur.PrivateKey.Public(), old.PrivateKey.Public()) {
		t.Error("the rotated SVID reuses the old key")
	}
	if roots := m.Bundle().X509Authorities(); len(roots) != 1 || !roots[0].Equal(ca.Root()) {
		t.Errorf("bundle of %d roots, want the CA's root", len(roots))
	}
}
