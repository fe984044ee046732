package kube

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	kubeinformers "k8s.io/client-go/informers"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	gatewayv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"
	gwinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"

	"github.com/goambient/goambient/xdsserver/kubeobj"
)

// ingressInformers are the kinds ingress Gateways read besides Gateways and HTTPRoutes: TLS
// Secrets (type kubernetes.io/tls only, selected by the API server: the others, service
// account tokens among them, are never cached here) and ReferenceGrants.
func ingressInformers(kf kubeinformers.SharedInformerFactory, gf gwinformers.SharedInformerFactory) map[string]cache.SharedIndexInformer {
	secrets := kf.InformerFor(&corev1.Secret{}, func(c kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		return coreinformers.NewFilteredSecretInformer(c, metav1.NamespaceAll, resync, cache.Indexers{}, func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("type", string(corev1.SecretTypeTLS)).String()
		})
	})
	return map[string]cache.SharedIndexInformer{
		"Secret":         secrets,
		"ReferenceGrant": gf.Gateway().V1beta1().ReferenceGrants().Informer(),
	}
}

func convertSecret(src any) (any, []error) {
	o, ok := src.(*corev1.Secret)
	if !ok {
		return nil, nil
	}
	return &kubeobj.Secret{Metadata: objectMeta(o), Type: string(o.Type), Data: o.Data, StringData: o.StringData, Origin: Origin}, nil
}

func convertReferenceGrant(src any) (any, []error) {
	o, ok := src.(*gatewayv1beta1.ReferenceGrant)
	if !ok {
		return nil, nil
	}
	g := &kubeobj.ReferenceGrant{Metadata: objectMeta(o), Origin: Origin}
	for _, f := range o.Spec.From {
		g.Spec.From = append(g.Spec.From, kubeobj.ReferenceGrantFrom{Group: string(f.Group), Kind: string(f.Kind), Namespace: string(f.Namespace)})
	}
	for _, t := range o.Spec.To {
		to := kubeobj.ReferenceGrantTo{Group: string(t.Group), Kind: string(t.Kind)}
		if t.Name != nil {
			to.Name = string(*t.Name)
		}
		g.Spec.To = append(g.Spec.To, to)
	}
	return g, nil
}

// eachIngress converts the ingress kinds into set.
func (c *converter) eachIngress(l *listers, each func(kind string, store cache.Store, conv func(any) (any, []error), add func(any)), set *kubeobj.Set) {
	if l.secrets == nil || l.referenceGrants == nil {
		return
	}
	each("Secret", l.secrets, convertSecret, func(o any) { set.Secrets = append(set.Secrets, o.(*kubeobj.Secret)) })
	each("ReferenceGrant", l.referenceGrants, convertReferenceGrant,
		func(o any) { set.ReferenceGrants = append(set.ReferenceGrants, o.(*kubeobj.ReferenceGrant)) })
}
