package main

import (
	"context"
	"fmt"
	"log/slog"

	"k8s.io/client-go/kubernetes"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/goambient/goambient/xdsserver/gatewaydeploy"
)

// deployFlags are the deployment controller's settings (--waypoint-*).
type deployFlags struct {
	proxy, goImage, envoyImage string
	off                        bool
}

// deployGateways runs istiod's Gateway deployment and GatewayClass controllers
// (xdsserver/gatewaydeploy) against the cluster of kubeconfig (in-cluster when empty) until
// ctx ends.
func deployGateways(ctx context.Context, log *slog.Logger, kubeconfig string, kc kubernetes.Interface, f deployFlags, noStatus bool, trustDomain string) error {
	proxy, err := gatewaydeploy.ParseProxy(f.proxy)
	if err != nil {
		return fmt.Errorf("--waypoint-proxy: %w", err)
	}
	rc, err := restConfig(kubeconfig)
	if err != nil {
		return err
	}
	gw, err := gwclient.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("gateway API clientset: %w", err)
	}
	c, err := gatewaydeploy.New(gatewaydeploy.Options{
		Kube: kc, Gateway: gw, Proxy: proxy, GoImage: f.goImage, EnvoyImage: f.envoyImage,
		TrustDomain: trustDomain, NoStatus: noStatus, Logger: log,
	})
	if err != nil {
		return err
	}
	return c.Run(ctx)
}
