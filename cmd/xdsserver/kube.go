package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/source"
	"github.com/goambient/goambient/xdsserver/source/kube"
)

// kubeSource is the Kubernetes source, reaching the cluster through the kubeconfig file at
// path, or the pod's service account when path is empty (in-cluster). In a cluster istiod's
// role includes deploying waypoints, so the model does not synthesize them; the kubelet
// and the API server give every address, so the model allocates none; and istio-cni's node
// agent says which pods it captured, so the model does not decide it from labels.
func kubeSource(path string, cfg model.Config, noStatus bool, log *slog.Logger) (*kube.Source, kubernetes.Interface, error) {
	rc, err := restConfig(path)
	if err != nil {
		return nil, nil, err
	}
	k, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes clientset: %w", err)
	}
	i, err := istioclient.NewForConfig(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("istio clientset: %w", err)
	}
	g, err := gwclient.NewForConfig(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("gateway API clientset: %w", err)
	}
	cfg.DeployWaypoints = false
	cfg.FromCluster = true        // every address comes from the cluster; a pod without one waits
	cfg.CaptureByNodeAgent = true // HBONE only for pods istio-cni has redirected, as istiod
	return kube.New(kube.Clients{Kube: k, Istio: i, Gateway: g}, kube.Options{Model: cfg, NoStatus: noStatus, Logger: log}), k, nil
}

// restConfig is the client configuration of the kubeconfig file at path, or the pod's service
// account when path is empty (in-cluster).
func restConfig(path string) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	if path != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", path)
	} else {
		rc, err = rest.InClusterConfig()
		if errors.Is(err, rest.ErrNotInCluster) {
			err = fmt.Errorf("%w (give --kubeconfig outside a cluster)", err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration: %w", err)
	}
	rc.UserAgent = "goambient-xdsserver"
	return rc, nil
}

// pickSource is the files source, or the Kubernetes source when a kubeconfig is given or
// in-cluster access is asked for; then it also returns the Kubernetes client (for the CA's
// TokenReview).
func pickSource(filesSrc source.Source, kubeconfig string, inCluster, noStatus bool, cfg model.Config, log *slog.Logger) (source.Source, kubernetes.Interface, error) {
	if kubeconfig == "" && !inCluster {
		return filesSrc, nil, nil
	}
	return kubeSource(kubeconfig, cfg, noStatus, log)
}

// waypointByHostname is --waypoint-hostname when given; otherwise on in Kubernetes mode, where
// istiod refers to a waypoint by the hostname its Gateway's status reports (IPs can be
// re-allocated, a Service may have several), and off for folders, where the VIP form needs no
// lookup and every ztunnel version reads it.
func waypointByHostname(fs *flag.FlagSet, flagValue, kubernetes bool) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == "waypoint-hostname" })
	if set {
		return flagValue
	}
	return kubernetes
}
