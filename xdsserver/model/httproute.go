package model

import (
	"cmp"
	"regexp"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	networking "istio.io/api/networking/v1alpha3"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/goambient/goambient/xdsserver/kubeobj"
)

// Gateway API patterns (its CRD schema, which the API server enforces; files are checked here).
var (
	gwDuration     = regexp.MustCompile(`^([0-9]{1,5}(h|m|s|ms)){1,4}$`)
	gwPathChars    = regexp.MustCompile(`^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$`)
	gwHostname     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	gwPathSegments = []string{"//", "/./", "/../", "%2f", "%2F", "#"}
	gwMethods      = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)

// checkHTTPRoute validates an HTTPRoute as its CRD's schema and CEL rules do, and as istiod's
// conversion refuses (unsupported filters).
func checkHTTPRoute(c *checker, spec *gatewayv1.HTTPRouteSpec) {
	if len(spec.ParentRefs) > 32 {
		c.fail("spec.parentRefs", "must have at most 32 items")
	}
	for i, p := range spec.ParentRefs {
		f := idx("spec.parentRefs", i)
		if p.Name == "" {
			c.fail(f+".name", "must not be empty")
		}
		if p.Port != nil && (*p.Port < 1 || *p.Port > 65535) {
			c.fail(f+".port", "%d is not a port number (1-65535)", *p.Port)
		}
	}
	if len(spec.Rules) > 16 {
		c.fail("spec.rules", "must have at most 16 items")
	}
	total := 0
	for i, r := range spec.Rules {
		f := idx("spec.rules", i)
		if len(r.Matches) > 64 {
			c.fail(f+".matches", "must have at most 64 items")
		}
		total += len(r.Matches)
		for j, m := range r.Matches {
			checkGatewayMatch(c, idx(f+".matches", j), m)
		}
		checkGatewayFilters(c, f+".filters", r.Filters, r.Matches, true)
		redirect := false
		for _, flt := range r.Filters {
			redirect = redirect || flt.Type == gatewayv1.HTTPRouteFilterRequestRedirect
		}
		if redirect && len(r.BackendRefs) > 0 {
			c.fail(f, "RequestRedirect filter must not be used together with backendRefs")
		}
		if len(r.BackendRefs) > 16 {
			c.fail(f+".backendRefs", "must have at most 16 items")
		}
		for j, b := range r.BackendRefs {
			bf := idx(f+".backendRefs", j)
			checkBackendObject(c, bf, b.BackendObjectReference)
			if b.Weight != nil && (*b.Weight < 0 || *b.Weight > 1000000) {
				c.fail(bf+".weight", "%d is not in range 0..1000000", *b.Weight)
			}
			checkGatewayFilters(c, bf+".filters", b.Filters, r.Matches, false)
		}
		var request, backend time.Duration
		if t := r.Timeouts; t != nil {
			request = gatewayDuration(c, f+".timeouts.request", t.Request)
			backend = gatewayDuration(c, f+".timeouts.backendRequest", t.BackendRequest)
			if t.Request != nil && t.BackendRequest != nil && request != 0 && backend > request {
				c.fail(f+".timeouts", "backendRequest timeout cannot be longer than request timeout")
			}
		}
		if rt := r.Retry; rt != nil {
			for j, code := range rt.Codes {
				if code < 400 || code > 599 {
					c.fail(idx(f+".retry.codes", j), "%d is not in range 400..599", code)
				}
			}
			if rt.Attempts != nil && *rt.Attempts < 0 {
				c.fail(f+".retry.attempts", "must not be negative")
			}
			gatewayDuration(c, f+".retry.backoff", rt.Backoff)
		}
		if r.SessionPersistence != nil {
			c.warn(f+".sessionPersistence", "not applied by this waypoint")
		}
	}
	if total > 128 {
		c.fail("spec.rules", "the total number of matches across all rules in a route must be less than 128")
	}
}

