package waypointxds

import (
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	fault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	previoushosts "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	xdstype "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/goambient/goambient/xdsserver/model"
)

// Names and values of the route translation, as istiod writes them for waypoints.
const (
	// FaultFilter is the HTTP filter, and the typed_per_filter_config key, of fault injection.
	FaultFilter = "envoy.filters.http.fault"
	// DefaultRouteName is the route of a service port without routing rules.
	DefaultRouteName = "default"
	// UnknownService is the cluster of a destination without a host.
	UnknownService = "UnknownService"
	// DefaultRetryOn is istiod's default retry policy's retry_on (2 retries).
	DefaultRetryOn = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
	// PreviousHostsPredicate is the retry host predicate istiod adds: retry on another host.
	PreviousHostsPredicate = "envoy.retry_host_predicates.previous_hosts"
	// maxDirectResponseBody is what istiod allows a waypoint's direct responses (1 MB).
	maxDirectResponseBody = 1 << 20
)

// routeCtx is what the rules of one service port are translated with.
type routeCtx struct {
	mesh *model.Mesh
	w    *model.Waypoint
	sp   servicePort
	tls  bool // the listener terminates TLS (an ingress gateway's HTTPS): a redirect's default scheme is https
}

// vhostName is istiod's name of a waypoint's inbound virtual host: inbound|http|<port>.
func vhostName(port uint32) string { return "inbound|http|" + strconv.FormatUint(uint64(port), 10) }

// serviceRoutes are the routes of one service port: the rules of its route sets in order, as
// istiod's buildWaypointInboundHTTPRouteConfig makes them, or its default route.
func serviceRoutes(rc routeCtx) []*route.Route {
	var out []*route.Route
	for _, set := range rc.mesh.Routing.For(rc.sp.svc).GetRouteSets() {
		out = append(out, rc.setRoutes(set)...)
	}
	if len(out) == 0 {
		return []*route.Route{rc.defaultRoute()}
	}
	return out
}

// setRoutes is istiod's waypointInboundRoute for one route set: a route per rule and match,
// rules without match are catch-alls that end the set, as does a match that catches all.
func (rc routeCtx) setRoutes(set *model.RouteSet) []*route.Route {
	var out []*route.Route
	for _, r := range set.Rules {
		h := r.HTTP
		if len(h.GetMatch()) == 0 {
			if rt := rc.translate(set, h, nil); rt != nil {
				out = append(out, rt)
			}
			return out
		}
		for _, m := range h.GetMatch() {
			if len(m.GetSourceLabels()) > 0 {
				continue // a waypoint cannot see the client's labels: istiod drops the match
			}
			rt := rc.translate(set, h, m)
			if rt == nil {
				continue
			}
			out = append(out, rt)
			if isCatchAll(rt) {
				return out
			}
		}
	}
	return out
}

// isCatchAll is istiod's IsCatchAllRoute.
func isCatchAll(r *route.Route) bool {
	m := r.GetMatch()
	var all bool
	switch p := m.GetPathSpecifier().(type) {
	case *route.RouteMatch_Prefix:
		all = p.Prefix == "/"
	case *route.RouteMatch_PathSeparatedPrefix:
		all = p.PathSeparatedPrefix == "/"
	case *route.RouteMatch_SafeRegex:
		all = p.SafeRegex.GetRegex() == ".*"
	}
	return all && len(m.GetHeaders()) == 0 && len(m.GetQueryParameters()) == 0 && len(m.GetDynamicMetadata()) == 0
}

