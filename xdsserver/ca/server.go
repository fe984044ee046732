// Package ca is the mesh's certificate authority: Istio's istio.v1.auth.IstioCertificateService/CreateCertificate over gRPC, issuing X.509-SVIDs to authenticated ztunnels, waypoints and workloads for the identities they may hold.
package ca

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/goambient/goambient/xdsserver/ca/pki"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"

	"github.com/goambient/goambient/ztunnel/identity"
)

// Lifetimes of issued certificates.
const (
	DefaultTTL    = 24 * time.Hour
	DefaultMaxTTL = 7 * 24 * time.Hour
)

// ImpersonatedIdentity is the request metadata field in which a ztunnel names the identity it
// asks for, as Istio's ztunnel sends it.
const ImpersonatedIdentity = identity.ImpersonatedIdentityKey

// Options configure a Server. CA, Authenticator and Mesh are required.
type Options struct {
	CA            *pki.CA
	Authenticator Authenticator
	Mesh          Mesh
	Logger        *slog.Logger          // nil: no logs
	Registerer    prometheus.Registerer // nil: metrics not registered
	// DefaultTTL is the lifetime when the request asks for none (DefaultTTL when 0); MaxTTL caps
	// what a request may ask for (DefaultMaxTTL when 0).
	DefaultTTL, MaxTTL time.Duration
}

// Server implements IstioCertificateService. Each request is authenticated by its bearer token,
// the identity it may have is decided from who the caller is and the current mesh (never from
// the CSR, whose key alone is used), and the answer is the chain with the root last, as Istio's.
type Server struct {
	pb.UnimplementedIstioCertificateServiceServer
	o       Options
	log     *slog.Logger
	td      spiffeid.TrustDomain
	metrics *metrics
}

// New returns a Server.
func New(o Options) (*Server, error) {
	if o.CA == nil || o.Authenticator == nil || o.Mesh == nil {
		return nil, errors.New("ca: Options.CA, Authenticator and Mesh are required")
	}
	if o.DefaultTTL == 0 {
		o.DefaultTTL = DefaultTTL
	}
	if o.MaxTTL == 0 {
		o.MaxTTL = DefaultMaxTTL
	}
	if o.DefaultTTL < time.Second || o.MaxTTL < o.DefaultTTL {
		return nil, fmt.Errorf("ca: Options.DefaultTTL %s must be at least 1s and at most MaxTTL %s", o.DefaultTTL, o.MaxTTL)
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{o: o, log: log, td: o.CA.TrustDomain(), metrics: m}, nil
}

// Register adds the service to a gRPC server.
func (s *Server) Register(g grpc.ServiceRegistrar) { pb.RegisterIstioCertificateServiceServer(g, s) }

// refusal is a refused request: the status the caller sees, and the full reason for the log.
type refusal struct {
	reason string
	code   codes.Code
	public string
	err    error
}

func (r *refusal) Error() string { return r.err.Error() }

func refuse(reason string, code codes.Code, public string, format string, a ...any) *refusal {
	return &refusal{reason: reason, code: code, public: public, err: fmt.Errorf(format, a...)}
}

// CreateCertificate issues a certificate for the identity the caller may have.
func (s *Server) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	resp, caller, id, err := s.create(ctx, req)
	client := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		client = p.Addr.String()
	}
	if err != nil {
		var r *refusal
		if !errors.As(err, &r) {
			r = &refusal{reason: ReasonInternal, code: codes.Internal, public: "certificate signing failed", err: err}
		}
		s.metrics.refused.WithLabelValues(r.reason).Inc()
		who := "unauthenticated caller"
		if caller != nil {
			who = caller.String()
		}
		s.log.Warn("certificate refused", "caller", who, "client", client, "reason", r.reason, "error", r.err.Error())
		return nil, status.Error(r.code, r.public)
	}
	s.metrics.issued.WithLabelValues(caller.Kind.String()).Inc()
	s.log.Info("certificate issued", "caller", caller.String(), "client", client, "identity", id.String())
	return resp, nil
}

