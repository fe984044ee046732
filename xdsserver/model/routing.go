package model

import (
	"strings"
	"time"

	networking "istio.io/api/networking/v1alpha3"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/goambient/goambient/policies"
)

// Routing is the mesh's traffic management as waypoints apply it: the valid routing objects,
// and for each Service bound to a waypoint the route sets and the DestinationRule that apply
// to its traffic there. It is part of the immutable Mesh.
type Routing struct {
	VirtualServices  []*VirtualService  // valid, sorted by namespace and name
	HTTPRoutes       []*HTTPRoute       // valid, sorted by namespace and name
	DestinationRules []*DestinationRule // valid, sorted by namespace and name
	// Services maps the namespace/name of each Service bound to a waypoint that has routes or
	// a DestinationRule to them.
	Services map[string]*ServiceRouting
}

// ServiceRouting is what a waypoint applies to one Service's HTTP traffic.
type ServiceRouting struct {
	// RouteSets are tried in this order, each rule of a set in its own order: the first match
	// wins (Envoy's route table is their concatenation). No set: the default route.
	RouteSets       []*RouteSet
	DestinationRule *DestinationRule // nil: none
}

// RouteSet is the HTTP rules of one VirtualService, or of the HTTPRoutes merged for one parent
// (namespace, port and Service), as istiod hands them to a waypoint (istiod turns HTTPRoutes
// into internal VirtualServices with "Gateway API semantics").
type RouteSet struct {
	Kind      string // VirtualService or HTTPRoute
	Namespace string
	Name      string // the VirtualService, or istiod's name of the merged set (<ns>~[<port>~]<host>)
	Gateway   bool   // Gateway API semantics (path-separated prefixes, 500 for a missing backend)
	Created   time.Time
	Rules     []*RouteRule
}

// RouteRule is one HTTP rule in Istio's networking form, with where it was written. Its
// destination hosts are fully qualified. It must not be modified.
type RouteRule struct {
	HTTP   *networking.HTTPRoute
	Kind   string // VirtualService or HTTPRoute
	Object string // namespace/name of the object that wrote it
	Field  string // spec.http[i] or spec.rules[i] (spec.rules[i].matches[j] for a split HTTPRoute rule)
	Origin policies.Origin
}

// VirtualService is a valid networking.istio.io VirtualService, its short host names
// resolved against its namespace (a copy: the input is not modified).
type VirtualService struct {
	Namespace, Name string
	Spec            *networking.VirtualService
	Created         time.Time
	Origin          policies.Origin
}

// HTTPRoute is a valid Gateway API HTTPRoute and its rules converted to Istio's form.
type HTTPRoute struct {
	Namespace, Name string
	Spec            gatewayv1.HTTPRouteSpec
	Created         time.Time
	Rules           []*RouteRule // converted, one per match, in rule order
	Origin          policies.Origin
}

// DestinationRule is a valid networking.istio.io DestinationRule with its host resolved.
type DestinationRule struct {
	Namespace, Name string
	Host            string // fully qualified
	Spec            *networking.DestinationRule
	Created         time.Time
	Origin          policies.Origin
}

// Key is "namespace/name".
func (v *VirtualService) Key() string { return v.Namespace + "/" + v.Name }

// Key is "namespace/name".
func (r *HTTPRoute) Key() string { return r.Namespace + "/" + r.Name }

// Key is "namespace/name".
func (d *DestinationRule) Key() string { return d.Namespace + "/" + d.Name }

// GetSpec returns the spec (nil-safe).
func (d *DestinationRule) GetSpec() *networking.DestinationRule {
	if d == nil {
		return nil
	}
	return d.Spec
}

// Subset returns the named subset, or nil.
func (d *DestinationRule) Subset(name string) *networking.Subset {
	if d == nil {
		return nil
	}
	for _, s := range d.Spec.GetSubsets() {
		if s.GetName() == name {
			return s
		}
	}
	return nil
}

// GetRouteSets returns the route sets (nil-safe).
func (s *ServiceRouting) GetRouteSets() []*RouteSet {
	if s == nil {
		return nil
	}
	return s.RouteSets
}

// GetDestinationRule returns the DestinationRule (nil-safe).
func (s *ServiceRouting) GetDestinationRule() *DestinationRule {
	if s == nil {
		return nil
	}
	return s.DestinationRule
}

// For returns the routing of a Service, nil when none applies.
func (r *Routing) For(s *Service) *ServiceRouting {
	if r == nil || s == nil {
		return nil
	}
	return r.Services[RoutingKey(s)]
}

// RoutingKey is a Service's key in Routing.Services: "namespace/name" for a Kubernetes
// Service, "ServiceEntry namespace/host" for a ServiceEntry's host.
func RoutingKey(s *Service) string {
	if s.Entry != nil {
		return KindServiceEntry + " " + s.Namespace + "/" + s.Hostname
	}
	return s.Key()
}

// ServiceByHost returns the Service with that hostname, or nil.
func (m *Mesh) ServiceByHost(hostname string) *Service {
	ns, name, ok := splitServiceHost(hostname, m.ClusterDomain)
	if !ok {
		return nil
	}
	return m.Service(ns, name)
}

// splitServiceHost splits <name>.<namespace>.svc.<domain>.
func splitServiceHost(h, domain string) (ns, name string, ok bool) {
	if domain == "" {
		domain = DefaultClusterDomain
	}
	rest, found := strings.CutSuffix(h, ".svc."+domain)
	if !found {
		return "", "", false
	}
	name, ns, found = strings.Cut(rest, ".")
	if !found || name == "" || ns == "" || strings.Contains(ns, ".") {
		return "", "", false
	}
	return ns, name, true
}

// resolveHost is Istio's ResolveShortnameToFQDN: a name without a dot is qualified with the
// object's namespace and the cluster domain; anything with a dot (even "reviews.default"),
// "*" and IP addresses are taken as written.
func resolveHost(h, ns, domain string) string {
	if h == "" || h == "*" || strings.Contains(h, ".") || strings.Contains(h, ":") {
		return h
	}
	return h + "." + ns + ".svc." + domain
}

// hostMatches is Istio's host.Name.Matches: equal, or one is a wildcard (*.suffix, or *)
// covering the other.
func hostMatches(a, b string) bool {
	if a == b {
		return true
	}
	aw, bw := strings.HasPrefix(a, "*"), strings.HasPrefix(b, "*")
	switch {
	case aw && bw:
		return strings.HasSuffix(a[1:], b[1:]) || strings.HasSuffix(b[1:], a[1:])
	case aw:
		return strings.HasSuffix(b, a[1:])
	case bw:
		return strings.HasSuffix(a, b[1:])
	}
	return false
}
