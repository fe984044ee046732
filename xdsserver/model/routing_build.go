package model

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/xdsserver/kubeobj"
)

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// created parses an object's creationTimestamp (zero when absent or unreadable).
func created(m kubeobj.ObjectMeta) time.Time {
	t, _ := time.Parse(time.RFC3339, m.CreationTimestamp)
	return t
}

// buildRouting reads the routing objects, validates them, and binds them to the Services
// that have a waypoint, in the order istiod hands them to that waypoint.
func (b *builder) buildRouting(in *kubeobj.Set) {
	domain := b.cfg.ClusterDomain
	r := &Routing{Services: map[string]*ServiceRouting{}}
	report := func(errs, warns []error) {
		b.m.Errors = append(b.m.Errors, errs...)
		b.m.Warnings = append(b.m.Warnings, warns...)
	}
	ns := func(m kubeobj.ObjectMeta) string { return orDefault(m.Namespace) + "/" + m.Name }
	for _, o := range dedupe(b, "VirtualService", in.VirtualServices, func(o *kubeobj.VirtualService) (string, policies.Origin) {
		return ns(o.Metadata), o.Origin
	}) {
		v, errs, warns := convertVirtualService(o, domain)
		report(errs, warns)
		if v != nil {
			r.VirtualServices = append(r.VirtualServices, v)
		}
	}
	for _, o := range dedupe(b, "HTTPRoute", in.HTTPRoutes, func(o *kubeobj.HTTPRoute) (string, policies.Origin) {
		return ns(o.Metadata), o.Origin
	}) {
		h, errs, warns := convertHTTPRoute(o, domain)
		report(errs, warns)
		if h != nil {
			r.HTTPRoutes = append(r.HTTPRoutes, h)
		}
	}
	for _, o := range dedupe(b, "DestinationRule", in.DestinationRules, func(o *kubeobj.DestinationRule) (string, policies.Origin) {
		return ns(o.Metadata), o.Origin
	}) {
		d, errs, warns := convertDestinationRule(o, domain)
		report(errs, warns)
		if d != nil {
			r.DestinationRules = append(r.DestinationRules, d)
		}
	}
	b.keepLastGood(in, r)
	slices.SortFunc(r.VirtualServices, func(a, b *VirtualService) int { return compareKey(a.Namespace, a.Name, b.Namespace, b.Name) })
	slices.SortFunc(r.HTTPRoutes, func(a, b *HTTPRoute) int { return compareKey(a.Namespace, a.Name, b.Namespace, b.Name) })
	slices.SortFunc(r.DestinationRules, func(a, b *DestinationRule) int { return compareKey(a.Namespace, a.Name, b.Namespace, b.Name) })
	bd := &binder{b: b, r: r, used: map[string]bool{}, warned: map[string]bool{}}
	bd.bind()
	b.m.Routing = r
}

// keepLastGood keeps the previous mesh's valid version of a routing object whose new version
// is invalid (or could not be read), as Istio's validating webhook would have refused the
// change and the cluster kept the old object: a bad edit never drops routing that worked.
func (b *builder) keepLastGood(in *kubeobj.Set, r *Routing) {
	prev := b.cfg.Previous
	if prev == nil || prev.Routing == nil {
		return
	}
	bad := map[string]policies.Origin{}
	for _, k := range in.Rejected {
		bad[k.Kind+" "+orDefault(k.Namespace)+"/"+k.Name] = k.Origin
	}
	for _, e := range b.m.Errors {
		if pe, ok := e.(*policies.Error); ok && (pe.Kind == "VirtualService" || pe.Kind == "HTTPRoute" || pe.Kind == "DestinationRule") {
			bad[pe.Kind+" "+pe.Object] = pe.Origin
		}
	}
	keep := func(kind, key string, origin policies.Origin) bool {
		o, isBad := bad[kind+" "+key]
		if !isBad {
			return false
		}
		b.m.Errors = append(b.m.Errors, &policies.Error{Origin: o, Kind: kind, Object: key,
			Reason: "the previous valid version is kept (read from " + origin.String() + "), as a validating webhook would have refused this one"})
		return true
	}
	have := func(kind, key string) bool {
		switch kind {
		case "VirtualService":
			return slices.ContainsFunc(r.VirtualServices, func(v *VirtualService) bool { return v.Key() == key })
		case "HTTPRoute":
			return slices.ContainsFunc(r.HTTPRoutes, func(v *HTTPRoute) bool { return v.Key() == key })
		}
		return slices.ContainsFunc(r.DestinationRules, func(v *DestinationRule) bool { return v.Key() == key })
	}
	for _, v := range prev.Routing.VirtualServices {
		if !have("VirtualService", v.Key()) && keep("VirtualService", v.Key(), v.Origin) {
			r.VirtualServices = append(r.VirtualServices, v)
		}
	}
	for _, h := range prev.Routing.HTTPRoutes {
		if !have("HTTPRoute", h.Key()) && keep("HTTPRoute", h.Key(), h.Origin) {
			r.HTTPRoutes = append(r.HTTPRoutes, h)
		}
	}
	for _, d := range prev.Routing.DestinationRules {
		if !have("DestinationRule", d.Key()) && keep("DestinationRule", d.Key(), d.Origin) {
			r.DestinationRules = append(r.DestinationRules, d)
		}
	}
}