func (s *Server) create(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, *Caller, spiffeid.ID, error) {
	tok, err := BearerToken(ctx)
	if err != nil {
		return nil, nil, spiffeid.ID{}, refuse(ReasonUnauthenticated, codes.Unauthenticated, "request authenticate failure", "%w", err)
	}
	caller, err := s.o.Authenticator.Authenticate(ctx, tok)
	if err != nil || caller == nil {
		return nil, nil, spiffeid.ID{}, refuse(ReasonUnauthenticated, codes.Unauthenticated, "request authenticate failure", "token: %v", err)
	}
	imp := req.GetMetadata().GetFields()[ImpersonatedIdentity].GetStringValue()
	id, err := s.authorize(caller, imp)
	if err != nil {
		return nil, caller, spiffeid.ID{}, err
	}
	ttl := s.o.DefaultTTL
	switch v := req.GetValidityDuration(); {
	case v < 0:
		return nil, caller, id, refuse(ReasonInvalid, codes.InvalidArgument, "validity_duration must not be negative",
			"validity_duration: %d is negative", v)
	case v > 0:
		ttl = min(time.Duration(v)*time.Second, s.o.MaxTTL)
	}
	chain, err := s.o.CA.SignCSRPEM([]byte(req.GetCsr()), id, ttl)
	if err != nil {
		return nil, caller, id, refuse(ReasonInvalid, codes.InvalidArgument, "csr: invalid certificate request", "csr: %w", err)
	}
	resp := &pb.IstioCertificateResponse{}
	for _, c := range chain {
		resp.CertChain = append(resp.CertChain, string(pemCert(c.Raw)))
	}
	resp.CertChain = append(resp.CertChain, string(pemCert(s.o.CA.Root().Raw)))
	return resp, caller, id, nil
}

// authorize returns the identity caller gets for the ImpersonatedIdentity imp ("" when none).
func (s *Server) authorize(c *Caller, imp string) (spiffeid.ID, error) {
	var want spiffeid.ID
	if imp != "" {
		id, err := spiffeid.FromString(imp)
		if err != nil {
			return spiffeid.ID{}, refuse(ReasonInvalid, codes.InvalidArgument, "metadata.ImpersonatedIdentity: not a SPIFFE ID",
				"metadata.ImpersonatedIdentity %q: %w", imp, err)
		}
		if id.TrustDomain() != s.td {
			return spiffeid.ID{}, refuse(ReasonForbidden, codes.PermissionDenied, "request impersonation authorization failure",
				"metadata.ImpersonatedIdentity %s: not in trust domain %q", id, s.td.Name())
		}
		if _, _, err := identity.ParseWorkloadID(id); err != nil {
			return spiffeid.ID{}, refuse(ReasonInvalid, codes.InvalidArgument, "metadata.ImpersonatedIdentity: not a workload identity",
				"metadata.ImpersonatedIdentity: %w", err)
		}
		want = id
	}
	own := func(ns, sa string) (spiffeid.ID, error) {
		id, err := identity.WorkloadID(s.td, ns, sa)
		if err != nil {
			return spiffeid.ID{}, refuse(ReasonInvalid, codes.InvalidArgument, "caller has no valid identity", "%s: %w", c, err)
		}
		if !want.IsZero() && want != id {
			return spiffeid.ID{}, refuse(ReasonForbidden, codes.PermissionDenied, "request impersonation authorization failure",
				"%s may only have %s, asked for %s", c, id, want)
		}
		return id, nil
	}
	switch c.Kind {
	case KindWorkload:
		return own(c.Namespace, c.Name)
	case KindWaypoint:
		sa, ok := s.o.Mesh.WaypointServiceAccount(c.Namespace, c.Name)
		if !ok {
			return spiffeid.ID{}, refuse(ReasonForbidden, codes.PermissionDenied, "request impersonation authorization failure",
				"%s is not in the mesh", c)
		}
		return own(c.Namespace, sa)
	case KindZtunnel:
		if want.IsZero() {
			if c.Namespace != "" && c.Name != "" {
				return own(c.Namespace, c.Name)
			}
			return spiffeid.ID{}, refuse(ReasonInvalid, codes.InvalidArgument, "metadata.ImpersonatedIdentity is required",
				"%s named no ImpersonatedIdentity and has no identity of its own", c)
		}
		ns, sa, _ := identity.ParseWorkloadID(want)
		if c.Namespace != "" && ns == c.Namespace && sa == c.Name {
			return want, nil // its own identity
		}
		if c.Node == "" || !s.o.Mesh.OnNode(c.Node, ns, sa) {
			return spiffeid.ID{}, refuse(ReasonForbidden, codes.PermissionDenied, "request impersonation authorization failure",
				"%s asked for %s: no ambient workload of service account %s/%s on node %q", c, want, ns, sa, c.Node)
		}
		return want, nil
	}
	return spiffeid.ID{}, refuse(ReasonForbidden, codes.PermissionDenied, "request authorization failure", "caller of kind %s", c.Kind)
}
