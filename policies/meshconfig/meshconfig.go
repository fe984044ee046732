// Package meshconfig reads the parts of Istio's mesh config goambient uses — the root namespace, the trust domain and the CUSTOM authorization extensionProviders (envoyExtAuthzHttp, envoyExtAuthzGrpc) — from a mesh config file or the `mesh` key of the `istio` ConfigMap, and validates them naming the field.
package meshconfig

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"

	"github.com/goambient/goambient/policies/extprovider"
	"sigs.k8s.io/yaml"
)

// ConfigMapKey is the key of the `istio` ConfigMap (in istiod's namespace) that holds the mesh
// config, as istiod reads it.
const ConfigMapKey = "mesh"

// DefaultTimeout is the ext_authz timeout when the provider sets none: istiod's 600s
// (timeoutOrDefault), not Envoy's 200ms.
const DefaultTimeout = 600 * time.Second

// Kind, Provider and the protocols are extprovider's (the filter's side of the contract).
type (
	Kind     = extprovider.Kind
	Provider = extprovider.Provider
)

// The ext_authz protocols.
const (
	HTTP = extprovider.HTTP
	GRPC = extprovider.GRPC
)

// Config is the mesh config's parts goambient uses.
type Config struct {
	RootNamespace string
	TrustDomain   string
	Providers     map[string]*Provider // by name
	// OutboundTrafficPolicy is outboundTrafficPolicy.mode ("ALLOW_ANY" or "REGISTRY_ONLY"),
	// empty when the mesh config does not set it.
	OutboundTrafficPolicy string
}

// Error is one problem with the mesh config, naming where it came from and the field.
type Error struct {
	Origin string // file name, or "ConfigMap istio-system/istio"
	Field  string
	Reason string
}

func (e *Error) Error() string {
	s := e.Origin + ": MeshConfig"
	if e.Field != "" {
		s += ": " + e.Field
	}
	return s + ": " + e.Reason
}

// Parse reads a mesh config (YAML or JSON, the MeshConfig message). Fields goambient does not
// use are accepted and ignored, as istiod ignores the ones it does not know. Each invalid provider
// is reported and left out; the valid ones are returned.
func Parse(data []byte, origin string) (*Config, []error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, []error{&Error{Origin: origin, Reason: "not valid YAML: " + err.Error()}}
	}
	if s := strings.TrimSpace(string(js)); s == "null" || s == "" {
		js = []byte("{}")
	}
	var mc meshv1alpha1.MeshConfig
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(js, &mc); err != nil {
		return nil, []error{&Error{Origin: origin, Reason: strings.Join(strings.Fields(strings.TrimPrefix(err.Error(), "proto:")), " ")}}
	}
	return FromProto(&mc, origin)
}

// FromProto validates a decoded MeshConfig.
func FromProto(mc *meshv1alpha1.MeshConfig, origin string) (*Config, []error) {
	c := &Config{RootNamespace: mc.GetRootNamespace(), TrustDomain: mc.GetTrustDomain(), Providers: map[string]*Provider{}}
	if otp := mc.GetOutboundTrafficPolicy(); otp != nil {
		c.OutboundTrafficPolicy = otp.GetMode().String()
	}
	var errs []error
	fail := func(field, format string, args ...any) {
		errs = append(errs, &Error{Origin: origin, Field: field, Reason: fmt.Sprintf(format, args...)})
	}
	for i, ep := range mc.GetExtensionProviders() {
		f := fmt.Sprintf("extensionProviders[%d]", i)
		if ep.GetName() == "" {
			fail(f+".name", "must not be empty")
			continue
		}
		f = fmt.Sprintf("extensionProviders[%d] (%s)", i, ep.GetName())
		if _, dup := c.Providers[ep.GetName()]; dup {
			fail(f+".name", "duplicate provider name %q", ep.GetName())
			continue
		}
		var p *Provider
		n := len(errs)
		switch {
		case ep.GetEnvoyExtAuthzHttp() != nil:
			h := ep.GetEnvoyExtAuthzHttp()
			f += ".envoyExtAuthzHttp"
			p = &Provider{Kind: HTTP, Service: h.GetService(), PathPrefix: h.GetPathPrefix(), FailOpen: h.GetFailOpen(),
				IncludeRequestHeadersInCheck:    append(h.GetIncludeRequestHeadersInCheck(), h.GetIncludeHeadersInCheck()...),
				IncludeAdditionalHeadersInCheck: h.GetIncludeAdditionalHeadersInCheck(),
				HeadersToUpstreamOnAllow:        h.GetHeadersToUpstreamOnAllow(),
				HeadersToDownstreamOnAllow:      h.GetHeadersToDownstreamOnAllow(),
				HeadersToDownstreamOnDeny:       h.GetHeadersToDownstreamOnDeny(),
			}
			p.Port, p.Timeout, p.StatusOnError = portTimeoutStatus(f, h.GetPort(), h.GetTimeout().AsDuration(), h.GetTimeout() != nil, h.GetStatusOnError(), fail)
			if p.PathPrefix != "" && !strings.HasPrefix(p.PathPrefix, "/") {
				fail(f+".pathPrefix", "must begin with \"/\", got %q", p.PathPrefix)
			}
			for k := range p.IncludeAdditionalHeadersInCheck {
				if k == "" {
					fail(f+".includeAdditionalHeadersInCheck", "a header name must not be empty")
				}
			}
			if b := h.GetIncludeRequestBodyInCheck(); b != nil {
				p.MaxRequestBytes, p.AllowPartialMessage, p.PackAsBytes = b.GetMaxRequestBytes(), b.GetAllowPartialMessage(), b.GetPackAsBytes()
			}
		case ep.GetEnvoyExtAuthzGrpc() != nil:
			g := ep.GetEnvoyExtAuthzGrpc()
			f += ".envoyExtAuthzGrpc"
			p = &Provider{Kind: GRPC, Service: g.GetService(), FailOpen: g.GetFailOpen()}
			p.Port, p.Timeout, p.StatusOnError = portTimeoutStatus(f, g.GetPort(), g.GetTimeout().AsDuration(), g.GetTimeout() != nil, g.GetStatusOnError(), fail)
			if b := g.GetIncludeRequestBodyInCheck(); b != nil {
				p.MaxRequestBytes, p.AllowPartialMessage, p.PackAsBytes = b.GetMaxRequestBytes(), b.GetAllowPartialMessage(), b.GetPackAsBytes()
			}
		default:
			continue // other providers (tracing, logging) are not goambient's
		}
		if p.Service == "" {
			fail(f+".service", "must not be empty")
		} else if h := p.Host(); strings.ContainsAny(h, " :/") || h == "" {
			fail(f+".service", "%q is not a host name", p.Service)
		}
		if len(errs) > n {
			continue
		}
		p.Name = ep.GetName()
		c.Providers[p.Name] = p
	}
	return c, errs
}

func portTimeoutStatus(f string, port uint32, timeout time.Duration, hasTimeout bool, status string, fail func(string, string, ...any)) (uint16, time.Duration, int) {
	if port == 0 || port > 65535 {
		fail(f+".port", "must be 1-65535, got %d", port)
	}
	t := DefaultTimeout
	if hasTimeout {
		if timeout <= 0 {
			fail(f+".timeout", "must be positive, got %s", timeout)
		}
		t = timeout
	}
	code := 403
	if status != "" {
		n, err := strconv.Atoi(status)
		if err != nil || n < 200 || n > 599 {
			fail(f+".statusOnError", "must be an HTTP status code (200-599), got %q", status)
		}
		code = n
	}
	return uint16(port), t, code
}
