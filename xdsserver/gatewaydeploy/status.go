package gatewaydeploy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1apply "k8s.io/client-go/applyconfigurations/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwapply "sigs.k8s.io/gateway-api/applyconfiguration/apis/v1"
)

// observed is what the Gateway's status is computed from.
type observed struct {
	gw        *gatewayv1.Gateway
	class     classInfo
	hostname  string          // the Service's name.namespace.svc.<domain>
	service   *corev1.Service // nil: not there (yet)
	readyPods int             // ready pods with an IP that the Service selects
	paramsErr error           // the parameters could not be used: not Accepted
	namesErr  error           // no name could be used: not Programmed
	fallback  string          // why the objects are not under their first name
}

// gatewayStatus computes the Gateway's conditions and addresses as istiod's
// reportGatewayStatus does for a managed Gateway: Accepted (the configuration), Programmed
// (the Service has ready instances for the listener ports; a LoadBalancer Service's external
// address is not pending), ResolvedRefs; the addresses are reported only once Programmed, and
// once reported are never removed. The conditions' transition times move only when their
// status does.
func gatewayStatus(o observed, now time.Time) *gwapply.GatewayStatusApplyConfiguration {
	type cond struct {
		ok              bool
		reason, message string
	}
	accepted := cond{true, string(gatewayv1.GatewayReasonAccepted), "Resource accepted"}
	if o.fallback != "" {
		accepted.message += "; " + o.fallback
	}
	if o.paramsErr != nil {
		accepted = cond{false, string(gatewayv1.GatewayReasonInvalidParameters), o.paramsErr.Error()}
	}
	programmed := cond{true, string(gatewayv1.GatewayReasonProgrammed), "Resource programmed"}
	var internal, internalIPs, external, warnings []string
	pending := false
	if o.service != nil && o.readyPods > 0 {
		for _, p := range listenerPorts(o.gw) {
			internal = append(internal, net.JoinHostPort(o.hostname, strconv.Itoa(int(p))))
		}
		for _, ip := range append([]string{o.service.Spec.ClusterIP}, o.service.Spec.ClusterIPs...) {
			if _, err := netip.ParseAddr(ip); err == nil && !slices.Contains(internalIPs, ip) {
				internalIPs = append(internalIPs, ip)
			}
		}
		for _, in := range o.service.Status.LoadBalancer.Ingress {
			external = append(external, cmpOr(in.IP, in.Hostname))
		}
		if len(external) == 0 && o.service.Spec.Type == corev1.ServiceTypeLoadBalancer {
			pending = true
			warnings = append(warnings, fmt.Sprintf("address pending for hostname %q", o.hostname))
		}
	} else if o.service != nil || o.namesErr == nil {
		warnings = append(warnings, fmt.Sprintf("no instances found for hostname %q", o.hostname))
	}
	switch {
	case o.namesErr != nil:
		programmed = cond{false, string(gatewayv1.GatewayReasonInvalid), o.namesErr.Error()}
	case o.paramsErr != nil:
		programmed = cond{false, string(gatewayv1.GatewayReasonInvalid), "the parameters are not valid"}
	case len(warnings) > 0 && len(internal) > 0:
		programmed = cond{false, string(gatewayv1.GatewayReasonAddressNotAssigned), fmt.Sprintf(
			"Assigned to service(s) %s, but failed to assign to all requested addresses: %s", humanJoin(internal), strings.Join(warnings, "; "))}
	case len(warnings) > 0:
		programmed = cond{false, string(gatewayv1.GatewayReasonAddressNotAssigned), "Failed to assign to any requested addresses: " + strings.Join(warnings, "; ")}
	default:
		programmed.message = "Resource programmed, assigned to service(s) " + humanJoin(internal)
	}
	conds := map[gatewayv1.GatewayConditionType]cond{
		gatewayv1.GatewayConditionAccepted:     accepted,
		gatewayv1.GatewayConditionProgrammed:   programmed,
		gatewayv1.GatewayConditionResolvedRefs: {true, string(gatewayv1.GatewayReasonResolvedRefs), "All references resolved"},
	}
	st := gwapply.GatewayStatus()
	for _, t := range []gatewayv1.GatewayConditionType{gatewayv1.GatewayConditionAccepted, gatewayv1.GatewayConditionProgrammed, gatewayv1.GatewayConditionResolvedRefs} {
		c := conds[t]
		status := metav1.ConditionFalse
		if c.ok {
			status = metav1.ConditionTrue
		}
		st.WithConditions(condition(metav1.Condition{Type: string(t), Status: status, Reason: c.reason, Message: c.message, ObservedGeneration: o.gw.Generation},
			o.gw.Status.Conditions, now))
	}
	report := external
	if len(report) == 0 && len(internal) > 0 {
		if !o.class.hostnameOnly {
			report = append(report, internalIPs...)
		}
		if !pending {
			report = append(report, o.hostname)
		}
	}
	if len(report) == 0 { // keep what was reported
		for _, a := range o.gw.Status.Addresses {
			report = append(report, a.Value)
		}
	}
	for _, a := range report {
		t := gatewayv1.HostnameAddressType
		if _, err := netip.ParseAddr(a); err == nil {
			t = gatewayv1.IPAddressType
		}
		st.WithAddresses(gwapply.GatewayStatusAddress().WithType(t).WithValue(a))
	}
	return st
}

// condition is want as an apply configuration, with the transition time of the same
// condition in cur when its status did not change.
func condition(want metav1.Condition, cur []metav1.Condition, now time.Time) *metav1apply.ConditionApplyConfiguration {
	t := metav1.NewTime(now.Truncate(time.Second))
	for _, c := range cur {
		if c.Type == want.Type && c.Status == want.Status && !c.LastTransitionTime.IsZero() {
			t = c.LastTransitionTime
		}
	}
	return metav1apply.Condition().WithType(want.Type).WithStatus(want.Status).WithReason(want.Reason).
		WithMessage(want.Message).WithObservedGeneration(want.ObservedGeneration).WithLastTransitionTime(t)
}

// sameStatus says the Gateway's status already is st (conditions without their times, and
// addresses), so that nothing is written.
func sameStatus(gw *gatewayv1.Gateway, st *gwapply.GatewayStatusApplyConfiguration) bool {
	if len(st.Addresses) != len(gw.Status.Addresses) {
		return false
	}
	for i, a := range st.Addresses {
		if *a.Value != gw.Status.Addresses[i].Value || gw.Status.Addresses[i].Type == nil || *a.Type != *gw.Status.Addresses[i].Type {
			return false
		}
	}
	for _, c := range st.Conditions {
		i := slices.IndexFunc(gw.Status.Conditions, func(g metav1.Condition) bool { return g.Type == *c.Type })
		if i < 0 {
			return false
		}
		g := gw.Status.Conditions[i]
		if g.Status != *c.Status || g.Reason != *c.Reason || g.Message != *c.Message || g.ObservedGeneration != *c.ObservedGeneration {
			return false
		}
	}
	return true
}

func humanJoin(s []string) string {
	switch len(s) {
	case 0:
		return ""
	case 1:
		return s[0]
	case 2:
		return s[0] + " and " + s[1]
	}
	return strings.Join(s[:len(s)-1], ", ") + ", and " + s[len(s)-1]
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func joinErrs(errs []error) error { return errors.Join(errs...) }
