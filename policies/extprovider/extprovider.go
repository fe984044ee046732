// Package extprovider is an ext_authz extension provider of the mesh config as the authz filter receives it: plain data, so that the filter does not link Istio's mesh config API.
package extprovider

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Kind says which protocol a provider speaks.
type Kind int

// The ext_authz protocols.
const (
	HTTP Kind = iota + 1 // envoyExtAuthzHttp: Envoy's HTTP ext_authz protocol
	GRPC                 // envoyExtAuthzGrpc: envoy.service.auth.v3.Authorization/Check
)

func (k Kind) String() string {
	if k == GRPC {
		return "envoyExtAuthzGrpc"
	}
	return "envoyExtAuthzHttp"
}

// Provider is one validated ext_authz extension provider.
type Provider struct {
	Name    string        `json:"name"`
	Kind    Kind          `json:"kind"`
	Service string        `json:"service"` // host name as written ("ns/host" allowed as in istiod; the host is after "/")
	Port    uint16        `json:"port"`
	Timeout time.Duration `json:"timeout"` // nanoseconds in JSON
	// PathPrefix (HTTP only) is prepended to the request's path in the check request.
	PathPrefix string `json:"pathPrefix,omitempty"`
	FailOpen   bool   `json:"failOpen,omitempty"`
	// StatusOnError is the status returned when the provider cannot be reached (403 when unset,
	// Envoy's default).
	StatusOnError int `json:"statusOnError"`
	// IncludeRequestHeadersInCheck (HTTP) lists the request headers sent to the provider
	// (Envoy always adds :method, :path, host and content-length as the protocol needs).
	IncludeRequestHeadersInCheck []string `json:"includeRequestHeadersInCheck,omitempty"`
	// IncludeAdditionalHeadersInCheck (HTTP) are headers added to the check request.
	IncludeAdditionalHeadersInCheck map[string]string `json:"includeAdditionalHeadersInCheck,omitempty"`
	// HeadersToUpstreamOnAllow (HTTP) are the provider's answer headers copied onto the request.
	HeadersToUpstreamOnAllow []string `json:"headersToUpstreamOnAllow,omitempty"`
	// HeadersToDownstreamOnAllow (HTTP) are the provider's answer headers added to the response.
	HeadersToDownstreamOnAllow []string `json:"headersToDownstreamOnAllow,omitempty"`
	// HeadersToDownstreamOnDeny (HTTP) are the provider's answer headers sent back on a deny
	// (all of them when empty, as Envoy).
	HeadersToDownstreamOnDeny []string `json:"headersToDownstreamOnDeny,omitempty"`
	// MaxRequestBytes > 0 sends the request body, up to that many bytes.
	MaxRequestBytes     uint32 `json:"maxRequestBytes,omitempty"`
	AllowPartialMessage bool   `json:"allowPartialMessage,omitempty"`
	PackAsBytes         bool   `json:"packAsBytes,omitempty"`
}

// Host is the provider's host name without a "namespace/" qualifier.
func (p *Provider) Host() string {
	if _, h, ok := strings.Cut(p.Service, "/"); ok {
		return h
	}
	return p.Service
}

// Address is host:port.
func (p *Provider) Address() string { return net.JoinHostPort(p.Host(), strconv.Itoa(int(p.Port))) }

// Validate reports what makes p unusable (the filter refuses a config with such a provider;
// meshconfig.Parse reports the same problems with their mesh config field).
func (p *Provider) Validate() error {
	switch {
	case p.Name == "":
		return errors.New("provider: name: required")
	case p.Kind != HTTP && p.Kind != GRPC:
		return fmt.Errorf("provider %s: kind %d is neither HTTP nor gRPC", p.Name, p.Kind)
	case p.Host() == "" || strings.ContainsAny(p.Host(), " :/"):
		return fmt.Errorf("provider %s: service %q is not a host name", p.Name, p.Service)
	case p.Port == 0:
		return fmt.Errorf("provider %s: port: required", p.Name)
	case p.Timeout <= 0:
		return fmt.Errorf("provider %s: timeout must be positive", p.Name)
	case p.StatusOnError < 200 || p.StatusOnError > 599:
		return fmt.Errorf("provider %s: statusOnError %d is not an HTTP status", p.Name, p.StatusOnError)
	}
	return nil
}

// MarshalJSON writes the kind as its mesh config name (envoyExtAuthzHttp, envoyExtAuthzGrpc).
func (k Kind) MarshalJSON() ([]byte, error) {
	if k != HTTP && k != GRPC {
		return nil, fmt.Errorf("extprovider: unknown kind %d", int(k))
	}
	return []byte(`"` + k.String() + `"`), nil
}

// UnmarshalJSON reads what MarshalJSON wrote.
func (k *Kind) UnmarshalJSON(b []byte) error {
	switch string(b) {
	case `"envoyExtAuthzHttp"`:
		*k = HTTP
	case `"envoyExtAuthzGrpc"`:
		*k = GRPC
	default:
		return fmt.Errorf("extprovider: kind %s is neither envoyExtAuthzHttp nor envoyExtAuthzGrpc", b)
	}
	return nil
}
