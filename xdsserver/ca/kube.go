package ca

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Extra fields of a TokenReview's user for a token bound to a pod (Kubernetes ≥ 1.30 adds the
// node).
const (
	ExtraNodeName = "authentication.kubernetes.io/node-name"
	ExtraPodName  = "authentication.kubernetes.io/pod-name"
	ExtraPodUID   = "authentication.kubernetes.io/pod-uid"
)

// DefaultAudience is the audience of the tokens Istio's proxies send to the CA.
const DefaultAudience = "istio-ca"

// DefaultNodeAccounts are the service accounts whose callers are ztunnels (Istio's
// CA_TRUSTED_NODE_ACCOUNTS default).
var DefaultNodeAccounts = []string{"istio-system/ztunnel"}

// TokenReviewOptions configure a TokenReview authenticator. Client is required.
type TokenReviewOptions struct {
	Client kubernetes.Interface
	// Audiences the token must be for (DefaultAudience when nil).
	Audiences []string
	// NodeAccounts are "namespace/name" of the service accounts of ztunnels (DefaultNodeAccounts
	// when nil). Any other service account is a workload, which gets its own identity only.
	NodeAccounts []string
}

// TokenReview authenticates Kubernetes service account tokens with the API server's TokenReview.
// A ztunnel's node is the token's node-name extra field, or else the node of the pod the token is
// bound to (read from the API, and checked to be the same pod and service account).
type TokenReview struct{ o TokenReviewOptions }

// NewTokenReview returns a TokenReview authenticator.
func NewTokenReview(o TokenReviewOptions) (*TokenReview, error) {
	if o.Client == nil {
		return nil, errors.New("ca: TokenReviewOptions.Client is required")
	}
	if o.Audiences == nil {
		o.Audiences = []string{DefaultAudience}
	}
	if o.NodeAccounts == nil {
		o.NodeAccounts = DefaultNodeAccounts
	}
	return &TokenReview{o: o}, nil
}

// Authenticate implements Authenticator.
func (t *TokenReview) Authenticate(ctx context.Context, token string) (*Caller, error) {
	tr, err := t.o.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: t.o.Audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("TokenReview: %w", err)
	}
	st := tr.Status
	if !st.Authenticated {
		return nil, fmt.Errorf("TokenReview: status.authenticated is false: %s", st.Error)
	}
	if st.Error != "" {
		return nil, fmt.Errorf("TokenReview: status.error: %s", st.Error)
	}
	if len(t.o.Audiences) > 0 && !slices.ContainsFunc(st.Audiences, func(a string) bool { return slices.Contains(t.o.Audiences, a) }) {
		return nil, fmt.Errorf("TokenReview: status.audiences %v: none of %v", st.Audiences, t.o.Audiences)
	}
	rest, ok := strings.CutPrefix(st.User.Username, "system:serviceaccount:")
	ns, sa, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return nil, fmt.Errorf("TokenReview: status.user.username %q is not a service account", st.User.Username)
	}
	if !slices.Contains(t.o.NodeAccounts, ns+"/"+sa) {
		return &Caller{Kind: KindWorkload, Namespace: ns, Name: sa}, nil
	}
	extra := func(k string) string {
		if v := st.User.Extra[k]; len(v) == 1 {
			return v[0]
		}
		return ""
	}
	if node := extra(ExtraNodeName); node != "" {
		return &Caller{Kind: KindZtunnel, Node: node, Namespace: ns, Name: sa}, nil
	}
	podName := extra(ExtraPodName)
	if podName == "" {
		return nil, fmt.Errorf("TokenReview: ztunnel %s/%s: the token is bound to no pod (status.user.extra has no %s or %s)", ns, sa, ExtraNodeName, ExtraPodName)
	}
	pod, err := t.o.Client.CoreV1().Pods(ns).Get(ctx, podName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("TokenReview: ztunnel pod %s/%s: %w", ns, podName, err)
	}
	if uid := extra(ExtraPodUID); uid != "" && string(pod.UID) != uid {
		return nil, fmt.Errorf("TokenReview: ztunnel pod %s/%s: metadata.uid %s is not the token's %s", ns, podName, pod.UID, uid)
	}
	if pod.Spec.ServiceAccountName != sa {
		return nil, fmt.Errorf("TokenReview: ztunnel pod %s/%s: spec.serviceAccountName %q is not the token's %q", ns, podName, pod.Spec.ServiceAccountName, sa)
	}
	if pod.Spec.NodeName == "" {
		return nil, fmt.Errorf("TokenReview: ztunnel pod %s/%s: spec.nodeName is empty", ns, podName)
	}
	return &Caller{Kind: KindZtunnel, Node: pod.Spec.NodeName, Namespace: ns, Name: sa}, nil
}
