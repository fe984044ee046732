package kube

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1apply "k8s.io/client-go/applyconfigurations/meta/v1"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwapply "sigs.k8s.io/gateway-api/applyconfiguration/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/goambient/goambient/xdsserver/model"
)

// IngressStatusManager is the server-side apply field manager of the ingress status this
// source writes: the listeners of ingress Gateways and the parents of their HTTPRoutes. The
// Gateway's own conditions and addresses are the deployment controller's
// (xdsserver/gatewaydeploy, field manager istio.io/gateway-controller): two managers, so
// neither removes the other's fields.
const IngressStatusManager = "goambient.io/ingress-status"

// ingressStatusWriter writes Gateway API status on ingress Gateways (status.listeners: each
// listener's Accepted, ResolvedRefs, Conflicted, Programmed, attachedRoutes, supportedKinds)
// and on the HTTPRoutes attached to them (status.parents: Accepted and ResolvedRefs per
// parentRef, controllerName istio.io/gateway-controller), only when they changed.
type ingressStatusWriter struct {
	client gwclient.Interface
	log    *slog.Logger

	mu      sync.Mutex
	pending *ingressJob
	wake    chan struct{}
}

type ingressJob struct {
	m                *model.Mesh
	gateways, routes cache.Store
}

func newIngressStatusWriter(c gwclient.Interface, log *slog.Logger) *ingressStatusWriter {
	return &ingressStatusWriter{client: c, log: log, wake: make(chan struct{}, 1)}
}

// offer hands the writer the latest mesh; one not yet written is dropped for it.
func (w *ingressStatusWriter) offer(m *model.Mesh, l *listers) {
	w.mu.Lock()
	w.pending = &ingressJob{m: m, gateways: l.gateways, routes: l.httpRoutes}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// run writes the latest offered mesh's status until ctx is done.
func (w *ingressStatusWriter) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		}
		w.mu.Lock()
		job := w.pending
		w.pending = nil
		w.mu.Unlock()
		if job != nil {
			w.write(ctx, job)
		}
	}
}

// conditionApply is c as an apply configuration, keeping the transition time of the current
// condition of that type when its status did not change.
func conditionApply(c model.Condition, gen int64, cur []metav1.Condition, now time.Time) *metav1apply.ConditionApplyConfiguration {
	t := metav1.NewTime(now.Truncate(time.Second))
	for _, x := range cur {
		if x.Type == c.Type && string(x.Status) == c.Status && !x.LastTransitionTime.IsZero() {
			t = x.LastTransitionTime
		}
	}
	return metav1apply.Condition().WithType(c.Type).WithStatus(metav1.ConditionStatus(c.Status)).WithReason(c.Reason).
		WithMessage(c.Message).WithObservedGeneration(gen).WithLastTransitionTime(t)
}

// sameConditions says cur already holds want (times aside).
func sameConditions(cur []metav1.Condition, want []model.Condition, gen int64) bool {
	if len(cur) != len(want) {
		return false
	}
	for _, c := range want {
		i := slices.IndexFunc(cur, func(x metav1.Condition) bool { return x.Type == c.Type })
		if i < 0 || string(cur[i].Status) != c.Status || cur[i].Reason != c.Reason || cur[i].Message != c.Message || cur[i].ObservedGeneration != gen {
			return false
		}
	}
	return true
}

