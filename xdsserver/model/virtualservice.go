package model

import (
	"net/http"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/goambient/goambient/xdsserver/kubeobj"
)

// MeshGateway is the gateway name that binds a VirtualService to sidecars and waypoints.
const MeshGateway = "mesh"

// checkVirtualService validates a VirtualService as istiod's webhook does (ValidateVirtualService
// with its HTTP route checks); the checker gets the errors and warnings.
func checkVirtualService(c *checker, vs *networking.VirtualService) {
	if len(vs.GetHosts()) == 0 {
		if len(vs.GetGateways()) > 0 {
			c.fail("spec.gateways", "delegate virtual service must have no gateways specified")
		}
		if len(vs.GetTls()) > 0 {
			c.fail("spec.tls", "delegate virtual service must have no tls route specified")
		}
		if len(vs.GetTcp()) > 0 {
			c.fail("spec.tcp", "delegate virtual service must have no tcp route specified")
		}
	}
	toMesh := len(vs.GetGateways()) == 0
	for i, g := range vs.GetGateways() {
		if g == MeshGateway {
			toMesh = true
			continue
		}
		f := idx("spec.gateways", i)
		gns, name, ok := strings.Cut(g, "/")
		switch {
		case !ok:
			if err := fqdn(g); err != nil {
				c.fail(f, "%v", err)
			}
		case gns == "" || name == "":
			c.fail(f, "config namespace and gateway name cannot be empty")
		case !isIstioLabel(gns):
			c.fail(f, "invalid value for namespace: %q", gns)
		case !isIstioLabel(name):
			c.fail(f, "invalid value for gateway name: %q", name)
		}
	}
	allHostsValid := true
	for i, h := range vs.GetHosts() {
		f := idx("spec.hosts", i)
		if err := wildcardDomain(h); err != nil {
			if !isIP(h) {
				c.fail(f, "%v", err)
				allHostsValid = false
			}
		} else if toMesh && h == "*" {
			c.fail(f, "wildcard host * is not allowed for virtual services bound to the mesh gateway")
			allHostsValid = false
		}
	}
	if allHostsValid {
		for i, a := range vs.GetHosts() {
			for _, b := range vs.GetHosts()[i+1:] {
				if hostMatches(a, b) {
					c.fail("spec.hosts", "duplicate hosts in virtual service: %s & %s", a, b)
				}
			}
		}
	}
	if len(vs.GetHttp()) == 0 && len(vs.GetTcp()) == 0 && len(vs.GetTls()) == 0 {
		c.fail("spec", "http, tcp or tls must be provided in virtual service")
	}
	for i, h := range vs.GetHttp() {
		f := idx("spec.http", i)
		if h == nil {
			c.fail(f, "http route may not be null")
			continue
		}
		checkHTTPRule(c, f, h, len(vs.GetHosts()) == 0, false)
	}
	unreachableRules(c, vs.GetHttp())
	for i, e := range vs.GetExportTo() {
		if e != "*" && e != "." && e != "~" && !isIstioLabel(e) {
			c.fail(idx("spec.exportTo", i), "%q is not a namespace, \".\", \"*\" or \"~\"", e)
		}
	}
	if slices.Contains(vs.GetExportTo(), "~") && len(vs.GetExportTo()) > 1 {
		c.fail("spec.exportTo", "if ~ is specified in exportTo, nothing else is allowed")
	}
}

// unreachableRules warns, as istiod's webhook does (VirtualServiceUnreachableRule), about rules
// after one that matches every request: they are never used.
func unreachableRules(c *checker, rules []*networking.HTTPRoute) {
	for i, h := range rules {
		if h == nil {
			continue
		}
		all := len(h.GetMatch()) == 0
		for _, m := range h.GetMatch() {
			all = all || catchAllMatch(m)
		}
		if all && i+1 < len(rules) {
			for j := i + 1; j < len(rules); j++ {
				c.warn(idx("spec.http", j), "virtualService rule #%d not used (only the last rule can have no matches, or a catch-all match)", j)
			}
			return
		}
	}
}