// binder attaches routing objects to the Services with a waypoint.
type binder struct {
	b      *builder
	r      *Routing
	used   map[string]bool // "Kind ns/name" of objects that apply somewhere
	warned map[string]bool // warnings already given (an object may apply to several Services)
}

func (bd *binder) warn(origin policies.Origin, kind, object, field, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	k := kind + object + field + msg
	if bd.warned[k] {
		return
	}
	bd.warned[k] = true
	bd.b.m.Warnings = append(bd.b.m.Warnings, &policies.Error{Origin: origin, Kind: kind, Object: object, Field: field, Reason: msg})
}

// candidate is a route set with its place in istiod's order for one waypoint.
type candidate struct {
	set     *RouteSet
	rank    int  // 0: exported only to the waypoint's namespace, from it; 1: exported to it from another; 2: public
	gwLocal bool // Gateway API routes in the waypoint's namespace come first within a rank
}

func (bd *binder) bind() {
	services := slices.Clone(bd.b.services)
	slices.SortFunc(services, func(a, b *Service) int { return compareKey(a.Namespace, a.Name, b.Namespace, b.Name) })
	for _, s := range services {
		if s.Waypoint == nil || s.WaypointOf != "" {
			continue
		}
		w := s.Waypoint
		var cands []candidate
		for _, v := range bd.r.VirtualServices {
			if c, ok := bd.virtualServiceFor(v, s, w); ok {
				cands = append(cands, c)
			}
		}
		cands = append(cands, bd.httpRouteSets(s, w)...)
		slices.SortStableFunc(cands, func(a, b candidate) int {
			return cmp.Or(cmp.Compare(a.rank, b.rank), boolFirst(a.gwLocal, b.gwLocal), a.set.Created.Compare(b.set.Created),
				cmp.Compare(a.set.Name, b.set.Name), cmp.Compare(a.set.Namespace, b.set.Namespace))
		})
		sr := &ServiceRouting{}
		for _, c := range cands {
			sr.RouteSets = append(sr.RouteSets, c.set)
		}
		sr.DestinationRule = bd.destinationRuleFor(s, w)
		if len(sr.RouteSets) == 0 && sr.DestinationRule == nil {
			continue
		}
		bd.r.Services[s.Key()] = sr
		bd.checkRules(s, w, sr)
		if len(sr.RouteSets) > 1 {
			bd.precedence(s, sr)
		}
	}
	bd.bindEntries()
	bd.unused()
}

func boolFirst(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return -1
	}
	return 1
}

// visibility is the rank of an object exported by exportTo to the waypoint's namespace, or -1
// when it is not visible there.
func visibility(exportTo []string, objNS, waypointNS string) int {
	if len(exportTo) == 0 || slices.Contains(exportTo, "*") {
		return 2
	}
	if slices.Contains(exportTo, "~") {
		return -1
	}
	for _, e := range exportTo {
		if e == "." {
			e = objNS
		}
		if e == waypointNS {
			if objNS == waypointNS {
				return 0
			}
			return 1
		}
	}
	return -1
}

