package kube

import (
	"cmp"
	"encoding/json"
	"slices"
	"time"

	securityclient "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/xdsserver/kubeobj"
)

// Origin is where the objects of this source come from, in errors and warnings
// ("k8s", then the kind and namespace/name the error names).
var Origin = policies.Origin{File: "k8s"}

const securityAPIVersion = "security.istio.io/v1"

// converter turns the informers' objects into kubeobj and policies objects. It remembers each
// conversion by the identity of the cached object (an informer replaces an object on update,
// never modifies it), so a rebuild converts only what changed.
type converter struct {
	done map[string]converted // by kind/namespace/name
}

type converted struct {
	src  any     // the informer's object
	obj  any     // the converted object; nil when invalid
	errs []error // why it is invalid
}

func newConverter() *converter { return &converter{done: map[string]converted{}} }

// snapshot converts every cached object. It returns the objects (sorted by kind, namespace and
// name, so every build places addresses the same way), the problems of those left out, and
// the AuthorizationPolicies as they are in the cluster (for their status).
func (c *converter) snapshot(l *listers) (*kubeobj.Set, []error, []*securityclient.AuthorizationPolicy) {
	seen := map[string]bool{}
	set := &kubeobj.Set{}
	var problems []error
	each := func(kind string, store cache.Store, conv func(any) (any, []error), add func(any)) {
		objs := store.List()
		slices.SortFunc(objs, func(a, b any) int { return cmp.Compare(keyOf(a), keyOf(b)) })
		for _, o := range objs {
			k := kind + "/" + keyOf(o)
			seen[k] = true
			d, ok := c.done[k]
			if !ok || d.src != o {
				d.src = o
				d.obj, d.errs = conv(o)
				c.done[k] = d
			}
			problems = append(problems, d.errs...)
			if d.obj != nil {
				add(d.obj)
			}
		}
	}
	each("Namespace", l.namespaces, decodeAs[kubeobj.Namespace]("Namespace", func(o *kubeobj.Namespace) { o.Origin = Origin }),
		func(o any) { set.Namespaces = append(set.Namespaces, o.(*kubeobj.Namespace)) })
	each("ServiceAccount", l.serviceAccounts, decodeAs[kubeobj.ServiceAccount]("ServiceAccount", func(o *kubeobj.ServiceAccount) { o.Origin = Origin }),
		func(o any) { set.ServiceAccounts = append(set.ServiceAccounts, o.(*kubeobj.ServiceAccount)) })
	each("Service", l.services, decodeAs[kubeobj.Service]("Service", func(o *kubeobj.Service) { o.Origin = Origin }),
		func(o any) { set.Services = append(set.Services, o.(*kubeobj.Service)) })
	each("Pod", l.pods, decodeAs[kubeobj.Pod]("Pod", func(o *kubeobj.Pod) { o.Origin = Origin }),
		func(o any) { set.Pods = append(set.Pods, o.(*kubeobj.Pod)) })
	each("EndpointSlice", l.endpointSlices, decodeAs[kubeobj.EndpointSlice]("EndpointSlice", func(o *kubeobj.EndpointSlice) { o.Origin = Origin }),
		func(o any) { set.EndpointSlices = append(set.EndpointSlices, o.(*kubeobj.EndpointSlice)) })
	each("Node", l.nodes, decodeAs[kubeobj.Node]("Node", func(o *kubeobj.Node) { o.Origin = Origin }),
		func(o any) { set.Nodes = append(set.Nodes, o.(*kubeobj.Node)) })
	each("Gateway", l.gateways, decodeAs[kubeobj.Gateway]("Gateway", func(o *kubeobj.Gateway) { o.Origin = Origin }),
		func(o any) { set.Gateways = append(set.Gateways, o.(*kubeobj.Gateway)) })
	each("GatewayClass", l.gatewayClasses, decodeAs[kubeobj.GatewayClass]("GatewayClass", func(o *kubeobj.GatewayClass) { o.Origin = Origin }),
		func(o any) { set.GatewayClasses = append(set.GatewayClasses, o.(*kubeobj.GatewayClass)) })
	var aps []*securityclient.AuthorizationPolicy
	each("AuthorizationPolicy", l.authorizationPolicies, convertAuthorizationPolicy, func(o any) {
		set.Policies.AuthorizationPolicies = append(set.Policies.AuthorizationPolicies, o.(*policies.AuthorizationPolicy))
	})
	for _, o := range l.authorizationPolicies.List() {
		if ap, ok := o.(*securityclient.AuthorizationPolicy); ok {
			aps = append(aps, ap)
		}
	}
	slices.SortFunc(aps, func(a, b *securityclient.AuthorizationPolicy) int { return cmp.Compare(keyOf(a), keyOf(b)) })
	each("PeerAuthentication", l.peerAuthentications, convertPeerAuthentication, func(o any) {
		set.Policies.PeerAuthentications = append(set.Policies.PeerAuthentications, o.(*policies.PeerAuthentication))
	})
	c.eachRouting(l, each, set)
	c.eachIngress(l, each, set)
	for k := range c.done {
		if !seen[k] {
			delete(c.done, k)
		}
	}
	return set, problems, aps
}

