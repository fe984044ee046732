package node

import (
	"context"
	_ "embed"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
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
	// The agent serves its metrics on every address of the host's namespace: a port free there.
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		return err
	}
	metrics := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	cni := strings.NewReplacer("@CNI_BIN_DIR@", n.CNIBinDir(), "@CNI_CONF_DIR@", n.CNIConfDir(), "@MONITORING_PORT@", metrics).Replace(string(istioCNIYAML))
	path = filepath.Join(n.Dir, "istio-cni.yaml")
	if err := os.WriteFile(path, []byte(cni), 0o644); err != nil {
		return err
	}
	if out, err := n.Kubectl(ctx, "apply", "-f", path); err != nil {
		return fmt.Errorf("node: %w\n%s", err, out)
	}
	// Deleted first at Stop, and waited for: its pod's graceful end removes the agent's host
	// rules and ipsets, its CNI plugin and configuration.
	n.BeforeStop("delete istio-cni", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_, err := n.Kubectl(ctx, "-n", "istio-system", "delete", "daemonset", "istio-cni-node", "--wait=true", "--timeout=90s")
		if err != nil {
			return err
		}
		_, err = n.Kubectl(ctx, "-n", "istio-system", "wait", "--for=delete", "pod", "-l", "k8s-app=istio-cni-node", "--timeout=90s")
		return err
	})
	for _, w := range []string{"deployment/xdsserver", "daemonset/istio-cni-node", "daemonset/ztunnel"} {
		if err := n.WaitRollout(ctx, "istio-system", w); err != nil {
			return err
		}
	}
	return nil
}

//go:embed addons/istio-cni.yaml
var istioCNIYAML []byte