// translate is istiod's TranslateRoute for one rule and one of its matches (nil: none).
func (rc routeCtx) translate(set *model.RouteSet, h *networking.HTTPRoute, m *networking.HTTPMatchRequest) *route.Route {
	if m != nil {
		if m.GetPort() != 0 && m.GetPort() != rc.sp.port.Port {
			return nil
		}
		if gws := m.GetGateways(); len(gws) > 0 && !slices.Contains(gws, model.MeshGateway) {
			return nil
		}
		// istiod compares sourceNamespace with the proxy's own namespace.
		if ns := m.GetSourceNamespace(); ns != "" && ns != rc.w.Namespace {
			return nil
		}
	}
	name := h.GetName()
	if m.GetName() != "" {
		name += "." + m.GetName()
	}
	out := &route.Route{Name: name, Match: routeMatch(set.Gateway, m)}
	if set.Kind == "VirtualService" {
		out.Metadata = configMetadata(set.Namespace, set.Name)
	}
	if m.GetStatPrefix() != "" {
		out.StatPrefix = m.GetStatPrefix()
	}
	authority := ""
	if h.GetHeaders() != nil {
		ops := headerOps(h.GetHeaders())
		out.RequestHeadersToAdd, out.RequestHeadersToRemove = ops.reqAdd, ops.reqRemove
		out.ResponseHeadersToAdd, out.ResponseHeadersToRemove = ops.respAdd, ops.respRemove
		authority = ops.authority
	}
	switch {
	case h.GetRedirect() != nil:
		applyRedirect(out, h.GetRedirect(), rc.sp.port.Port, rc.tls)
	case h.GetDirectResponse() != nil:
		applyDirectResponse(out, h.GetDirectResponse())
	default:
		rc.applyDestinations(out, set, h, authority)
	}
	out.Decorator = &route.Decorator{Operation: routeOperation(out, set.Name, rc.sp.port.Port)}
	if f := translateFault(h.GetFault()); f != nil {
		out.TypedPerFilterConfig = map[string]*anypb.Any{FaultFilter: toAny(f)}
	}
	return out
}

// configMetadata is istiod's "istio" config metadata naming the VirtualService of a route.
func configMetadata(ns, name string) *core.Metadata {
	return &core.Metadata{FilterMetadata: map[string]*structpb.Struct{"istio": {Fields: map[string]*structpb.Value{
		"config": structpb.NewStringValue("/apis/networking.istio.io/v1/namespaces/" + ns + "/virtual-service/" + name),
	}}}}
}

// routeMatch is istiod's TranslateRouteMatch.
func routeMatch(gateway bool, in *networking.HTTPMatchRequest) *route.RouteMatch {
	out := &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}
	if in == nil {
		return out
	}
	for _, name := range sortedKeys(in.GetHeaders()) {
		out.Headers = append(out.Headers, headerMatcher(name, in.GetHeaders()[name]))
	}
	for _, name := range sortedKeys(in.GetWithoutHeaders()) {
		hm := headerMatcher(name, in.GetWithoutHeaders()[name])
		hm.InvertMatch = true
		if !presentMatch(in.GetWithoutHeaders()[name]) {
			hm.TreatMissingHeaderAsEmpty = true
		}
		out.Headers = append(out.Headers, hm)
	}
	slices.SortStableFunc(out.Headers, func(a, b *route.HeaderMatcher) int { return strings.Compare(a.GetName(), b.GetName()) })
	switch t := in.GetUri().GetMatchType().(type) {
	case *networking.StringMatch_Exact:
		out.PathSpecifier = &route.RouteMatch_Path{Path: t.Exact}
	case *networking.StringMatch_Prefix:
		if gateway && t.Prefix != "/" {
			out.PathSpecifier = &route.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: strings.TrimSuffix(t.Prefix, "/")}
		} else {
			out.PathSpecifier = &route.RouteMatch_Prefix{Prefix: t.Prefix}
		}
	case *networking.StringMatch_Regex:
		out.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: t.Regex}}
	}
	out.CaseSensitive = wrapperspb.Bool(!in.GetIgnoreUriCase())
	if in.GetMethod() != nil {
		out.Headers = append(out.Headers, headerMatcher(":method", in.GetMethod()))
	}
	if in.GetAuthority() != nil {
		out.Headers = append(out.Headers, headerMatcher(":authority", in.GetAuthority()))
	}
	if in.GetScheme() != nil {
		out.Headers = append(out.Headers, headerMatcher(":scheme", in.GetScheme()))
	}
	for _, name := range sortedKeys(in.GetQueryParams()) {
		q := &route.QueryParameterMatcher{Name: name}
		if v := in.GetQueryParams()[name]; presentMatch(v) {
			q.QueryParameterMatchSpecifier = &route.QueryParameterMatcher_PresentMatch{PresentMatch: true}
		} else if sm := stringMatcher(v); sm != nil {
			q.QueryParameterMatchSpecifier = &route.QueryParameterMatcher_StringMatch{StringMatch: sm}
		}
		out.QueryParameters = append(out.QueryParameters, q)
	}
	return out
}

