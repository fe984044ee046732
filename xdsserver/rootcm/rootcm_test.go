package rootcm_test

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/goambient/goambient/xdsserver/rootcm"
)

// With client-go's fake clientset: a namespace without the ConfigMap gets one (istiod's label,
// the root under root-cert.pem); one holding another root is corrected and keeps its other
// keys; kube-public gets none. (Changes after the start are tested against a real API server
// in integration/kube.)
func TestPublishes(t *testing.T) {
	ns := func(name string) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	}
	stale := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: rootcm.ConfigMapName, Namespace: "shop"},
		Data: map[string]string{rootcm.DataKey: "old root", "extra": "kept"}}
	client := fake.NewClientset(ns("default"), ns("shop"), ns("kube-public"), stale)
	c, err := rootcm.New(rootcm.Options{Client: client, RootPEM: []byte("the root")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	get := func(ns string) *corev1.ConfigMap {
		cm, err := client.CoreV1().ConfigMaps(ns).Get(ctx, rootcm.ConfigMapName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		} else if err != nil {
			t.Fatal(err)
		}
		return cm
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		d, s := get("default"), get("shop")
		if d != nil && s != nil && s.Data[rootcm.DataKey] == "the root" {
			if d.Data[rootcm.DataKey] != "the root" || d.Labels[rootcm.LabelKey] != "true" {
				t.Errorf("default: %+v", d)
			}
			if s.Data["extra"] != "kept" {
				t.Errorf("shop: another key was dropped: %v", s.Data)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not published: default %v, shop %v", d, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if get("kube-public") != nil {
		t.Error("kube-public got the ConfigMap")
	}
	if _, err := rootcm.New(rootcm.Options{Client: client}); err == nil {
		t.Error("no root: no error")
	}
}
