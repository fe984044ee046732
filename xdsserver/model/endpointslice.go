package model

import (
	"fmt"

	"github.com/goambient/goambient/xdsserver/kubeobj"
)

// podRef is what an EndpointSlice endpoint's targetRef must equal for the pod to be behind the
// slice's Service: istiod indexes slices by kind, namespace, name and uid
// (pilot/pkg/serviceregistry/ambient/workloads.go, endpointSliceAddressIndex), so a targetRef
// of a pod since replaced (same name, another uid), or without the uid of a pod that has one,
// names no pod.
type podRef struct{ namespace, name, uid string }

// endpointSliceServices maps each pod an EndpointSlice names to the slice's Service. Slices of
// FQDN addresses, without the kubernetes.io/service-name label or whose Service is not known
// are skipped (the last with a warning), as istiod skips them; a targetRef that matches no pod
// is warned about.
func (b *builder) endpointSliceServices(in []*kubeobj.EndpointSlice, byKey map[string]*Service) map[podRef][]*Service {
	pods := map[podRef]bool{}
	for _, w := range b.workloads {
		pods[podRef{w.Namespace, w.Name, w.PodUID}] = true
	}
	out := map[podRef][]*Service{}
	for _, es := range in {
		ns := orDefault(es.Metadata.Namespace)
		name, ok := es.Metadata.Labels[LabelServiceName]
		if !ok || es.AddressType == "FQDN" {
			continue
		}
		svc := byKey[ns+"/"+name]
		if svc == nil {
			b.warn(es.Origin, "EndpointSlice", ns+"/"+es.Metadata.Name, "metadata.labels["+LabelServiceName+"]", "Service %s/%s is not found", ns, name)
			continue
		}
		for i, ep := range es.Endpoints {
			if ep.TargetRef == nil || ep.TargetRef.Kind != "Pod" {
				continue
			}
			ref := podRef{ep.TargetRef.Namespace, ep.TargetRef.Name, ep.TargetRef.UID}
			if ref.namespace != ns && ref.namespace != "" {
				// istiod would take it; the model keeps a workload's Services in its namespace.
				b.warn(es.Origin, "EndpointSlice", ns+"/"+es.Metadata.Name, fmt.Sprintf("endpoints[%d].targetRef.namespace", i),
					"%q: a pod of another namespace is not put behind Service %s", ref.namespace, svc.Key())
				continue
			}
			if !pods[ref] {
				b.warn(es.Origin, "EndpointSlice", ns+"/"+es.Metadata.Name, fmt.Sprintf("endpoints[%d].targetRef", i),
					"names no pod (namespace %q, name %q, uid %q): a pod is matched by all three, as istiod does", ref.namespace, ref.name, ref.uid)
				continue
			}
			out[ref] = append(out[ref], svc)
		}
	}
	return out
}