// presentMatch: no match type, or the regex "*" (not RE2: Istio's "header present").
func presentMatch(m *networking.StringMatch) bool {
	if m.GetMatchType() == nil {
		return true
	}
	r, ok := m.GetMatchType().(*networking.StringMatch_Regex)
	return ok && r.Regex == "*"
}

func headerMatcher(name string, m *networking.StringMatch) *route.HeaderMatcher {
	out := &route.HeaderMatcher{Name: name}
	if presentMatch(m) {
		out.HeaderMatchSpecifier = &route.HeaderMatcher_PresentMatch{PresentMatch: true}
		return out
	}
	if sm := stringMatcher(m); sm != nil {
		out.HeaderMatchSpecifier = &route.HeaderMatcher_StringMatch{StringMatch: sm}
	}
	return out
}

func stringMatcher(m *networking.StringMatch) *matcher.StringMatcher {
	switch t := m.GetMatchType().(type) {
	case *networking.StringMatch_Exact:
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: t.Exact}}
	case *networking.StringMatch_Prefix:
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: t.Prefix}}
	case *networking.StringMatch_Regex:
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: t.Regex}}}
	}
	return nil
}

// headerOperations are one Headers block translated.
type headerOperations struct {
	reqAdd, respAdd       []*core.HeaderValueOption
	reqRemove, respRemove []string
	authority             string
}

// headerOps is istiod's TranslateHeadersOperations: set overwrites, add appends, both sorted
// by name; pseudo headers and Host are dropped (the authority becomes a host rewrite).
func headerOps(h *networking.Headers) headerOperations {
	var out headerOperations
	var setAuth, addAuth string
	out.reqAdd, setAuth = headerValues(h.GetRequest().GetSet(), false)
	add, addAuth := headerValues(h.GetRequest().GetAdd(), true)
	out.reqAdd = append(out.reqAdd, add...)
	out.respAdd, _ = headerValues(h.GetResponse().GetSet(), false)
	add, _ = headerValues(h.GetResponse().GetAdd(), true)
	out.respAdd = append(out.respAdd, add...)
	out.authority = addAuth
	if setAuth != "" {
		out.authority = setAuth
	}
	out.reqRemove = dropInternal(h.GetRequest().GetRemove())
	out.respRemove = dropInternal(h.GetResponse().GetRemove())
	return out
}

func headerValues(m map[string]string, appendValue bool) ([]*core.HeaderValueOption, string) {
	if len(m) == 0 {
		return nil, ""
	}
	authority := ""
	var out []*core.HeaderValueOption
	for _, k := range sortedKeys(m) {
		if strings.EqualFold(k, ":authority") || strings.EqualFold(k, "host") {
			authority = m[k]
		}
		if strings.HasPrefix(k, ":") || strings.EqualFold(k, "host") {
			continue
		}
		action := core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
		if appendValue {
			action = core.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
		}
		out = append(out, &core.HeaderValueOption{Header: &core.HeaderValue{Key: k, Value: m[k]}, AppendAction: action})
	}
	return out, authority
}

func dropInternal(keys []string) []string {
	var out []string
	for _, k := range keys {
		if !strings.HasPrefix(k, ":") && !strings.EqualFold(k, "host") {
			out = append(out, k)
		}
	}
	return out
}