// virtualServiceFor says whether a VirtualService applies to Service s at waypoint w, as
// istiod's getVirtualServiceForWaypoint and SelectVirtualServices decide: bound to the mesh,
// in the Service's or the waypoint's namespace, exported to the waypoint's namespace, with a
// host matching the Service and HTTP rules.
func (bd *binder) virtualServiceFor(v *VirtualService, s *Service, w *Waypoint) (candidate, bool) {
	gws := v.Spec.GetGateways()
	if len(gws) > 0 && !slices.Contains(gws, MeshGateway) {
		return candidate{}, false
	}
	if !slices.ContainsFunc(v.Spec.GetHosts(), func(h string) bool { return hostMatches(h, s.Hostname) }) {
		return candidate{}, false
	}
	bd.used["VirtualService "+v.Key()] = true
	if v.Namespace != w.Namespace && v.Namespace != s.Namespace {
		bd.warn(v.Origin, "VirtualService", v.Key(), "metadata.namespace", "applies to Service %s only from its namespace or from waypoint %s's: not applied there", s.Key(), w.Key())
		return candidate{}, false
	}
	rank := visibility(v.Spec.GetExportTo(), v.Namespace, w.Namespace)
	if rank < 0 {
		bd.warn(v.Origin, "VirtualService", v.Key(), "spec.exportTo", "not exported to namespace %s of waypoint %s: not applied to Service %s", w.Namespace, w.Key(), s.Key())
		return candidate{}, false
	}
	if len(v.Spec.GetHttp()) == 0 {
		bd.warn(v.Origin, "VirtualService", v.Key(), "spec", "has no http rules: waypoint %s serves only HTTP ports (tcp and tls rules are not applied)", w.Key())
		return candidate{}, false
	}
	if len(v.Spec.GetTcp()) > 0 || len(v.Spec.GetTls()) > 0 {
		bd.warn(v.Origin, "VirtualService", v.Key(), "spec", "tcp and tls rules are not applied by waypoint %s (it serves HTTP ports only)", w.Key())
	}
	set := &RouteSet{Kind: "VirtualService", Namespace: v.Namespace, Name: v.Name, Created: v.Created}
	for i, h := range v.Spec.GetHttp() {
		f := idx("spec.http", i)
		if h.GetDelegate() != nil {
			bd.warn(v.Origin, "VirtualService", v.Key(), f+".delegate", "delegation is not applied at waypoints: the rule is left out")
			continue
		}
		set.Rules = append(set.Rules, &RouteRule{HTTP: h, Kind: "VirtualService", Object: v.Key(), Field: f, Origin: v.Origin})
	}
	return candidate{set: set, rank: rank}, true
}

// httpRouteSets are the HTTPRoutes whose parentRefs name Service s, merged as istiod merges
// them: one set per (namespace, parent port), rules of routes in creation order, then sorted by
// the Gateway API's precedence.
func (bd *binder) httpRouteSets(s *Service, w *Waypoint) []candidate {
	type group struct {
		port   uint32
		ns     string
		routes []*HTTPRoute
	}
	groups := map[string]*group{}
	for _, hr := range bd.r.HTTPRoutes {
		for i, p := range hr.Spec.ParentRefs {
			if (p.Group != nil && *p.Group != "" && *p.Group != "core") || p.Kind == nil || *p.Kind != "Service" {
				continue
			}
			pns := hr.Namespace
			if p.Namespace != nil {
				pns = string(*p.Namespace)
			}
			if pns != s.Namespace || string(p.Name) != s.Name {
				continue
			}
			bd.used["HTTPRoute "+hr.Key()] = true
			if hr.Namespace != w.Namespace && hr.Namespace != s.Namespace {
				bd.warn(hr.Origin, "HTTPRoute", hr.Key(), idx("spec.parentRefs", i),
					"a route in another namespace than Service %s's (a consumer route) applies to that namespace's sidecars, not at waypoint %s", s.Key(), w.Key())
				continue
			}
			var port uint32
			if p.Port != nil {
				port = uint32(*p.Port)
				if !slices.ContainsFunc(s.Ports, func(sp ServicePort) bool { return sp.Port == port }) {
					bd.warn(hr.Origin, "HTTPRoute", hr.Key(), idx("spec.parentRefs", i)+".port", "Service %s has no port %d", s.Key(), port)
				}
			}
			k := hr.Namespace + "/" + strconv.Itoa(int(port))
			g := groups[k]
			if g == nil {
				g = &group{port: port, ns: hr.Namespace}
				groups[k] = g
			}
			if !slices.Contains(g.routes, hr) {
				g.routes = append(g.routes, hr)
			}
		}
	}
	var out []candidate
	for _, k := range sortedKeys(groups) {
		g := groups[k]
		slices.SortStableFunc(g.routes, func(a, b *HTTPRoute) int {
			return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Namespace, b.Namespace))
		})
		name := g.ns + "~"
		if g.port != 0 {
			name += strconv.Itoa(int(g.port)) + "~"
		}
		set := &RouteSet{Kind: "HTTPRoute", Namespace: g.ns, Name: name + s.Hostname, Gateway: true, Created: g.routes[0].Created}
		for _, hr := range g.routes {
			for _, rule := range hr.Rules {
				if g.port != 0 {
					rule = withPort(rule, g.port)
				}
				set.Rules = append(set.Rules, rule)
			}
		}
		sortGatewayRules(set.Rules)
		out = append(out, candidate{set: set, rank: 2, gwLocal: g.ns == w.Namespace})
	}
	return out
}

