// Package gatewaydeploy is istiod's Gateway deployment and GatewayClass controllers for a Kubernetes cluster: for each Gateway of a waypoint or Istio ingress class it server-side applies a ServiceAccount, Deployment and Service owned by the Gateway, never taking over an object the Gateway does not own, and writes the Gateway's status.
package gatewaydeploy

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	kubeinformers "k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwapply "sigs.k8s.io/gateway-api/applyconfiguration/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gwinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"

	"github.com/goambient/goambient/xdsserver/model"
)

// Defaults of Options.
const (
	DefaultEnvoyImage      = "goambient/waypoint-envoy:dev"
	DefaultGoImage         = "goambient/waypoint:dev"
	DefaultXDSAddress      = "istiod.istio-system.svc:15010"
	DefaultSecureAddress   = "istiod.istio-system.svc:15012"
	DefaultServerName      = "istiod.istio-system.svc"
	DefaultSystemNamespace = "istio-system"
)

// Options configure the controller.
type Options struct {
	Kube    kubernetes.Interface
	Gateway gwclient.Interface
	// Proxy is what Gateways' pods run unless their parameters say otherwise (ProxyEnvoy when
	// empty).
	Proxy                  Proxy
	EnvoyImage, GoImage    string            // DefaultEnvoyImage, DefaultGoImage when empty
	ImagePullPolicy        corev1.PullPolicy // the kubelet's default when empty
	XDSAddress             string            // the plaintext ADS the Go waypoint uses (DefaultXDSAddress)
	SecureAddress          string            // the TLS listener: Envoy's ADS and SDS, the CA (DefaultSecureAddress)
	ServerName             string            // the name in xdsserver's serving certificate (DefaultServerName)
	SystemNamespace        string            // where class defaults live (DefaultSystemNamespace)
	ClusterDomain          string            // cluster.local when empty
	TrustDomain, ClusterID string            // cluster.local, Kubernetes when empty
	// NoStatus turns off writing the status of Gateways and GatewayClasses (a read-only second
	// replica, as the Kubernetes source's NoStatus).
	NoStatus bool
	Logger   *slog.Logger

	bootstrap string
}

func (o *Options) withDefaults() error {
	o.Proxy = cmp.Or(o.Proxy, ProxyEnvoy)
	if _, err := ParseProxy(string(o.Proxy)); err != nil {
		return err
	}
	o.EnvoyImage = cmp.Or(o.EnvoyImage, DefaultEnvoyImage)
	o.GoImage = cmp.Or(o.GoImage, DefaultGoImage)
	o.XDSAddress = cmp.Or(o.XDSAddress, DefaultXDSAddress)
	o.SecureAddress = cmp.Or(o.SecureAddress, DefaultSecureAddress)
	o.ServerName = cmp.Or(o.ServerName, DefaultServerName)
	o.SystemNamespace = cmp.Or(o.SystemNamespace, DefaultSystemNamespace)
	o.ClusterDomain = cmp.Or(o.ClusterDomain, model.DefaultClusterDomain)
	o.TrustDomain = cmp.Or(o.TrustDomain, model.DefaultTrustDomain)
	o.ClusterID = cmp.Or(o.ClusterID, model.DefaultClusterID)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	var err error
	o.bootstrap, err = Bootstrap(o.SecureAddress, o.ServerName)
	return err
}

// Controller is the deployment and class controller. Run runs it.
type Controller struct {
	o       Options
	log     *slog.Logger
	classes *classes
	queue   workqueue.TypedRateLimitingInterface[key]

	gateways, gatewayClasses                           cache.Indexer
	deployments, services, serviceAccounts, configMaps cache.Indexer
	pods                                               cache.Indexer

	mu     sync.Mutex
	warned map[types.NamespacedName]string // the fallback last logged per Gateway
}

// key is a Gateway, or (class) the GatewayClasses.
type key struct {
	class     bool
	namespace string
	name      string
}

// New checks the options; nothing is contacted before Run.
func New(o Options) (*Controller, error) {
	if o.Kube == nil || o.Gateway == nil {
		return nil, errors.New("gatewaydeploy: the Kubernetes and Gateway API clients are required")
	}
	if err := o.withDefaults(); err != nil {
		return nil, fmt.Errorf("gatewaydeploy: %w", err)
	}
	return &Controller{o: o, log: o.Logger, classes: &classes{gw: o.Gateway, log: o.Logger}, warned: map[types.NamespacedName]string{}}, nil
}