// catchAllMatch is a match on nothing but (at most) the prefix "/" or the regex "*".
func catchAllMatch(m *networking.HTTPMatchRequest) bool {
	if m == nil {
		return true
	}
	switch t := m.GetUri().GetMatchType().(type) {
	case nil:
	case *networking.StringMatch_Prefix:
		if t.Prefix != "/" {
			return false
		}
	case *networking.StringMatch_Regex:
		if t.Regex != "*" && t.Regex != ".*" {
			return false
		}
	default:
		return false
	}
	return len(m.GetHeaders()) == 0 && len(m.GetWithoutHeaders()) == 0 && len(m.GetQueryParams()) == 0 && m.GetMethod() == nil &&
		m.GetScheme() == nil && m.GetAuthority() == nil && m.GetPort() == 0 && len(m.GetSourceLabels()) == 0 &&
		len(m.GetGateways()) == 0 && m.GetSourceNamespace() == ""
}

// fqdn is Istio's ValidateFQDN.
func fqdn(s string) error {
	if strings.HasPrefix(s, "*") {
		return wildcardDomain("x" + s) // a wildcard is not an FQDN: reported on the label
	}
	return wildcardDomain(s)
}

// checkHTTPRule is istiod's validateHTTPRoute for one rule of a VirtualService (gateway: a
// rule converted from an HTTPRoute, checked with Gateway API semantics).
func checkHTTPRule(c *checker, f string, h *networking.HTTPRoute, delegate, gateway bool) {
	// Conflicts between actions.
	switch {
	case !delegate && h.GetDelegate() != nil:
		if h.GetRedirect() != nil {
			c.fail(f+".redirect", "root HTTP route %s must not specify redirect", h.GetName())
		}
		if h.GetRoute() != nil {
			c.fail(f+".route", "root HTTP route %s must not specify route", h.GetName())
		}
		return
	case delegate && h.GetDelegate() != nil:
		c.fail(f+".delegate", "delegate HTTP route cannot contain delegate")
	}
	if h.GetRedirect() != nil {
		if len(h.GetRoute()) > 0 {
			c.fail(f, "HTTP route cannot contain both route and redirect")
		}
		if h.GetFault() != nil {
			c.fail(f, "HTTP route cannot contain both fault and redirect")
		}
		if h.GetRewrite() != nil {
			c.fail(f, "HTTP route rule cannot contain both rewrite and redirect")
		}
		if h.GetDirectResponse() != nil {
			c.fail(f, "HTTP route rule cannot contain both direct_response and redirect")
		}
	} else if h.GetDirectResponse() != nil {
		if len(h.GetRoute()) > 0 {
			c.fail(f, "HTTP route cannot contain both route and direct_response")
		}
		if h.GetFault() != nil {
			c.fail(f, "HTTP route cannot contain both fault and direct_response")
		}
		if h.GetRewrite() != nil {
			c.fail(f, "HTTP route rule cannot contain both rewrite and direct_response")
		}
	} else if len(h.GetRoute()) == 0 {
		c.fail(f, "HTTP route, redirect or direct_response is required")
	}
	if h.GetMirror() != nil && len(h.GetMirrors()) > 0 {
		c.fail(f, "HTTP route cannot contain both mirror and mirrors")
	}

	for i, m := range h.GetMatch() {
		if m == nil {
			continue
		}
		mf := idx(f+".match", i)
		for _, name := range sortedKeys(m.GetHeaders()) {
			hf := key(mf+".headers", name)
			if m.GetHeaders()[name] == nil {
				c.fail(hf, "header match %v cannot be null", name)
			}
			checkMatchHeaderName(c, hf, name)
			c.stringMatch(hf, m.GetHeaders()[name], false)
		}
		for _, name := range sortedKeys(m.GetWithoutHeaders()) {
			hf := key(mf+".withoutHeaders", name)
			checkMatchHeaderName(c, hf, name)
			if v := m.GetWithoutHeaders()[name]; v != nil && v.GetRegex() != "*" {
				c.stringMatch(hf, v, false)
			}
		}
		c.stringMatch(mf+".uri", m.GetUri(), true)
		c.stringMatch(mf+".scheme", m.GetScheme(), false)
		c.stringMatch(mf+".method", m.GetMethod(), false)
		c.stringMatch(mf+".authority", m.GetAuthority(), false)
		for _, name := range sortedKeys(m.GetQueryParams()) {
			c.stringMatch(key(mf+".queryParams", name), m.GetQueryParams()[name], false)
		}
		if m.GetPort() != 0 && !validPort(m.GetPort()) {
			c.fail(mf+".port", "port number %d must be in the range 1..65535", m.GetPort())
		}
		c.labels(mf+".sourceLabels", m.GetSourceLabels())
		for j, g := range m.GetGateways() {
			if g != MeshGateway && !strings.Contains(g, "/") {
				if err := fqdn(g); err != nil {
					c.fail(idx(mf+".gateways", j), "%v", err)
				}
			}
		}
		if ns := m.GetSourceNamespace(); ns != "" && !isIstioLabel(ns) {
			c.fail(mf+".sourceNamespace", "sourceNamespace match %s is invalid", ns)
		}
		for _, name := range sortedKeys(m.GetHeaders()) {
			if strings.HasPrefix(name, "@request.auth.claims") {
				c.fail(key(mf+".headers", name), "JWT claim based routing (key: %s) is only supported for gateway, found no gateways", name)
			}
		}
	}

	c.headers(f+".headers", h.GetHeaders())
	checkCORS(c, f+".corsPolicy", h.GetCorsPolicy())
	checkFault(c, f+".fault", h.GetFault())
	if mp := h.GetMirrorPercent(); mp != nil { //nolint:staticcheck // the deprecated field is still accepted
		if mp.GetValue() > 100 {
			c.fail(f+".mirrorPercent", "mirror_percent must have a max value of 100 (it has %d)", mp.GetValue())
		}
		c.warn(f+".mirrorPercent", `using deprecated setting "mirrorPercent", use "mirrorPercentage" instead`)
	}
	if mp := h.GetMirrorPercentage(); mp != nil {
		switch v := mp.GetValue(); {
		case v > 100:
			c.fail(f+".mirrorPercentage.value", "mirror_percentage must have a max value of 100 (it has %f)", v)
		case v < 0:
			c.fail(f+".mirrorPercentage.value", "mirror_percentage must have a min value of 0 (it has %f)", v)
		}
	}
	c.destination(f+".mirror", h.GetMirror())
	for i, m := range h.GetMirrors() {
		mf := idx(f+".mirrors", i)
		switch {
		case m == nil:
			c.fail(mf, "mirror cannot be null")
			continue
		case m.GetDestination() == nil:
			c.fail(mf+".destination", "destination is required for mirrors")
			continue
		}
		c.destination(mf+".destination", m.GetDestination())
		if p := m.GetPercentage(); p != nil {
			switch v := p.GetValue(); {
			case v > 100:
				c.fail(mf+".percentage.value", "mirror percentage must have a max value of 100 (it has %f)", v)
			case v < 0:
				c.fail(mf+".percentage.value", "mirror percentage must have a min value of 0 (it has %f)", v)
			}
		}
	}
	checkRedirect(c, f+".redirect", h.GetRedirect(), h.GetMatch())
	checkDirectResponse(c, f+".directResponse", h.GetDirectResponse())
	checkRetry(c, f+".retries", h.GetRetries())
	checkRewrite(c, f+".rewrite", h.GetRewrite())
	checkAuthority(c, f, h)
	checkDestinations(c, f+".route", h.GetRoute(), gateway)
	c.duration(f+".timeout", h.GetTimeout())
}