// withPort is istiod's augmentPortMatch: the rule matches only on the parentRef's port.
func withPort(r *RouteRule, port uint32) *RouteRule {
	h := proto.Clone(r.HTTP).(*networking.HTTPRoute)
	for _, m := range h.Match {
		m.Port = port
	}
	if len(h.Match) == 0 {
		h.Match = []*networking.HTTPMatchRequest{{Port: port}}
	}
	c := *r
	c.HTTP = h
	return &c
}

// sortGatewayRules is istiod's sortHTTPRoutes (stable): rules without match last; then exact
// over prefix over regex paths, longer paths first, a method match first, more header matches
// first, more query parameter matches first.
func sortGatewayRules(rules []*RouteRule) {
	rank := func(m *networking.HTTPMatchRequest) (int, int) {
		switch t := m.GetUri().GetMatchType().(type) {
		case *networking.StringMatch_Exact:
			return 3, len(t.Exact)
		case *networking.StringMatch_Prefix:
			return 2, len(t.Prefix)
		case *networking.StringMatch_Regex:
			return 1, len(t.Regex)
		}
		return -1, 0
	}
	slices.SortStableFunc(rules, func(a, b *RouteRule) int {
		am, bm := a.HTTP.GetMatch(), b.HTTP.GetMatch()
		switch {
		case len(am) == 0 && len(bm) == 0:
			return 0
		case len(am) == 0:
			return 1
		case len(bm) == 0:
			return -1
		}
		m1, m2 := am[0], bm[0]
		r1, l1 := rank(m1)
		r2, l2 := rank(m2)
		return cmp.Or(cmp.Compare(r2, r1), cmp.Compare(l2, l1), boolFirst(m1.GetMethod() != nil, m2.GetMethod() != nil),
			cmp.Compare(len(m2.GetHeaders()), len(m1.GetHeaders())), cmp.Compare(len(m2.GetQueryParams()), len(m1.GetQueryParams())))
	})
}

// destinationRuleFor picks the DestinationRule of a Service at waypoint w as istiod's
// sidecar scope does for the waypoint: the waypoint's namespace first, then the Service's, then
// the root namespace, then any other exporting one; in a namespace the most specific host;
// several for the same host there are merged (subsets added, the oldest's traffic policy).
func (bd *binder) destinationRuleFor(s *Service, w *Waypoint) *DestinationRule {
	tiers := []string{w.Namespace, s.Namespace, bd.b.cfg.RootNamespace, ""}
	for _, tier := range tiers {
		var found []*DestinationRule
		best := -1
		for _, d := range bd.r.DestinationRules {
			if d.Spec.GetWorkloadSelector() != nil || !hostMatches(d.Host, s.Hostname) {
				continue
			}
			if tier != "" && d.Namespace != tier || tier == "" && slices.Contains(tiers[:3], d.Namespace) {
				continue
			}
			bd.used["DestinationRule "+d.Key()] = true
			if visibility(d.Spec.GetExportTo(), d.Namespace, w.Namespace) < 0 {
				bd.warn(d.Origin, "DestinationRule", d.Key(), "spec.exportTo", "not exported to namespace %s of waypoint %s: not applied to Service %s", w.Namespace, w.Key(), s.Key())
				continue
			}
			spec := len(strings.TrimPrefix(d.Host, "*"))
			if d.Host == s.Hostname {
				spec = 1 << 20
			}
			switch {
			case spec > best:
				best, found = spec, []*DestinationRule{d}
			case spec == best:
				found = append(found, d)
			}
		}
		if len(found) == 0 {
			continue
		}
		return bd.mergeDestinationRules(found)
	}
	return nil
}

