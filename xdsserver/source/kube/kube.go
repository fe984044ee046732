// Package kube is the Source that reads the mesh from a Kubernetes cluster through client-go shared informers and writes istiod's ambient status conditions on AuthorizationPolicies.
package kube

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"time"

	"google.golang.org/protobuf/proto"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeinformers "k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gwinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"

	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/source"
)

// Defaults of Options, as istiod's PILOT_DEBOUNCE_AFTER and PILOT_DEBOUNCE_MAX.
const (
	DefaultDebounce    = 100 * time.Millisecond
	DefaultDebounceMax = 10 * time.Second
)

// Options configure a Kubernetes Source.
type Options struct {
	// Model says how to build the mesh. In a cluster istiod deploys waypoints and every pod
	// and Service has its address, so DeployWaypoints is normally off.
	Model model.Config
	// Debounce is how long the cluster must be quiet after a change before a mesh is rebuilt
	// (DefaultDebounce when zero); DebounceMax bounds the wait under a stream of changes
	// (DefaultDebounceMax when zero).
	Debounce    time.Duration
	DebounceMax time.Duration
	// Resync is the informers' resync period (0: none, which is what a rebuild-everything
	// source wants).
	Resync time.Duration
	// NoStatus turns off writing status conditions on AuthorizationPolicies (for a read-only
	// control plane, or a second replica: like istiod, there is no leader election).
	NoStatus bool
	Logger   *slog.Logger // nil: no logs
}

// Clients are the three clientsets the source reads from (real ones, or the fakes in tests).
type Clients struct {
	Kube    kubernetes.Interface
	Istio   istioclient.Interface
	Gateway gwclient.Interface
}

// Source watches Namespaces, ServiceAccounts, Services, Pods, EndpointSlices, Nodes (their
// names and topology labels only: core and discovery informers), AuthorizationPolicies and PeerAuthentications (security.istio.io/v1),
// Gateways and GatewayClasses (gateway.networking.k8s.io/v1). Once the caches are synced it
// pushes a mesh, then a rebuilt one after each burst of changes. Objects are converted into
// the same kubeobj and policies types the files source reads, and model.Build applies every
// rule; a bad object is in Mesh.Errors and left out.
type Source struct {
	c       Clients
	opts    Options
	log     *slog.Logger
	changed chan struct{} // capacity 1: a change is pending
	conv    *converter
	status  *statusWriter
	ingress *ingressStatusWriter // ingress_status.go
	last    *model.Mesh          // the last mesh built (its valid routing objects outlive invalid edits)
}

// New returns a Source reading through the clients. It does not contact the cluster until Run.
func New(c Clients, opts Options) *Source {
	opts.Debounce = cmp.Or(opts.Debounce, DefaultDebounce)
	opts.DebounceMax = max(cmp.Or(opts.DebounceMax, DefaultDebounceMax), opts.Debounce)
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Source{c: c, opts: opts, log: log, changed: make(chan struct{}, 1), conv: newConverter()}
	if !opts.NoStatus {
		s.status = &statusWriter{client: c.Istio, log: log}
		s.ingress = newIngressStatusWriter(c.Gateway, log)
	}
	return s
}

// listers are the informers' caches a mesh is built from.
type listers struct {
	namespaces, serviceAccounts, services, pods, endpointSlices, nodes cache.Store
	authorizationPolicies, peerAuthentications                         cache.Store
	gateways, gatewayClasses                                           cache.Store
	virtualServices, destinationRules, httpRoutes                      cache.Store // routing.go
	serviceEntries, workloadEntries                                    cache.Store // routing.go
	secrets, referenceGrants                                           cache.Store // ingress.go
	requestAuthentications, meshConfig                                 cache.Store // authn.go
}

