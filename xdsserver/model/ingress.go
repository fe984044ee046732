package model

import (
	"cmp"
	"crypto/tls"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/xdsserver/kubeobj"
)

// Istio's ingress class, its controller, and the label that sends ingress traffic through a
// Service's waypoint (pilot/pkg/serviceregistry/ambient/services.go, ingressUseWaypointFromLabels).
const (
	IngressClassName        = "istio"
	IngressController       = "istio.io/gateway-controller"
	LabelIngressUseWaypoint = "istio.io/ingress-use-waypoint"
	gatewayGroup            = "gateway.networking.k8s.io"
)

// Ingress is the mesh's ingress Gateways (class istio) and the HTTPRoutes attached to them,
// with the status conditions Gateway API defines for both.
type Ingress struct {
	Gateways []*IngressGateway // sorted by namespace and name
	Routes   []*IngressRoute   // HTTPRoutes with a parentRef to an ingress Gateway, sorted
}

// IngressGateway is a Gateway of an ingress class: a mesh workload with its own identity that
// takes HTTP and HTTPS from outside and sends it into the mesh over HBONE.
type IngressGateway struct {
	Namespace, Name string
	Class           string
	ServiceAccount  string // <name>-istio unless annotated (gateway.istio.io/service-account)
	Listeners       []*IngressListener
	Conditions      []Condition // Accepted, Programmed
	Origin          policies.Origin
}

// IngressListener is one listener of an ingress Gateway. Served is false when it is invalid,
// conflicts with another or its certificate cannot be used: only that listener is left out.
type IngressListener struct {
	Name          string
	Field         string // spec.listeners[i]
	Port          uint32
	Protocol      string // HTTP or HTTPS
	Hostname      string // "" matches every host
	AllowedFrom   string // Same, All or Selector
	AllowedLabels map[string]string
	Cert          *Certificate // HTTPS: the first certificateRef's Secret
	Served        bool
	Hosts         []*IngressHost // the virtual hosts of the routes attached to it, sorted by hostname
	Attached      int            // how many HTTPRoutes are attached
	Conditions    []Condition    // Accepted, Conflicted, ResolvedRefs, Programmed
}

// Certificate is a TLS certificate and key read from a Secret (kubernetes.io/tls).
type Certificate struct {
	Secret  string // namespace/name
	CertPEM []byte
	KeyPEM  []byte
}

// IngressHost is the rules one hostname of a listener routes with, in the order tried.
type IngressHost struct {
	Hostname string // a hostname, *.suffix, or * (any)
	Rules    []*RouteRule
}

// IngressRoute is an HTTPRoute's attachment to ingress Gateways: one status per parentRef
// naming one.
type IngressRoute struct {
	Route   *HTTPRoute
	Parents []RouteParent
}

// RouteParent is the status of an HTTPRoute for one of its parentRefs.
type RouteParent struct {
	Index       int    // in spec.parentRefs
	Gateway     string // namespace/name
	SectionName string
	Port        uint32
	Conditions  []Condition // Accepted, ResolvedRefs
}

// Condition is a Gateway API status condition.
type Condition struct {
	Type    string
	Status  string // True or False
	Reason  string
	Message string
}

// Key is "namespace/name".
func (g *IngressGateway) Key() string { return g.Namespace + "/" + g.Name }

// Identity is the SPIFFE id its pods run as: spiffe://<td>/ns/<ns>/sa/<service account>.
func (g *IngressGateway) Identity(trustDomain string) string {
	return "spiffe://" + cmp.Or(trustDomain, DefaultTrustDomain) + "/ns/" + g.Namespace + "/sa/" + g.ServiceAccount
}

// Condition returns the condition of a type, or a zero one.
func ConditionOf(list []Condition, typ string) Condition {
	for _, c := range list {
		if c.Type == typ {
			return c
		}
	}
	return Condition{}
}

// IngressGateway returns the named ingress Gateway, or nil.
func (m *Mesh) IngressGateway(ns, name string) *IngressGateway {
	if m.Ingress == nil {
		return nil
	}
	return find(m.Ingress.Gateways, func(g *IngressGateway) int { return compareKey(g.Namespace, g.Name, ns, name) })
}