// applyDestinations is istiod's applyHTTPRouteDestination: timeouts, rewrites, mirrors, the
// destination cluster (or weighted clusters) and the retry policy.
func (rc routeCtx) applyDestinations(out *route.Route, set *model.RouteSet, h *networking.HTTPRoute, authority string) {
	action := &route.RouteAction{}
	setTimeout(action, h.GetTimeout())
	if set.Gateway {
		action.ClusterNotFoundResponseCode = route.RouteAction_INTERNAL_SERVER_ERROR
	}
	out.Action = &route.Route_Route{Route: action}
	if rw := h.GetRewrite(); rw != nil {
		switch {
		case rw.GetUriRegexRewrite() != nil:
			action.RegexRewrite = &matcher.RegexMatchAndSubstitute{
				Pattern:      &matcher.RegexMatcher{Regex: rw.GetUriRegexRewrite().GetMatch()},
				Substitution: rw.GetUriRegexRewrite().GetRewrite(),
			}
		case set.Gateway && rw.GetUri() == "/":
			// Remove the prefix, keeping a "/" when the whole path was the prefix.
			action.RegexRewrite = &matcher.RegexMatchAndSubstitute{
				Pattern:      &matcher.RegexMatcher{Regex: `^` + regexp.QuoteMeta(out.GetMatch().GetPathSeparatedPrefix()) + `(/?)(.*)`},
				Substitution: `/\2`,
			}
		case rw.GetUri() != "":
			action.PrefixRewrite = rw.GetUri()
		}
		if rw.GetAuthority() != "" {
			authority = rw.GetAuthority()
		}
	}
	if authority != "" {
		action.HostRewriteSpecifier = &route.RouteAction_HostRewriteLiteral{HostRewriteLiteral: authority}
	}
	if h.GetMirror() != nil {
		if p := mirrorPercent(h); p != nil {
			action.RequestMirrorPolicies = append(action.RequestMirrorPolicies, mirrorPolicy(rc.cluster(h.GetMirror()), p))
		}
	}
	for _, mp := range h.GetMirrors() {
		if p := percentOr100(mp.GetPercentage()); p != nil && mp.GetDestination() != nil {
			action.RequestMirrorPolicies = append(action.RequestMirrorPolicies, mirrorPolicy(rc.cluster(mp.GetDestination()), p))
		}
	}
	if len(h.GetRoute()) == 1 {
		d := h.GetRoute()[0]
		action.ClusterSpecifier = &route.RouteAction_Cluster{Cluster: rc.cluster(d.GetDestination())}
		if d.GetHeaders() != nil {
			ops := headerOps(d.GetHeaders())
			out.RequestHeadersToAdd = append(out.RequestHeadersToAdd, ops.reqAdd...)
			out.RequestHeadersToRemove = append(out.RequestHeadersToRemove, ops.reqRemove...)
			out.ResponseHeadersToAdd = append(out.ResponseHeadersToAdd, ops.respAdd...)
			out.ResponseHeadersToRemove = append(out.ResponseHeadersToRemove, ops.respRemove...)
			if ops.authority != "" && action.HostRewriteSpecifier == nil {
				action.HostRewriteSpecifier = &route.RouteAction_HostRewriteLiteral{HostRewriteLiteral: ops.authority}
			}
		}
	} else {
		wc := &route.WeightedCluster{}
		for _, d := range h.GetRoute() {
			if d.GetWeight() == 0 {
				continue // a zero weight is left out when there are other destinations
			}
			cw := &route.WeightedCluster_ClusterWeight{Name: rc.cluster(d.GetDestination()), Weight: wrapperspb.UInt32(uint32(d.GetWeight()))}
			if d.GetHeaders() != nil {
				ops := headerOps(d.GetHeaders())
				cw.RequestHeadersToAdd, cw.RequestHeadersToRemove = ops.reqAdd, ops.reqRemove
				cw.ResponseHeadersToAdd, cw.ResponseHeadersToRemove = ops.respAdd, ops.respRemove
				if ops.authority != "" {
					cw.HostRewriteSpecifier = &route.WeightedCluster_ClusterWeight_HostRewriteLiteral{HostRewriteLiteral: ops.authority}
				}
			}
			wc.Clusters = append(wc.Clusters, cw)
		}
		action.ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: wc}
	}
	action.RetryPolicy = retryPolicy(h.GetRetries())
}

