package main

import (
	"cmp"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/goambient/goambient/xdsserver/ca/pki"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"k8s.io/client-go/kubernetes"

	"github.com/goambient/goambient/xdsserver/ca"
	"github.com/goambient/goambient/xdsserver/server"
	"github.com/goambient/goambient/xdsserver/waypointxds"
	"github.com/goambient/goambient/ztunnel/identity"
)

// secure is the TLS listener (istiod's 15012): the CA and the same ADS as the plaintext
// listener, plus each waypoint's SDS secrets (default, ROOTCA) for that waypoint's Envoy only
// (server.RegisterSecure), with a serving certificate of the mesh's own CA, no client
// certificate asked for (callers of the CA and waypoints authenticate with a bearer token).
type secure struct {
	g    *grpc.Server
	ln   net.Listener
	mesh *ca.MeshIndex
	srv  *server.Server
	done chan struct{} // closed by stop: ends the secret refresh
	// rootPEM is the mesh's root, published in every namespace in Kubernetes mode.
	rootPEM []byte
}

// denyAll is the authenticator when no token source is configured: every request is refused.
type denyAll struct{}

func (denyAll) Authenticate(context.Context, string) (*ca.Caller, error) {
	return nil, errors.New("no token source configured (--bootstrap-tokens)")
}

// startSecure loads or creates the root (loadRoot: in caDir, else in the cluster's Secrets) and
// listens on listen. Callers authenticate
// with the bootstrap tokens of the tokens file; without one, with Kubernetes service account
// tokens (TokenReview) when kc is set, else not at all.
func startSecure(log *slog.Logger, reg prometheus.Registerer, srv *server.Server, listen, caDir, tokens string, kc kubernetes.Interface, trustDomain string) (*secure, error) {
	td, err := spiffeid.TrustDomainFromString(cmp.Or(trustDomain, "cluster.local"))
	if err != nil {
		return nil, fmt.Errorf("trust domain: %w", err)
	}
	root, err := loadRoot(log, caDir, kc, td)
	if err != nil {
		return nil, err
	}
	var auth ca.Authenticator = denyAll{}
	if tokens != "" {
		tf, err := ca.LoadTokenFile(tokens)
		if err != nil {
			return nil, fmt.Errorf("--bootstrap-tokens: %w", err)
		}
		log.Info("bootstrap tokens loaded", "file", tokens, "tokens", tf.Len())
		auth = tf
	} else if kc != nil {
		tr, err := ca.NewTokenReview(ca.TokenReviewOptions{Client: kc})
		if err != nil {
			return nil, err
		}
		log.Info("callers authenticate with Kubernetes service account tokens (TokenReview)")
		auth = tr
	} else {
		log.Warn("no --bootstrap-tokens: the CA refuses every request")
	}
	mesh := &ca.MeshIndex{}
	cs, err := ca.New(ca.Options{CA: root, Authenticator: auth, Mesh: mesh, Logger: log, Registerer: reg})
	if err != nil {
		return nil, err
	}
	cert, err := ca.NewServingCert(root, 0)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("--secure-listen: %w", err)
	}
	// The same limits as the plaintext listener (keepalive, stream counts and rate, stalled
	// clients), on the same Server: the ADS stream count and rate are shared.
	g := grpc.NewServer(append(srv.ServerOptions(), grpc.Creds(credentials.NewTLS(cert.TLSConfig())))...)
	// The same ADS as the plaintext listener, plus each waypoint's SDS secrets for the
	// waypoint itself (authenticated by the same tokens as the CA).
	issuer := newWaypointSVIDs(root, mesh, 0)
	if err := srv.RegisterSecure(g, server.SecureOptions{Authenticator: auth, Secrets: issuer.secrets}); err != nil {
		_ = ln.Close()
		return nil, err
	}
	cs.Register(g)
	return &secure{g: g, ln: srv.Listener(ln), mesh: mesh, srv: srv, done: make(chan struct{}), rootPEM: root.RootPEM()}, nil
}

// secretRefresh is how often the waypoints' secrets are looked at (an SVID is renewed at half
// its lifetime; an unchanged secret is not sent again).
const secretRefresh = time.Minute

// serve serves until stop; it returns nil after stop.
func (s *secure) serve() error {
	go func() {
		t := time.NewTicker(secretRefresh)
		defer t.Stop()
		for {
			select {
			case <-s.done:
				return
			case <-t.C:
				s.srv.RefreshSecrets()
			}
		}
	}()
	if err := s.g.Serve(s.ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("secure listener: %w", err)
	}
	return nil
}

func (s *secure) stop() {
	close(s.done)
	s.g.Stop()
}

// waypointSVIDs issues each waypoint's SVID (for its service account, as the CA would for the
// waypoint) and keeps it until half its lifetime has passed, so the SDS secret "default" keeps
// its version between pushes.
type waypointSVIDs struct {
	ca   *pki.CA
	mesh ca.Mesh
	ttl  time.Duration
	now  func() time.Time

	mu     sync.Mutex
	issued map[spiffeid.ID]*x509svid.SVID
}

func newWaypointSVIDs(root *pki.CA, mesh ca.Mesh, ttl time.Duration) *waypointSVIDs {
	return &waypointSVIDs{ca: root, mesh: mesh, ttl: cmp.Or(ttl, ca.DefaultTTL), now: time.Now, issued: map[spiffeid.ID]*x509svid.SVID{}}
}

// secrets returns the SDS secrets default and ROOTCA of waypoint ns/name.
func (w *waypointSVIDs) secrets(ns, name string) ([]*tlsv3.Secret, error) {
	sa, ok := w.mesh.WaypointServiceAccount(ns, name)
	if !ok {
		return nil, fmt.Errorf("waypoint %s/%s is not in the mesh", ns, name)
	}
	id, err := identity.WorkloadID(w.ca.TrustDomain(), ns, sa)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	svid := w.issued[id]
	if svid != nil {
		leaf := svid.Certificates[0]
		if w.now().After(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)) {
			svid = nil
		}
	}
	if svid == nil {
		if svid, err = w.ca.IssueSVID(id, w.ttl); err != nil {
			return nil, err
		}
		w.issued[id] = svid
	}
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		return nil, err
	}
	rootPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: w.ca.Root().Raw})
	return []*tlsv3.Secret{waypointxds.SVIDSecret(certPEM, keyPEM), waypointxds.RootCASecret(rootPEM)}, nil
}
