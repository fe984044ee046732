package kubeapi

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Istio's names for ambient enrollment.
const (
	// RedirectionAnnotation is what istio-cni's node agent writes on a pod once it has
	// redirected the pod's traffic to its node's ztunnel; istiod (and xdsserver in Kubernetes
	// mode) send HBONE for that pod only then.
	RedirectionAnnotation = "ambient.istio.io/redirection"
	// DataplaneModeLabel enrolls a namespace or a pod (ambient), or opts a pod out (none).
	DataplaneModeLabel = "istio.io/dataplane-mode"
)

// Enrolled reports whether istio-cni's node agent would capture pod, in namespace ns, with
// its default enablement selectors: the pod's or its namespace's istio.io/dataplane-mode is
// ambient and the pod's is not none; never a host-network pod nor a ztunnel.
func Enrolled(ns *corev1.Namespace, pod *corev1.Pod) bool {
	if pod.Spec.HostNetwork || pod.Labels[DataplaneModeLabel] == "none" ||
		(pod.Namespace == "istio-system" && pod.Labels["app"] == "ztunnel") {
		return false
	}
	return pod.Labels[DataplaneModeLabel] == "ambient" || (ns != nil && ns.Labels[DataplaneModeLabel] == "ambient")
}

// SetRedirected writes, as the node agent does once the pod's traffic goes to its ztunnel, the
// annotation ambient.istio.io/redirection=enabled (a merge patch of the status subresource, the
// agent's own call). No node agent runs here: a test plays it.
func (s *Server) SetRedirected(ctx context.Context, pod *corev1.Pod) (*corev1.Pod, error) {
	patch := []byte(`{"metadata":{"annotations":{"` + RedirectionAnnotation + `":"enabled"}}}`)
	out, err := s.Kube.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil {
		return nil, fmt.Errorf("redirection annotation of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return out, nil
}
