package main

import (
	"context"
	"log/slog"

	"k8s.io/client-go/kubernetes"

	"github.com/goambient/goambient/xdsserver/rootcm"
)

// publishRoot puts the CA's root into every namespace's istio-ca-root-cert ConfigMap, as
// istiod does, where ztunnels and waypoints mount it. It runs until ctx ends.
func publishRoot(ctx context.Context, log *slog.Logger, kc kubernetes.Interface, root []byte) error {
	c, err := rootcm.New(rootcm.Options{Client: kc, RootPEM: root, Logger: log})
	if err != nil {
		return err
	}
	return c.Run(ctx)
}