// Run starts the informers, waits for their caches, pushes the mesh, then a new one after each
// burst of changes, until ctx is done (then it returns nil, even before the caches synced). It
// fails only when the options are unusable or a clientset is missing.
func (s *Source) Run(ctx context.Context, push func(*model.Mesh)) error {
	if s.c.Kube == nil || s.c.Istio == nil || s.c.Gateway == nil {
		return errors.New("kubernetes source: the Kubernetes, Istio and Gateway API clientsets are all required")
	}
	if err := s.opts.Model.WithDefaults().Validate(); err != nil {
		return fmt.Errorf("kubernetes source: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	kf := kubeinformers.NewSharedInformerFactory(s.c.Kube, s.opts.Resync)
	// Only v1 of security.istio.io: v1 and v1beta1 are two views of the same stored objects,
	// so watching both would see every policy twice.
	isf := istioinformers.NewSharedInformerFactory(s.c.Istio, s.opts.Resync)
	gf := gwinformers.NewSharedInformerFactory(s.c.Gateway, s.opts.Resync)
	mcf := meshConfigFactory(s.c.Kube, s.opts.Model.WithDefaults().RootNamespace, s.opts.Resync)
	informers := map[string]cache.SharedIndexInformer{
		"Namespace":             kf.Core().V1().Namespaces().Informer(),
		"ServiceAccount":        kf.Core().V1().ServiceAccounts().Informer(),
		"Service":               kf.Core().V1().Services().Informer(),
		"Pod":                   kf.Core().V1().Pods().Informer(),
		"EndpointSlice":         kf.Discovery().V1().EndpointSlices().Informer(),
		"AuthorizationPolicy":   isf.Security().V1().AuthorizationPolicies().Informer(),
		"PeerAuthentication":    isf.Security().V1().PeerAuthentications().Informer(),
		"Gateway":               gf.Gateway().V1().Gateways().Informer(),
		"GatewayClass":          gf.Gateway().V1().GatewayClasses().Informer(),
		"Node":                  nodeInformer(kf),
		"RequestAuthentication": isf.Security().V1().RequestAuthentications().Informer(),
		"ConfigMap":             mcf.Core().V1().ConfigMaps().Informer(),
	}
	maps.Copy(informers, routingInformers(isf, gf))
	maps.Copy(informers, ingressInformers(kf, gf))
	for kind, inf := range informers {
		if err := inf.SetTransform(dropManagedFields); err != nil {
			return fmt.Errorf("kubernetes source: %s informer: %w", kind, err)
		}
		if _, err := inf.AddEventHandler(s.handler(kind)); err != nil {
			return fmt.Errorf("kubernetes source: %s informer: %w", kind, err)
		}
	}
	l := &listers{
		namespaces: informers["Namespace"].GetStore(), serviceAccounts: informers["ServiceAccount"].GetStore(),
		services: informers["Service"].GetStore(), pods: informers["Pod"].GetStore(),
		endpointSlices:        informers["EndpointSlice"].GetStore(),
		authorizationPolicies: informers["AuthorizationPolicy"].GetStore(),
		peerAuthentications:   informers["PeerAuthentication"].GetStore(),
		gateways:              informers["Gateway"].GetStore(), gatewayClasses: informers["GatewayClass"].GetStore(),
		virtualServices: informers["VirtualService"].GetStore(), destinationRules: informers["DestinationRule"].GetStore(),
		httpRoutes:     informers["HTTPRoute"].GetStore(),
		serviceEntries: informers["ServiceEntry"].GetStore(), workloadEntries: informers["WorkloadEntry"].GetStore(),
		nodes:   informers["Node"].GetStore(),
		secrets: informers["Secret"].GetStore(), referenceGrants: informers["ReferenceGrant"].GetStore(),
		requestAuthentications: informers["RequestAuthentication"].GetStore(),
		meshConfig:             informers["ConfigMap"].GetStore(),
	}
	kf.Start(ctx.Done())
	isf.Start(ctx.Done())
	gf.Start(ctx.Done())
	mcf.Start(ctx.Done())
	defer func() {
		cancel()
		kf.Shutdown()
		isf.Shutdown()
		gf.Shutdown()
		mcf.Shutdown()
	}()
	s.log.Info("waiting for the informers' caches")
	synced := make([]cache.InformerSynced, 0, len(informers))
	for _, inf := range informers {
		synced = append(synced, inf.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil // ctx is done
	}
	if s.status != nil {
		// Status is written beside the rebuilds, never in their way: one UpdateStatus per
		// changed policy can take many seconds on a big mesh (1,000 policies), during which
		// new objects must still reach the data plane.
		done := make(chan struct{})
		go func() { defer close(done); s.status.run(ctx) }()
		defer func() { cancel(); <-done }()
		idone := make(chan struct{})
		go func() { defer close(idone); s.ingress.run(ctx) }()
		defer func() { cancel(); <-idone }()
	}
	select { // the initial listing is in the first build
	case <-s.changed:
	default:
	}
	if err := s.rebuild(ctx, l, push); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.changed:
		}
		if !s.debounce(ctx) {
			return nil
		}
		if err := s.rebuild(ctx, l, push); err != nil {
			return err
		}
	}
}

// debounce waits until no change came for Debounce, or DebounceMax passed since the first
// one. It returns false when ctx is done.
func (s *Source) debounce(ctx context.Context) bool {
	deadline := time.Now().Add(s.opts.DebounceMax)
	t := time.NewTimer(s.opts.Debounce)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case <-s.changed:
			left := time.Until(deadline)
			if left <= 0 {
				return true
			}
			t.Reset(min(s.opts.Debounce, left))
		}
	}
}

