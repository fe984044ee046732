package kubeapi

import (
	"context"
	"fmt"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CreateNamespace creates a namespace with labels and its default ServiceAccount (which a
// controller manager would create; pods name it, and admission requires it).
func (s *Server) CreateNamespace(ctx context.Context, name string, labels map[string]string) error {
	_, err := s.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("namespace %s: %w", name, err)
	}
	return s.EnsureServiceAccount(ctx, name, "default")
}

// EnsureServiceAccount creates the ServiceAccount ns/name unless it exists.
func (s *Server) EnsureServiceAccount(ctx context.Context, ns, name string) error {
	_, err := s.Kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("service account %s/%s: %w", ns, name, err)
	}
	return nil
}

// Token returns a token of the ServiceAccount ns/name from the TokenRequest API, for the
// audiences (the API server's when empty), bound to a pod when pod is set (as the kubelet's
// projected tokens are), valid for seconds (600 at least; the API server's default when 0).
func (s *Server) Token(ctx context.Context, ns, name string, audiences []string, pod *corev1.Pod, seconds int64) (string, error) {
	req := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: audiences}}
	if seconds > 0 {
		req.Spec.ExpirationSeconds = &seconds
	}
	if pod != nil {
		req.Spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	tr, err := s.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token of %s/%s: %w", ns, name, err)
	}
	return tr.Status.Token, nil
}

// SetPodRunning writes the status a kubelet would for a started, ready pod with ip.
func (s *Server) SetPodRunning(ctx context.Context, pod *corev1.Pod, ip string) (*corev1.Pod, error) {
	p := pod.DeepCopy()
	now := metav1.Now()
	p.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, HostIP: "127.0.0.1", StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
	}
	out, err := s.Kube.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("status of pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return out, nil
}