// Run starts the informers and reconciles until ctx is done.
func (c *Controller) Run(ctx context.Context) error {
	kf := kubeinformers.NewSharedInformerFactory(c.o.Kube, 0)
	// Only the Gateways' pods: their readiness makes a Gateway Programmed.
	pf := kubeinformers.NewSharedInformerFactoryWithOptions(c.o.Kube, 0, kubeinformers.WithTweakListOptions(func(lo *metav1.ListOptions) {
		lo.LabelSelector = model.LabelGatewayName
	}))
	gf := gwinformers.NewSharedInformerFactory(c.o.Gateway, 0)
	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[key](),
		workqueue.TypedRateLimitingQueueConfig[key]{Name: "gatewaydeploy"})
	infs := map[string]cache.SharedIndexInformer{
		"Gateway": gf.Gateway().V1().Gateways().Informer(), "GatewayClass": gf.Gateway().V1().GatewayClasses().Informer(),
		"Deployment": kf.Apps().V1().Deployments().Informer(), "Service": kf.Core().V1().Services().Informer(),
		"ServiceAccount": kf.Core().V1().ServiceAccounts().Informer(), "ConfigMap": kf.Core().V1().ConfigMaps().Informer(),
		"Pod": pf.Core().V1().Pods().Informer(),
	}
	for kind, inf := range infs { // the generated informers index by namespace
		if err := inf.SetTransform(func(o any) (any, error) { // not read here
			if m, ok := o.(metav1.Object); ok {
				m.SetManagedFields(nil)
			}
			return o, nil
		}); err != nil {
			return fmt.Errorf("gatewaydeploy: %s: %w", kind, err)
		}
		if _, err := inf.AddEventHandler(c.handler(kind)); err != nil {
			return fmt.Errorf("gatewaydeploy: %s: %w", kind, err)
		}
	}
	c.gateways, c.gatewayClasses = infs["Gateway"].GetIndexer(), infs["GatewayClass"].GetIndexer()
	c.deployments, c.services, c.serviceAccounts = infs["Deployment"].GetIndexer(), infs["Service"].GetIndexer(), infs["ServiceAccount"].GetIndexer()
	c.configMaps, c.pods = infs["ConfigMap"].GetIndexer(), infs["Pod"].GetIndexer()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	kf.Start(ctx.Done())
	pf.Start(ctx.Done())
	gf.Start(ctx.Done())
	defer func() {
		c.queue.ShutDown()
		cancel()
		kf.Shutdown()
		pf.Shutdown()
		gf.Shutdown()
	}()
	synced := make([]cache.InformerSynced, 0, len(infs))
	for _, inf := range infs {
		synced = append(synced, inf.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil
	}
	c.log.Info("gateway deployment controller started", "proxy", c.o.Proxy)
	c.queue.Add(key{class: true})
	go func() { <-ctx.Done(); c.queue.ShutDown() }()
	for c.processNext(ctx) {
	}
	return nil
}

func (c *Controller) processNext(ctx context.Context) bool {
	k, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(k)
	var err error
	if k.class {
		err = c.classes.reconcile(ctx, listOf[*gatewayv1.GatewayClass](c.gatewayClasses), c.class)
	} else {
		err = c.reconcile(ctx, types.NamespacedName{Namespace: k.namespace, Name: k.name})
	}
	switch {
	case err == nil:
		c.queue.Forget(k)
	case ctx.Err() != nil:
	case c.queue.NumRequeues(k) < 10:
		c.log.Warn("gateway reconcile failed; will retry", "gateway", k.namespace+"/"+k.name, "classes", k.class, "error", err)
		c.queue.AddRateLimited(k)
	default:
		c.log.Error("gateway reconcile failed; giving up until the next change", "gateway", k.namespace+"/"+k.name, "classes", k.class, "error", err)
		c.queue.Forget(k)
	}
	return true
}

func listOf[T any](idx cache.Indexer) []T {
	var out []T
	for _, o := range idx.List() {
		if t, ok := o.(T); ok {
			out = append(out, t)
		}
	}
	return out
}

func byNamespace[T any](idx cache.Indexer, ns string) []T {
	objs, _ := idx.ByIndex(cache.NamespaceIndex, ns)
	var out []T
	for _, o := range objs {
		if t, ok := o.(T); ok {
			out = append(out, t)
		}
	}
	return out
}

func get[T any](idx cache.Indexer, ns, name string) T {
	var zero T
	k := name
	if ns != "" {
		k = ns + "/" + name
	}
	o, ok, _ := idx.GetByKey(k)
	if !ok {
		return zero
	}
	t, _ := o.(T)
	return t
}