func (bd *binder) mergeDestinationRules(drs []*DestinationRule) *DestinationRule {
	if len(drs) == 1 {
		return drs[0]
	}
	slices.SortStableFunc(drs, func(a, b *DestinationRule) int {
		return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.Name, b.Name))
	})
	base := *drs[0]
	spec := proto.Clone(base.Spec).(*networking.DestinationRule)
	names := map[string]bool{}
	for _, s := range spec.Subsets {
		names[s.GetName()] = true
	}
	for _, d := range drs[1:] {
		if d.Spec.GetTrafficPolicy() != nil {
			bd.warn(d.Origin, "DestinationRule", d.Key(), "spec.trafficPolicy", "DestinationRule %s for the same host is older: its traffic policy is used, this one's is not", base.Key())
		}
		for i, s := range d.Spec.GetSubsets() {
			if names[s.GetName()] {
				bd.warn(d.Origin, "DestinationRule", d.Key(), idx("spec.subsets", i), "subset %q is defined by an older DestinationRule for the same host: this one is not used", s.GetName())
				continue
			}
			names[s.GetName()] = true
			spec.Subsets = append(spec.Subsets, s)
		}
	}
	base.Spec = spec
	return &base
}

// checkRules warns about what a waypoint leaves out of a Service's rules, and about
// destinations it cannot reach.
func (bd *binder) checkRules(s *Service, w *Waypoint, sr *ServiceRouting) {
	for _, set := range sr.RouteSets {
		for _, r := range set.Rules {
			for j, m := range r.HTTP.GetMatch() {
				mf := r.Field + "." + idx("match", j)
				if set.Gateway {
					mf = r.Field
				}
				switch {
				case len(m.GetSourceLabels()) > 0:
					bd.warn(r.Origin, r.Kind, r.Object, mf+".sourceLabels", "a waypoint cannot see the client's labels: istiod drops this match at waypoints")
				case len(m.GetGateways()) > 0 && !slices.Contains(m.GetGateways(), MeshGateway):
					bd.warn(r.Origin, r.Kind, r.Object, mf+".gateways", "does not name %q: this match does not apply at waypoints", MeshGateway)
				case m.GetSourceNamespace() != "" && m.GetSourceNamespace() != w.Namespace:
					bd.warn(r.Origin, r.Kind, r.Object, mf+".sourceNamespace", "istiod compares sourceNamespace with the waypoint's own namespace (%s), not the client's: this match never applies at waypoint %s", w.Namespace, w.Key())
				}
			}
			for i, d := range r.HTTP.GetRoute() {
				bd.destination(r, idx(r.Field+".route", i)+".destination", d.GetDestination(), w)
			}
			if m := r.HTTP.GetMirror(); m != nil {
				bd.destination(r, r.Field+".mirror", m, w)
			}
			for i, m := range r.HTTP.GetMirrors() {
				bd.destination(r, idx(r.Field+".mirrors", i)+".destination", m.GetDestination(), w)
			}
			if r.HTTP.GetCorsPolicy() != nil {
				bd.warn(r.Origin, r.Kind, r.Object, r.Field+".corsPolicy", "CORS is not applied by this waypoint")
			}
		}
	}
}