// rebuild builds the mesh from the caches, pushes it, and writes the status conditions.
func (s *Source) rebuild(ctx context.Context, l *listers, push func(*model.Mesh)) error {
	set, problems, aps := s.conv.snapshot(l)
	cfg := s.opts.Model
	cfg.Previous = s.last // a routing object made invalid keeps its last valid version
	m, err := model.Build(set, cfg)
	if err != nil {
		return fmt.Errorf("kubernetes source: %w", err)
	}
	s.last = m
	m.Errors = append(problems, m.Errors...)
	for _, e := range m.Errors {
		s.log.Warn("configuration error; object left out", "error", e)
	}
	s.log.Info("mesh built", "workloads", len(m.Workloads), "services", len(m.Services), "waypoints", len(m.Waypoints),
		"policies", len(m.Policies.AuthorizationPolicies)+len(m.Policies.PeerAuthentications), "errors", len(m.Errors))
	push(m)
	if s.status != nil {
		s.status.offer(m, aps)
		s.ingress.offer(m, l)
	}
	return nil
}

// dropManagedFields removes the server-side apply bookkeeping from a cached object, as istiod's
// informers do: the mesh never reads it, and it is often the largest part of an object (a pod
// written by a kubelet carries several managers).
func dropManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// notify records a pending change.
func (s *Source) notify() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// handler notifies on every add and delete, and on updates that change what the mesh reads
// (not a resync of the same object, not a status-only update of a policy, such as the ones
// this source writes).
func (s *Source) handler(kind string) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { s.notify() },
		UpdateFunc: func(oldObj, newObj any) {
			if !relevantUpdate(oldObj, newObj) {
				return
			}
			s.log.Debug("object changed", "kind", kind)
			s.notify()
		},
		DeleteFunc: func(any) { s.notify() },
	}
}

func relevantUpdate(oldObj, newObj any) bool {
	if oldObj == newObj {
		return false
	}
	if changed, isNode := nodeUpdate(oldObj, newObj); isNode {
		return changed // every status update of a Node is a new version; its locality rarely is
	}
	om, ok1 := oldObj.(metav1.Object)
	nm, ok2 := newObj.(metav1.Object)
	if ok1 && ok2 && om.GetResourceVersion() != "" && om.GetResourceVersion() == nm.GetResourceVersion() {
		return false // a resync
	}
	if o, ok := oldObj.(*securityclient.AuthorizationPolicy); ok {
		if n, ok := newObj.(*securityclient.AuthorizationPolicy); ok {
			return !proto.Equal(&o.Spec, &n.Spec) || !sameMeta(o, n)
		}
	}
	return true
}

// sameMeta compares the metadata the mesh reads from a policy.
func sameMeta(a, b metav1.Object) bool {
	return a.GetName() == b.GetName() && a.GetNamespace() == b.GetNamespace() &&
		maps.Equal(a.GetLabels(), b.GetLabels()) && maps.Equal(a.GetAnnotations(), b.GetAnnotations()) &&
		a.GetGeneration() == b.GetGeneration() && reflect.DeepEqual(a.GetCreationTimestamp(), b.GetCreationTimestamp())
}

var _ source.Source = (*Source)(nil)