func checkMatchHeaderName(c *checker, f, name string) {
	switch {
	case name == "":
		c.fail(f, "header name cannot be empty")
	case strings.HasPrefix(name, "@request.auth.claims"), slices.Contains(pseudoHeaders, name):
	case !validHeaderName(name):
		c.fail(f, "header name %s is not a valid header name", name)
	}
}

func checkCORS(c *checker, f string, p *networking.CorsPolicy) {
	if p == nil {
		return
	}
	for i, o := range p.GetAllowOrigins() {
		of := idx(f+".allowOrigins", i)
		if o.GetExact() == "" && o.GetPrefix() == "" && o.GetRegex() == "" {
			c.fail(of, "'' is not a valid match type for CORS allow origins")
			continue
		}
		if o.GetRegex() != "" {
			c.regex(of+".regex", o.GetRegex())
		}
	}
	for i, m := range p.GetAllowMethods() {
		switch m {
		case "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT", "PATCH", "*":
		default:
			c.fail(idx(f+".allowMethods", i), "%q is not a supported HTTP method", m)
		}
	}
	for _, l := range []struct {
		field string
		names []string
	}{{f + ".allowHeaders", p.GetAllowHeaders()}, {f + ".exposeHeaders", p.GetExposeHeaders()}} {
		for i, n := range l.names {
			if n != "*" && !validHeaderName(n) {
				c.fail(idx(l.field, i), "header name %s is not a valid header name", n)
			}
		}
	}
	if p.GetMaxAge() != nil {
		c.duration(f+".maxAge", p.GetMaxAge())
		if p.GetMaxAge().GetNanos() > 0 {
			c.fail(f+".maxAge", "max_age duration is accurate only to seconds precision")
		}
	}
}

