package xds

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/goambient/goambient/ztunnel/state"
)

// testCA is a root and a serving certificate it signed for DefaultServerName.
type testCA struct {
	rootPEM []byte
	serving tls.Certificate
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	rootTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509.ParseCertificate(rootDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), DNSNames: []string{DefaultServerName},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, root, key.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{
		rootPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER}),
		serving: tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key},
	}
}

// tokenADS is a delta ADS server that reports each stream's authorization and clusterid
// metadata ("<authorization> clusterid=<clusterid>"); the first
// stream ends (with Unavailable) when release is closed, the next ones send a response of each
// type and stay open.
type tokenADS struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	auths   chan string
	release chan struct{}
	mu      sync.Mutex
	streams int
}

func (f *tokenADS) DeltaAggregatedResources(s discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	md, _ := metadata.FromIncomingContext(s.Context())
	f.auths <- strings.Join(md.Get("authorization"), ",") + " clusterid=" + strings.Join(md.Get(ClusterIDKey), ",")
	f.mu.Lock()
	f.streams++
	n := f.streams
	f.mu.Unlock()
	if n == 1 {
		select {
		case <-f.release:
			return status.Error(codes.Unavailable, "go away")
		case <-s.Context().Done():
			return nil
		}
	}
	go func() { // drain the client's requests
		for {
			if _, err := s.Recv(); err != nil {
				return
			}
		}
	}()
	for _, r := range []*discovery.DeltaDiscoveryResponse{
		{TypeUrl: AddressType, Nonce: "a", Resources: []*discovery.Resource{workload("c//Pod/ns/w", []byte{10, 1, 2, 3})}},
		{TypeUrl: AuthorizationType, Nonce: "b"},
	} {
		if err := s.Send(r); err != nil {
			return err
		}
	}
	<-s.Context().Done()
	return nil
}

// startTLSADS serves f over TLS with ca's serving certificate on 127.0.0.1:0.
func startTLSADS(t *testing.T, ca *testCA, f *tokenADS) string {
	t.Helper()
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{ca.serving}, MinVersion: tls.VersionTLS12})))
	discovery.RegisterAggregatedDiscoveryServiceServer(g, f)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return l.Addr().String()
}

// TestClientTLSToken: over TLS verified with the root, the bearer token of the token file
// arrives on each stream with the node's cluster id (as Istio's ztunnel sends them: istiod
// authenticates the token with the cluster it names), read again for the next stream; the
// state arrives.
func TestClientTLSToken(t *testing.T) {
	ca := newTestCA(t)
	f := &tokenADS{auths: make(chan string, 4), release: make(chan struct{})}
	addr := startTLSADS(t, ca, f)
	dir := t.TempDir()
	root, tok := filepath.Join(dir, "root.pem"), filepath.Join(dir, "token")
	writeFile(t, root, ca.rootPEM)
	writeFile(t, tok, []byte("first-token\n"))

	creds, err := TLSCredentials(root, "")
	if err != nil {
		t.Fatal(err)
	}
	store := state.NewStore(nil)
	c, err := New(Options{Address: addr, Store: store, Credentials: creds, TokenFile: tok, MinBackoff: 10 * time.Millisecond,
		Node: Node{IP: "10.0.0.5", PodName: "ztunnel-abc", Namespace: "istio-system", NodeName: "worker", ClusterID: "east"}})
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)

	auth := func() string {
		t.Helper()
		select {
		case a := <-f.auths:
			return a
		case <-time.After(10 * time.Second):
			t.Fatal("no stream")
			return ""
		}
	}
	if got := auth(); got != "Bearer first-token clusterid=east" {
		t.Fatalf("first stream: authorization %q", got)
	}
	writeFile(t, tok, []byte("second-token\n"))
	close(f.release) // the stream ends; the client reconnects with the token read again
	if got := auth(); got != "Bearer second-token clusterid=east" {
		t.Fatalf("second stream: authorization %q", got)
	}
	select {
	case <-c.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("not synced over TLS")
	}
	if n := len(store.Load().Resources().Workloads); n != 1 {
		t.Fatalf("%d workloads, want 1", n)
	}
}

// TestClientTLSRefused: another root, or another server name, and no stream is opened: the
// client logs the certificate error and keeps trying.
func TestClientTLSRefused(t *testing.T) {
	ca, other := newTestCA(t), newTestCA(t)
	f := &tokenADS{auths: make(chan string, 4), release: make(chan struct{})}
	addr := startTLSADS(t, ca, f)
	dir := t.TempDir()
	good, bad, tok := filepath.Join(dir, "good.pem"), filepath.Join(dir, "bad.pem"), filepath.Join(dir, "token")
	writeFile(t, good, ca.rootPEM)
	writeFile(t, bad, other.rootPEM)
	writeFile(t, tok, []byte("a-token"))

	for _, tt := range []struct{ name, root, serverName string }{
		{"wrong root", bad, ""},
		{"wrong server name", good, "xdsserver.example"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			creds, err := TLSCredentials(tt.root, tt.serverName)
			if err != nil {
				t.Fatal(err)
			}
			logs := &lockedBuf{}
			c, err := New(Options{Address: addr, Store: state.NewStore(nil), Credentials: creds, TokenFile: tok,
				MinBackoff: 10 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- c.Run(ctx) }()
			defer func() { cancel(); <-done }()
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(logs.String(), "certificate") {
				if time.Now().After(deadline) {
					t.Fatalf("no certificate error logged:\n%s", logs)
				}
				time.Sleep(10 * time.Millisecond)
			}
			if !strings.Contains(logs.String(), "xds stream ended") {
				t.Errorf("logs:\n%s", logs)
			}
			if s := c.Stats(); s.Connects != 0 {
				t.Errorf("%d streams opened", s.Connects)
			}
			select {
			case a := <-f.auths:
				t.Fatalf("the server got a stream (authorization %q)", a)
			default:
			}
		})
	}
}

func TestClientTLSOptions(t *testing.T) {
	dir := t.TempDir()
	tok, notPEM := filepath.Join(dir, "token"), filepath.Join(dir, "root.pem")
	writeFile(t, tok, []byte("a-token"))
	writeFile(t, notPEM, []byte("not a certificate"))
	if _, err := New(Options{Address: "127.0.0.1:1", Store: state.NewStore(nil), TokenFile: tok}); err == nil {
		t.Error("a token file without credentials accepted")
	}
	if _, err := TLSCredentials(notPEM, ""); err == nil {
		t.Error("a root file with no certificate accepted")
	}
	if _, err := TLSCredentials(filepath.Join(dir, "missing"), ""); err == nil {
		t.Error("a missing root file accepted")
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
