package policies

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
	securityv1beta1 "istio.io/api/security/v1beta1"
)

// RequestAuthentication is one security.istio.io RequestAuthentication as the user wrote it.
type RequestAuthentication struct {
	APIVersion string
	Meta
	Spec   *securityv1beta1.RequestAuthentication
	Origin Origin
}

// ValidateRequestAuthentication reports every problem istiod's validation would reject the
// RequestAuthentication for, each naming its field.
func ValidateRequestAuthentication(p *RequestAuthentication) []error {
	v := &validator{origin: p.Origin, kind: "RequestAuthentication", object: p.Key()}
	s := p.Spec
	v.binding(s.GetSelector(), s.GetTargetRef(), s.GetTargetRefs())
	for i, r := range s.GetJwtRules() {
		v.jwtRule(fmt.Sprintf("spec.jwtRules[%d]", i), r)
	}
	return v.errs
}

func (v *validator) jwtRule(field string, r *securityv1beta1.JWTRule) {
	if r == nil {
		v.add(field, "must not be null")
		return
	}
	for i, a := range r.GetAudiences() {
		if a == "" {
			v.add(fmt.Sprintf("%s.audiences[%d]", field, i), "audience must be non-empty string")
		}
	}
	if r.GetIssuer() == "" && r.GetJwksUri() == "" {
		v.add(field+".issuer", "issuer or jwksUri must be non-empty string")
	}
	if u := r.GetJwksUri(); u != "" {
		if _, err := ParseJwksURI(u); err != nil {
			v.add(field+".jwksUri", "%v", err)
		}
	}
	if j := r.GetJwks(); j != "" {
		var set jose.JSONWebKeySet
		if err := json.Unmarshal([]byte(j), &set); err != nil {
			v.add(field+".jwks", "jwks parse error: %v", err)
		}
	}
	for i, h := range r.GetFromHeaders() {
		if h == nil {
			v.add(fmt.Sprintf("%s.fromHeaders[%d]", field, i), "location header name must be non-null")
			continue
		}
		if h.GetName() == "" {
			v.add(fmt.Sprintf("%s.fromHeaders[%d].name", field, i), "location header name must be non-empty string")
		}
	}
	for i, p := range r.GetFromParams() {
		if p == "" {
			v.add(fmt.Sprintf("%s.fromParams[%d]", field, i), "location query must be non-empty string")
		}
	}
	for i, c := range r.GetFromCookies() {
		if c == "" {
			v.add(fmt.Sprintf("%s.fromCookies[%d]", field, i), "cookie name must be non-empty string")
		}
	}
	if h := r.GetOutputPayloadToHeader(); h != "" && !strictHeaderName(h) {
		v.add(field+".outputPayloadToHeader", "header name %q is not a valid HTTP header name", h)
	}
	for i, ch := range r.GetOutputClaimToHeaders() {
		f := fmt.Sprintf("%s.outputClaimToHeaders[%d]", field, i)
		if ch == nil {
			v.add(f, "outputClaimToHeaders must not be null")
			continue
		}
		if ch.GetClaim() == "" || ch.GetHeader() == "" {
			v.add(f, "outputClaimToHeaders header and claim value must be non-empty string")
			continue
		}
		if !strictHeaderName(ch.GetHeader()) {
			v.add(f+".header", "header name %q is not a valid HTTP header name", ch.GetHeader())
		}
	}
	if t := r.GetTimeout(); t != nil {
		if err := t.CheckValid(); err != nil || t.AsDuration() < 1e6 {
			v.add(field+".timeout", "duration must be at least 1ms, got %s", t.AsDuration())
		}
	}
}

// strictHeaderName is istiod's ValidateStrictHTTPHeaderName: an RFC 7230 token, no pseudo-header.
func strictHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// JwksURI is a jwksUri taken apart as istiod's ParseJwksURI does.
type JwksURI struct {
	URL      *url.URL
	Hostname string
	Port     uint16
	UseSSL   bool
}

// ParseJwksURI parses a jwksUri: http or https, a host, the port from the URI or the scheme's.
func ParseJwksURI(s string) (JwksURI, error) {
	u, err := url.Parse(s)
	if err != nil {
		return JwksURI{}, fmt.Errorf("invalid jwksUri %q: %v", s, err)
	}
	var port uint16
	switch u.Scheme {
	case "http":
		port = 80
	case "https":
		port = 443
	default:
		return JwksURI{}, fmt.Errorf("invalid jwksUri %q: scheme must be http or https", s)
	}
	host := u.Hostname()
	if host == "" {
		return JwksURI{}, fmt.Errorf("invalid jwksUri %q: no host", s)
	}
	if p := u.Port(); p != "" {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return JwksURI{}, fmt.Errorf("invalid jwksUri %q: port %q", s, p)
		}
		port = uint16(n)
	}
	if strings.Contains(host, ":") && net.ParseIP(host) == nil {
		return JwksURI{}, fmt.Errorf("invalid jwksUri %q: host %q", s, host)
	}
	return JwksURI{URL: u, Hostname: host, Port: port, UseSSL: u.Scheme == "https"}, nil
}