func checkFault(c *checker, f string, fault *networking.HTTPFaultInjection) {
	if fault == nil {
		return
	}
	if fault.GetAbort() == nil && fault.GetDelay() == nil {
		c.fail(f, "HTTP fault injection must have an abort and/or a delay")
	}
	if a := fault.GetAbort(); a != nil {
		c.percent(f+".abort.percentage", a.GetPercentage())
		switch t := a.GetErrorType().(type) {
		case *networking.HTTPFaultInjection_Abort_GrpcStatus:
			if _, ok := grpcStatusCodes[t.GrpcStatus]; !ok {
				c.fail(f+".abort.grpcStatus", "gRPC status %q is not supported. See https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of supported codes, for example 'NOT_FOUND'", t.GrpcStatus)
			}
		case *networking.HTTPFaultInjection_Abort_Http2Error:
			c.fail(f+".abort.http2Error", "HTTP/2 abort fault injection not supported yet")
		case *networking.HTTPFaultInjection_Abort_HttpStatus:
			// Istio refuses below 200 and above 600 (its message says 200-599).
			if t.HttpStatus < 200 || t.HttpStatus > 600 {
				c.fail(f+".abort.httpStatus", "HTTP status %d is not in range 200-599", t.HttpStatus)
			}
		default:
			c.warn(f+".abort", "abort configured, but error type not set")
		}
	}
	if d := fault.GetDelay(); d != nil {
		c.percent(f+".delay.percentage", d.GetPercentage())
		switch t := d.GetHttpDelayType().(type) {
		case *networking.HTTPFaultInjection_Delay_FixedDelay:
			c.duration(f+".delay.fixedDelay", t.FixedDelay)
		case *networking.HTTPFaultInjection_Delay_ExponentialDelay:
			c.duration(f+".delay.exponentialDelay", t.ExponentialDelay)
			c.fail(f+".delay.exponentialDelay", "exponentialDelay not supported yet")
		}
	}
}

func checkRedirect(c *checker, f string, r *networking.HTTPRedirect, matches []*networking.HTTPMatchRequest) {
	if r == nil {
		return
	}
	if r.GetUri() != "" && r.GetPrefixRewrite() != "" {
		c.fail(f, "redirect may only specify one of uri or prefix_rewrite")
		return
	}
	if r.GetPrefixRewrite() != "" {
		for _, m := range matches {
			if _, isPrefix := m.GetUri().GetMatchType().(*networking.StringMatch_Prefix); m.GetUri() != nil && !isPrefix {
				c.fail(f+".prefixRewrite", "redirect prefix_rewrite requires all URI matches to use prefix match type")
				return
			}
		}
	}
	if r.GetUri() == "" && r.GetPrefixRewrite() == "" && r.GetAuthority() == "" && r.GetRedirectPort() == nil && r.GetScheme() == "" {
		c.fail(f, "redirect must specify URI, authority, scheme, or port")
		return
	}
	if code := r.GetRedirectCode(); code != 0 && (code < 300 || code > 399) {
		c.fail(f+".redirectCode", "%d is not a valid redirect code, must be 3xx", code)
		return
	}
	if s := r.GetScheme(); s != "" && s != "http" && s != "https" {
		c.fail(f+".scheme", `invalid redirect scheme, must be "http" or "https"`)
		return
	}
	if p := r.GetPort(); p > 0 && !validPort(p) {
		c.fail(f+".port", "port number %d must be in the range 1..65535", p)
	}
}

func checkDirectResponse(c *checker, f string, d *networking.HTTPDirectResponse) {
	if d == nil {
		return
	}
	size := len(d.GetBody().GetString_()) + len(d.GetBody().GetBytes())
	switch {
	case size > 1<<20:
		c.fail(f+".body", "large direct_responses may impact control plane performance, must be less than 1MB")
	case size > 100<<10:
		c.warn(f+".body", "large direct_responses may impact control plane performance")
	}
	if d.GetStatus() < 200 || d.GetStatus() > 600 {
		c.fail(f+".status", "HTTP status %d is not in range 200-599", d.GetStatus())
	}
}

