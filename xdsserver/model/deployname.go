package model

import (
	"fmt"
	"strings"
)

// DeployedNames are the names of the objects deployed for a Gateway: its Deployment and
// Service share Name; its pods run as ServiceAccount.
type DeployedNames struct {
	Name           string
	ServiceAccount string
	// Fallback says the first choice was taken by objects the Gateway does not own, and why.
	Fallback string
}

// NameTaken says what stands in the way of deploying a Gateway's objects under name (its
// Deployment, Service, pods) and serviceAccount: "" when nothing does, else a description
// such as `Service "handson"`.
type NameTaken func(name, serviceAccount string) string

// GatewayDeployedNames is the naming rule shared by the Kubernetes deployment controller
// (xdsserver/gatewaydeploy) and the model's synthesized waypoints: istiod's names, except that
// an object the Gateway does not own is never taken over.
//
// The gateway.istio.io/name-override annotation wins (and is the only candidate: taken, the
// Gateway is not deployed). Otherwise a waypoint class (noSuffix, istiod's DisableNameSuffix)
// is named after the Gateway, and when that is taken, <gateway>-<class> — the name istiod used
// before it dropped the suffix; any other class is <gateway>-<class> only. The service account
// is the gateway.istio.io/service-account annotation (the user's: not checked, and used as it
// is when it exists), else the name (checked with it). prefer, when it is one of
// the candidates, is tried first (the name the objects already have: a name does not move
// when the first choice becomes free again).
func GatewayDeployedNames(gateway, class string, annotations map[string]string, noSuffix bool, prefer string, taken NameTaken) (DeployedNames, error) {
	var candidates []string
	switch {
	case annotations[AnnotationNameOverride] != "":
		candidates = []string{annotations[AnnotationNameOverride]}
	case noSuffix:
		candidates = []string{gateway, gateway + "-" + class}
	default:
		candidates = []string{gateway + "-" + class}
	}
	order := candidates
	for i, c := range candidates {
		if c == prefer && i > 0 {
			order = append([]string{c}, append(candidates[:i:i], candidates[i+1:]...)...)
		}
	}
	saOf := func(name string) (sa, check string) {
		if sa := annotations[AnnotationServiceAccount]; sa != "" {
			return sa, "" // named by the user: used as it is when it exists, never taken over
		}
		return name, name
	}
	var why []string
	for _, name := range order {
		sa, check := saOf(name)
		if in := taken(name, check); in != "" {
			why = append(why, in)
			continue
		}
		n := DeployedNames{Name: name, ServiceAccount: sa}
		if first := candidates[0]; name != first {
			_, check := saOf(first)
			if in := taken(first, check); in != "" {
				n.Fallback = fmt.Sprintf("the namespace already has %s, which this Gateway does not own; its Deployment and Service are named %q instead of %q", in, name, first)
			} else {
				n.Fallback = fmt.Sprintf("its Deployment and Service keep the name %q they were given when %q was taken", name, first)
			}
		}
		return n, nil
	}
	return DeployedNames{}, fmt.Errorf("the names %s are taken by %s, which this Gateway does not own: not deployed", quoteAll(candidates), strings.Join(why, " and "))
}

func quoteAll(s []string) string {
	q := make([]string, len(s))
	for i, v := range s {
		q[i] = fmt.Sprintf("%q", v)
	}
	return strings.Join(q, " and ")
}