// IngressUsesWaypoint reports whether ingress Gateways send a Service's traffic through its
// waypoint: it has one and istio.io/ingress-use-waypoint is true on it or, when absent there,
// on its namespace (istiod's ingressUseWaypointFromLabels).
func (m *Mesh) IngressUsesWaypoint(s *Service) bool {
	if s == nil || s.Waypoint == nil {
		return false
	}
	v, ok := s.Labels[LabelIngressUseWaypoint]
	if !ok {
		if ns := m.Namespace(s.Namespace); ns != nil {
			v, ok = ns.Labels[LabelIngressUseWaypoint]
		}
	}
	b, err := strconv.ParseBool(v)
	return ok && err == nil && b
}

// isIngressClass reports whether Gateways of a class are ingress gateways: "istio" unless a
// GatewayClass of that name has another controller, or any class of Istio's gateway controller.
func (b *builder) isIngressClass(name string) bool {
	gc := b.classes[name]
	if gc == nil {
		return name == IngressClassName
	}
	return gc.Spec.ControllerName == IngressController
}

func cond(typ string, ok bool, reason, format string, args ...any) Condition {
	s := "False"
	if ok {
		s = "True"
	}
	return Condition{Type: typ, Status: s, Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// buildIngress reads the ingress Gateways, resolves their certificates, attaches HTTPRoutes
// and computes the status conditions. It runs after buildRouting (it uses the valid routes).
func (b *builder) buildIngress(in *kubeobj.Set) {
	ing := &Ingress{}
	gws := inNamespace(in.Gateways, func(o *kubeobj.Gateway) *kubeobj.ObjectMeta { return &o.Metadata })
	gws = dedupe(b, "Gateway", gws, func(o *kubeobj.Gateway) (string, policies.Origin) { return o.Metadata.Key(), o.Origin })
	secrets := map[string]*kubeobj.Secret{}
	for _, s := range in.Secrets {
		secrets[orDefault(s.Metadata.Namespace)+"/"+s.Metadata.Name] = s
	}
	grants := &grantIndex{grants: in.ReferenceGrants}
	for _, gw := range gws {
		if b.isWaypointClass(gw.Spec.GatewayClassName) || !b.isIngressClass(gw.Spec.GatewayClassName) {
			continue
		}
		ing.Gateways = append(ing.Gateways, b.convertIngress(gw, secrets, grants))
	}
	slices.SortFunc(ing.Gateways, func(a, c *IngressGateway) int { return compareKey(a.Namespace, a.Name, c.Namespace, c.Name) })
	b.m.Ingress = ing
	if b.m.Routing == nil {
		return
	}
	for _, hr := range b.m.Routing.HTTPRoutes {
		if r := b.attachRoute(hr, grants); r != nil {
			ing.Routes = append(ing.Routes, r)
		}
	}
	for _, g := range ing.Gateways {
		for _, l := range g.Listeners {
			for _, h := range l.Hosts {
				sortGatewayRules(h.Rules)
			}
			slices.SortFunc(l.Hosts, func(a, c *IngressHost) int { return cmp.Compare(a.Hostname, c.Hostname) })
			if l.Served {
				l.Conditions = setCondition(l.Conditions, cond("Programmed", true, "Programmed", "%d route(s) attached", l.Attached))
			}
		}
	}
}

func setCondition(list []Condition, c Condition) []Condition {
	for i := range list {
		if list[i].Type == c.Type {
			list[i] = c
			return list
		}
	}
	return append(list, c)
}

// convertIngress validates an ingress Gateway's listeners one by one: a bad listener (or one
// whose certificate is bad or missing) is not served, and says why in its conditions; the
// others are.
func (b *builder) convertIngress(gw *kubeobj.Gateway, secrets map[string]*kubeobj.Secret, grants *grantIndex) *IngressGateway {
	meta := gw.Metadata
	g := &IngressGateway{Namespace: orDefault(meta.Namespace), Name: meta.Name, Class: gw.Spec.GatewayClassName, Origin: gw.Origin}
	names, err := GatewayDeployedNames(meta.Name, g.Class, meta.Annotations, false, "", func(string, string) string { return "" })
	g.ServiceAccount = cmp.Or(names.ServiceAccount, meta.Name+"-"+g.Class)
	if err != nil {
		b.warn(gw.Origin, "Gateway", g.Key(), "metadata.annotations", "%v", err)
	}
	fail := func(field, format string, args ...any) {
		b.fail(gw.Origin, "Gateway", g.Key(), field, format, args...)
	}
	seenName := map[string]bool{}
	valid := 0
	for i, l := range gw.Spec.Listeners {
		f := idx("spec.listeners", i)
		il := &IngressListener{Name: l.Name, Field: f, Protocol: l.Protocol, Hostname: l.Hostname, AllowedFrom: "Same"}
		if l.Port >= 1 && l.Port <= 65535 {
			il.Port = uint32(l.Port)
		}
		g.Listeners = append(g.Listeners, il)
		bad := func(field, reason, format string, args ...any) {
			fail(field, format, args...)
			il.Conditions = append(il.Conditions, cond("Accepted", false, reason, format, args...),
				cond("Programmed", false, "Invalid", "%s: "+format, append([]any{field}, args...)...))
		}
		switch {
		case l.Name == "" || !isDNSSubdomain(l.Name):
			bad(f+".name", "Invalid", "%q is not a valid listener name", l.Name)
			continue
		case seenName[l.Name]:
			bad(f+".name", "Invalid", "listener name %q is used twice", l.Name)
			continue
		case l.Port < 1 || l.Port > 65535:
			bad(f+".port", "PortUnavailable", "%d is not a port number (1-65535)", l.Port)
			continue
		case l.Protocol != "HTTP" && l.Protocol != "HTTPS":
			bad(f+".protocol", "UnsupportedProtocol", "protocol %q is not served by this gateway (HTTP, HTTPS)", l.Protocol)
			continue
		case l.Hostname != "" && !validListenerHostname(l.Hostname):
			bad(f+".hostname", "Invalid", "%q is not a hostname (a DNS name, optionally starting with \"*.\")", l.Hostname)
			continue
		case l.Protocol == "HTTP" && l.TLS != nil:
			bad(f+".tls", "Invalid", "must not be set on an HTTP listener")
			continue
		}
		seenName[l.Name] = true
		if ar := l.AllowedRoutes; ar != nil && ar.Namespaces != nil {
			il.AllowedFrom = cmp.Or(ar.Namespaces.From, "Same")
			switch il.AllowedFrom {
			case "Same", "All":
			case "Selector":
				if ar.Namespaces.Selector == nil || len(ar.Namespaces.Selector.MatchExpressions) > 0 {
					bad(f+".allowedRoutes.namespaces.selector", "Invalid", "from: Selector needs a selector with matchLabels (matchExpressions are not supported)")
					continue
				}
				il.AllowedLabels = ar.Namespaces.Selector.MatchLabels
			default:
				bad(f+".allowedRoutes.namespaces.from", "Invalid", "%q is not All, Same or Selector", il.AllowedFrom)
				continue
			}
		}
		il.Conditions = append(il.Conditions, cond("Accepted", true, "Accepted", "listener is valid"))
		valid++
		if l.Protocol == "HTTPS" {
			cert, reason, msg := b.listenerCertificate(g, l, f, secrets, grants)
			if cert == nil {
				b.fail(gw.Origin, "Gateway", g.Key(), f+".tls.certificateRefs", "%s: the listener is not served", msg)
				il.Conditions = append(il.Conditions, cond("ResolvedRefs", false, reason, "%s", msg),
					cond("Programmed", false, "Invalid", "%s", msg))
				continue
			}
			il.Cert = cert
		}
		il.Conditions = append(il.Conditions, cond("ResolvedRefs", true, "ResolvedRefs", "all references resolved"))
		il.Served = true
	}
	b.conflicts(g)
	served := 0
	for _, l := range g.Listeners {
		if l.Served {
			served++
		}
	}
	switch {
	case valid == len(g.Listeners) && valid > 0:
		g.Conditions = append(g.Conditions, cond("Accepted", true, "Accepted", "resource accepted"))
	case valid > 0:
		g.Conditions = append(g.Conditions, cond("Accepted", true, "ListenersNotValid", "%d of %d listeners are invalid", len(g.Listeners)-valid, len(g.Listeners)))
	default:
		g.Conditions = append(g.Conditions, cond("Accepted", false, "ListenersNotValid", "no valid listener"))
	}
	if served > 0 {
		g.Conditions = append(g.Conditions, cond("Programmed", true, "Programmed", "%d of %d listeners served", served, len(g.Listeners)))
	} else {
		g.Conditions = append(g.Conditions, cond("Programmed", false, "Invalid", "no listener can be served"))
	}
	return g
}

// conflicts marks listeners on one port that cannot be told apart: different protocols
// (ProtocolConflict) or the same hostname (HostnameConflict). The first keeps the port.
func (b *builder) conflicts(g *IngressGateway) {
	for i, l := range g.Listeners {
		if !l.Served && ConditionOf(l.Conditions, "Accepted").Status != "True" {
			continue
		}
		reason := ""
		for _, o := range g.Listeners[:i] {
			if o.Port != l.Port || !o.Served && ConditionOf(o.Conditions, "Conflicted").Status == "True" {
				continue
			}
			switch {
			case o.Protocol != l.Protocol:
				reason = "ProtocolConflict"
			case o.Hostname == l.Hostname:
				reason = "HostnameConflict"
			}
			if reason != "" {
				msg := fmt.Sprintf("port %d is already used by listener %q (%s, hostname %q)", l.Port, o.Name, o.Protocol, o.Hostname)
				b.fail(g.Origin, "Gateway", g.Key(), l.Field, "%s: the listener is not served", msg)
				l.Served = false
				l.Conditions = setCondition(l.Conditions, cond("Conflicted", true, reason, "%s", msg))
				l.Conditions = setCondition(l.Conditions, cond("Programmed", false, "Invalid", "%s", msg))
				break
			}
		}
		if reason == "" {
			l.Conditions = setCondition(l.Conditions, cond("Conflicted", false, "NoConflicts", "no conflicts"))
		}
	}
}

// listenerCertificate resolves an HTTPS listener's first certificateRef to a usable
// certificate, or says why it cannot (a Gateway API listener reason and a message).
func (b *builder) listenerCertificate(g *IngressGateway, l kubeobj.Listener, f string, secrets map[string]*kubeobj.Secret, grants *grantIndex) (*Certificate, string, string) {
	t := l.TLS
	if t == nil || len(t.CertificateRefs) == 0 {
		return nil, "InvalidCertificateRef", f + ".tls.certificateRefs: an HTTPS listener needs a certificate"
	}
	if t.Mode != "" && t.Mode != "Terminate" {
		return nil, "InvalidCertificateRef", fmt.Sprintf("%s.tls.mode: %q is not served (Terminate only)", f, t.Mode)
	}
	ref := t.CertificateRefs[0]
	if ref.Group != nil && *ref.Group != "" && *ref.Group != "core" || ref.Kind != nil && *ref.Kind != "Secret" {
		return nil, "InvalidCertificateRef", fmt.Sprintf("%s.tls.certificateRefs[0]: only core Secrets are supported", f)
	}
	ns := g.Namespace
	if ref.Namespace != nil && *ref.Namespace != "" {
		ns = *ref.Namespace
	}
	key := ns + "/" + ref.Name
	if ns != g.Namespace && !grants.allows("Gateway", g.Namespace, "", "Secret", ns, ref.Name) {
		return nil, "RefNotPermitted", fmt.Sprintf("Secret %s is in another namespace and no ReferenceGrant there allows Gateways of %s to refer to it", key, g.Namespace)
	}
	s := secrets[key]
	if s == nil {
		return nil, "InvalidCertificateRef", fmt.Sprintf("Secret %s does not exist", key)
	}
	crt, okc := s.Value("tls.crt")
	k, okk := s.Value("tls.key")
	if !okc || !okk {
		return nil, "InvalidCertificateRef", fmt.Sprintf("Secret %s has no tls.crt and tls.key", key)
	}
	if _, err := tls.X509KeyPair(crt, k); err != nil {
		return nil, "InvalidCertificateRef", fmt.Sprintf("Secret %s: tls.crt and tls.key are not a usable certificate and key: %v", key, err)
	}
	return &Certificate{Secret: key, CertPEM: crt, KeyPEM: k}, "", ""
}

func validListenerHostname(h string) bool {
	return isDNSSubdomain(strings.TrimPrefix(h, "*.")) && !strings.Contains(strings.TrimPrefix(h, "*."), "*")
}

// grantIndex answers whether a ReferenceGrant allows a cross-namespace reference.
type grantIndex struct{ grants []*kubeobj.ReferenceGrant }

func (gi *grantIndex) allows(fromKind, fromNS, toGroup, toKind, toNS, toName string) bool {
	for _, g := range gi.grants {
		if orDefault(g.Metadata.Namespace) != toNS {
			continue
		}
		from := slices.ContainsFunc(g.Spec.From, func(f kubeobj.ReferenceGrantFrom) bool {
			return f.Group == gatewayGroup && f.Kind == fromKind && f.Namespace == fromNS
		})
		to := slices.ContainsFunc(g.Spec.To, func(t kubeobj.ReferenceGrantTo) bool {
			return (t.Group == toGroup || t.Group == "core" && toGroup == "") && t.Kind == toKind && (t.Name == "" || t.Name == toName)
		})
		if from && to {
			return true
		}
	}
	return false
}