func checkGatewayMatch(c *checker, f string, m gatewayv1.HTTPRouteMatch) {
	if p := m.Path; p != nil {
		typ := gatewayv1.PathMatchPathPrefix
		if p.Type != nil {
			typ = *p.Type
		}
		v := "/"
		if p.Value != nil {
			v = *p.Value
		}
		switch typ {
		case gatewayv1.PathMatchExact, gatewayv1.PathMatchPathPrefix:
			switch {
			case !strings.HasPrefix(v, "/"):
				c.fail(f+".path.value", "value must be an absolute path and start with '/' when type one of ['Exact', 'PathPrefix']")
			case strings.HasSuffix(v, "/..") || strings.HasSuffix(v, "/."):
				c.fail(f+".path.value", "must not end with '/..' or '/.' when type one of ['Exact', 'PathPrefix']")
			case !gwPathChars.MatchString(v):
				c.fail(f+".path.value", "must only contain valid characters (matching ^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%%][0-9a-fA-F]{2})+$) for types ['Exact', 'PathPrefix']")
			}
			for _, seg := range gwPathSegments {
				if strings.Contains(v, seg) {
					c.fail(f+".path.value", "must not contain %q when type one of ['Exact', 'PathPrefix']", seg)
				}
			}
		case gatewayv1.PathMatchRegularExpression:
			c.regex(f+".path.value", v)
		default:
			c.fail(f+".path.type", "type must be one of ['Exact', 'PathPrefix', 'RegularExpression']")
		}
		if len(v) > 1024 {
			c.fail(f+".path.value", "must be at most 1024 characters")
		}
	}
	seen := map[string]bool{}
	for i, h := range m.Headers {
		hf := idx(f+".headers", i)
		checkGatewayHeaderName(c, hf+".name", string(h.Name))
		if seen[strings.ToLower(string(h.Name))] {
			c.fail(hf+".name", "duplicate header match %q", h.Name)
		}
		seen[strings.ToLower(string(h.Name))] = true
		checkGatewayValueMatch(c, hf, h.Type == nil || *h.Type == gatewayv1.HeaderMatchExact,
			h.Type != nil && *h.Type == gatewayv1.HeaderMatchRegularExpression, h.Value)
	}
	seen = map[string]bool{}
	for i, q := range m.QueryParams {
		qf := idx(f+".queryParams", i)
		checkGatewayHeaderName(c, qf+".name", string(q.Name))
		if seen[string(q.Name)] {
			c.fail(qf+".name", "duplicate query parameter match %q", q.Name)
		}
		seen[string(q.Name)] = true
		checkGatewayValueMatch(c, qf, q.Type == nil || *q.Type == gatewayv1.QueryParamMatchExact,
			q.Type != nil && *q.Type == gatewayv1.QueryParamMatchRegularExpression, q.Value)
	}
	if m.Method != nil && !containsString(gwMethods, string(*m.Method)) {
		c.fail(f+".method", "%q is not one of %s", *m.Method, strings.Join(gwMethods, ", "))
	}
}

func checkGatewayValueMatch(c *checker, f string, exact, regex bool, v string) {
	switch {
	case regex:
		c.regex(f+".value", v)
	case !exact:
		c.fail(f+".type", "must be Exact or RegularExpression")
	}
	if len(v) > 4096 {
		c.fail(f+".value", "must be at most 4096 characters")
	}
}

func checkGatewayHeaderName(c *checker, f, name string) {
	if name == "" || len(name) > 256 || !validHeaderName(name) {
		c.fail(f, "%q is not a valid header name", name)
	}
}

