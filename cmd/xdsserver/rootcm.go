package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"k8s.io/client-go/kubernetes"

	"github.com/goambient/goambient/xdsserver/rootcm"
	"github.com/goambient/goambient/ztunnel/identity"
)

// publishRoot puts the CA's root (caDir's root-cert.pem) into every namespace's
// istio-ca-root-cert ConfigMap, as istiod does, where ztunnels and waypoints mount it. It
// runs until ctx ends.
func publishRoot(ctx context.Context, log *slog.Logger, kc kubernetes.Interface, caDir string) error {
	root, err := os.ReadFile(filepath.Join(caDir, identity.RootCertFile))
	if err != nil {
		return fmt.Errorf("root certificate for %s: %w", rootcm.ConfigMapName, err)
	}
	c, err := rootcm.New(rootcm.Options{Client: kc, RootPEM: root, Logger: log})
	if err != nil {
		return err
	}
	return c.Run(ctx)
}
