// Package authz is the goambient.authz Envoy Go HTTP filter, which enforces Istio AuthorizationPolicies at a waypoint the way Istio's RBAC filters do.
package authz

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"sync"

	"github.com/envoyproxy/envoy/contrib/golang/common/go/api"

	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/policies"
)

// What the filter reads from Envoy besides the request headers.
const (
	// JWTFilter and JWTPayloadKey locate a validated JWT's payload: the dynamic metadata that
	// envoy.filters.http.jwt_authn writes under payload_in_metadata: "payload", as Istio
	// configures it. Validating the token is jwt_authn's job; this filter only reads claims.
	JWTFilter     = "envoy.filters.http.jwt_authn"
	JWTPayloadKey = "payload"
)

// Denials. Details are Envoy's response_code_details: no whitespace.
const (
	denyStatus       = 403
	denyBody         = "RBAC: access denied"
	grpcDenied       = 7 // PERMISSION_DENIED; Envoy sends it as grpc-status to gRPC clients
	detailsNoConfig  = "goambient_authz_no_config"
	detailsBadPath   = "path_normalization_failed"
	badRequestStatus = 400
	grpcInternal     = 13 // what Envoy maps HTTP 400 to
)

// Factory builds the filter for one request. config is what Parser.Parse or Parser.Merge
// returned; any other value (nil included) yields a filter that denies the request.
func Factory(config any, callbacks api.FilterCallbackHandler) api.StreamFilter {
	f := &filter{cb: callbacks}
	switch c := config.(type) {
	case *filterConfig:
		f.cfg = c
	case *denyConfig:
		f.why = c.why
	default:
		f.why = "no " + authzconfig.PluginName + " filter config"
	}
	return f
}

type filter struct {
	api.PassThroughStreamFilter
	cb  api.FilterCallbackHandler
	cfg *filterConfig
	why string // why there is no cfg
	// cancel ends the ext_authz check of a CUSTOM rule, if one runs.
	cancel context.CancelFunc
	// match: the CUSTOM-match mode (authzconfig.CustomPluginName), which only marks the
	// requests a CUSTOM rule matches for the chain's ext_authz filters.
	match bool
}

// scratch is one evaluation's reusable storage.
type scratch struct {
	req       policies.Request
	dec       policies.Decision
	addHeader func(k, v string) bool
}

var scratches = sync.Pool{New: func() any {
	s := &scratch{}
	s.addHeader = s.add
	return s
}}

// add records one header value; repeated headers are joined with ",", as Envoy's RBAC sees them.
func (s *scratch) add(k, v string) bool {
	if s.req.Headers == nil {
		s.req.Headers = make(map[string]string, 16)
	}
	if old, ok := s.req.Headers[k]; ok {
		v = old + "," + v
	}
	s.req.Headers[k] = v
	return true
}

func (s *scratch) reset() {
	h, md := s.req.Headers, s.req.Metadata
	clear(h)
	clear(md)
	s.req = policies.Request{Headers: h, Metadata: md}
}