func containsString(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

// checkGatewayFilters checks a rule's filters (rule) or a backendRef's.
func checkGatewayFilters(c *checker, f string, filters []gatewayv1.HTTPRouteFilter, matches []gatewayv1.HTTPRouteMatch, rule bool) {
	if len(filters) > 16 {
		c.fail(f, "must have at most 16 items")
	}
	count := map[gatewayv1.HTTPRouteFilterType]int{}
	for i, flt := range filters {
		ff := idx(f, i)
		count[flt.Type]++
		// A slice, not a map: the problems come in the same order on every build.
		set := []struct {
			typ   gatewayv1.HTTPRouteFilterType
			isSet bool
		}{
			{gatewayv1.HTTPRouteFilterRequestHeaderModifier, flt.RequestHeaderModifier != nil},
			{gatewayv1.HTTPRouteFilterResponseHeaderModifier, flt.ResponseHeaderModifier != nil},
			{gatewayv1.HTTPRouteFilterRequestMirror, flt.RequestMirror != nil},
			{gatewayv1.HTTPRouteFilterRequestRedirect, flt.RequestRedirect != nil},
			{gatewayv1.HTTPRouteFilterURLRewrite, flt.URLRewrite != nil},
			{gatewayv1.HTTPRouteFilterCORS, flt.CORS != nil},
			{gatewayv1.HTTPRouteFilterExtensionRef, flt.ExtensionRef != nil},
		}
		known := false
		for _, s := range set {
			known = known || s.typ == flt.Type
		}
		if !known {
			c.fail(ff+".type", "%q is not a filter type (RequestHeaderModifier, ResponseHeaderModifier, RequestMirror, RequestRedirect, URLRewrite, ExtensionRef, CORS)", flt.Type)
			continue
		}
		for _, s := range set {
			typ, isSet := s.typ, s.isSet
			field := ff + "." + lowerFirst(string(typ))
			switch {
			case typ == flt.Type && !isSet:
				c.fail(field, "must be specified for %s filter.type", typ)
			case typ != flt.Type && isSet:
				c.fail(field, "must be nil if the filter.type is not %s", typ)
			}
		}
		switch flt.Type {
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
			checkGatewayHeaderFilter(c, ff+".requestHeaderModifier", flt.RequestHeaderModifier)
		case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
			checkGatewayHeaderFilter(c, ff+".responseHeaderModifier", flt.ResponseHeaderModifier)
		case gatewayv1.HTTPRouteFilterRequestMirror:
			if m := flt.RequestMirror; m != nil {
				checkBackendObject(c, ff+".requestMirror.backendRef", m.BackendRef)
				if m.Percent != nil && m.Fraction != nil {
					c.fail(ff+".requestMirror", "Only one of percent or fraction may be specified in HTTPRequestMirrorFilter")
				}
				if m.Percent != nil && (*m.Percent < 0 || *m.Percent > 100) {
					c.fail(ff+".requestMirror.percent", "%d is not in range 0..100", *m.Percent)
				}
				if fr := m.Fraction; fr != nil {
					den := int32(100)
					if fr.Denominator != nil {
						den = *fr.Denominator
					}
					if den < 1 || fr.Numerator < 0 || fr.Numerator > den {
						c.fail(ff+".requestMirror.fraction", "numerator must be in 0..denominator and denominator at least 1")
					}
				}
			}
		case gatewayv1.HTTPRouteFilterRequestRedirect:
			if r := flt.RequestRedirect; r != nil {
				if r.Scheme != nil && *r.Scheme != "http" && *r.Scheme != "https" {
					c.fail(ff+".requestRedirect.scheme", "must be http or https")
				}
				if r.Hostname != nil && !gwHostname.MatchString(string(*r.Hostname)) {
					c.fail(ff+".requestRedirect.hostname", "%q is not a hostname", *r.Hostname)
				}
				if r.Port != nil && (*r.Port < 1 || *r.Port > 65535) {
					c.fail(ff+".requestRedirect.port", "%d is not a port number (1-65535)", *r.Port)
				}
				if r.StatusCode != nil {
					switch *r.StatusCode {
					case 301, 302, 303, 307, 308:
					default:
						c.fail(ff+".requestRedirect.statusCode", "%d is not one of 301, 302, 303, 307, 308", *r.StatusCode)
					}
				}
				checkPathModifier(c, ff+".requestRedirect.path", r.Path, matches)
			}
		case gatewayv1.HTTPRouteFilterURLRewrite:
			if r := flt.URLRewrite; r != nil {
				if r.Hostname != nil && !gwHostname.MatchString(string(*r.Hostname)) {
					c.fail(ff+".urlRewrite.hostname", "%q is not a hostname", *r.Hostname)
				}
				checkPathModifier(c, ff+".urlRewrite.path", r.Path, matches)
			}
		case gatewayv1.HTTPRouteFilterExtensionRef:
			c.fail(ff+".type", "unsupported filter type %q", flt.Type)
		case gatewayv1.HTTPRouteFilterCORS:
			c.warn(ff, "the CORS filter is not applied by this waypoint")
		}
		if !rule && flt.Type != gatewayv1.HTTPRouteFilterRequestHeaderModifier && flt.Type != gatewayv1.HTTPRouteFilterResponseHeaderModifier {
			c.fail(ff+".type", "unsupported filter type %q", flt.Type)
		}
	}
	for _, t := range []gatewayv1.HTTPRouteFilterType{
		gatewayv1.HTTPRouteFilterCORS, gatewayv1.HTTPRouteFilterRequestHeaderModifier, gatewayv1.HTTPRouteFilterResponseHeaderModifier,
		gatewayv1.HTTPRouteFilterRequestRedirect, gatewayv1.HTTPRouteFilterURLRewrite,
	} {
		if count[t] > 1 {
			c.fail(f, "%s filter cannot be repeated", t)
		}
	}
	if count[gatewayv1.HTTPRouteFilterRequestRedirect] > 0 && count[gatewayv1.HTTPRouteFilterURLRewrite] > 0 {
		c.fail(f, "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, but not both")
	}
}

func lowerFirst(s string) string {
	if s == "" {
		return s
	}
	if strings.HasPrefix(s, "URL") {
		return "url" + s[3:]
	}
	if s == "CORS" {
		return "cors"
	}
	return strings.ToLower(s[:1]) + s[1:]
}

func checkPathModifier(c *checker, f string, p *gatewayv1.HTTPPathModifier, matches []gatewayv1.HTTPRouteMatch) {
	if p == nil {
		return
	}
	switch p.Type {
	case gatewayv1.FullPathHTTPPathModifier:
		if p.ReplaceFullPath == nil {
			c.fail(f+".replaceFullPath", "replaceFullPath must be specified when type is set to 'ReplaceFullPath'")
		}
		if p.ReplacePrefixMatch != nil {
			c.fail(f+".replacePrefixMatch", "type must be 'ReplacePrefixMatch' when replacePrefixMatch is set")
		}
	case gatewayv1.PrefixMatchHTTPPathModifier:
		if p.ReplacePrefixMatch == nil {
			c.fail(f+".replacePrefixMatch", "replacePrefixMatch must be specified when type is set to 'ReplacePrefixMatch'")
		}
		if p.ReplaceFullPath != nil {
			c.fail(f+".replaceFullPath", "type must be 'ReplaceFullPath' when replaceFullPath is set")
		}
		prefix := len(matches) == 1 && matches[0].Path != nil &&
			(matches[0].Path.Type == nil || *matches[0].Path.Type == gatewayv1.PathMatchPathPrefix)
		if !prefix {
			c.fail(f, "When using a filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified")
		}
	default:
		c.fail(f+".type", "must be ReplaceFullPath or ReplacePrefixMatch")
	}
}

func checkGatewayHeaderFilter(c *checker, f string, h *gatewayv1.HTTPHeaderFilter) {
	if h == nil {
		return
	}
	for _, l := range []struct {
		field string
		list  []gatewayv1.HTTPHeader
	}{{f + ".set", h.Set}, {f + ".add", h.Add}} {
		if len(l.list) > 16 {
			c.fail(l.field, "must have at most 16 items")
		}
		seen := map[string]bool{}
		for i, e := range l.list {
			checkGatewayHeaderName(c, idx(l.field, i)+".name", string(e.Name))
			if seen[strings.ToLower(string(e.Name))] {
				c.fail(idx(l.field, i)+".name", "duplicate header %q", e.Name)
			}
			seen[strings.ToLower(string(e.Name))] = true
			for _, b := range []byte(e.Value) {
				if !(b == '\t' || b >= 0x20 && b != 0x7f) {
					c.fail(idx(l.field, i)+".value", "header %q value contains invalid characters", e.Name)
					break
				}
			}
		}
	}
	if len(h.Remove) > 16 {
		c.fail(f+".remove", "must have at most 16 items")
	}
	for i, n := range h.Remove {
		checkGatewayHeaderName(c, idx(f+".remove", i), n)
	}
}

func checkBackendObject(c *checker, f string, b gatewayv1.BackendObjectReference) {
	group, kind := "", "Service"
	if b.Group != nil {
		group = string(*b.Group)
	}
	if b.Kind != nil {
		kind = string(*b.Kind)
	}
	if (group != "" && group != "core") || kind != "Service" {
		c.fail(f, "referencing unsupported backendRef: group %q kind %q", group, kind)
		return
	}
	switch {
	case b.Name == "":
		c.fail(f+".name", "must not be empty")
	case strings.Contains(string(b.Name), "."):
		c.fail(f+".name", "service name invalid; the name of the Service must be used, not the hostname.")
	}
	if b.Port == nil {
		c.fail(f+".port", "port is required in backendRef")
	} else if *b.Port < 1 || *b.Port > 65535 {
		c.fail(f+".port", "%d is not a port number (1-65535)", *b.Port)
	}
}

// gatewayDuration checks and parses a Gateway API duration (0 when absent or invalid).
func gatewayDuration(c *checker, f string, d *gatewayv1.Duration) time.Duration {
	if d == nil {
		return 0
	}
	if !gwDuration.MatchString(string(*d)) {
		c.fail(f, "%q is not a Gateway API duration (e.g. 1h, 10s, 500ms)", *d)
		return 0
	}
	v, err := time.ParseDuration(string(*d))
	if err != nil {
		c.fail(f, "%v", err)
		return 0
	}
	return v
}

// convertHTTPRoute validates an HTTPRoute and converts its rules to Istio's form as istiod's
// Gateway API translation does (pilot/pkg/config/kube/gateway/conversion.go): one rule per
// match, named <namespace>.<name>.<index> unless the rule has a name.
func convertHTTPRoute(o *kubeobj.HTTPRoute, domain string) (*HTTPRoute, []error, []error) {
	ns := orDefault(o.Metadata.Namespace)
	c := &checker{origin: o.Origin, kind: "HTTPRoute", object: ns + "/" + o.Metadata.Name}
	checkHTTPRoute(c, &o.Spec)
	if len(c.errs) > 0 {
		return nil, c.errs, nil // the object is refused: remarks on it would be noise
	}
	hr := &HTTPRoute{Namespace: ns, Name: o.Metadata.Name, Spec: o.Spec, Created: created(o.Metadata), Origin: o.Origin}
	for i, r := range o.Spec.Rules {
		name := ns + "." + o.Metadata.Name + "." + strconv.Itoa(i)
		if r.Name != nil {
			name = string(*r.Name)
		}
		matches := r.Matches
		if len(matches) == 0 {
			matches = []gatewayv1.HTTPRouteMatch{{}}
		}
		for j, m := range matches {
			field := idx("spec.rules", i)
			if len(r.Matches) > 1 {
				field = idx(field+".matches", j)
			}
			h := convertGatewayRule(r, m, len(r.Matches) > 0, name, ns, domain)
			hr.Rules = append(hr.Rules, &RouteRule{HTTP: h, Kind: "HTTPRoute", Object: hr.Key(), Field: field, Origin: o.Origin})
		}
	}
	return hr, nil, c.warns
}

// convertGatewayRule is istiod's convertHTTPRoute for one match of a rule.
func convertGatewayRule(r gatewayv1.HTTPRouteRule, m gatewayv1.HTTPRouteMatch, hasMatch bool, name, ns, domain string) *networking.HTTPRoute {
	h := &networking.HTTPRoute{Name: name}
	if hasMatch {
		h.Match = []*networking.HTTPMatchRequest{convertGatewayMatch(m)}
	}
	for _, f := range r.Filters {
		switch f.Type {
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
			if h.Headers == nil {
				h.Headers = &networking.Headers{}
			}
			h.Headers.Request = convertHeaderFilter(f.RequestHeaderModifier)
		case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
			if h.Headers == nil {
				h.Headers = &networking.Headers{}
			}
			h.Headers.Response = convertHeaderFilter(f.ResponseHeaderModifier)
		case gatewayv1.HTTPRouteFilterRequestRedirect:
			h.Redirect = convertRedirect(f.RequestRedirect)
		case gatewayv1.HTTPRouteFilterRequestMirror:
			mp := &networking.HTTPMirrorPolicy{Destination: backendDestination(f.RequestMirror.BackendRef, ns, domain)}
			if fr := f.RequestMirror.Fraction; fr != nil {
				den := int32(100)
				if fr.Denominator != nil {
					den = *fr.Denominator
				}
				mp.Percentage = &networking.Percent{Value: 100 * float64(fr.Numerator) / float64(den)}
			} else if p := f.RequestMirror.Percent; p != nil {
				mp.Percentage = &networking.Percent{Value: float64(*p)}
			}
			h.Mirrors = append(h.Mirrors, mp)
		case gatewayv1.HTTPRouteFilterURLRewrite:
			h.Rewrite = convertRewrite(f.URLRewrite)
		}
	}
	if rt := r.Retry; rt != nil {
		retryOn := []string{"connect-failure", "refused-stream", "unavailable", "cancelled"}
		for _, code := range rt.Codes {
			retryOn = append(retryOn, strconv.Itoa(int(code)))
		}
		attempts := 2
		if rt.Attempts != nil {
			attempts = *rt.Attempts
		}
		h.Retries = &networking.HTTPRetry{Attempts: int32(attempts), RetryOn: strings.Join(retryOn, ",")}
		if attempts == 0 {
			h.Retries.RetryOn = ""
		}
		if rt.Backoff != nil {
			d, _ := time.ParseDuration(string(*rt.Backoff))
			h.Retries.Backoff = durationpb.New(d)
		}
	}
	if t := r.Timeouts; t != nil {
		if t.Request != nil {
			if d, _ := time.ParseDuration(string(*t.Request)); d != 0 {
				h.Timeout = durationpb.New(d)
			}
		}
		if t.BackendRequest != nil {
			if d, _ := time.ParseDuration(string(*t.BackendRequest)); d != 0 {
				if h.Retries != nil {
					h.Retries.PerTryTimeout = durationpb.New(d)
				} else {
					h.Timeout = durationpb.New(d)
				}
			}
		}
	}
	total := 0
	for _, b := range r.BackendRefs {
		total += int(weightOf(b))
	}
	if total == 0 && h.Redirect == nil {
		// "When there are no backends with a weight above 0, return 500."
		h.DirectResponse = &networking.HTTPDirectResponse{Status: 500}
		return h
	}
	var kept []gatewayv1.HTTPBackendRef
	for _, b := range r.BackendRefs {
		if weightOf(b) > 0 {
			kept = append(kept, b)
		}
	}
	for _, b := range kept {
		d := &networking.HTTPRouteDestination{Destination: backendDestination(b.BackendObjectReference, ns, domain), Weight: weightOf(b)}
		if len(kept) == 1 {
			d.Weight = 0
		}
		for _, f := range b.Filters {
			switch f.Type {
			case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
				if d.Headers == nil {
					d.Headers = &networking.Headers{}
				}
				d.Headers.Request = convertHeaderFilter(f.RequestHeaderModifier)
			case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
				if d.Headers == nil {
					d.Headers = &networking.Headers{}
				}
				d.Headers.Response = convertHeaderFilter(f.ResponseHeaderModifier)
			}
		}
		h.Route = append(h.Route, d)
	}
	return h
}

func weightOf(b gatewayv1.HTTPBackendRef) int32 {
	if b.Weight == nil {
		return 1
	}
	return *b.Weight
}

func backendDestination(b gatewayv1.BackendObjectReference, ns, domain string) *networking.Destination {
	bns := ns
	if b.Namespace != nil {
		bns = string(*b.Namespace)
	}
	d := &networking.Destination{Host: string(b.Name) + "." + bns + ".svc." + domain}
	if b.Port != nil {
		d.Port = &networking.PortSelector{Number: uint32(*b.Port)}
	}
	return d
}

func convertGatewayMatch(m gatewayv1.HTTPRouteMatch) *networking.HTTPMatchRequest {
	out := &networking.HTTPMatchRequest{}
	typ, v := gatewayv1.PathMatchPathPrefix, "/"
	if m.Path != nil {
		if m.Path.Type != nil {
			typ = *m.Path.Type
		}
		if m.Path.Value != nil {
			v = *m.Path.Value
		}
	}
	switch typ {
	case gatewayv1.PathMatchExact:
		out.Uri = &networking.StringMatch{MatchType: &networking.StringMatch_Exact{Exact: v}}
	case gatewayv1.PathMatchRegularExpression:
		out.Uri = &networking.StringMatch{MatchType: &networking.StringMatch_Regex{Regex: v}}
	default:
		if v != "/" {
			v = strings.TrimSuffix(v, "/") // "a trailing / is ignored"
		}
		out.Uri = &networking.StringMatch{MatchType: &networking.StringMatch_Prefix{Prefix: v}}
	}
	for _, h := range m.Headers {
		if out.Headers == nil {
			out.Headers = map[string]*networking.StringMatch{}
		}
		out.Headers[string(h.Name)] = valueMatch(h.Type != nil && *h.Type == gatewayv1.HeaderMatchRegularExpression, h.Value)
	}
	for _, q := range m.QueryParams {
		if out.QueryParams == nil {
			out.QueryParams = map[string]*networking.StringMatch{}
		}
		out.QueryParams[string(q.Name)] = valueMatch(q.Type != nil && *q.Type == gatewayv1.QueryParamMatchRegularExpression, q.Value)
	}
	if m.Method != nil {
		out.Method = &networking.StringMatch{MatchType: &networking.StringMatch_Exact{Exact: string(*m.Method)}}
	}
	return out
}

func valueMatch(regex bool, v string) *networking.StringMatch {
	if regex {
		return &networking.StringMatch{MatchType: &networking.StringMatch_Regex{Regex: v}}
	}
	return &networking.StringMatch{MatchType: &networking.StringMatch_Exact{Exact: v}}
}

func convertHeaderFilter(f *gatewayv1.HTTPHeaderFilter) *networking.Headers_HeaderOperations {
	toMap := func(l []gatewayv1.HTTPHeader) map[string]string {
		if len(l) == 0 {
			return nil
		}
		out := map[string]string{}
		for _, e := range l {
			k := strings.ToLower(string(e.Name))
			if _, dup := out[k]; !dup { // "subsequent entries with an equivalent name MUST be ignored"
				out[k] = e.Value
			}
		}
		return out
	}
	return &networking.Headers_HeaderOperations{Set: toMap(f.Set), Add: toMap(f.Add), Remove: f.Remove}
}

func convertRedirect(f *gatewayv1.HTTPRequestRedirectFilter) *networking.HTTPRedirect {
	r := &networking.HTTPRedirect{}
	if f.StatusCode != nil {
		r.RedirectCode = uint32(*f.StatusCode)
	}
	if f.Hostname != nil {
		r.Authority = string(*f.Hostname)
	}
	if f.Scheme != nil {
		r.Scheme = *f.Scheme
	}
	switch {
	case f.Port != nil:
		r.RedirectPort = &networking.HTTPRedirect_Port{Port: uint32(*f.Port)}
	case f.Scheme != nil:
		r.RedirectPort = &networking.HTTPRedirect_DerivePort{DerivePort: networking.HTTPRedirect_FROM_PROTOCOL_DEFAULT}
	default:
		// "When empty, the port of the request is used" (Istio's own default differs).
		r.RedirectPort = &networking.HTTPRedirect_DerivePort{DerivePort: networking.HTTPRedirect_FROM_REQUEST_PORT}
	}
	if p := f.Path; p != nil {
		switch p.Type {
		case gatewayv1.FullPathHTTPPathModifier:
			r.Uri = *p.ReplaceFullPath
		case gatewayv1.PrefixMatchHTTPPathModifier:
			r.PrefixRewrite = *p.ReplacePrefixMatch
		}
	}
	return r
}

func convertRewrite(f *gatewayv1.HTTPURLRewriteFilter) *networking.HTTPRewrite {
	r := &networking.HTTPRewrite{}
	if p := f.Path; p != nil {
		switch p.Type {
		case gatewayv1.PrefixMatchHTTPPathModifier:
			r.Uri = cmp.Or(strings.TrimSuffix(*p.ReplacePrefixMatch, "/"), "/") // "/" removes the prefix
		case gatewayv1.FullPathHTTPPathModifier:
			r.UriRegexRewrite = &networking.RegexRewrite{Match: "/.*", Rewrite: *p.ReplaceFullPath}
		}
	}
	if f.Hostname != nil {
		r.Authority = string(*f.Hostname)
	}
	if r.Uri == "" && r.UriRegexRewrite == nil && r.Authority == "" {
		return nil
	}
	return r
}
