// Package router is Envoy's router for the embedded waypoint: it compiles an RDS RouteConfiguration (what xdsserver sends Envoy) into a route table, selects a request's route the way Envoy does (first match wins), and carries each route's action — weighted clusters, rewrites, header changes, redirects, direct responses, mirrors, timeouts and retry policy — for the server to apply.
package router

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	xdstype "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// Table is one compiled route configuration: its virtual host's routes in order.
type Table struct {
	Name        string
	VirtualHost string
	Routes      []*Route
	// PerFilter is the virtual host's typed_per_filter_config, by filter name.
	PerFilter map[string]*anypb.Any
}

// ActionKind is what a route does with a request.
type ActionKind uint8

// The actions a route has.
const (
	ActionCluster  ActionKind = iota // to one cluster
	ActionWeighted                   // to one of weighted clusters
	ActionRedirect                   // answer a redirect
	ActionDirect                     // answer a direct response
)

// Route is one compiled route.
type Route struct {
	Name   string
	m      match
	Kind   ActionKind
	Action *Action // ActionCluster and ActionWeighted
	// Redirect and Direct are the local answers (ActionRedirect, ActionDirect).
	Redirect *Redirect
	Direct   *Direct
	// Request and response header changes of the route.
	Headers HeaderOps
	// PerFilter is the route's typed_per_filter_config, by filter name.
	PerFilter map[string]*anypb.Any
}

// Action is a RouteAction.
type Action struct {
	Cluster  string // ActionCluster
	Weighted []Weighted
	total    uint64
	// NotFoundStatus answers a cluster that does not exist: 503, or 500
	// (cluster_not_found_response_code: INTERNAL_SERVER_ERROR, Gateway API semantics).
	NotFoundStatus int
	Timeout        time.Duration // 0: none
	Retry          *RetryPolicy  // nil: no retries
	Mirrors        []Mirror
	PrefixRewrite  string
	regexRewrite   *regexp.Regexp
	regexSub       string
	HostRewrite    string
}

// Weighted is one cluster of weighted clusters, with its own header changes.
type Weighted struct {
	Cluster     string
	Weight      uint64
	Headers     HeaderOps
	HostRewrite string
}

// Mirror is a request mirror policy: a copy to Cluster for Numerator/Denominator of requests.
type Mirror struct {
	Cluster                string
	Numerator, Denominator uint64
}

// Redirect is a RedirectAction.
type Redirect struct {
	Host, Path, PrefixRewrite, Scheme string
	Port                              uint32
	Status                            int
	StripQuery                        bool
}

// Direct is a DirectResponseAction.
type Direct struct {
	Status int
	Body   string
}

// HeaderOps are header changes: values are set (replacing) or appended, names removed.
type HeaderOps struct {
	Add    []HeaderValue
	Remove []string
	// Response changes.
	RespAdd    []HeaderValue
	RespRemove []string
}

// HeaderValue is one header to add; Value may hold Envoy %VARIABLE%s (see Format).
type HeaderValue struct {
	Name, Value string
	Append      bool
}

// Select returns the first route whose match the request satisfies, nil when none does
// (Envoy answers 404 route_not_found).
func (t *Table) Select(r Request) *Route {
	full := r.Path()
	p := pathOnly(full)
	for _, rt := range t.Routes {
		if rt.m.matches(r, full, p) {
			return rt
		}
	}
	return nil
}

// Pick chooses the cluster for a request: the route's cluster, or among weighted clusters as
// Envoy does (random % total weight, then the clusters in order). It returns the weighted
// entry (nil for a single cluster).
func (a *Action) Pick(random uint64) (string, *Weighted) {
	if len(a.Weighted) == 0 {
		return a.Cluster, nil
	}
	v := random % a.total
	var sum uint64
	for i := range a.Weighted {
		sum += a.Weighted[i].Weight
		if v < sum {
			return a.Weighted[i].Cluster, &a.Weighted[i]
		}
	}
	w := &a.Weighted[len(a.Weighted)-1]
	return w.Cluster, w
}

// Enabled is Envoy's runtime fraction check: random % denominator < numerator.
func Enabled(random, numerator, denominator uint64) bool {
	if denominator == 0 {
		return false
	}
	return random%denominator < numerator
}

// Denominator is a FractionalPercent's denominator as a number.
func Denominator(d xdstype.FractionalPercent_DenominatorType) uint64 {
	switch d {
	case xdstype.FractionalPercent_TEN_THOUSAND:
		return 10000
	case xdstype.FractionalPercent_MILLION:
		return 1000000
	}
	return 100
}