// setTimeout is istiod's: the rule's timeout, else none (0), and the same as max_grpc_timeout.
func setTimeout(a *route.RouteAction, t *durationpb.Duration) {
	a.Timeout = durationpb.New(0)
	if t != nil {
		a.Timeout = durationpb.New(t.AsDuration())
	}
	a.MaxGrpcTimeout = durationpb.New(a.Timeout.AsDuration()) //nolint:staticcheck // istiod still sets the deprecated field
}

// mirrorPercent is istiod's MirrorPercent for the single mirror field: mirrorPercentage, else
// the deprecated integer mirrorPercent, else 100%; an explicit 0 does not mirror.
func mirrorPercent(h *networking.HTTPRoute) *core.RuntimeFractionalPercent {
	switch {
	case h.GetMirrorPercentage() != nil:
		return percentOr100(h.GetMirrorPercentage())
	case h.GetMirrorPercent() != nil: //nolint:staticcheck // the deprecated field is still honoured
		if v := h.GetMirrorPercent().GetValue(); v > 0 { //nolint:staticcheck
			return &core.RuntimeFractionalPercent{DefaultValue: &xdstype.FractionalPercent{Numerator: v, Denominator: xdstype.FractionalPercent_HUNDRED}}
		}
		return nil
	}
	return hundredPercent()
}

func percentOr100(p *networking.Percent) *core.RuntimeFractionalPercent {
	if p == nil {
		return hundredPercent()
	}
	if p.GetValue() <= 0 {
		return nil
	}
	return &core.RuntimeFractionalPercent{DefaultValue: millionths(p)}
}

func hundredPercent() *core.RuntimeFractionalPercent {
	return &core.RuntimeFractionalPercent{DefaultValue: &xdstype.FractionalPercent{Numerator: 100, Denominator: xdstype.FractionalPercent_HUNDRED}}
}

// millionths is istiod's translatePercentToFractionalPercent.
func millionths(p *networking.Percent) *xdstype.FractionalPercent {
	return &xdstype.FractionalPercent{Numerator: uint32(p.GetValue() * 10000), Denominator: xdstype.FractionalPercent_MILLION}
}

func mirrorPolicy(cluster string, p *core.RuntimeFractionalPercent) *route.RouteAction_RequestMirrorPolicy {
	return &route.RouteAction_RequestMirrorPolicy{
		Cluster: cluster, RuntimeFraction: p, TraceSampled: wrapperspb.Bool(false),
		DisableShadowHostSuffixAppend: true, // istiod's DISABLE_SHADOW_HOST_SUFFIX default
	}
}

// retryPolicy is istiod's retry.ConvertPolicy (no consistent hashing here): the mesh default
// when the rule has none, nothing when attempts is 0.
func retryPolicy(in *networking.HTTPRetry) *route.RetryPolicy {
	out := &route.RetryPolicy{
		NumRetries: wrapperspb.UInt32(2), RetryOn: DefaultRetryOn, HostSelectionRetryMaxAttempts: 5,
		RetryHostPredicate: []*route.RetryPolicy_RetryHostPredicate{previousHosts()},
	}
	if in == nil {
		return out
	}
	if in.GetAttempts() <= 0 {
		return nil
	}
	out.NumRetries = wrapperspb.UInt32(uint32(in.GetAttempts()))
	if in.GetRetryOn() != "" {
		out.RetryOn, out.RetriableStatusCodes = parseRetryOn(in.GetRetryOn())
		if len(out.RetriableStatusCodes) > 0 && !strings.Contains(out.RetryOn, "retriable-status-codes") {
			out.RetryOn += ",retriable-status-codes"
		}
	}
	if in.GetPerTryTimeout() != nil {
		out.PerTryTimeout = durationpb.New(in.GetPerTryTimeout().AsDuration())
	}
	if in.GetRetryIgnorePreviousHosts() != nil && !in.GetRetryIgnorePreviousHosts().GetValue() {
		out.RetryHostPredicate = nil
	}
	if in.GetBackoff() != nil {
		out.RetryBackOff = &route.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(in.GetBackoff().AsDuration())}
	}
	return out
}

func previousHosts() *route.RetryPolicy_RetryHostPredicate {
	return &route.RetryPolicy_RetryHostPredicate{
		Name:       PreviousHostsPredicate,
		ConfigType: &route.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: toAny(&previoushosts.PreviousHostsPredicate{})},
	}
}

