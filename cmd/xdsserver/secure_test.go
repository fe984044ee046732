package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/goambient/goambient/xdsserver/ca"
	"github.com/goambient/goambient/xdsserver/ca/pki"
	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/server"
	"github.com/goambient/goambient/xdsserver/source/files"
	"github.com/goambient/goambient/xdsserver/waypointxds"
	"github.com/goambient/goambient/xdsserver/wds"
)

// Bootstrap tokens of the secure-listener test.
const (
	tokWaypoint      = "waypoint-handson-0123456789abcdef"
	tokOtherWaypoint = "waypoint-other-0123456789abcdef"
	tokWorkload      = "workload-curl-0123456789abcdef"
	tokZtunnel       = "ztunnel-node-0123456789abcdef"
)

// secureFixture runs the xds server of the handson scenario with the plaintext listener and
// the TLS listener of startSecure, both on loopback :0.
type secureFixture struct {
	plain, secure string
	roots         *x509.CertPool
	rootDER       []byte
	node          string // the handson waypoint pod's Envoy node id
}

func startSecureFixture(t *testing.T) *secureFixture {
	t.Helper()
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte(
		tokWaypoint+" waypoint handson/handson\n"+
			tokOtherWaypoint+" waypoint other/waypoint\n"+
			tokWorkload+" workload handson/curl\n"+
			tokZtunnel+" ztunnel node-a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	srv, err := server.New(server.Options{Logger: log, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	sec, err := startSecure(log, prometheus.NewRegistry(), srv, "127.0.0.1:0", filepath.Join(dir, "ca"), tokens, nil, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	m, err := files.New(files.Options{Paths: []string{filepath.Join("..", "..", "manifests", "examples", "handson")}, Model: model.DefaultConfig()}).Load()
	if err != nil {
		t.Fatal(err)
	}
	sec.mesh.Set(m)
	srv.SetResources(wds.Translate(m, wds.Options{}))
	newWaypointPusher(log, srv).push(m)

	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(pl) }()
	go func() { errc <- sec.serve() }()
	t.Cleanup(func() {
		sec.stop()
		srv.Stop()
		for range 2 {
			if err := <-errc; err != nil {
				t.Error(err)
			}
		}
	})

	f := &secureFixture{plain: pl.Addr().String(), secure: sec.ln.Addr().String(), roots: x509.NewCertPool()}
	pemRoot, err := os.ReadFile(filepath.Join(dir, "ca", "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if !f.roots.AppendCertsFromPEM(pemRoot) {
		t.Fatal("root-cert.pem: no certificate")
	}
	b, err := x509bundle.Parse(spiffeid.RequireTrustDomainFromString("cluster.local"), pemRoot)
	if err != nil {
		t.Fatal(err)
	}
	f.rootDER = b.X509Authorities()[0].Raw
	for _, w := range m.Waypoints {
		if w.Key() == "handson/handson" && len(w.Instances) > 0 {
			p := w.Instances[0]
			f.node = waypointxds.NodeID(p.IPs[0].String(), p.Name, p.Namespace, "cluster.local")
		}
	}
	if f.node == "" {
		t.Fatal("handson/handson has no waypoint pod")
	}
	return f
}

// stream opens a delta ADS stream to addr, over TLS to the secure listener when secure, with
// the bearer token tok when not empty.
func (f *secureFixture) stream(t *testing.T, secure bool, tok string) discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient {
	t.Helper()
	addr, creds := f.plain, insecure.NewCredentials()
	if secure {
		addr = f.secure
		creds = credentials.NewTLS(&tls.Config{RootCAs: f.roots, ServerName: ca.ServerDNSName, MinVersion: tls.VersionTLS12})
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a bound, not a timing assertion
	t.Cleanup(cancel)
	if tok != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// ask sends a wildcard delta request for typeURL (with node, on a stream's first request) and
// returns the next response.
func ask(t *testing.T, s discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, node, typeURL string) (*discovery.DeltaDiscoveryResponse, error) {
	t.Helper()
	req := &discovery.DeltaDiscoveryRequest{TypeUrl: typeURL, ResourceNamesSubscribe: []string{"*"}}
	if node != "" {
		req.Node = &core.Node{Id: node}
	}
	// A refused stream may end before the request is sent (io.EOF): Recv has the status.
	if err := s.Send(req); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return s.Recv()
}

func secretNames(resp *discovery.DeltaDiscoveryResponse) []string {
	var names []string
	for _, r := range resp.GetResources() {
		names = append(names, r.GetName())
	}
	slices.Sort(names)
	return names
}

// TestSecureListenerServesWaypointSecrets: over TLS with its bootstrap token, the handson
// waypoint's Envoy gets the SDS secrets default (an X.509-SVID of the waypoint's service
// account, issued by the CA's root) and ROOTCA (the root), next to its other resources.
func TestSecureListenerServesWaypointSecrets(t *testing.T) {
	f := startSecureFixture(t)
	s := f.stream(t, true, tokWaypoint)
	resp, err := ask(t, s, f.node, resource.SecretType)
	if err != nil {
		t.Fatal(err)
	}
	if got := secretNames(resp); !slices.Equal(got, []string{waypointxds.SecretRootCA, waypointxds.SecretDefault}) {
		t.Fatalf("secrets: got %v, want ROOTCA and default", got)
	}
	for _, r := range resp.GetResources() {
		var sec tlsv3.Secret
		if err := r.GetResource().UnmarshalTo(&sec); err != nil {
			t.Fatal(err)
		}
		switch sec.GetName() {
		case waypointxds.SecretDefault:
			tc := sec.GetTlsCertificate()
			svid, err := x509svid.Parse(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
			if err != nil {
				t.Fatalf("default: %v", err)
			}
			if want := "spiffe://cluster.local/ns/handson/sa/handson-istio-waypoint"; svid.ID.String() != want {
				t.Errorf("default: SVID %s, want %s", svid.ID, want)
			}
			b := x509bundle.New(spiffeid.RequireTrustDomainFromString("cluster.local"))
			root, err := x509.ParseCertificate(f.rootDER)
			if err != nil {
				t.Fatal(err)
			}
			b.AddX509Authority(root)
			if _, _, err := x509svid.Verify(svid.Certificates, b); err != nil {
				t.Errorf("default: not issued by the CA's root: %v", err)
			}
		case waypointxds.SecretRootCA:
			bundle, err := x509bundle.Parse(spiffeid.RequireTrustDomainFromString("cluster.local"),
				sec.GetValidationContext().GetTrustedCa().GetInlineBytes())
			if err != nil {
				t.Fatalf("ROOTCA: %v", err)
			}
			if a := bundle.X509Authorities(); len(a) != 1 || !slices.Equal(a[0].Raw, f.rootDER) {
				t.Errorf("ROOTCA: not the CA's root")
			}
		}
	}
	if err := s.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.SecretType, ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	// The rest of the waypoint's resources on the same stream.
	lds, err := ask(t, s, "", resource.ListenerType)
	if err != nil {
		t.Fatal(err)
	}
	if len(lds.GetResources()) == 0 {
		t.Error("no listeners on the secure stream")
	}
}

// TestSecureListenerRefusesOthers: the plaintext listener serves the waypoint without secrets;
// on the TLS listener a stream without token or with an unknown token is ended with
// Unauthenticated, and one with the token of another caller (another waypoint, a workload, a
// ztunnel) asking for the handson waypoint's Envoy resources with PermissionDenied; the
// workload API is served there to the ztunnel whose token names its node.
func TestSecureListenerRefusesOthers(t *testing.T) {
	f := startSecureFixture(t)

	t.Run("plaintext", func(t *testing.T) {
		s := f.stream(t, false, "")
		resp, err := ask(t, s, f.node, resource.SecretType)
		if err != nil {
			t.Fatal(err)
		}
		if got := secretNames(resp); len(got) != 0 {
			t.Errorf("plaintext listener sent secrets %v", got)
		}
		if err := s.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.SecretType, ResponseNonce: resp.GetNonce()}); err != nil {
			t.Fatal(err)
		}
		lds, err := ask(t, s, "", resource.ListenerType)
		if err != nil {
			t.Fatal(err)
		}
		if len(lds.GetResources()) == 0 {
			t.Error("plaintext listener: no listeners for the waypoint")
		}
	})
	for _, c := range []struct {
		name, tok string
		want      codes.Code
	}{
		{"no token", "", codes.Unauthenticated}, {"unknown token", "not-a-known-token-0123456789", codes.Unauthenticated},
		{"other waypoint", tokOtherWaypoint, codes.PermissionDenied}, {"workload", tokWorkload, codes.PermissionDenied},
		{"ztunnel", tokZtunnel, codes.PermissionDenied},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, err := ask(t, f.stream(t, true, c.tok), f.node, resource.SecretType)
			if status.Code(err) != c.want {
				t.Fatalf("got %v (resources %v), want %v", err, secretNames(resp), c.want)
			}
		})
	}
	t.Run("workload API", func(t *testing.T) {
		s := f.stream(t, true, tokZtunnel)
		if err := s.Send(&discovery.DeltaDiscoveryRequest{Node: ztunnelNode("node-a"), TypeUrl: wds.AddressType, ResourceNamesSubscribe: []string{"*"}}); err != nil {
			t.Fatal(err)
		}
		resp, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetResources()) == 0 {
			t.Error("no addresses on the secure listener")
		}
	})
}

