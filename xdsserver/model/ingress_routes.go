package model

import (
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"
)

// attachRoute attaches an HTTPRoute to the listeners of the ingress Gateways its parentRefs
// name, as Gateway API defines it (sectionName and port select listeners, allowedRoutes the
// namespaces, hostnames are intersected), and computes its status for each of those parents.
// Routes that name no ingress Gateway give nil.
func (b *builder) attachRoute(hr *HTTPRoute, grants *grantIndex) *IngressRoute {
	var out *IngressRoute
	var rules []*RouteRule
	var resolved Condition
	for i, p := range hr.Spec.ParentRefs {
		if p.Group != nil && string(*p.Group) != gatewayGroup || p.Kind != nil && string(*p.Kind) != "Gateway" {
			continue
		}
		ns := hr.Namespace
		if p.Namespace != nil {
			ns = string(*p.Namespace)
		}
		g := b.m.IngressGateway(ns, string(p.Name))
		if g == nil {
			continue // a waypoint, another controller's Gateway, or none: not ours to report
		}
		if out == nil {
			out = &IngressRoute{Route: hr}
			rules, resolved = b.ingressRules(hr, grants)
		}
		rp := RouteParent{Index: i, Gateway: g.Key()}
		if p.SectionName != nil {
			rp.SectionName = string(*p.SectionName)
		}
		if p.Port != nil {
			rp.Port = uint32(*p.Port)
		}
		field := idx("spec.parentRefs", i)
		var selected, allowed []*IngressListener
		for _, l := range g.Listeners {
			if !l.Served || rp.SectionName != "" && l.Name != rp.SectionName || rp.Port != 0 && l.Port != rp.Port {
				continue
			}
			selected = append(selected, l)
			if b.listenerAllows(l, g, hr.Namespace) {
				allowed = append(allowed, l)
			}
		}
		var accepted []*IngressListener
		for _, l := range allowed {
			if len(intersectHostnames(l.Hostname, hr.Spec.Hostnames)) > 0 {
				accepted = append(accepted, l)
			}
		}
		var c Condition
		switch {
		case len(selected) == 0:
			c = cond("Accepted", false, "NoMatchingParent", "Gateway %s has no served listener matching sectionName %q port %d", g.Key(), rp.SectionName, rp.Port)
		case len(allowed) == 0:
			c = cond("Accepted", false, "NotAllowedByListeners", "no listener of Gateway %s allows routes from namespace %s (allowedRoutes)", g.Key(), hr.Namespace)
		case len(accepted) == 0:
			c = cond("Accepted", false, "NoMatchingListenerHostname", "no hostname of the route matches a listener hostname of Gateway %s", g.Key())
		default:
			c = cond("Accepted", true, "Accepted", "route was valid")
		}
		if c.Status == "False" {
			b.warn(hr.Origin, "HTTPRoute", hr.Key(), field, "not attached to Gateway %s: %s", g.Key(), c.Message)
		}
		rp.Conditions = []Condition{c, resolved}
		out.Parents = append(out.Parents, rp)
		for _, l := range accepted {
			l.Attached++
			for _, h := range intersectHostnames(l.Hostname, hr.Spec.Hostnames) {
				host := l.host(h)
				host.Rules = append(host.Rules, rules...)
			}
		}
	}
	return out
}

func (l *IngressListener) host(name string) *IngressHost {
	for _, h := range l.Hosts {
		if h.Hostname == name {
			return h
		}
	}
	h := &IngressHost{Hostname: name}
	l.Hosts = append(l.Hosts, h)
	return h
}

// listenerAllows is allowedRoutes.namespaces for a route in namespace ns.
func (b *builder) listenerAllows(l *IngressListener, g *IngressGateway, ns string) bool {
	switch l.AllowedFrom {
	case "All":
		return true
	case "Selector":
		n := b.namespaces[ns]
		return n != nil && selects(l.AllowedLabels, n.Labels, true)
	}
	return ns == g.Namespace
}

