package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goambient/goambient/xdsserver/ca/pki"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"

	"github.com/goambient/goambient/xdsserver/model"
)

const (
	tokNodeA    = "token-node-a-0123456789"
	tokNodeB    = "token-node-b-0123456789"
	tokWaypoint = "token-waypoint-0123456789"
	tokGhostWP  = "token-ghost-waypoint-0123"
	tokWorkload = "token-workload-0123456789"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func testTokens(t *testing.T) *TokenFile {
	t.Helper()
	tf, err := ParseTokens([]byte(`
# token kind who
` + tokNodeA + ` ztunnel node-a
` + tokNodeB + ` ztunnel node-b
` + tokWaypoint + ` waypoint handson/waypoint
` + tokGhostWP + ` waypoint handson/ghost
` + tokWorkload + ` workload ns1/sa-a
`))
	if err != nil {
		t.Fatal(err)
	}
	return tf
}

// testMesh: ns1/sa-a on node-a, ns1/sa-b on node-b, ns1/plain (not ambient) on node-a, and the
// waypoint handson/waypoint running as handson/waypoint-sa.
func testMesh() *model.Mesh {
	return &model.Mesh{
		TrustDomain: "cluster.local",
		Workloads: []*model.Workload{
			{Namespace: "ns1", Name: "a-1", ServiceAccount: "sa-a", Node: "node-a", Ambient: true},
			{Namespace: "ns1", Name: "b-1", ServiceAccount: "sa-b", Node: "node-b", Ambient: true},
			{Namespace: "ns1", Name: "plain-1", ServiceAccount: "plain", Node: "node-a", Ambient: false},
		},
		Waypoints: []*model.Waypoint{{Namespace: "handson", Name: "waypoint", ServiceAccount: "waypoint-sa"}},
	}
}

type fixture struct {
	ca   *pki.CA
	srv  *Server
	mesh *MeshIndex
	reg  *prometheus.Registry
}

func newFixture(t *testing.T, setMesh bool) *fixture {
	t.Helper()
	c, err := pki.NewCA(td)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{ca: c, mesh: &MeshIndex{}, reg: prometheus.NewRegistry()}
	if setMesh {
		f.mesh.Set(testMesh())
	}
	f.srv, err = New(Options{CA: c, Authenticator: testTokens(t), Mesh: f.mesh, Registerer: f.reg})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// csrPEM is a CSR for a new P-256 key that claims identities the CA must ignore.
func csrPEM(t *testing.T) (string, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	evil, _ := url.Parse("spiffe://cluster.local/ns/kube-system/sa/admin")
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{evil}, DNSNames: []string{"evil.example"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), key
}

// badSignatureCSR is a CSR whose signature does not match its content.
func badSignatureCSR(t *testing.T) string {
	t.Helper()
	p, _ := csrPEM(t)
	b, _ := pem.Decode([]byte(p))
	der := append([]byte(nil), b.Bytes...)
	der[len(der)-5] ^= 0xff // inside the signature
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func request(t *testing.T, csr, imp string, ttl int64) *pb.IstioCertificateRequest {
	t.Helper()
	r := &pb.IstioCertificateRequest{Csr: csr, ValidityDuration: ttl}
	if imp != "" {
		md, err := structpb.NewStruct(map[string]any{ImpersonatedIdentity: imp})
		if err != nil {
			t.Fatal(err)
		}
		r.Metadata = md
	}
	return r
}

func ctxWith(auth string) context.Context {
	if auth == "" {
		return context.Background()
	}
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", auth))
}

func TestCreateCertificate(t *testing.T) {
	const (
		idA  = "spiffe://cluster.local/ns/ns1/sa/sa-a"
		idB  = "spiffe://cluster.local/ns/ns1/sa/sa-b"
		idWP = "spiffe://cluster.local/ns/handson/sa/waypoint-sa"
	)
	tests := []struct {
		name    string
		auth    string
		imp     string
		csr     string
		ttl     int64
		noMesh  bool
		want    codes.Code
		wantID  string
		wantTTL time.Duration
		reason  string
	}{
		{name: "ztunnel gets a workload of its node", auth: "Bearer " + tokNodeA, imp: idA, wantID: idA, wantTTL: 24 * time.Hour},
		{name: "bearer scheme is case-insensitive", auth: "bearer " + tokNodeB, imp: idB, wantID: idB, wantTTL: 24 * time.Hour},
		{name: "requested lifetime honoured", auth: "Bearer " + tokNodeA, imp: idA, ttl: 3600, wantID: idA, wantTTL: time.Hour},
		{name: "requested lifetime capped", auth: "Bearer " + tokNodeA, imp: idA, ttl: 30 * 24 * 3600, wantID: idA, wantTTL: DefaultMaxTTL},
		{name: "negative lifetime", auth: "Bearer " + tokNodeA, imp: idA, ttl: -1, want: codes.InvalidArgument, reason: ReasonInvalid},
		{name: "ztunnel asks for another node's workload", auth: "Bearer " + tokNodeA, imp: idB, want: codes.PermissionDenied, reason: ReasonForbidden},
		{name: "ztunnel asks for an unknown identity", auth: "Bearer " + tokNodeA, imp: "spiffe://cluster.local/ns/ns1/sa/nobody", want: codes.PermissionDenied, reason: ReasonForbidden},
		{name: "ztunnel asks for a non-ambient workload", auth: "Bearer " + tokNodeA, imp: "spiffe://cluster.local/ns/ns1/sa/plain", want: codes.PermissionDenied, reason: ReasonForbidden},
		{name: "ztunnel asks for another trust domain", auth: "Bearer " + tokNodeA, imp: "spiffe://evil.org/ns/ns1/sa/sa-a", want: codes.PermissionDenied, reason: ReasonForbidden},
		{name: "ztunnel asks for a non-workload identity", auth: "Bearer " + tokNodeA, imp: "spiffe://cluster.local/admin", want: codes.InvalidArgument, reason: ReasonInvalid},
		{name: "ztunnel asks for a malformed identity", auth: "Bearer " + tokNodeA, imp: "not a spiffe id", want: codes.InvalidArgument, reason: ReasonInvalid},
		{name: "ztunnel without impersonation", auth: "Bearer " + tokNodeA, want: codes.InvalidArgument, reason: ReasonInvalid},
		{name: "ztunnel before the first mesh", auth: "Bearer " + tokNodeA, imp: idA, noMesh: true, want: codes.PermissionDenied, reason: ReasonForbidden},
		{name: "waypoint gets its own identity", auth: "Bearer " + tokWaypoint, wantID: idWP, wantTTL: 24 * time.Hour},
		{name: "waypoint names its own identity", auth: "Bearer " + tokWaypoint, imp: idWP, wantID: idWP, wantTTL: 24 * time.Hour},
		{name: "waypoint asks for a workload", auth: "Bearer " + tokWaypoint, imp: idA, want: codes.PermissionDenied, reason: ReasonForbidden},
		{name: "waypoint not in the mesh", auth: "Bearer " + tokGhostWP, want: codes.PermissionDenied, reason: ReasonForbidden},
		{name: "workload gets its own identity", auth: "Bearer " + tokWorkload, wantID: idA, wantTTL: 24 * time.Hour},
		{name: "workload asks for another", auth: "Bearer " + tokWorkload, imp: idB, want: codes.PermissionDenied, reason: ReasonForbidden},
		{name: "no token", imp: idA, want: codes.Unauthenticated, reason: ReasonUnauthenticated},
		{name: "bad token", auth: "Bearer token-nobody-knows-this", imp: idA, want: codes.Unauthenticated, reason: ReasonUnauthenticated},
		{name: "not bearer", auth: "Basic " + tokNodeA, imp: idA, want: codes.Unauthenticated, reason: ReasonUnauthenticated},
		{name: "CSR with a bad signature", auth: "Bearer " + tokNodeA, imp: idA, csr: badSignatureCSR(t), want: codes.InvalidArgument, reason: ReasonInvalid},
		{name: "not a CSR", auth: "Bearer " + tokNodeA, imp: idA, csr: "hello", want: codes.InvalidArgument, reason: ReasonInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, !tt.noMesh)
			csr := tt.csr
			var key *ecdsa.PrivateKey
			if csr == "" {
				csr, key = csrPEM(t)
			}
			resp, err := f.srv.CreateCertificate(ctxWith(tt.auth), request(t, csr, tt.imp, tt.ttl))
			if tt.want != codes.OK {
				if status.Code(err) != tt.want {
					t.Fatalf("code %v (%v), want %v", status.Code(err), err, tt.want)
				}
				if resp != nil {
					t.Fatal("a response with an error")
				}
				if got := counterValue(t, f.srv.metrics.refused.WithLabelValues(tt.reason)); got != 1 {
					t.Errorf("refused{reason=%s} = %v, want 1", tt.reason, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			chain := parseChain(t, resp.CertChain)
			if len(chain) != 2 {
				t.Fatalf("chain of %d certificates, want leaf and root", len(chain))
			}
			leaf, root := chain[0], chain[1]
			if !root.Equal(f.ca.Root()) {
				t.Error("the last certificate is not the root")
			}
			if id, err := x509svid.IDFromCert(leaf); err != nil || id.String() != tt.wantID {
				t.Errorf("identity %v (%v), want %s", id, err, tt.wantID)
			}
			if len(leaf.URIs) != 1 || len(leaf.DNSNames) != 0 || len(leaf.EmailAddresses) != 0 || len(leaf.IPAddresses) != 0 {
				t.Errorf("SANs: URIs %v DNS %v: want the identity's URI only", leaf.URIs, leaf.DNSNames)
			}
			if !key.PublicKey.Equal(leaf.PublicKey) {
				t.Error("the certificate is not for the CSR's key")
			}
			if got := leaf.NotAfter.Sub(leaf.NotBefore); got != tt.wantTTL {
				t.Errorf("lifetime %s, want %s", got, tt.wantTTL)
			}
			if _, _, err := x509svid.Verify([]*x509.Certificate{leaf}, f.ca.Bundle()); err != nil {
				t.Errorf("does not verify against the root: %v", err)
			}
			if got := counterValue(t, f.srv.metrics.issued); got != 1 {
				t.Errorf("issued = %v, want 1", got)
			}
		})
	}
}

func parseChain(t *testing.T, pems []string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, p := range pems {
		b, rest := pem.Decode([]byte(p))
		if b == nil || strings.TrimSpace(string(rest)) != "" {
			t.Fatalf("cert_chain element is not one PEM certificate: %q", p)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

func TestMetricsRegistered(t *testing.T) {
	f := newFixture(t, true)
	n, err := seriesCount(f.reg, "goambient_ca_certificates_refused_total")
	if err != nil || n != 4 {
		t.Fatalf("refused series %d (%v), want 4 (one per reason)", n, err)
	}
	if _, err := New(Options{CA: f.ca, Authenticator: testTokens(t), Mesh: f.mesh, Registerer: f.reg}); err == nil {
		t.Error("registering the metrics twice on one registry did not fail")
	}
}

func TestNewRequiresOptions(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Fatal("New without a CA succeeded")
	}
}

// TestRootKeptAcrossRestarts: the root is generated on first start into the CA folder (key
// 0600), loaded again on the next, and what the first issued verifies against the second.
func TestRootKeptAcrossRestarts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	first, created, err := pki.LoadOrCreateCA(dir, td)
	if err != nil || !created {
		t.Fatalf("first start: created=%v err=%v", created, err)
	}
	st, err := os.Stat(filepath.Join(dir, pki.RootKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("root key mode %v, want 0600", st.Mode().Perm())
	}
	svid, err := first.IssueSVID(spiffeid.RequireFromString("spiffe://cluster.local/ns/ns1/sa/sa-a"), 0)
	if err != nil {
		t.Fatal(err)
	}
	second, created, err := pki.LoadOrCreateCA(dir, td)
	if err != nil || created {
		t.Fatalf("second start: created=%v err=%v", created, err)
	}
	if !second.Root().Equal(first.Root()) {
		t.Fatal("the root changed across restarts")
	}
	if _, _, err := x509svid.Verify(svid.Certificates, second.Bundle()); err != nil {
		t.Fatalf("a certificate of the first start does not verify after a restart: %v", err)
	}
}

// counterValue sums the counters of c.
func counterValue(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 16)
	go func() { c.Collect(ch); close(ch) }()
	var sum float64
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			t.Fatal(err)
		}
		sum += d.GetCounter().GetValue()
	}
	return sum
}

func seriesCount(g prometheus.Gatherer, name string) (int, error) {
	mfs, err := g.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return len(mf.GetMetric()), nil
		}
	}
	return 0, nil
}