// parseRetryOn splits retryOn into Envoy's retry_on and the status codes among its tokens.
func parseRetryOn(s string) (string, []uint32) {
	var on []string
	var codes []uint32
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if n, err := strconv.Atoi(p); err == nil && http.StatusText(n) != "" {
			codes = append(codes, uint32(n))
			continue
		}
		on = append(on, p)
	}
	return strings.Join(on, ","), codes
}

// applyRedirect is istiod's ApplyRedirect (port: the listener's, for FROM_REQUEST_PORT).
func applyRedirect(out *route.Route, r *networking.HTTPRedirect, port uint32, tls bool) {
	a := &route.RedirectAction{HostRedirect: r.GetAuthority()}
	if r.GetPrefixRewrite() != "" {
		a.PathRewriteSpecifier = &route.RedirectAction_PrefixRewrite{PrefixRewrite: r.GetPrefixRewrite()}
	} else {
		a.PathRewriteSpecifier = &route.RedirectAction_PathRedirect{PathRedirect: r.GetUri()}
	}
	if r.GetScheme() != "" {
		a.SchemeRewriteSpecifier = &route.RedirectAction_SchemeRedirect{SchemeRedirect: r.GetScheme()}
	}
	if r.GetRedirectPort() != nil {
		switch p := r.GetRedirectPort().(type) {
		case *networking.HTTPRedirect_DerivePort:
			if p.DerivePort == networking.HTTPRedirect_FROM_REQUEST_PORT {
				a.PortRedirect = port
			}
		case *networking.HTTPRedirect_Port:
			a.PortRedirect = p.Port
		}
		scheme := r.GetScheme()
		switch {
		case scheme != "":
		case tls:
			scheme = "https"
		default:
			scheme = "http"
		}
		if a.PortRedirect == 80 && scheme == "http" || a.PortRedirect == 443 && scheme == "https" {
			a.PortRedirect = 0
		}
	}
	switch r.GetRedirectCode() {
	case 0, 301:
		a.ResponseCode = route.RedirectAction_MOVED_PERMANENTLY
	case 302:
		a.ResponseCode = route.RedirectAction_FOUND
	case 303:
		a.ResponseCode = route.RedirectAction_SEE_OTHER
	case 307:
		a.ResponseCode = route.RedirectAction_TEMPORARY_REDIRECT
	case 308:
		a.ResponseCode = route.RedirectAction_PERMANENT_REDIRECT
	default:
		return // istiod leaves such a route without action (Envoy then rejects it; validation refuses the code first)
	}
	out.Action = &route.Route_Redirect{Redirect: a}
}

func applyDirectResponse(out *route.Route, d *networking.HTTPDirectResponse) {
	a := &route.DirectResponseAction{Status: d.GetStatus()}
	switch b := d.GetBody().GetSpecifier().(type) {
	case *networking.HTTPBody_String_:
		a.Body = &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: b.String_}}
	case *networking.HTTPBody_Bytes:
		a.Body = &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: b.Bytes}}
	}
	out.Action = &route.Route_DirectResponse{DirectResponse: a}
}

// routeOperation is istiod's GetRouteOperation (the tracing decorator).
func routeOperation(r *route.Route, setName string, port uint32) string {
	path := "/*"
	switch p := r.GetMatch().GetPathSpecifier().(type) {
	case *route.RouteMatch_Prefix:
		path = p.Prefix + "*"
	case *route.RouteMatch_Path:
		path = p.Path
	case *route.RouteMatch_SafeRegex:
		path = p.SafeRegex.GetRegex()
	}
	if c := r.GetRoute().GetCluster(); strings.Count(c, "|") == 3 {
		parts := strings.Split(c, "|")
		return parts[3] + ":" + parts[1] + path
	}
	return setName + ":" + strconv.FormatUint(uint64(port), 10) + path
}

