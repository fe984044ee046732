package server

import (
	"github.com/goambient/goambient/xdsserver/ca"
	"github.com/goambient/goambient/xdsserver/waypointxds"
)

// grant is what a node's Envoy streams on the TLS listener were admitted as: a waypoint's
// bootstrap token names its Gateway (key "namespace/name"); a Kubernetes service account token
// (TokenReview) names a service account (namespace, sa), which must be the one the Gateway's
// pods run as (<gateway>-istio for an ingress Gateway, the Gateway's name for a waypoint).
type grant struct {
	key     string // KindWaypoint: the Gateway
	ns, sa  string // KindWorkload: the service account
	tokenSA bool   // the grant is a service account's
}

func (g grant) String() string {
	if g.tokenSA {
		return "serviceaccount " + g.ns + "/" + g.sa
	}
	return "waypoint " + g.key
}

// grantOf is the grant a caller may be admitted with for Envoy types, or false when its kind
// is never served them (ztunnels).
func grantOf(c *ca.Caller) (grant, bool) {
	switch c.Kind {
	case ca.KindWaypoint:
		return grant{key: c.Namespace + "/" + c.Name}, true
	case ca.KindWorkload:
		return grant{ns: c.Namespace, sa: c.Name, tokenSA: true}, true
	}
	return grant{}, false
}

// allows reports why g may not have the resources (and the TLS certificates) of Gateway key,
// whose resources are w (nil when the Gateway has none); "" when it may. Istio's rule for an
// ingress gateway's certificates (pilot/pkg/xds/sds.go, kubernetes-gateway:// secrets) is that
// the proxy's verified identity is in the Gateway's namespace and the Secret is one of the
// Gateway's verified certificate references (its namespace, or another namespace by a
// ReferenceGrant, resolved by the translation into w.Credentials). goambient is stricter on the
// identity: the token must name this Gateway, or be its pods' own service account.
func (g grant) allows(key string, w *waypointxds.WaypointResources) string {
	if !g.tokenSA {
		if key != g.key {
			return "the node belongs to waypoint " + key + ", the token is waypoint " + g.key
		}
		return ""
	}
	if w == nil {
		return "waypoint " + key + " has no resources"
	}
	if w.Namespace != g.ns || w.ServiceAccount == "" || w.ServiceAccount != g.sa {
		return "the node belongs to waypoint " + key + ", whose pods run as " + w.Namespace + "/" + w.ServiceAccount + ", the token is " + g.String()
	}
	return ""
}
