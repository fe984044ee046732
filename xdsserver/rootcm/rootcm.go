// Package rootcm publishes the mesh's root certificate in every namespace as the ConfigMap istio-ca-root-cert (key root-cert.pem), as istiod's namespace controller does.
package rootcm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Names istiod uses (pilot's CACertNamespaceConfigMap, constants.CACertNamespaceConfigMapDataName,
// and the label of the ConfigMaps it writes).
const (
	ConfigMapName = "istio-ca-root-cert"
	DataKey       = "root-cert.pem"
	LabelKey      = "istio.io/config"
	LabelValue    = "true"
)

// Ignored are the namespaces istiod does not publish to (inject.IgnoredNamespaces less
// kube-system, where a ztunnel may run).
var Ignored = map[string]bool{"kube-public": true, "kube-node-lease": true, "local-path-storage": true}

// maxAttempts bounds the retries of one namespace (istiod: 5), spaced by the queue's backoff.
const maxAttempts = 5

// Options configure a Controller. Client and RootPEM are required.
type Options struct {
	Client  kubernetes.Interface
	RootPEM []byte       // the root certificate(s), PEM
	Logger  *slog.Logger // nil: no logs
}

// Controller keeps one ConfigMap per namespace holding the root: created when missing, its
// root-cert.pem set back when it differs (other keys and labels are left alone), again when a
// namespace appears or someone changes or deletes the ConfigMap.
type Controller struct {
	o   Options
	log *slog.Logger
}

// New returns a Controller; it does nothing until Run.
func New(o Options) (*Controller, error) {
	if o.Client == nil || len(o.RootPEM) == 0 {
		return nil, errors.New("rootcm: Options.Client and Options.RootPEM are required")
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Controller{o: o, log: log}, nil
}

// Run watches namespaces and the ConfigMaps named ConfigMapName until ctx ends; it returns nil
// then.
func (c *Controller) Run(ctx context.Context) error {
	nsf := informers.NewSharedInformerFactory(c.o.Client, 0)
	cmf := informers.NewSharedInformerFactoryWithOptions(c.o.Client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", ConfigMapName).String()
	}))
	nsInf := nsf.Core().V1().Namespaces().Informer()
	cmInf := cmf.Core().V1().ConfigMaps().Informer()
	q := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](5*time.Millisecond, 10*time.Second),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "rootcm"})
	defer q.ShutDown()
	enqueue := func(ns string) {
		if ns != "" && !Ignored[ns] {
			q.Add(ns)
		}
	}
	if _, err := nsInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { enqueue(nsName(o)) },
		UpdateFunc: func(_, o any) { enqueue(nsName(o)) },
	}); err != nil {
		return fmt.Errorf("rootcm: %w", err)
	}
	cmHandler := func(o any) {
		if m, ok := o.(metav1.Object); ok {
			enqueue(m.GetNamespace())
		} else if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
			if m, ok := d.Obj.(metav1.Object); ok {
				enqueue(m.GetNamespace())
			}
		}
	}
	if _, err := cmInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, o any) { cmHandler(o) },
		DeleteFunc: cmHandler,
	}); err != nil {
		return fmt.Errorf("rootcm: %w", err)
	}
	nsf.Start(ctx.Done())
	cmf.Start(ctx.Done())
	defer nsf.Shutdown()
	defer cmf.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), nsInf.HasSynced, cmInf.HasSynced) {
		return nil
	}
	c.log.Info("publishing the root certificate", "configmap", ConfigMapName)
	go func() {
		<-ctx.Done()
		q.ShutDown()
	}()
	for {
		ns, quit := q.Get()
		if quit {
			return nil
		}
		err := c.reconcile(ctx, ns, nsInf.GetStore(), cmInf.GetStore())
		switch {
		case err == nil:
			q.Forget(ns)
		case q.NumRequeues(ns) < maxAttempts-1:
			q.AddRateLimited(ns)
		default:
			c.log.Warn("cannot publish the root certificate; giving up until the namespace or its ConfigMap changes", "namespace", ns, "error", err)
			q.Forget(ns)
		}
		q.Done(ns)
	}
}

func nsName(o any) string {
	if n, ok := o.(*corev1.Namespace); ok && n.Status.Phase != corev1.NamespaceTerminating {
		return n.Name
	}
	return ""
}

// reconcile makes namespace ns's ConfigMap hold the root.
func (c *Controller) reconcile(ctx context.Context, ns string, namespaces, configmaps cache.Store) error {
	if _, exists, _ := namespaces.GetByKey(ns); !exists {
		return nil
	}
	root := string(c.o.RootPEM)
	obj, exists, _ := configmaps.GetByKey(ns + "/" + ConfigMapName)
	cms := c.o.Client.CoreV1().ConfigMaps(ns)
	if !exists {
		_, err := cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: ns, Labels: map[string]string{LabelKey: LabelValue}},
			Data:       map[string]string{DataKey: root},
		}, metav1.CreateOptions{})
		switch {
		case err == nil:
			c.log.Debug("root certificate published", "namespace", ns)
			return nil
		case apierrors.IsAlreadyExists(err), apierrors.IsNotFound(err),
			apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause):
			return nil // the informer brings the existing one; the namespace is going
		}
		return fmt.Errorf("create ConfigMap %s/%s: %w", ns, ConfigMapName, err)
	}
	cm := obj.(*corev1.ConfigMap)
	if cm.Data[DataKey] == root {
		return nil
	}
	cm = cm.DeepCopy() // the informer's object is never modified
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[DataKey] = root
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("update ConfigMap %s/%s: %w", ns, ConfigMapName, err)
	}
	c.log.Debug("root certificate updated", "namespace", ns)
	return nil
}