// translateFault is istiod's TranslateFault: percentages in millionths, a fixed delay, an HTTP
// or gRPC abort; nil when neither remains.
func translateFault(in *networking.HTTPFaultInjection) *fault.HTTPFault {
	if in == nil {
		return nil
	}
	out := &fault.HTTPFault{}
	if d := in.GetDelay(); d != nil {
		fd := &faultcommon.FaultDelay{}
		if d.GetPercentage() != nil {
			fd.Percentage = millionths(d.GetPercentage())
		} else {
			fd.Percentage = &xdstype.FractionalPercent{Numerator: uint32(d.GetPercent()), Denominator: xdstype.FractionalPercent_HUNDRED} //nolint:staticcheck
		}
		if fixed := d.GetFixedDelay(); fixed != nil {
			fd.FaultDelaySecifier = &faultcommon.FaultDelay_FixedDelay{FixedDelay: durationpb.New(fixed.AsDuration())}
			out.Delay = fd
		}
	}
	if a := in.GetAbort(); a != nil {
		fa := &fault.FaultAbort{}
		if a.GetPercentage() != nil {
			fa.Percentage = millionths(a.GetPercentage())
		}
		switch t := a.GetErrorType().(type) {
		case *networking.HTTPFaultInjection_Abort_HttpStatus:
			fa.ErrorType = &fault.FaultAbort_HttpStatus{HttpStatus: uint32(t.HttpStatus)}
			out.Abort = fa
		case *networking.HTTPFaultInjection_Abort_GrpcStatus:
			code, _ := model.GRPCStatusCode(t.GrpcStatus)
			fa.ErrorType = &fault.FaultAbort_GrpcStatus{GrpcStatus: code}
			out.Abort = fa
		}
	}
	if out.Delay == nil && out.Abort == nil {
		return nil
	}
	return out
}

// cluster is istiod's getWaypointDestinationCluster: inbound-vip|<port>|http[/<subset>]|<host>
// for a Service this waypoint serves, outbound|<port>|<subset>|<host> for another. The port is
// the destination's, else the Service's only port, else the listener's.
func (rc routeCtx) cluster(d *networking.Destination) string {
	if d.GetHost() == "" {
		return UnknownService
	}
	svc := rc.mesh.ServiceByHost(d.GetHost())
	port := rc.sp.port.Port
	switch {
	case d.GetPort() != nil:
		port = d.GetPort().GetNumber()
	case svc != nil && len(svc.Ports) == 1:
		port = svc.Ports[0].Port
	}
	if svc != nil && (svc.Waypoint == nil || svc.Waypoint.Key() != rc.w.Key()) {
		return "outbound|" + strconv.FormatUint(uint64(port), 10) + "|" + d.GetSubset() + "|" + d.GetHost()
	}
	subset := "http"
	if svc != nil {
		if i := slices.IndexFunc(svc.Ports, func(p model.ServicePort) bool { return p.Port == port }); i >= 0 {
			if pr := svc.Ports[i].Protocol(); !pr.IsHTTP() && pr != model.ProtocolUnsupported {
				subset = "tcp"
			}
		}
	}
	if d.GetSubset() != "" {
		subset += "/" + d.GetSubset()
	}
	return SubsetName(port, subset, d.GetHost())
}

// SubsetName is inbound-vip|<port>|<subset>|<hostname>, the waypoint's cluster of a service
// port ("http") or of one of its DestinationRule subsets ("http/<subset>").
func SubsetName(port uint32, subset, hostname string) string {
	return "inbound-vip|" + strconv.FormatUint(uint64(port), 10) + "|" + subset + "|" + hostname
}

// defaultRoute is the route of a service port without rules: istiod's default outbound-style
// route for waypoints, with the mesh's default retry policy and no timeout.
func (rc routeCtx) defaultRoute() *route.Route {
	a := &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: rc.sp.name}, RetryPolicy: retryPolicy(nil)}
	setTimeout(a, nil)
	return &route.Route{
		Name:      DefaultRouteName,
		Match:     &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
		Decorator: &route.Decorator{Operation: rc.sp.svc.Hostname + ":" + strconv.FormatUint(uint64(rc.sp.port.Port), 10) + "/*"},
		Action:    &route.Route_Route{Route: a},
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