// intersectHostnames is Gateway API's hostname matching of a listener and a route: the route's
// hostnames the listener's covers (a wildcard route hostname narrowed to the listener's), or
// the listener's when the route has none; "*" when neither has any.
func intersectHostnames[T ~string](listener string, route []T) []string {
	if len(route) == 0 {
		if listener == "" {
			return []string{"*"}
		}
		return []string{listener}
	}
	var out []string
	for _, r := range route {
		h := string(r)
		switch {
		case listener == "" || h == listener:
			out = append(out, h)
		case strings.HasPrefix(listener, "*.") && !strings.HasPrefix(h, "*.") && strings.HasSuffix(h, listener[1:]):
			out = append(out, h)
		case strings.HasPrefix(h, "*.") && !strings.HasPrefix(listener, "*.") && strings.HasSuffix(listener, h[1:]):
			out = append(out, listener)
		case strings.HasPrefix(h, "*.") && strings.HasPrefix(listener, "*."):
			if strings.HasSuffix(h, listener[1:]) {
				out = append(out, h)
			} else if strings.HasSuffix(listener, h[1:]) {
				out = append(out, listener)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// ingressRules are a route's rules with each backend checked: a Service that does not exist,
// lacks the port, or is in another namespace without a ReferenceGrant is taken out of the rule
// (a rule left with none answers 500, as Gateway API requires). The condition is the route's
// ResolvedRefs.
func (b *builder) ingressRules(hr *HTTPRoute, grants *grantIndex) ([]*RouteRule, Condition) {
	resolved := cond("ResolvedRefs", true, "ResolvedRefs", "all references resolved")
	problem := func(reason, field, format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		b.warn(hr.Origin, "HTTPRoute", hr.Key(), field, "%s: requests routed there are answered 500", msg)
		if resolved.Status == "True" {
			resolved = cond("ResolvedRefs", false, reason, "%s", msg)
		}
	}
	check := func(field string, d *networking.Destination) bool {
		ns, name, ok := splitServiceHost(d.GetHost(), b.cfg.ClusterDomain)
		if !ok {
			problem("BackendNotFound", field, "%s is not a Service", d.GetHost())
			return false
		}
		if ns != hr.Namespace && !grants.allows("HTTPRoute", hr.Namespace, "", "Service", ns, name) {
			problem("RefNotPermitted", field, "Service %s/%s is in another namespace and no ReferenceGrant there allows HTTPRoutes of %s to refer to it", ns, name, hr.Namespace)
			return false
		}
		s := b.serviceByHost(d.GetHost())
		if s == nil {
			problem("BackendNotFound", field, "Service %s/%s does not exist", ns, name)
			return false
		}
		if d.GetPort() != nil && !slices.ContainsFunc(s.Ports, func(p ServicePort) bool { return p.Port == d.GetPort().GetNumber() }) {
			problem("BackendNotFound", field, "Service %s has no port %d", s.Key(), d.GetPort().GetNumber())
			return false
		}
		return true
	}
	var out []*RouteRule
	for _, r := range hr.Rules {
		h := proto.Clone(r.HTTP).(*networking.HTTPRoute)
		had := len(h.Route) > 0
		h.Route = slices.DeleteFunc(h.Route, func(d *networking.HTTPRouteDestination) bool {
			return !check(r.Field+".backendRefs", d.GetDestination())
		})
		h.Mirrors = slices.DeleteFunc(h.Mirrors, func(m *networking.HTTPMirrorPolicy) bool {
			return !check(r.Field+".filters", m.GetDestination())
		})
		if had && len(h.Route) == 0 {
			h.DirectResponse = &networking.HTTPDirectResponse{Status: 500}
		}
		if len(h.Route) == 1 {
			h.Route[0].Weight = 0
		}
		c := *r
		c.HTTP = h
		out = append(out, &c)
	}
	return out, resolved
}
