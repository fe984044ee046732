package kube

import (
	"time"

	networkingclient "istio.io/client-go/pkg/apis/networking/v1"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"

	"github.com/goambient/goambient/xdsserver/kubeobj"
)

// routingInformers are the informers of the routing kinds a waypoint applies: VirtualServices
// and DestinationRules (networking.istio.io/v1, which serves v1beta1 and v1alpha3 objects too)
// and HTTPRoutes (gateway.networking.k8s.io/v1); and of the egress kinds, ServiceEntries and
// WorkloadEntries (networking.istio.io/v1).
func routingInformers(isf istioinformers.SharedInformerFactory, gf gwinformers.SharedInformerFactory) map[string]cache.SharedIndexInformer {
	return map[string]cache.SharedIndexInformer{
		"VirtualService":  isf.Networking().V1().VirtualServices().Informer(),
		"DestinationRule": isf.Networking().V1().DestinationRules().Informer(),
		"HTTPRoute":       gf.Gateway().V1().HTTPRoutes().Informer(),
		"ServiceEntry":    isf.Networking().V1().ServiceEntries().Informer(),
		"WorkloadEntry":   isf.Networking().V1().WorkloadEntries().Informer(),
	}
}

// objectMeta is the kubeobj metadata of a cluster object.
func objectMeta(o metav1.Object) kubeobj.ObjectMeta {
	m := kubeobj.ObjectMeta{Name: o.GetName(), Namespace: o.GetNamespace(), UID: string(o.GetUID()), Labels: o.GetLabels(), Annotations: o.GetAnnotations()}
	if ts := o.GetCreationTimestamp(); !ts.IsZero() {
		m.CreationTimestamp = ts.UTC().Format(time.RFC3339)
	}
	return m
}

// The specs are shared with the informers' objects, which the model never modifies (it
// resolves host names in a copy).

func convertVirtualService(src any) (any, []error) {
	o, ok := src.(*networkingclient.VirtualService)
	if !ok {
		return nil, nil
	}
	return &kubeobj.VirtualService{Metadata: objectMeta(o), Spec: &o.Spec, Origin: Origin}, nil
}

func convertDestinationRule(src any) (any, []error) {
	o, ok := src.(*networkingclient.DestinationRule)
	if !ok {
		return nil, nil
	}
	return &kubeobj.DestinationRule{Metadata: objectMeta(o), Spec: &o.Spec, Origin: Origin}, nil
}

func convertHTTPRoute(src any) (any, []error) {
	o, ok := src.(*gatewayv1.HTTPRoute)
	if !ok {
		return nil, nil
	}
	return &kubeobj.HTTPRoute{Metadata: objectMeta(o), Spec: o.Spec, Origin: Origin}, nil
}

// convertServiceEntry keeps the addresses istiod's IP allocator wrote to the status, which the
// model reuses as istiod does.
func convertServiceEntry(src any) (any, []error) {
	o, ok := src.(*networkingclient.ServiceEntry)
	if !ok {
		return nil, nil
	}
	se := &kubeobj.ServiceEntry{Metadata: objectMeta(o), Spec: &o.Spec, Origin: Origin}
	for _, a := range o.Status.GetAddresses() {
		se.Status = append(se.Status, kubeobj.ServiceEntryAddress{Value: a.GetValue(), Host: a.GetHost()})
	}
	return se, nil
}

func convertWorkloadEntry(src any) (any, []error) {
	o, ok := src.(*networkingclient.WorkloadEntry)
	if !ok {
		return nil, nil
	}
	return &kubeobj.WorkloadEntry{Metadata: objectMeta(o), Spec: &o.Spec, Origin: Origin}, nil
}

// eachRouting converts the routing kinds into set.
func (c *converter) eachRouting(l *listers, each func(kind string, store cache.Store, conv func(any) (any, []error), add func(any)), set *kubeobj.Set) {
	each("VirtualService", l.virtualServices, convertVirtualService,
		func(o any) { set.VirtualServices = append(set.VirtualServices, o.(*kubeobj.VirtualService)) })
	each("DestinationRule", l.destinationRules, convertDestinationRule,
		func(o any) { set.DestinationRules = append(set.DestinationRules, o.(*kubeobj.DestinationRule)) })
	each("HTTPRoute", l.httpRoutes, convertHTTPRoute,
		func(o any) { set.HTTPRoutes = append(set.HTTPRoutes, o.(*kubeobj.HTTPRoute)) })
	each("ServiceEntry", l.serviceEntries, convertServiceEntry,
		func(o any) { set.ServiceEntries = append(set.ServiceEntries, o.(*kubeobj.ServiceEntry)) })
	each("WorkloadEntry", l.workloadEntries, convertWorkloadEntry,
		func(o any) { set.WorkloadEntries = append(set.WorkloadEntries, o.(*kubeobj.WorkloadEntry)) })
}