func (c *Controller) class(name string) *gatewayv1.GatewayClass {
	return get[*gatewayv1.GatewayClass](c.gatewayClasses, "", name)
}

// enqueueNamespace queues every Gateway of ns (an object in its way or of its own changed).
func (c *Controller) enqueueNamespace(ns string) {
	for _, gw := range byNamespace[*gatewayv1.Gateway](c.gateways, ns) {
		c.queue.Add(key{namespace: gw.Namespace, name: gw.Name})
	}
}

// handler maps an event to the Gateways to reconcile.
func (c *Controller) handler(kind string) cache.ResourceEventHandler {
	on := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		m, ok := obj.(metav1.Object)
		if !ok {
			return
		}
		switch kind {
		case "Gateway":
			c.queue.Add(key{namespace: m.GetNamespace(), name: m.GetName()})
		case "GatewayClass":
			c.queue.Add(key{class: true})
			for _, gw := range listOf[*gatewayv1.Gateway](c.gateways) {
				if string(gw.Spec.GatewayClassName) == m.GetName() {
					c.queue.Add(key{namespace: gw.Namespace, name: gw.Name})
				}
			}
		case "Pod":
			if gw := m.GetLabels()[model.LabelGatewayName]; gw != "" {
				c.queue.Add(key{namespace: m.GetNamespace(), name: gw})
			}
		case "ConfigMap":
			if class, ok := m.GetLabels()[LabelDefaultsForClass]; ok && m.GetNamespace() == c.o.SystemNamespace {
				for _, gw := range listOf[*gatewayv1.Gateway](c.gateways) {
					if string(gw.Spec.GatewayClassName) == class {
						c.queue.Add(key{namespace: gw.Namespace, name: gw.Name})
					}
				}
			}
			for _, gw := range byNamespace[*gatewayv1.Gateway](c.gateways, m.GetNamespace()) {
				if ref, _ := parametersRef(gw); ref == m.GetName() {
					c.queue.Add(key{namespace: gw.Namespace, name: gw.Name})
				}
			}
		default: // Deployment, Service, ServiceAccount: ours changed, or one in our way
			c.enqueueNamespace(m.GetNamespace())
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: on,
		UpdateFunc: func(oldObj, newObj any) {
			o, n := oldObj.(metav1.Object), newObj.(metav1.Object)
			if o.GetResourceVersion() == n.GetResourceVersion() {
				return
			}
			if g, ok := newObj.(*gatewayv1.Gateway); ok { // as istiod: not on a status change
				og := oldObj.(*gatewayv1.Gateway)
				if og.Generation == g.Generation && mapsEqual(og.Labels, g.Labels) && mapsEqual(og.Annotations, g.Annotations) {
					return
				}
			}
			on(newObj)
		},
		DeleteFunc: on,
	}
}

// ownedBy says o is owned by the Gateway gw (an owner reference with its UID).
func ownedBy(o metav1.Object, gw *gatewayv1.Gateway) bool {
	return slices.ContainsFunc(o.GetOwnerReferences(), func(r metav1.OwnerReference) bool {
		return r.UID == gw.UID && r.Kind == "Gateway"
	})
}

