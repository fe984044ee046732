package kube

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	"istio.io/api/meta/v1alpha1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/xdsserver/model"
)

// Istio's ambient status: the condition istiod's ambient index writes on an AuthorizationPolicy
// that ztunnels enforce (pilot/pkg/model ConditionType ZtunnelAccepted), with its reasons.
const (
	ConditionZtunnelAccepted = "ZtunnelAccepted"
	ReasonAccepted           = "Accepted"         // istiod: bound, "attached to ztunnel"
	ReasonUnsupportedValue   = "UnsupportedValue" // istiod: L7 attributes dropped, or an action/dry-run ztunnel cannot enforce
	ReasonInvalid            = "Invalid"          // ours: istiod's webhook would have rejected the object
	messageAccepted          = "attached to ztunnel"
)

// statusWriter writes the ZtunnelAccepted condition of AuthorizationPolicies, only when it
// changed. A failed write is logged and tried again at the next rebuild.
type statusWriter struct {
	client istioclient.Interface
	log    *slog.Logger

	mu      sync.Mutex
	pending *statusJob    // the latest mesh not written yet (a newer one replaces it)
	wake    chan struct{} // capacity 1
}

type statusJob struct {
	m   *model.Mesh
	aps []*securityclient.AuthorizationPolicy
}

// offer hands the writer the latest mesh; a mesh not yet written is dropped for it.
func (w *statusWriter) offer(m *model.Mesh, aps []*securityclient.AuthorizationPolicy) {
	w.mu.Lock()
	w.pending = &statusJob{m: m, aps: aps}
	if w.wake == nil {
		w.wake = make(chan struct{}, 1)
	}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// run writes the latest offered mesh's conditions until ctx is done.
func (w *statusWriter) run(ctx context.Context) {
	w.mu.Lock()
	if w.wake == nil {
		w.wake = make(chan struct{}, 1)
	}
	wake := w.wake
	w.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return
		case <-wake:
		}
		w.mu.Lock()
		job := w.pending
		w.pending = nil
		w.mu.Unlock()
		if job != nil {
			w.write(ctx, job.m, job.aps)
		}
	}
}

// condition is what ZtunnelAccepted should say; nil: nothing (a policy for waypoints).
type condition struct {
	status          bool
	reason, message string
}

// desired is istiod's convertAuthorizationPolicy status for one policy, plus "Invalid" for a
// policy the mesh left out.
func desired(key string, invalid map[string][]string, warnings map[string]string, bound map[string]bool, ap *securityclient.AuthorizationPolicy) *condition {
	if errs := invalid[key]; len(errs) > 0 {
		return &condition{status: false, reason: ReasonInvalid, message: strings.Join(errs, "; ")}
	}
	if ap.Spec.GetTargetRef() != nil || len(ap.Spec.GetTargetRefs()) > 0 {
		return nil // for waypoints only: istiod writes no ZtunnelAccepted
	}
	if w, ok := warnings[key]; ok {
		return &condition{status: bound[key], reason: ReasonUnsupportedValue, message: w}
	}
	return &condition{status: bound[key], reason: ReasonAccepted, message: messageAccepted}
}

// write compares each policy's condition with what the mesh says and updates the changed ones.
func (w *statusWriter) write(ctx context.Context, m *model.Mesh, aps []*securityclient.AuthorizationPolicy) {
	invalid := map[string][]string{}
	for _, e := range m.Errors {
		var pe *policies.Error
		if errors.As(e, &pe) && pe.Kind == "AuthorizationPolicy" {
			msg := pe.Reason
			if pe.Field != "" {
				msg = pe.Field + ": " + pe.Reason
			}
			invalid[pe.Object] = append(invalid[pe.Object], msg)
		}
	}
	z := policies.ToZtunnel(m.Policies, policies.Options{RootNamespace: m.RootNamespace})
	bound := map[string]bool{}
	for _, a := range z.Authorizations() {
		bound[a.GetNamespace()+"/"+a.GetName()] = true
	}
	warnings := map[string]string{}
	for _, e := range z.Warnings {
		var pe *policies.Error
		if errors.As(e, &pe) && pe.Kind == "AuthorizationPolicy" {
			if _, dup := warnings[pe.Object]; !dup {
				warnings[pe.Object] = pe.Reason
			}
		}
	}
	for _, ap := range aps {
		if ctx.Err() != nil {
			return
		}
		key := ap.Namespace + "/" + ap.Name
		want := desired(key, invalid, warnings, bound, ap)
		now := time.Now()
		if _, changed := withCondition(ap.Status.GetConditions(), want, ap.Generation, now); !changed {
			continue
		}
		obj := ap.DeepCopy() // the informer's object is never modified
		obj.Status.Conditions, _ = withCondition(obj.Status.GetConditions(), want, obj.Generation, now)
		if _, err := w.client.SecurityV1().AuthorizationPolicies(ap.Namespace).UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
			w.log.Warn("cannot write the status of an AuthorizationPolicy; will try again at the next change", "policy", key, "error", err)
			continue
		}
		w.log.Debug("AuthorizationPolicy status written", "policy", key, "condition", ConditionZtunnelAccepted)
	}
}

// withCondition returns the conditions with ZtunnelAccepted set to want (removed when nil),
// and whether that differs from cur. The transition time moves only when the status does.
func withCondition(cur []*v1alpha1.IstioCondition, want *condition, generation int64, now time.Time) ([]*v1alpha1.IstioCondition, bool) {
	i := slices.IndexFunc(cur, func(c *v1alpha1.IstioCondition) bool { return c.GetType() == ConditionZtunnelAccepted })
	if want == nil {
		if i < 0 {
			return cur, false
		}
		return slices.Delete(slices.Clone(cur), i, i+1), true
	}
	status := string(metav1.ConditionFalse)
	if want.status {
		status = string(metav1.ConditionTrue)
	}
	next := &v1alpha1.IstioCondition{
		Type: ConditionZtunnelAccepted, Status: status, Reason: want.reason, Message: want.message,
		ObservedGeneration: generation, LastTransitionTime: timestamppb.New(now),
	}
	if i < 0 {
		return append(slices.Clone(cur), next), true
	}
	old := cur[i]
	if old.GetStatus() == next.Status && old.GetReason() == next.Reason && old.GetMessage() == next.Message && old.GetObservedGeneration() == next.ObservedGeneration {
		return cur, false
	}
	if old.GetStatus() == next.Status && old.GetLastTransitionTime() != nil {
		next.LastTransitionTime = old.GetLastTransitionTime()
	}
	out := slices.Clone(cur)
	out[i] = next
	return out, true
}
