package kube_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
)

// selfSigned is a certificate and key for *.opssec.in.
func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "*.opssec.in"}, DNSNames: []string{"*.opssec.in"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

// TestIngressStatusInCluster runs the real xdsserver binary against the real API server (the
// bundle's RBAC only) with an ingress Gateway of class istio: an HTTP listener, an HTTPS one
// whose Secret (kubernetes.io/tls) exists, one whose Secret does not, and an HTTPRoute attached
// to the first. It checks the Gateway API status xdsserver writes: each listener's
// ResolvedRefs and Programmed (InvalidCertificateRef naming the missing Secret, only that
// listener not programmed), attachedRoutes, the route's Accepted and ResolvedRefs under
// istio.io/gateway-controller; then the Secret created, the listener becomes programmed.
func TestIngressStatusInCluster(t *testing.T) {
	e := cluster(t)
	x := e.startXdsserver(t, e.net+".245")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := "ingress-" + strings.ReplaceAll(e.net, ".", "-")
	if err := e.s.CreateNamespace(ctx, ns, map[string]string{"istio.io/dataplane-mode": "ambient"}); err != nil {
		t.Fatal(err)
	}
	crt, key := selfSigned(t)
	if _, err := e.s.Kube.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "opssec-cert"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": crt, "tls.key": key}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	objs := filepath.Join(t.TempDir(), "ingress.yaml")
	os.WriteFile(objs, []byte(`apiVersion: v1
kind: Service
metadata: {name: appb, namespace: `+ns+`}
spec: {selector: {app: appb}, ports: [{name: http, port: 8000, targetPort: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: Gateway
metadata: {name: gateway, namespace: `+ns+`}
spec:
  gatewayClassName: istio
  listeners:
  - {name: default, hostname: "*.opssec.in", port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  - {name: https, hostname: "*.opssec.in", port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: opssec-cert}]}}
  - {name: later, hostname: "later.example.com", port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: later-cert}]}}
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: HTTPRoute
metadata: {name: http, namespace: `+ns+`}
spec:
  parentRefs: [{name: gateway, sectionName: default}]
  hostnames: ["appb.opssec.in"]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: appb, port: 8000}]
`), 0o644)
	if _, err := e.s.Kubectl(ctx, "apply", "--server-side", "-f", objs); err != nil {
		t.Fatal(err)
	}
	// The cluster is shared: the objects go with the test (other tests compare the whole
	// cluster's mesh with the files source's, which would miss the Secrets).
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := e.s.Kubectl(ctx, "delete", "--ignore-not-found", "-f", objs); err != nil {
			t.Error(err)
		}
		for _, name := range []string{"opssec-cert", "later-cert"} {
			e.s.Kube.CoreV1().Secrets(ns).Delete(ctx, name, metav1.DeleteOptions{})
		}
	})
	gw, err := gwclient.NewForConfig(e.s.Config)
	if err != nil {
		t.Fatal(err)
	}
	listener := func(name string) (gatewayv1.ListenerStatus, bool) {
		g, err := gw.GatewayV1().Gateways(ns).Get(ctx, "gateway", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(g.Status.Listeners, func(l gatewayv1.ListenerStatus) bool { return string(l.Name) == name })
		if i < 0 {
			return gatewayv1.ListenerStatus{}, false
		}
		return g.Status.Listeners[i], true
	}
	cond := func(cs []metav1.Condition, typ string) metav1.Condition {
		for _, c := range cs {
			if c.Type == typ {
				return c
			}
		}
		return metav1.Condition{}
	}
	eventually(t, time.Minute, "the listeners' status", func() bool {
		l, ok := listener("default")
		return ok && cond(l.Conditions, "Programmed").Status == metav1.ConditionTrue && l.AttachedRoutes == 1
	})
	if l, _ := listener("https"); cond(l.Conditions, "Programmed").Status != metav1.ConditionTrue || cond(l.Conditions, "ResolvedRefs").Status != metav1.ConditionTrue {
		t.Errorf("the HTTPS listener with its Secret: %+v", l.Conditions)
	}
	l, _ := listener("later")
	if c := cond(l.Conditions, "ResolvedRefs"); c.Status != metav1.ConditionFalse || c.Reason != "InvalidCertificateRef" || !strings.Contains(c.Message, ns+"/later-cert does not exist") {
		t.Errorf("the listener without its Secret: ResolvedRefs %+v", c)
	}
	if c := cond(l.Conditions, "Programmed"); c.Status != metav1.ConditionFalse {
		t.Errorf("the listener without its Secret is programmed: %+v", c)
	}
	if len(l.SupportedKinds) != 1 || l.SupportedKinds[0].Kind != "HTTPRoute" {
		t.Errorf("supportedKinds: %+v", l.SupportedKinds)
	}
	eventually(t, time.Minute, "the HTTPRoute's status", func() bool {
		r, err := gw.GatewayV1().HTTPRoutes(ns).Get(ctx, "http", metav1.GetOptions{})
		if err != nil || len(r.Status.Parents) != 1 {
			return false
		}
		p := r.Status.Parents[0]
		return p.ControllerName == "istio.io/gateway-controller" && string(p.ParentRef.Name) == "gateway" &&
			cond(p.Conditions, "Accepted").Status == metav1.ConditionTrue && cond(p.Conditions, "ResolvedRefs").Status == metav1.ConditionTrue
	})

	// The missing Secret created: its listener is programmed.
	crt2, key2 := selfSigned(t)
	if _, err := e.s.Kube.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "later-cert"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": crt2, "tls.key": key2}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the listener programmed once its Secret exists", func() bool {
		l, _ := listener("later")
		return cond(l.Conditions, "Programmed").Status == metav1.ConditionTrue && cond(l.Conditions, "ResolvedRefs").Status == metav1.ConditionTrue
	})
	x.noForbidden(t)
}