// reconcile brings one Gateway's objects and status in line.
func (c *Controller) reconcile(ctx context.Context, name types.NamespacedName) error {
	gw := get[*gatewayv1.Gateway](c.gateways, name.Namespace, name.Name)
	if gw == nil || gw.DeletionTimestamp != nil {
		c.mu.Lock()
		delete(c.warned, name)
		c.mu.Unlock()
		return nil // the garbage collector removes what it owned
	}
	controller := builtinClasses[string(gw.Spec.GatewayClassName)]
	if gc := c.class(string(gw.Spec.GatewayClassName)); gc != nil {
		controller = string(gc.Spec.ControllerName)
	}
	info, ok := classInfos[controller]
	if !ok {
		return nil // another controller's Gateway
	}
	if !managed(gw) {
		c.log.Debug("Gateway with its own address: not deployed", "gateway", name)
		return nil
	}
	obs := observed{gw: gw, class: info}
	p, err := c.params(gw)
	if err == nil {
		err = p.check()
	}
	if err != nil {
		obs.paramsErr = err
		obs.hostname = c.hostname(gw.Namespace, gw.Name)
		c.log.Warn("Gateway parameters refused: not deployed", "gateway", name, "error", err)
		return c.writeStatus(ctx, obs)
	}
	names, err := model.GatewayDeployedNames(gw.Name, string(gw.Spec.GatewayClassName), gw.Annotations, info.waypoint, c.currentName(gw), c.taken(gw))
	if err != nil {
		obs.namesErr = err
		obs.hostname = c.hostname(gw.Namespace, cmp.Or(gw.Annotations[model.AnnotationNameOverride], gw.Name))
		c.warnOnce(name, err.Error())
		return c.writeStatus(ctx, obs)
	}
	obs.fallback = names.Fallback
	obs.hostname = c.hostname(gw.Namespace, names.Name)
	if names.Fallback != "" {
		c.warnOnce(name, names.Fallback)
	}
	in := newInput(gw, info, names, p.proxy(c.o.Proxy))
	objs := []struct {
		key string
		obj runtime.Object
	}{{"serviceAccount", in.serviceAccount()}, {"deployment", in.deployment(&c.o)}, {"service", in.service()}}
	for _, o := range objs {
		if o.key == "serviceAccount" && gw.Annotations[model.AnnotationServiceAccount] != "" {
			if sa := get[*corev1.ServiceAccount](c.serviceAccounts, gw.Namespace, names.ServiceAccount); sa != nil && !ownedBy(sa, gw) {
				continue // the user's own service account, named by the annotation: used, never taken over
			}
		}
		if err := c.apply(ctx, p, o.key, o.obj); err != nil {
			return err
		}
	}
	if err := c.removeStale(ctx, gw, names); err != nil {
		return err
	}
	obs.service = get[*corev1.Service](c.services, gw.Namespace, names.Name)
	for _, pod := range byNamespace[*corev1.Pod](c.pods, gw.Namespace) {
		if pod.Labels[model.LabelGatewayName] == gw.Name && pod.Status.PodIP != "" && pod.DeletionTimestamp == nil && podReady(pod) {
			obs.readyPods++
		}
	}
	return c.writeStatus(ctx, obs)
}

// managed is istiod's IsManaged: no address, or one IP address, in the Gateway's spec.
func managed(gw *gatewayv1.Gateway) bool {
	a := gw.Spec.Addresses
	return len(a) == 0 || len(a) == 1 && (a[0].Type == nil || *a[0].Type == gatewayv1.IPAddressType)
}

func podReady(p *corev1.Pod) bool {
	return slices.ContainsFunc(p.Status.Conditions, func(c corev1.PodCondition) bool {
		return c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue
	})
}

func (c *Controller) hostname(ns, name string) string {
	return name + "." + ns + ".svc." + c.o.ClusterDomain
}

func (c *Controller) warnOnce(gw types.NamespacedName, msg string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.warned[gw] == msg {
		return
	}
	c.warned[gw] = msg
	c.log.Warn("Gateway not deployed under its first name", "gateway", gw.String(), "reason", msg)
}

// currentName is the name of the Deployment the Gateway already owns, if any.
func (c *Controller) currentName(gw *gatewayv1.Gateway) string {
	for _, d := range byNamespace[*appsv1.Deployment](c.deployments, gw.Namespace) {
		if d.Labels[model.LabelGatewayName] == gw.Name && ownedBy(d, gw) {
			return d.Name
		}
	}
	return ""
}

// taken says which objects not owned by gw stand in the way of a name.
func (c *Controller) taken(gw *gatewayv1.Gateway) model.NameTaken {
	return func(name, sa string) string {
		var in []string
		if d := get[*appsv1.Deployment](c.deployments, gw.Namespace, name); d != nil && !ownedBy(d, gw) {
			in = append(in, fmt.Sprintf("Deployment %q", name))
		}
		if s := get[*corev1.Service](c.services, gw.Namespace, name); s != nil && !ownedBy(s, gw) {
			in = append(in, fmt.Sprintf("Service %q", name))
		}
		if sa != "" {
			if a := get[*corev1.ServiceAccount](c.serviceAccounts, gw.Namespace, sa); a != nil && !ownedBy(a, gw) {
				in = append(in, fmt.Sprintf("ServiceAccount %q", sa))
			}
		}
		return strings.Join(in, " and ")
	}
}