func (w *ingressStatusWriter) write(ctx context.Context, job *ingressJob) {
	ing := job.m.Ingress
	if ing == nil {
		return
	}
	now := time.Now()
	for _, g := range ing.Gateways {
		obj, ok, _ := job.gateways.GetByKey(g.Namespace + "/" + g.Name)
		cur, _ := obj.(*gatewayv1.Gateway)
		if !ok || cur == nil {
			continue
		}
		if listenersUpToDate(cur, g) {
			continue
		}
		st := gwapply.GatewayStatus()
		for _, l := range g.Listeners {
			var curConds []metav1.Condition
			for _, x := range cur.Status.Listeners {
				if string(x.Name) == l.Name {
					curConds = x.Conditions
				}
			}
			ls := gwapply.ListenerStatus().WithName(gatewayv1.SectionName(l.Name)).WithAttachedRoutes(int32(l.Attached)).
				WithSupportedKinds(supportedKinds(l)...)
			for _, c := range l.Conditions {
				ls.WithConditions(conditionApply(c, cur.Generation, curConds, now))
			}
			st.WithListeners(ls)
		}
		_, err := w.client.GatewayV1().Gateways(g.Namespace).ApplyStatus(ctx, gwapply.Gateway(g.Name, g.Namespace).WithStatus(st),
			metav1.ApplyOptions{FieldManager: IngressStatusManager, Force: true})
		if err != nil {
			w.log.Warn("ingress Gateway status not written; tried again at the next change", "gateway", g.Key(), "error", err.Error())
		}
	}
	written := map[string]bool{}
	for _, r := range ing.Routes {
		key := r.Route.Namespace + "/" + r.Route.Name
		written[key] = true
		obj, ok, _ := job.routes.GetByKey(key)
		cur, _ := obj.(*gatewayv1.HTTPRoute)
		if !ok || cur == nil || parentsUpToDate(cur, r) {
			continue
		}
		st := gwapply.HTTPRouteStatus()
		for _, p := range r.Parents {
			ref := cur.Spec.ParentRefs[p.Index]
			pr := gwapply.ParentReference().WithName(ref.Name)
			if ref.Group != nil {
				pr.WithGroup(*ref.Group)
			}
			if ref.Kind != nil {
				pr.WithKind(*ref.Kind)
			}
			if ref.Namespace != nil {
				pr.WithNamespace(*ref.Namespace)
			}
			if ref.SectionName != nil {
				pr.WithSectionName(*ref.SectionName)
			}
			if ref.Port != nil {
				pr.WithPort(*ref.Port)
			}
			ps := gwapply.RouteParentStatus().WithParentRef(pr).WithControllerName(model.IngressController)
			curConds := currentParent(cur, p.Index)
			for _, c := range p.Conditions {
				ps.WithConditions(conditionApply(c, cur.Generation, curConds, now))
			}
			st.WithParents(ps)
		}
		w.applyRoute(ctx, cur, st)
	}
	// Routes no longer attached to an ingress Gateway lose the parents this source wrote.
	for _, obj := range job.routes.List() {
		cur, _ := obj.(*gatewayv1.HTTPRoute)
		if cur == nil || written[cur.Namespace+"/"+cur.Name] {
			continue
		}
		if slices.ContainsFunc(cur.Status.Parents, func(p gatewayv1.RouteParentStatus) bool { return string(p.ControllerName) == model.IngressController }) {
			w.applyRoute(ctx, cur, gwapply.HTTPRouteStatus())
		}
	}
}

func (w *ingressStatusWriter) applyRoute(ctx context.Context, cur *gatewayv1.HTTPRoute, st *gwapply.HTTPRouteStatusApplyConfiguration) {
	_, err := w.client.GatewayV1().HTTPRoutes(cur.Namespace).ApplyStatus(ctx, gwapply.HTTPRoute(cur.Name, cur.Namespace).WithStatus(st),
		metav1.ApplyOptions{FieldManager: IngressStatusManager, Force: true})
	if err != nil {
		w.log.Warn("HTTPRoute status not written; tried again at the next change", "route", cur.Namespace+"/"+cur.Name, "error", err.Error())
	}
}

// supportedKinds is HTTPRoute for the protocols served, none otherwise.
func supportedKinds(l *model.IngressListener) []*gwapply.RouteGroupKindApplyConfiguration {
	if l.Protocol != "HTTP" && l.Protocol != "HTTPS" {
		return nil
	}
	return []*gwapply.RouteGroupKindApplyConfiguration{gwapply.RouteGroupKind().WithGroup(gatewayv1.GroupName).WithKind("HTTPRoute")}
}

func listenersUpToDate(cur *gatewayv1.Gateway, g *model.IngressGateway) bool {
	if len(cur.Status.Listeners) != len(g.Listeners) {
		return false
	}
	for _, l := range g.Listeners {
		i := slices.IndexFunc(cur.Status.Listeners, func(x gatewayv1.ListenerStatus) bool { return string(x.Name) == l.Name })
		if i < 0 {
			return false
		}
		x := cur.Status.Listeners[i]
		if int(x.AttachedRoutes) != l.Attached || len(x.SupportedKinds) != len(supportedKinds(l)) || !sameConditions(x.Conditions, l.Conditions, cur.Generation) {
			return false
		}
	}
	return true
}

// currentParent returns the conditions the route's status has for parentRefs[i], as written
// by this controller.
func currentParent(cur *gatewayv1.HTTPRoute, i int) []metav1.Condition {
	if i >= len(cur.Spec.ParentRefs) {
		return nil
	}
	ref := cur.Spec.ParentRefs[i]
	for _, p := range cur.Status.Parents {
		if string(p.ControllerName) == model.IngressController && p.ParentRef.Name == ref.Name &&
			ptrEq(p.ParentRef.Namespace, ref.Namespace) && ptrEq(p.ParentRef.SectionName, ref.SectionName) && ptrEq(p.ParentRef.Port, ref.Port) {
			return p.Conditions
		}
	}
	return nil
}

func ptrEq[T comparable](a, b *T) bool {
	return a == nil && b == nil || a != nil && b != nil && *a == *b
}

func parentsUpToDate(cur *gatewayv1.HTTPRoute, r *model.IngressRoute) bool {
	n := 0
	for _, p := range cur.Status.Parents {
		if string(p.ControllerName) == model.IngressController {
			n++
		}
	}
	if n != len(r.Parents) || len(cur.Status.Parents) != n {
		return false
	}
	for _, p := range r.Parents {
		if !sameConditions(currentParent(cur, p.Index), p.Conditions, cur.Generation) {
			return false
		}
	}
	return true
}