// ztunnelNode is the node Istio's ztunnel (and ours) sends for node name.
func ztunnelNode(name string) *core.Node {
	md, err := structpb.NewStruct(map[string]any{"NODE_NAME": name, "NAMESPACE": "istio-system", "NAME": "ztunnel-" + name})
	if err != nil {
		panic(err)
	}
	return &core.Node{Id: "ztunnel~10.0.0.1~ztunnel-" + name + ".istio-system~istio-system.svc.cluster.local", Metadata: md}
}

// fakeMesh knows one waypoint.
type fakeMesh struct{}

func (fakeMesh) OnNode(string, string, string) bool { return false }
func (fakeMesh) WaypointServiceAccount(ns, name string) (string, bool) {
	return "handson-istio-waypoint", ns == "handson" && name == "handson"
}

// TestWaypointSVIDsRenewAtHalfLife: the same SVID (so the same secret version) until half its
// lifetime, a new one after; an unknown waypoint gets an error.
func TestWaypointSVIDsRenewAtHalfLife(t *testing.T) {
	root, err := pki.NewCA(spiffeid.RequireTrustDomainFromString("cluster.local"))
	if err != nil {
		t.Fatal(err)
	}
	w := newWaypointSVIDs(root, fakeMesh{}, time.Hour)
	now := time.Now()
	w.now = func() time.Time { return now }
	cert := func() string {
		t.Helper()
		s, err := w.secrets("handson", "handson")
		if err != nil {
			t.Fatal(err)
		}
		return string(s[0].GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	}
	first := cert()
	now = now.Add(29 * time.Minute)
	if cert() != first {
		t.Error("SVID renewed before half its lifetime")
	}
	now = now.Add(2 * time.Minute)
	if cert() == first {
		t.Error("SVID not renewed past half its lifetime")
	}
	if _, err := w.secrets("handson", "other"); err == nil {
		t.Error("secrets for a waypoint not in the mesh")
	}
}
