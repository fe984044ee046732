// Package extauthz is the client side of Envoy's external authorization: it asks a CUSTOM provider (mesh config extensionProviders) whether a request may go on, over envoy.service.auth.v3.Authorization/Check (gRPC) or Envoy's HTTP ext_authz protocol, with the provider's timeout, and turns the answer — or the failure to get one — into what Envoy's ext_authz filter would do (statusOnError, failOpen).
package extauthz

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net"
	"strings"
	"sync"

	"github.com/goambient/goambient/policies/extprovider"
)

// Bounds of a check.
const (
	// MaxBody is the most body bytes sent in a check (includeRequestBodyInCheck is clamped to it).
	MaxBody = 1 << 20
	// MaxAnswer is the most bytes read of a provider's answer (headers and body of an HTTP
	// answer, a gRPC CheckResponse).
	MaxAnswer = 64 << 10
)

// Request is what a check tells the provider about a request.
type Request struct {
	ID                 string // x-request-id
	Method, Path, Host string // Path with its query
	Scheme, Protocol   string // "http", "HTTP/1.1"
	Headers            [][2]string
	Body               []byte
	SourceAddress      string // ip:port
	SourcePrincipal    string // spiffe://..., "" when none
	DestinationAddress string // ip:port
	// ContextExtensions are sent as Envoy's context_extensions (gRPC only).
	ContextExtensions map[string]string
}

// Header is a header's value ("" when absent); name lower case.
func (r *Request) Header(name string) string {
	for _, h := range r.Headers {
		if h[0] == name {
			return h[1]
		}
	}
	return ""
}

// Result is the provider's decision as Envoy's ext_authz applies it.
type Result struct {
	Allowed bool
	// On a deny: the status, body and headers to answer with (Envoy's local reply).
	Status  int
	Body    string
	Headers [][2]string
	// On an allow: headers to set on the request going upstream, to remove from it, and to
	// add to the response (headersToDownstreamOnAllow).
	Upstream   [][2]string
	Remove     []string
	Downstream [][2]string
	// Err is why the provider gave no answer (Status and Allowed then follow statusOnError
	// and failOpen); Details is Envoy's response_code_details.
	Err     error
	Details string
}

// Envoy's response_code_details of ext_authz.
const (
	DetailsDenied = "ext_authz_denied"
	DetailsError  = "ext_authz_error"
)

// Client checks requests with one provider. It is safe for concurrent use.
type Client interface {
	Check(ctx context.Context, r *Request) Result
	Close() error
}

// Options tune a client.
type Options struct {
	Log *slog.Logger
	// Dial opens a connection to the provider's host:port; nil dials it directly.
	Dial func(ctx context.Context, address string) (net.Conn, error)
}

// New returns the client of p.
func New(p *extprovider.Provider, o Options) (Client, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	switch p.Kind {
	case extprovider.GRPC:
		return newGRPC(p, o)
	case extprovider.HTTP:
		return newHTTP(p, o), nil
	}
	return nil, errors.New("extauthz: provider " + p.Name + ": unknown kind")
}

// onError is Envoy's answer when the provider could not be asked: failure_mode_allow lets the
// request through, else status_on_error (403 unless set).
func onError(p *extprovider.Provider, err error) Result {
	if p.FailOpen {
		return Result{Allowed: true, Err: err, Details: DetailsError}
	}
	return Result{Status: p.StatusOnError, Err: err, Details: DetailsError}
}

// headerMatch is one of istiod's header patterns: exact, "prefix*" or "*suffix", case-insensitive.
func headerMatch(patterns []string, name string) bool {
	for _, p := range patterns {
		p = strings.ToLower(p)
		switch {
		case strings.HasSuffix(p, "*"):
			if strings.HasPrefix(name, strings.TrimSuffix(p, "*")) {
				return true
			}
		case strings.HasPrefix(p, "*"):
			if strings.HasSuffix(name, strings.TrimPrefix(p, "*")) {
				return true
			}
		case p == name:
			return true
		}
	}
	return false
}

// MaxClients bounds the clients a Clients keeps; beyond it the oldest is closed (a config that
// still used it then sees its checks fail, and statusOnError or failOpen decide).
const MaxClients = 64

// Clients holds one Client per provider config, made on first use and kept across config
// updates (a provider's connections outlive an xDS push; a config still running checks keeps a
// working client when a newer config changes the provider).
type Clients struct {
	mu   sync.Mutex
	log  *slog.Logger
	dial func(ctx context.Context, address string) (net.Conn, error)
	m    []clientEntry // oldest first
}

type clientEntry struct {
	p *extprovider.Provider
	c Client
}

// NewClients returns an empty set.
func NewClients(log *slog.Logger) *Clients { return &Clients{log: log} }

// SetDial sets how the clients made from now on reach their providers (nil: directly).
func (cs *Clients) SetDial(d func(ctx context.Context, address string) (net.Conn, error)) {
	cs.mu.Lock()
	cs.dial = d
	cs.mu.Unlock()
}

// Get returns the client of p.
func (cs *Clients) Get(p *extprovider.Provider) (Client, error) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for _, e := range cs.m {
		if e.p.Name == p.Name && sameProvider(e.p, p) {
			return e.c, nil
		}
	}
	c, err := New(p, Options{Log: cs.log, Dial: cs.dial})
	if err != nil {
		return nil, err
	}
	if len(cs.m) == MaxClients {
		_ = cs.m[0].c.Close()
		cs.m = cs.m[1:]
	}
	cs.m = append(cs.m, clientEntry{p: p, c: c})
	return c, nil
}

func sameProvider(a, b *extprovider.Provider) bool {
	return a.Kind == b.Kind && a.Address() == b.Address() && a.Timeout == b.Timeout && a.FailOpen == b.FailOpen &&
		a.StatusOnError == b.StatusOnError && a.PathPrefix == b.PathPrefix && strings.Join(a.IncludeRequestHeadersInCheck, ",") == strings.Join(b.IncludeRequestHeadersInCheck, ",") &&
		strings.Join(a.HeadersToUpstreamOnAllow, ",") == strings.Join(b.HeadersToUpstreamOnAllow, ",") &&
		strings.Join(a.HeadersToDownstreamOnDeny, ",") == strings.Join(b.HeadersToDownstreamOnDeny, ",") &&
		strings.Join(a.HeadersToDownstreamOnAllow, ",") == strings.Join(b.HeadersToDownstreamOnAllow, ",") &&
		a.MaxRequestBytes == b.MaxRequestBytes && a.PackAsBytes == b.PackAsBytes && maps.Equal(a.IncludeAdditionalHeadersInCheck, b.IncludeAdditionalHeadersInCheck)
}