// DecodeHeaders decides the request from its headers and the connection; it never waits.
func (f *filter) DecodeHeaders(h api.RequestHeaderMap, _ bool) api.StatusType {
	c := f.cfg
	if c == nil {
		f.cb.Log(api.Error, authzconfig.PluginName+": denying: "+f.why)
		return f.reply(nil, denyStatus, denyBody, grpcDenied, detailsNoConfig)
	}
	s := scratches.Get().(*scratch)
	defer scratches.Put(s)
	s.reset()
	r := &s.req

	path, err := policies.NormalizePath(h.Path())
	if err != nil {
		return f.reply(c.metrics, badRequestStatus, "Bad Request", grpcInternal, detailsBadPath)
	}
	r.Method, r.Path, r.Host = h.Method(), path, h.Host()
	if c.needs.headers {
		h.Range(s.addHeader)
	}

	si := f.cb.StreamInfo()
	if ap, err := netip.ParseAddrPort(si.DownstreamLocalAddress()); err == nil {
		r.DestIP, r.DestPort = ap.Addr().Unmap(), ap.Port()
	}
	if ap, err := netip.ParseAddrPort(si.DownstreamRemoteAddress()); err == nil {
		r.SourceIP = ap.Addr().Unmap()
	}
	r.Principal = principal(si)
	if c.needs.auth {
		readJWT(si, &r.Auth)
	}
	if c.needs.sni {
		r.SNI, _ = f.cb.GetProperty("connection.requested_server_name")
	}
	for _, k := range c.needs.experimental {
		filterName, key := experimentalKey(k)
		if v, ok := si.DynamicMetadata().Get(filterName)[key].(string); ok {
			if r.Metadata == nil {
				r.Metadata = map[string]string{}
			}
			r.Metadata[k] = v
		}
	}
	r.Target = c.target

	d := &s.dec
	c.engine.Evaluate(r, d)
	if f.match {
		return f.customMatch(c, d)
	}
	if c.customPhase {
		// CUSTOM only (the embedded waypoint, before jwt_authn): the provider's allow lets
		// the request go on to jwt_authn and the DENY/ALLOW phase.
		if d.Custom.Policy == "" {
			return api.Continue
		}
		return f.custom(c, h, d.CustomProvider, d.Custom.Policy, d.Custom.Rule, true, "")
	}
	if len(d.Audit) > 0 || d.DryRun.Applied {
		f.logShadow(r, d, c.metrics)
	}
	if d.Custom.Policy != "" && !c.customInChain {
		// CUSTOM first (Envoy's ext_authz runs before the RBAC filters in istiod's chain),
		// only for the requests its rules match.
		return f.custom(c, h, d.CustomProvider, d.Custom.Policy, d.Custom.Rule, d.Allowed, d.Details)
	}
	if !d.Allowed {
		return f.reply(c.metrics, denyStatus, denyBody, grpcDenied, d.Details)
	}
	if c.metrics != nil {
		inc(c.metrics.allowed)
	}
	return api.Continue
}

func (f *filter) reply(m *metrics, status int, body string, grpc int64, details string) api.StatusType {
	if m != nil {
		inc(m.denied)
	}
	f.cb.DecoderFilterCallbacks().SendLocalReply(status, body, nil, grpc, details)
	return api.LocalReply
}

// logShadow logs AUDIT matches and the dry-run result, as Envoy's RBAC filter logs its shadow
// engine; neither changes the decision.
func (f *filter) logShadow(r *policies.Request, d *policies.Decision, m *metrics) {
	req := r.Method + " " + r.Host + r.Path + " principal=" + quote(r.Principal)
	for _, a := range d.Audit {
		f.cb.Log(api.Info, authzconfig.PluginName+": audit: policy "+a.Policy+" rule "+strconv.Itoa(a.Rule)+" matched "+req)
	}
	if !d.DryRun.Applied {
		return
	}
	if d.DryRun.Allowed {
		if m != nil {
			inc(m.shadowAllowed)
		}
		f.cb.Log(api.Info, authzconfig.PluginName+": dry-run: shadow allowed "+req)
		return
	}
	if m != nil {
		inc(m.shadowDenied)
	}
	f.cb.Log(api.Info, authzconfig.PluginName+": dry-run: shadow denied "+req+" shadow_effective_policy_id="+d.DryRun.Policy+" details="+d.DryRun.Details)
}

func quote(s string) string {
	if s == "" {
		return `""`
	}
	return strconv.Quote(s)
}

// principal is the peer's SPIFFE ID without "spiffe://": from the filter state the outer
// CONNECT listener sets (Istio's waypoint), else from the downstream TLS peer certificate.
// Empty when unauthenticated; an ambiguous value (several SANs joined with ",") counts as none.
func principal(si api.StreamInfo) string {
	p := si.FilterState().GetString(authzconfig.PeerPrincipalKey)
	if p == "" {
		if ssl := si.DownstreamSslConnection(); ssl != nil {
			for _, san := range ssl.UriSanPeerCertificate() {
				if strings.HasPrefix(san, "spiffe://") {
					p = san
					break
				}
			}
		}
	}
	if !strings.HasPrefix(p, "spiffe://") || strings.Contains(p, ",") {
		return ""
	}
	return p[len("spiffe://"):]
}

// readJWT fills a from the payload jwt_authn put in the dynamic metadata, if any.
func readJWT(si api.StreamInfo, a *policies.RequestAuth) {
	payload, ok := si.DynamicMetadata().Get(JWTFilter)[JWTPayloadKey].(map[string]any)
	if !ok {
		return
	}
	*a = policies.AuthFromClaims(payload) // aud and azp are read from the claims, string or list
}
