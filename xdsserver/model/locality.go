package model

import (
	"strings"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/xdsserver/kubeobj"
)

// Values of spec.trafficDistribution and of the traffic-distribution annotations.
const (
	trafficPreferClose    = "PreferClose" // the older name of PreferSameZone
	trafficPreferSameZone = "PreferSameZone"
	trafficPreferSameNode = "PreferSameNode"
)

// buildNodes reads each Node's locality from its topology labels, as istiod's ambient index
// does (pilot/pkg/serviceregistry/ambient/nodes.go); a node without them has a zero Locality.
func (b *builder) buildNodes(in []*kubeobj.Node) {
	b.m.Localities = map[string]Locality{}
	for _, n := range dedupe(b, "Node", in, func(o *kubeobj.Node) (string, policies.Origin) { return o.Metadata.Name, o.Origin }) {
		l := n.Metadata.Labels
		b.m.Localities[n.Metadata.Name] = Locality{Region: l[LabelTopologyRegion], Zone: l[LabelTopologyZone], Subzone: l[LabelTopologySubzone]}
	}
}

// placeLocalities gives every workload its node's locality (a pod on a node the input does not
// have has none, as in istiod).
func (b *builder) placeLocalities() {
	for _, w := range b.workloads {
		w.Locality = b.m.Localities[w.Node]
	}
}

// loadBalancing is istiod's translation of a Service's endpoint selection (constructService
// in pilot/pkg/serviceregistry/ambient/services.go): internalTrafficPolicy Local keeps traffic
// on the client's node (NODE, STRICT); otherwise the traffic distribution — spec first, then
// the Service's annotation, then its namespace's — of PreferSameZone (or PreferClose) prefers
// NETWORK, REGION, ZONE and PreferSameNode also SUBZONE, NODE (FAILOVER: falling back to
// farther endpoints); publishNotReadyAddresses allows unready endpoints. An annotation value
// istiod does not know is a warning, and means no preference, as in istiod.
func (b *builder) loadBalancing(o *kubeobj.Service) LoadBalancing {
	var lb LoadBalancing
	spec := o.Spec
	if spec.InternalTrafficPolicy != nil && *spec.InternalTrafficPolicy == "Local" {
		lb = LoadBalancing{Scopes: []Scope{ScopeNode}, Mode: LBStrict}
	} else {
		switch b.trafficDistribution(o) {
		case trafficPreferSameZone:
			lb = LoadBalancing{Scopes: []Scope{ScopeNetwork, ScopeRegion, ScopeZone}, Mode: LBFailover}
		case trafficPreferSameNode:
			lb = LoadBalancing{Scopes: []Scope{ScopeNetwork, ScopeRegion, ScopeZone, ScopeSubzone, ScopeNode}, Mode: LBFailover}
		}
	}
	lb.AllowAll = spec.PublishNotReadyAddresses
	return lb
}

// trafficDistribution is istiod's GetTrafficDistribution: PreferSameZone, PreferSameNode or
// "": the spec's value, else the Service's annotation, else its namespace's.
func (b *builder) trafficDistribution(o *kubeobj.Service) string {
	if v := o.Spec.TrafficDistribution; v != nil {
		switch *v {
		case trafficPreferClose, trafficPreferSameZone:
			return trafficPreferSameZone
		case trafficPreferSameNode:
			return trafficPreferSameNode
		}
	}
	if v, ok := b.annotatedTraffic("Service", o.Metadata.Key(), o.Origin, o.Metadata.Annotations); ok {
		return v
	}
	if ns := b.namespaces[o.Metadata.Namespace]; ns != nil {
		return ns.TrafficDistribution
	}
	return ""
}

// namespaceTraffic reads each namespace's traffic-distribution annotation once.
func (b *builder) namespaceTraffic() {
	for _, ns := range b.namespaces {
		ns.TrafficDistribution, _ = b.annotatedTraffic("Namespace", ns.Name, ns.Origin, ns.Annotations)
	}
}

// annotatedTraffic reads the traffic-distribution annotation (case does not matter); ok is
// false when there is none. A value istiod does not know is a warning and no preference.
func (b *builder) annotatedTraffic(kind, object string, origin policies.Origin, annotations map[string]string) (string, bool) {
	v := annotations[AnnotationTrafficDistribution]
	switch strings.ToLower(v) {
	case "":
		return "", false
	case strings.ToLower(trafficPreferClose), strings.ToLower(trafficPreferSameZone):
		return trafficPreferSameZone, true
	case strings.ToLower(trafficPreferSameNode):
		return trafficPreferSameNode, true
	}
	b.warn(origin, kind, object, "metadata.annotations["+AnnotationTrafficDistribution+"]",
		"%q is not %s, %s or %s: no preference (as istiod)", v, trafficPreferSameZone, trafficPreferClose, trafficPreferSameNode)
	return "", true
}
