package kube

import (
	"time"

	securityclient "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeinformers "k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/xdsserver/kubeobj"
)

// meshConfigFactory watches the one ConfigMap istiod reads its mesh config from: `istio` in
// the root namespace (a field selector, so no other ConfigMap is listed or cached).
func meshConfigFactory(c kubernetes.Interface, root string, resync time.Duration) kubeinformers.SharedInformerFactory {
	return kubeinformers.NewSharedInformerFactoryWithOptions(c, resync, kubeinformers.WithNamespace(root),
		kubeinformers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = "metadata.name=" + kubeobj.MeshConfigMapName
		}))
}

// convertRequestAuthentication is convertAuthorizationPolicy for RequestAuthentications.
func convertRequestAuthentication(src any) (any, []error) {
	o, ok := src.(*securityclient.RequestAuthentication)
	if !ok {
		return nil, nil
	}
	p := &policies.RequestAuthentication{APIVersion: securityAPIVersion, Meta: meta(o), Spec: &o.Spec, Origin: Origin}
	if errs := policies.ValidateRequestAuthentication(p); len(errs) > 0 {
		return nil, errs
	}
	return p, nil
}

// eachAuthn adds the RequestAuthentications and the mesh config to set.
func eachAuthn(l *listers, each func(string, cache.Store, func(any) (any, []error), func(any)), set *kubeobj.Set) {
	each("RequestAuthentication", l.requestAuthentications, convertRequestAuthentication, func(o any) {
		set.Policies.RequestAuthentications = append(set.Policies.RequestAuthentications, o.(*policies.RequestAuthentication))
	})
	each("ConfigMap", l.meshConfig, decodeAs[kubeobj.ConfigMap]("ConfigMap", func(o *kubeobj.ConfigMap) { o.Origin = Origin }),
		func(o any) { set.ConfigMaps = append(set.ConfigMaps, o.(*kubeobj.ConfigMap)) })
}
