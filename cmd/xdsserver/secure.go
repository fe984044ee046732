package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"k8s.io/client-go/kubernetes"

	"github.com/goambient/goambient/xdsserver/ca"
	"github.com/goambient/goambient/xdsserver/server"
	"github.com/goambient/goambient/ztunnel/identity"
)

// secure is the TLS listener (istiod's 15012): the CA and the same delta ADS as the plaintext
// listener, with a serving certificate of the mesh's own CA, no client certificate asked for
// (callers of the CA authenticate with a bearer token).
type secure struct {
	g    *grpc.Server
	ln   net.Listener
	mesh *ca.MeshIndex
}

// denyAll is the authenticator when no token source is configured: every request is refused.
type denyAll struct{}

func (denyAll) Authenticate(context.Context, string) (*ca.Caller, error) {
	return nil, errors.New("no token source configured (--bootstrap-tokens)")
}

// startSecure loads or creates the root in caDir and listens on listen. Callers authenticate
// with the bootstrap tokens of the tokens file; without one, with Kubernetes service account
// tokens (TokenReview) when kc is set, else not at all.
func startSecure(log *slog.Logger, reg prometheus.Registerer, srv *server.Server, listen, caDir, tokens string, kc kubernetes.Interface, trustDomain string) (*secure, error) {
	td, err := spiffeid.TrustDomainFromString(cmp.Or(trustDomain, "cluster.local"))
	if err != nil {
		return nil, fmt.Errorf("trust domain: %w", err)
	}
	root, created, err := identity.LoadOrCreateCA(caDir, td)
	if err != nil {
		return nil, fmt.Errorf("--ca-dir: %w", err)
	}
	log.Info("CA root", "dir", caDir, "created", created, "trust_domain", td.Name(), "expires", root.Root().NotAfter)
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
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(cert.TLSConfig())))
	srv.Register(g)
	cs.Register(g)
	return &secure{g: g, ln: ln, mesh: mesh}, nil
}

// serve serves until stop; it returns nil after stop.
func (s *secure) serve() error {
	if err := s.g.Serve(s.ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("secure listener: %w", err)
	}
	return nil
}

func (s *secure) stop() { s.g.Stop() }
