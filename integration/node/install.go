package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// goWaypointDefaults is Istio's per-class parameters ConfigMap telling xdsserver's deployment
// controller to deploy the embedded Go waypoint (cmd/waypoint) for the waypoint class: no
// Envoy image can be built here. Production waypoints run Envoy (the controller's default).
const goWaypointDefaults = `apiVersion: v1
kind: ConfigMap
metadata:
  name: goambient-waypoint-defaults
  namespace: istio-system
  labels:
    gateway.istio.io/defaults-for-class: istio-waypoint
data:
  goambient.proxy: go
`

// Install applies the install bundle (manifests/install under root, as a user does:
// kubectl apply --server-side -k), the Go waypoint's class defaults, and waits until
// xdsserver and the ztunnel DaemonSet are rolled out.
func (n *Node) Install(ctx context.Context, root string) error {
	if out, err := n.API.Apply(ctx, "-k", filepath.Join(root, "manifests", "install")); err != nil {
		return fmt.Errorf("node: install bundle: %w\n%s", err, out)
	}
	path := filepath.Join(n.Dir, "waypoint-defaults.yaml")
	if err := os.WriteFile(path, []byte(goWaypointDefaults), 0o644); err != nil {
		return err
	}
	if out, err := n.Kubectl(ctx, "apply", "-f", path); err != nil {
		return fmt.Errorf("node: %w\n%s", err, out)
	}
	if err := n.WaitRollout(ctx, "istio-system", "deployment/xdsserver"); err != nil {
		return err
	}
	return n.WaitRollout(ctx, "istio-system", "daemonset/ztunnel")
}