// Compile turns a route configuration into a Table. What the embedded waypoint cannot do is an
// error (the configuration is refused, as Envoy refuses what it cannot load), never ignored.
func Compile(rc *route.RouteConfiguration) (*Table, error) {
	if len(rc.GetVirtualHosts()) != 1 {
		return nil, fmt.Errorf("route configuration %s: %d virtual hosts, want one (a waypoint's service port has one)", rc.GetName(), len(rc.GetVirtualHosts()))
	}
	vh := rc.GetVirtualHosts()[0]
	if !slices.Equal(vh.GetDomains(), []string{"*"}) {
		return nil, fmt.Errorf("virtual host %s: domains %v, want [*]", vh.GetName(), vh.GetDomains())
	}
	return CompileVirtualHost(rc, vh)
}

// CompileVirtualHost turns one virtual host of a route configuration into a Table (an ingress
// gateway's route configurations have one per hostname: vhosts.go selects among them).
func CompileVirtualHost(rc *route.RouteConfiguration, vh *route.VirtualHost) (*Table, error) {
	if vh.GetRetryPolicy() != nil || len(vh.GetRequestHeadersToAdd()) > 0 || len(vh.GetResponseHeadersToAdd()) > 0 ||
		vh.GetRequireTls() != route.VirtualHost_NONE || len(vh.GetRequestHeadersToRemove()) > 0 || len(vh.GetResponseHeadersToRemove()) > 0 ||
		len(rc.GetRequestHeadersToAdd()) > 0 || len(rc.GetResponseHeadersToAdd()) > 0 || len(rc.GetInternalOnlyHeaders()) > 0 {
		return nil, fmt.Errorf("route configuration %s: virtual host and configuration level retries, header changes and TLS requirements are not supported", rc.GetName())
	}
	t := &Table{Name: rc.GetName(), VirtualHost: vh.GetName(), PerFilter: vh.GetTypedPerFilterConfig()}
	var errs []error
	for i, r := range vh.GetRoutes() {
		rt, err := compileRoute(r)
		if err != nil {
			errs = append(errs, fmt.Errorf("route configuration %s: routes[%d] (%s): %w", rc.GetName(), i, r.GetName(), err))
			continue
		}
		t.Routes = append(t.Routes, rt)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return t, nil
}

func compileRoute(r *route.Route) (*Route, error) {
	m, err := compileMatch(r.GetMatch())
	if err != nil {
		return nil, err
	}
	rt := &Route{Name: r.GetName(), m: m, PerFilter: r.GetTypedPerFilterConfig()}
	rt.Headers.Add, err = headerValues(r.GetRequestHeadersToAdd())
	if err != nil {
		return nil, err
	}
	rt.Headers.RespAdd, err = headerValues(r.GetResponseHeadersToAdd())
	if err != nil {
		return nil, err
	}
	rt.Headers.Remove, rt.Headers.RespRemove = lowerAll(r.GetRequestHeadersToRemove()), lowerAll(r.GetResponseHeadersToRemove())
	switch a := r.GetAction().(type) {
	case *route.Route_Route:
		act, err := compileAction(a.Route)
		if err != nil {
			return nil, err
		}
		rt.Action = act
		rt.Kind = ActionCluster
		if len(act.Weighted) > 0 {
			rt.Kind = ActionWeighted
		}
	case *route.Route_Redirect:
		rd := a.Redirect
		if rd.GetRegexRewrite() != nil || rd.GetHttpsRedirect() {
			return nil, errors.New("redirect: regex_rewrite and https_redirect are not supported")
		}
		rt.Kind = ActionRedirect
		rt.Redirect = &Redirect{Host: rd.GetHostRedirect(), Path: rd.GetPathRedirect(), PrefixRewrite: rd.GetPrefixRewrite(),
			Scheme: rd.GetSchemeRedirect(), Port: rd.GetPortRedirect(), StripQuery: rd.GetStripQuery(), Status: redirectStatus(rd.GetResponseCode())}
	case *route.Route_DirectResponse:
		rt.Kind = ActionDirect
		d := &Direct{Status: int(a.DirectResponse.GetStatus())}
		switch b := a.DirectResponse.GetBody().GetSpecifier().(type) {
		case *core.DataSource_InlineString:
			d.Body = b.InlineString
		case *core.DataSource_InlineBytes:
			d.Body = string(b.InlineBytes)
		case nil:
		default:
			return nil, fmt.Errorf("direct response body %T is not supported (inline only)", b)
		}
		rt.Direct = d
	default:
		return nil, fmt.Errorf("action %T is not supported", a)
	}
	return rt, nil
}

func redirectStatus(c route.RedirectAction_RedirectResponseCode) int {
	switch c {
	case route.RedirectAction_FOUND:
		return 302
	case route.RedirectAction_SEE_OTHER:
		return 303
	case route.RedirectAction_TEMPORARY_REDIRECT:
		return 307
	case route.RedirectAction_PERMANENT_REDIRECT:
		return 308
	}
	return 301
}

func compileAction(a *route.RouteAction) (*Action, error) {
	if a.GetHashPolicy() != nil || len(a.GetUpgradeConfigs()) > 0 || a.GetClusterHeader() != "" || a.GetClusterSpecifierPlugin() != "" ||
		a.GetHostRewriteHeader() != "" || a.GetHostRewritePathRegex() != nil ||
		a.GetAutoHostRewrite() != nil || a.GetRateLimits() != nil || a.GetHedgePolicy() != nil || a.GetPathRewritePolicy() != nil {
		return nil, errors.New("only cluster, weighted clusters, timeouts, retries, mirrors, prefix and regex rewrites and host rewrites are supported")
	}
	act := &Action{NotFoundStatus: 503, PrefixRewrite: a.GetPrefixRewrite(), HostRewrite: a.GetHostRewriteLiteral()}
	if a.GetClusterNotFoundResponseCode() == route.RouteAction_INTERNAL_SERVER_ERROR {
		act.NotFoundStatus = 500
	} else if a.GetClusterNotFoundResponseCode() == route.RouteAction_NOT_FOUND {
		act.NotFoundStatus = 404
	}
	switch cs := a.GetClusterSpecifier().(type) {
	case *route.RouteAction_Cluster:
		act.Cluster = cs.Cluster
	case *route.RouteAction_WeightedClusters:
		for _, c := range cs.WeightedClusters.GetClusters() {
			w := Weighted{Cluster: c.GetName(), Weight: uint64(c.GetWeight().GetValue()), HostRewrite: c.GetHostRewriteLiteral()}
			var err error
			if w.Headers.Add, err = headerValues(c.GetRequestHeadersToAdd()); err != nil {
				return nil, err
			}
			if w.Headers.RespAdd, err = headerValues(c.GetResponseHeadersToAdd()); err != nil {
				return nil, err
			}
			w.Headers.Remove, w.Headers.RespRemove = lowerAll(c.GetRequestHeadersToRemove()), lowerAll(c.GetResponseHeadersToRemove())
			act.total += w.Weight
			act.Weighted = append(act.Weighted, w)
		}
		if act.total == 0 {
			return nil, errors.New("weighted clusters: the weights add up to 0")
		}
	default:
		return nil, fmt.Errorf("cluster specifier %T is not supported", cs)
	}
	if a.GetTimeout() != nil {
		act.Timeout = a.GetTimeout().AsDuration()
	} else {
		act.Timeout = 15 * time.Second // Envoy's default route timeout
	}
	if rr := a.GetRegexRewrite(); rr != nil {
		re, err := regexp.Compile(rr.GetPattern().GetRegex())
		if err != nil {
			return nil, fmt.Errorf("regex_rewrite: %w", err)
		}
		act.regexRewrite, act.regexSub = re, goSubstitution(rr.GetSubstitution())
	}
	for _, mp := range a.GetRequestMirrorPolicies() {
		if mp.GetRuntimeFraction().GetRuntimeKey() != "" || mp.GetClusterHeader() != "" {
			return nil, errors.New("request mirror: runtime keys and cluster headers are not supported")
		}
		mi := Mirror{Cluster: mp.GetCluster(), Numerator: 100, Denominator: 100}
		if f := mp.GetRuntimeFraction().GetDefaultValue(); mp.GetRuntimeFraction() != nil {
			mi.Numerator, mi.Denominator = uint64(f.GetNumerator()), Denominator(f.GetDenominator())
		}
		act.Mirrors = append(act.Mirrors, mi)
	}
	rp, err := compileRetry(a.GetRetryPolicy())
	if err != nil {
		return nil, err
	}
	act.Retry = rp
	return act, nil
}

// goSubstitution turns RE2's \1 backreferences into Go's ${1}.
func goSubstitution(s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9' {
			b = append(b, "${"...)
			b = append(b, s[i+1], '}')
			i++
			continue
		}
		if s[i] == '$' {
			b = append(b, '$', '$')
			continue
		}
		b = append(b, s[i])
	}
	return string(b)
}

func headerValues(in []*core.HeaderValueOption) ([]HeaderValue, error) {
	var out []HeaderValue
	for _, h := range in {
		hv := HeaderValue{Name: lowerName(h.GetHeader().GetKey()), Value: h.GetHeader().GetValue()}
		switch h.GetAppendAction() {
		case core.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
			hv.Append = h.GetAppend() == nil || h.GetAppend().GetValue() //nolint:staticcheck // the deprecated append flag still wins when set
		case core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
		default:
			return nil, fmt.Errorf("header %s: append action %s is not supported", h.GetHeader().GetKey(), h.GetAppendAction())
		}
		if err := checkFormat(hv.Value); err != nil {
			return nil, fmt.Errorf("header %s: %w", hv.Name, err)
		}
		out = append(out, hv)
	}
	return out, nil
}