// destination warns when a destination is not a Service this waypoint serves: the waypoint
// routes it to a cluster that does not exist (503, or 500 with Gateway API semantics).
func (bd *binder) destination(r *RouteRule, field string, d *networking.Destination, w *Waypoint) {
	if d == nil {
		return
	}
	dst := bd.b.serviceByHost(d.GetHost())
	switch {
	case dst == nil:
		bd.warn(r.Origin, r.Kind, r.Object, field+".host", "%s is not a Service of the mesh: requests routed there are answered 503 (500 for an HTTPRoute), cluster not found", d.GetHost())
		return
	case dst.Waypoint == nil || dst.Waypoint.Key() != w.Key():
		bd.warn(r.Origin, r.Kind, r.Object, field+".host", "Service %s is not served by waypoint %s: routing from one waypoint to a Service outside it is not implemented; requests routed there are answered 503 (500 for an HTTPRoute), cluster not found", dst.Key(), w.Key())
		return
	}
	if d.GetPort() != nil && !slices.ContainsFunc(dst.Ports, func(p ServicePort) bool { return p.Port == d.GetPort().GetNumber() }) {
		bd.warn(r.Origin, r.Kind, r.Object, field+".port.number", "Service %s has no port %d", dst.Key(), d.GetPort().GetNumber())
	}
	if sub := d.GetSubset(); sub != "" {
		if bd.destinationRuleFor(dst, w).Subset(sub) == nil {
			bd.warn(r.Origin, r.Kind, r.Object, field+".subset", "no DestinationRule applied to Service %s at waypoint %s defines subset %q: requests routed there are answered 503, cluster not found", dst.Key(), w.Key(), sub)
		}
	}
}

func (b *builder) serviceByHost(h string) *Service {
	ns, name, ok := splitServiceHost(h, b.cfg.ClusterDomain)
	if !ok {
		return nil
	}
	for _, s := range b.services {
		if s.Namespace == ns && s.Name == name {
			return s
		}
	}
	return nil
}

// precedence says, on every route set but the first, which sets come before it and why.
func (bd *binder) precedence(s *Service, sr *ServiceRouting) {
	var order []string
	for _, set := range sr.RouteSets {
		order = append(order, set.describe())
	}
	for i, set := range sr.RouteSets[1:] {
		why := "by creation time, then name"
		if sr.RouteSets[0].Gateway && !set.Gateway {
			why = "Istio puts Gateway API routes of the waypoint's namespace before VirtualServices"
		}
		origin, kind, object := set.Rules[0].Origin, set.Kind, set.Rules[0].Object
		bd.warn(origin, kind, object, "", "Service %s has %d route sets, tried in this order: %s (%s); a request takes the first rule that matches, so set %d is reached only by requests the earlier ones do not match",
			s.Key(), len(sr.RouteSets), strings.Join(order, ", "), why, i+2)
	}
}

func (s *RouteSet) describe() string {
	if s.Kind == "VirtualService" {
		return "VirtualService " + s.Namespace + "/" + s.Name
	}
	var names []string
	for _, r := range s.Rules {
		if !slices.Contains(names, r.Object) {
			names = append(names, r.Object)
		}
	}
	return "HTTPRoute " + strings.Join(names, "+")
}

// unused warns about routing objects that apply to no Service with a waypoint.
func (bd *binder) unused() {
	for _, v := range bd.r.VirtualServices {
		if !bd.used["VirtualService "+v.Key()] && appliesToMesh(v.Spec) {
			bd.warn(v.Origin, "VirtualService", v.Key(), "spec.hosts", "no Service with a waypoint matches its hosts: not applied by any waypoint (ztunnel does not route HTTP)")
		}
	}
	for _, h := range bd.r.HTTPRoutes {
		if !bd.used["HTTPRoute "+h.Key()] && !onlyGatewayParents(h) {
			bd.warn(h.Origin, "HTTPRoute", h.Key(), "spec.parentRefs", "names no Service bound to a waypoint: not applied by any waypoint")
		}
	}
	for _, d := range bd.r.DestinationRules {
		if !bd.used["DestinationRule "+d.Key()] && d.Spec.GetWorkloadSelector() == nil {
			bd.warn(d.Origin, "DestinationRule", d.Key(), "spec.host", "%s is no Service with a waypoint: not applied by any waypoint", d.Host)
		}
	}
}

func appliesToMesh(vs *networking.VirtualService) bool {
	return len(vs.GetGateways()) == 0 || slices.Contains(vs.GetGateways(), MeshGateway)
}

// onlyGatewayParents reports whether every parentRef of a route names a Gateway (ingress.go
// reports on those), not a Service.
func onlyGatewayParents(h *HTTPRoute) bool {
	for _, p := range h.Spec.ParentRefs {
		if p.Kind != nil && *p.Kind != "Gateway" || p.Group != nil && *p.Group != gatewayGroup {
			return false
		}
	}
	return len(h.Spec.ParentRefs) > 0
}
