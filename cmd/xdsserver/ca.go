package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/kubernetes"

	"github.com/goambient/goambient/xdsserver/ca/casecret"
	"github.com/goambient/goambient/xdsserver/ca/pki"
)

// loadRoot is the mesh's CA: the root kept in caDir (created there at first start) when it is
// given, else, in Kubernetes mode, istiod's Secrets in istio-system (cacerts when the user
// plugged a CA in, else istio-ca-secret, generated at first start).
func loadRoot(log *slog.Logger, caDir string, kc kubernetes.Interface, td spiffeid.TrustDomain) (*pki.CA, error) {
	if caDir != "" || kc == nil {
		root, created, err := pki.LoadOrCreateCA(caDir, td)
		if err != nil {
			return nil, fmt.Errorf("--ca-dir: %w", err)
		}
		log.Info("CA root", "dir", caDir, "created", created, "trust_domain", td.Name(), "expires", root.Root().NotAfter)
		return root, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := casecret.Load(ctx, casecret.Options{Client: kc, TrustDomain: td, Logger: log})
	if err != nil {
		return nil, err
	}
	log.Info("CA root", "secret", "istio-system/"+r.Secret, "created", r.Created, "trust_domain", td.Name(), "expires", r.CA.Root().NotAfter)
	return r.CA, nil
}
