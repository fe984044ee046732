package policies

import "fmt"

// Labels that early ambient releases used to bind a policy to a waypoint with a selector.
var waypointSelectorLabels = []string{"istio.io/gateway-name", "gateway.networking.k8s.io/gateway-name"}

// WaypointSelectorRemarks explains AuthorizationPolicies written in the form of early ambient
// releases, which bound a policy to a waypoint with selector: {matchLabels:
// {istio.io/gateway-name: NAME}}. Current Istio ignores selector policies at waypoints: such a
// policy applies only at the ztunnels of pods carrying that label (usually none, or the
// waypoint's own pods), so its L7 rules are enforced nowhere a request passes. Each remark
// names the targetRefs that replace the selector.
func WaypointSelectorRemarks(objs Objects) []error {
	var out []error
	for _, p := range objs.AuthorizationPolicies {
		labels := p.Spec.GetSelector().GetMatchLabels()
		for _, key := range waypointSelectorLabels {
			name, ok := labels[key]
			if !ok {
				continue
			}
			out = append(out, &Error{Origin: p.Origin, Kind: "AuthorizationPolicy", Object: p.Namespace + "/" + p.Name, Field: "spec.selector.matchLabels." + key,
				Reason: fmt.Sprintf("selector {%s: %s} is how early ambient releases bound a policy to a waypoint; current Istio ignores selector policies at waypoints "+
					"and applies this one only at the ztunnels of pods labelled %s=%s, not at the waypoint. "+
					"Bind it with targetRefs instead: the Service the waypoint serves, "+
					"targetRefs: [{kind: Service, group: \"\", name: %s}], or the waypoint itself, targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: <waypoint>}]",
					key, name, key, name, name)})
		}
	}
	return out
}
