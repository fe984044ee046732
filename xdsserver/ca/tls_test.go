package ca

import (
	"context"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/goambient/goambient/ztunnel/identity"
)

func TestServingCert(t *testing.T) {
	f := newFixture(t, true)
	sc, err := NewServingCert(f.ca, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := sc.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(f.ca.Root())
	if _, err := c.Leaf.Verify(x509.VerifyOptions{DNSName: ServerDNSName, Roots: pool}); err != nil {
		t.Fatalf("does not verify as %s: %v", ServerDNSName, err)
	}
	if id, err := spiffeid.FromURI(c.Leaf.URIs[0]); err != nil || id.String() != "spiffe://cluster.local/ns/istio-system/sa/istiod" {
		t.Errorf("URI SAN %v (%v)", c.Leaf.URIs, err)
	}
	again, _ := sc.GetCertificate(nil)
	if again != c {
		t.Error("reissued before half its lifetime")
	}
	sc.now = func() time.Time { return c.Leaf.NotBefore.Add(31 * time.Minute) }
	if next, err := sc.GetCertificate(nil); err != nil || next == c {
		t.Errorf("not reissued past half its lifetime (%v)", err)
	}
}

// TestOverGRPC: ztunnel's CA client against this server over TLS on :0.
func TestOverGRPC(t *testing.T) {
	f := newFixture(t, true)
	sc, err := NewServingCert(f.ca, 0)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(sc.TLSConfig())))
	f.srv.Register(g)
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
	tok := filepath.Join(dir, "token")
	fetch := func(token, id string) error {
		if err := os.WriteFile(tok, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := identity.NewGRPCSource(identity.GRPCSourceOptions{Address: ln.Addr().String(),
			RootFile: filepath.Join(dir, identity.RootCertFile), TokenFile: tok, TrustDomain: td})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		svid, err := s.FetchSVID(ctx, spiffeid.RequireFromString(id))
		if err == nil && svid.ID.String() != id {
			t.Errorf("got %s, want %s", svid.ID, id)
		}
		return err
	}
	for _, tt := range []struct {
		token, id string
		want      codes.Code
	}{
		{tokNodeA, "spiffe://cluster.local/ns/ns1/sa/sa-a", codes.OK},
		{tokNodeA, "spiffe://cluster.local/ns/ns1/sa/sa-b", codes.PermissionDenied},
		{tokNodeB, "spiffe://cluster.local/ns/ns1/sa/sa-b", codes.OK},
		{"token-nobody-knows-this", "spiffe://cluster.local/ns/ns1/sa/sa-a", codes.Unauthenticated},
	} {
		if got := status.Code(fetch(tt.token, tt.id)); got != tt.want {
			t.Errorf("%s asking for %s: %v, want %v", tt.token, tt.id, got, tt.want)
		}
	}
}
