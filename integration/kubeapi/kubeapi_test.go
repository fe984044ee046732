package kubeapi_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/goambient/goambient/integration/kubeapi"
)

func TestMain(m *testing.M) { os.Exit(kubeapi.Main(m)) }

// The harness's promises, against the real API server: RBAC applies to a service account (not
// to the administrator), TokenRequest and TokenReview work with Istio's audience (which the API
// server itself does not accept), kubectl speaks to it, and the shared server is one.
func TestServer(t *testing.T) {
	s := kubeapi.Shared(t)
	if s2 := kubeapi.Shared(t); s2 != s {
		t.Fatal("Shared started a second server")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.CreateNamespace(ctx, "harness", nil); err != nil {
		t.Fatal(err)
	}
	tok, err := s.Token(ctx, "harness", "default", []string{"istio-ca"}, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := s.Kube.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: tok, Audiences: []string{"istio-ca"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !tr.Status.Authenticated || tr.Status.User.Username != "system:serviceaccount:harness:default" {
		t.Fatalf("TokenReview: %+v", tr.Status)
	}
	list := func(tok string) error {
		sa, err := kubernetes.NewForConfig(s.ConfigFor(tok))
		if err != nil {
			t.Fatal(err)
		}
		_, err = sa.CoreV1().Pods("harness").List(ctx, metav1.ListOptions{})
		return err
	}
	// A token for istio-ca is not one for the API server (its audiences do not include it).
	if err := list(tok); err == nil || !strings.Contains(err.Error(), "Unauthorized") {
		t.Fatalf("a token for istio-ca was taken by the API server: %v", err)
	}
	apiTok, err := s.Token(ctx, "harness", "default", nil, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := list(apiTok); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Fatalf("a service account without a role listed pods: %v", err)
	}
	out, err := s.Kubectl(ctx, "version", "-o", "json")
	if err != nil || !strings.Contains(string(out), `"gitVersion": "v1.37`) {
		t.Fatalf("kubectl version: %v\n%s", err, out)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "harness"},
		Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
	if pod, err = s.Kube.CoreV1().Pods("harness").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if pod, err = s.SetPodRunning(ctx, pod, "127.3.0.1"); err != nil || pod.Status.PodIP != "127.3.0.1" {
		t.Fatalf("SetPodRunning: %v", err)
	}
}