// params are the class defaults (the oldest labelled ConfigMap of the system namespace, as
// istiod) and the Gateway's parametersRef ConfigMap.
func (c *Controller) params(gw *gatewayv1.Gateway) (params, error) {
	var p params
	var defaults []*corev1.ConfigMap
	for _, cm := range byNamespace[*corev1.ConfigMap](c.configMaps, c.o.SystemNamespace) {
		if cm.Labels[LabelDefaultsForClass] == string(gw.Spec.GatewayClassName) {
			defaults = append(defaults, cm)
		}
	}
	if len(defaults) > 0 {
		slices.SortFunc(defaults, func(a, b *corev1.ConfigMap) int {
			return cmp.Or(a.CreationTimestamp.Compare(b.CreationTimestamp.Time), cmp.Compare(a.Name, b.Name))
		})
		p = append(p, defaults[0].Data)
	}
	ref, err := parametersRef(gw)
	if err != nil || ref == "" {
		return p, err
	}
	cm := get[*corev1.ConfigMap](c.configMaps, gw.Namespace, ref)
	if cm == nil {
		return p, fmt.Errorf("spec.infrastructure.parametersRef: ConfigMap %s/%s does not exist", gw.Namespace, ref)
	}
	return append(p, cm.Data), nil
}

// apply server-side applies one object with the overlays of key, as istiod's field manager,
// forcing its fields back when someone changed them.
func (c *Controller) apply(ctx context.Context, p params, key string, typed runtime.Object) error {
	obj, err := p.overlay(key, typed)
	if err != nil {
		return err
	}
	data, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	md := obj["metadata"].(map[string]any)
	ns, name := md["namespace"].(string), md["name"].(string)
	opts := metav1.PatchOptions{FieldManager: FieldManager, Force: ptr.To(true)}
	switch key {
	case "deployment":
		_, err = c.o.Kube.AppsV1().Deployments(ns).Patch(ctx, name, types.ApplyPatchType, data, opts)
	case "service":
		_, err = c.o.Kube.CoreV1().Services(ns).Patch(ctx, name, types.ApplyPatchType, data, opts)
	case "serviceAccount":
		_, err = c.o.Kube.CoreV1().ServiceAccounts(ns).Patch(ctx, name, types.ApplyPatchType, data, opts)
	}
	if err != nil {
		return fmt.Errorf("apply %s %s/%s: %w", key, ns, name, err)
	}
	return nil
}

// removeStale deletes what the Gateway owns under another name than its current one (after a
// name override was set or changed); the garbage collector would only remove it with the
// Gateway.
func (c *Controller) removeStale(ctx context.Context, gw *gatewayv1.Gateway, names model.DeployedNames) error {
	stale := func(o metav1.Object, keep string) bool {
		return o.GetName() != keep && o.GetLabels()[model.LabelGatewayName] == gw.Name && ownedBy(o, gw) && o.GetDeletionTimestamp() == nil
	}
	var errs []error
	del := func(kind, name string, f func(context.Context, string, metav1.DeleteOptions) error) {
		c.log.Info("deleting an object the Gateway no longer uses", "gateway", gw.Namespace+"/"+gw.Name, "kind", kind, "name", name)
		if err := f(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s %s/%s: %w", kind, gw.Namespace, name, err))
		}
	}
	for _, d := range byNamespace[*appsv1.Deployment](c.deployments, gw.Namespace) {
		if stale(d, names.Name) {
			del("Deployment", d.Name, c.o.Kube.AppsV1().Deployments(gw.Namespace).Delete)
		}
	}
	for _, s := range byNamespace[*corev1.Service](c.services, gw.Namespace) {
		if stale(s, names.Name) {
			del("Service", s.Name, c.o.Kube.CoreV1().Services(gw.Namespace).Delete)
		}
	}
	for _, s := range byNamespace[*corev1.ServiceAccount](c.serviceAccounts, gw.Namespace) {
		if stale(s, names.ServiceAccount) {
			del("ServiceAccount", s.Name, c.o.Kube.CoreV1().ServiceAccounts(gw.Namespace).Delete)
		}
	}
	return errors.Join(errs...)
}

// writeStatus applies the Gateway's status when it changed.
func (c *Controller) writeStatus(ctx context.Context, obs observed) error {
	if c.o.NoStatus {
		return nil
	}
	st := gatewayStatus(obs, time.Now())
	if sameStatus(obs.gw, st) {
		return nil
	}
	_, err := c.o.Gateway.GatewayV1().Gateways(obs.gw.Namespace).ApplyStatus(ctx, gwapply.Gateway(obs.gw.Name, obs.gw.Namespace).WithStatus(st),
		metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("status of Gateway %s/%s: %w", obs.gw.Namespace, obs.gw.Name, err)
	}
	return nil
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