func checkRetry(c *checker, f string, r *networking.HTTPRetry) {
	if r == nil {
		return
	}
	if r.GetAttempts() < 0 {
		c.fail(f+".attempts", "attempts cannot be negative")
	}
	if r.GetAttempts() == 0 && (r.GetPerTryTimeout() != nil || r.GetRetryOn() != "" || r.GetRetryRemoteLocalities() != nil) {
		c.fail(f, "http retry policy configured when attempts are set to 0 (disabled)")
	}
	c.duration(f+".perTryTimeout", r.GetPerTryTimeout())
	if r.GetRetryOn() != "" {
		for _, p := range strings.Split(r.GetRetryOn(), ",") {
			code, _ := strconv.Atoi(p)
			if http.StatusText(code) == "" && !slices.Contains(retryOnPolicies, p) {
				c.fail(f+".retryOn", "%q is not a valid retryOn policy", p)
			}
		}
	}
	c.duration(f+".backoff", r.GetBackoff())
}

func checkRewrite(c *checker, f string, r *networking.HTTPRewrite) {
	if r == nil {
		return
	}
	switch {
	case r.GetUri() != "" && r.GetUriRegexRewrite() != nil:
		c.fail(f, "rewrite may only contain one of URI or UriRegexRewrite")
		return
	case r.GetUri() == "" && r.GetUriRegexRewrite() == nil && r.GetAuthority() == "":
		c.fail(f, "rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of URI or UriRegexRewrite may be specified")
		return
	}
	if rr := r.GetUriRegexRewrite(); rr != nil {
		if rr.GetMatch() == "" || rr.GetRewrite() == "" {
			c.fail(f+".uriRegexRewrite", "UriRegexRewrite requires both Rewrite and Match fields to be specified")
			return
		}
		c.regex(f+".uriRegexRewrite.match", rr.GetMatch())
	}
}

// checkAuthority checks that the authority is rewritten in one place only.
func checkAuthority(c *checker, f string, h *networking.HTTPRoute) {
	cur := h.GetRewrite().GetAuthority()
	for _, m := range []map[string]string{h.GetHeaders().GetRequest().GetSet(), h.GetHeaders().GetRequest().GetAdd()} {
		for _, k := range sortedKeys(m) {
			if !isAuthorityHeader(k) {
				continue
			}
			if cur != "" {
				c.fail(f+".headers.request", "authority header cannot be set multiple times: have %q, attempting to set %q", cur, m[k])
				return
			}
			cur = m[k]
		}
	}
}

func checkDestinations(c *checker, f string, ds []*networking.HTTPRouteDestination, gateway bool) {
	var total int32
	for i, d := range ds {
		df := idx(f, i)
		if d == nil {
			c.fail(df, "weight may not be nil")
			continue
		}
		if d.GetDestination() == nil {
			c.fail(df+".destination", "destination is required")
		}
		c.headers(df+".headers", d.GetHeaders())
		if !gateway {
			c.destination(df+".destination", d.GetDestination())
		}
		if d.GetWeight() < 0 {
			c.fail(df+".weight", "weight %d < 0", d.GetWeight())
		}
		total += d.GetWeight()
	}
	if len(ds) > 1 && total == 0 {
		c.fail(f, "total destination weight = 0")
	}
}

// convertVirtualService validates a VirtualService and returns a copy with its short host
// names resolved (hosts, route, mirror and mirrors destinations), as istiod's
// ResolveVirtualServiceShortnames does; nil when it is invalid.
func convertVirtualService(o *kubeobj.VirtualService, domain string) (*VirtualService, []error, []error) {
	ns := orDefault(o.Metadata.Namespace)
	c := &checker{origin: o.Origin, kind: "VirtualService", object: ns + "/" + o.Metadata.Name}
	checkVirtualService(c, o.Spec)
	if len(c.errs) > 0 {
		return nil, c.errs, nil // the object is refused: remarks on it would be noise
	}
	spec := proto.Clone(o.Spec).(*networking.VirtualService)
	for i, h := range spec.Hosts {
		spec.Hosts[i] = resolveHost(h, ns, domain)
	}
	for _, h := range spec.Http {
		for _, d := range h.Route {
			if d.Destination != nil {
				d.Destination.Host = resolveHost(d.Destination.Host, ns, domain)
			}
		}
		if h.Mirror != nil {
			h.Mirror.Host = resolveHost(h.Mirror.Host, ns, domain)
		}
		for _, m := range h.Mirrors {
			if m.Destination != nil {
				m.Destination.Host = resolveHost(m.Destination.Host, ns, domain)
			}
		}
	}
	return &VirtualService{Namespace: ns, Name: o.Metadata.Name, Spec: spec, Created: created(o.Metadata), Origin: o.Origin}, nil, c.warns
}
