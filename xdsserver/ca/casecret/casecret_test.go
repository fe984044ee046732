package casecret

import (
	"context"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/goambient/goambient/xdsserver/ca/pki"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// TestLoad with client-go's fake clientset (the real API server and RBAC: integration/kube
// TestCAInSecrets): the first Load creates istio-ca-secret, the next loads the same root;
// cacerts wins over it; a Secret holding no valid CA is an error, never replaced.
func TestLoad(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset()
	first, err := Load(ctx, Options{Client: c, TrustDomain: td})
	if err != nil || !first.Created || first.Secret != SelfSignedSecret {
		t.Fatalf("first load: %+v %v", first, err)
	}
	s, _ := c.CoreV1().Secrets("istio-system").Get(ctx, SelfSignedSecret, metav1.GetOptions{})
	if s.Type != SecretType || string(s.Data[CACertKey]) != string(first.CA.RootPEM()) {
		t.Errorf("Secret %s: type %s", s.Name, s.Type)
	}
	again, err := Load(ctx, Options{Client: c, TrustDomain: td})
	if err != nil || again.Created || !again.CA.Root().Equal(first.CA.Root()) {
		t.Fatalf("second load: %+v %v", again, err)
	}
	plugged, _ := pki.NewCA(td)
	certPEM, keyPEM, _ := plugged.PEM()
	c.CoreV1().Secrets("istio-system").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: PluggedInSecret, Namespace: "istio-system"},
		Data: map[string][]byte{CACertKey: certPEM, CAKeyKey: keyPEM, RootCertKey: certPEM}}, metav1.CreateOptions{})
	if r, err := Load(ctx, Options{Client: c, TrustDomain: td}); err != nil || r.Secret != PluggedInSecret || !r.CA.Root().Equal(plugged.Root()) {
		t.Fatalf("with cacerts: %+v %v", r, err)
	}
	bad := fake.NewClientset(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: SelfSignedSecret, Namespace: "istio-system"}, Data: map[string][]byte{CACertKey: []byte("garbage")}})
	if _, err := Load(ctx, Options{Client: bad, TrustDomain: td}); err == nil || !strings.Contains(err.Error(), "istio-system/istio-ca-secret") {
		t.Fatalf("a broken Secret: %v", err)
	}
	if s, _ := bad.CoreV1().Secrets("istio-system").Get(ctx, SelfSignedSecret, metav1.GetOptions{}); string(s.Data[CACertKey]) != "garbage" {
		t.Error("the broken Secret was replaced")
	}
}