// keyOf is "namespace/name" (or "name") of a cached object, as the informer keys it.
func keyOf(o any) string {
	k, err := cache.MetaNamespaceKeyFunc(o)
	if err != nil {
		return ""
	}
	return k
}

// decodeAs converts a client-go object into a kubeobj type through its JSON form: the same
// decoding the files source applies to YAML, so both sources read the same fields the same way.
func decodeAs[T any](kind string, setOrigin func(*T)) func(any) (any, []error) {
	return func(src any) (any, []error) {
		fail := func(reason string) (any, []error) {
			return nil, []error{&policies.Error{Origin: Origin, Kind: kind, Object: keyOf(src), Reason: reason}}
		}
		data, err := json.Marshal(src)
		if err != nil {
			return fail("cannot be encoded: " + err.Error())
		}
		out := new(T)
		if err := json.Unmarshal(data, out); err != nil {
			return fail("cannot be read: " + err.Error())
		}
		setOrigin(out)
		return out, nil
	}
}

func meta(o metav1.Object) policies.Meta {
	m := policies.Meta{Name: o.GetName(), Namespace: cmp.Or(o.GetNamespace(), "default"), Labels: o.GetLabels(), Annotations: o.GetAnnotations()}
	if ts := o.GetCreationTimestamp(); !ts.IsZero() {
		m.CreationTimestamp = ts.UTC().Format(time.RFC3339)
	}
	return m
}

// convertAuthorizationPolicy makes the policies package's object and validates it as
// policies.Load would. The spec is shared with the informer's object, which is never modified.
func convertAuthorizationPolicy(src any) (any, []error) {
	o, ok := src.(*securityclient.AuthorizationPolicy)
	if !ok {
		return nil, nil
	}
	p := &policies.AuthorizationPolicy{APIVersion: securityAPIVersion, Meta: meta(o), Spec: &o.Spec, Origin: Origin}
	if errs := policies.ValidateAuthorizationPolicy(p); len(errs) > 0 {
		return nil, errs
	}
	return p, nil
}

// convertPeerAuthentication is convertAuthorizationPolicy for PeerAuthentications.
func convertPeerAuthentication(src any) (any, []error) {
	o, ok := src.(*securityclient.PeerAuthentication)
	if !ok {
		return nil, nil
	}
	p := &policies.PeerAuthentication{APIVersion: securityAPIVersion, Meta: meta(o), Spec: &o.Spec, Origin: Origin}
	if errs := policies.ValidatePeerAuthentication(p); len(errs) > 0 {
		return nil, errs
	}
	return p, nil
}
