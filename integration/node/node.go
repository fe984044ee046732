// Package node runs a real single-node Kubernetes on this machine for tests and demos: etcd and kube-apiserver (integration/kubeapi), kube-controller-manager, kube-scheduler, kubelet with containerd and runc, the CNI bridge, kube-proxy and CoreDNS, with images built from scratch and imported into containerd, all torn down by PID with what they changed in the host restored.
package node

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/goambient/goambient/integration/kubeapi"
)

// Name is the node's name.
const Name = "gm-node"

// ServiceCIDR is the Services' range; DNSAddress, the cluster DNS Service's address in it.
const (
	ServiceCIDR = "10.96.0.0/16"
	DNSAddress  = "10.96.0.10"
)

// ReadyTimeout bounds each wait of the bring-up (a component's health, the node Ready, the
// images' import) on a loaded machine.
const ReadyTimeout = 4 * time.Minute

// Node is a running single-node cluster.
type Node struct {
	*network
	API *kubeapi.Server
	// Dir holds every file of the node: logs (*.log), containerd's and the kubelet's state,
	// configurations, images.
	Dir string
	// Containerd is containerd's socket.
	Containerd string
	// Started is when the bring-up began; ReadyAt, when the node was Ready.
	Started, ReadyAt time.Time

	mu       sync.Mutex
	procs    []*proc
	undos    []undoStep
	preStops []undoStep
}

// BeforeStop registers fn to run at Stop while the node still runs (deleting what should end
// gracefully, as the node agent's DaemonSet, whose pod then removes its own host rules).
func (n *Node) BeforeStop(what string, fn func() error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.preStops = append(n.preStops, undoStep{what, fn})
}

type undoStep struct {
	what string
	fn   func() error
}

// Requirements says why the node cannot run here, or nil: root, the host tools, containerd,
// runc, the CNI plugins and the Kubernetes binaries.
func Requirements() error {
	if os.Geteuid() != 0 {
		return errors.New("not root (the node needs containerd, runc, bridges and iptables)")
	}
	for _, tool := range []string{"ip", "iptables", "ipset", "mount", "findmnt", "unshare", "ldd", "containerd", "containerd-shim-runc-v2", "runc", "ctr"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed (apt-get install containerd runc iptables ipset iproute2)", tool)
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(CNIBinDir, p)); err != nil {
			return fmt.Errorf("no CNI plugin %s in %s (apt-get install containernetworking-plugins)", p, CNIBinDir)
		}
	}
	if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err != nil {
		return errors.New("no bridge netfilter (br_netfilter) in this kernel: kube-proxy's Service addresses would not work between pods")
	}
	bin, err := kubeapi.BinDir()
	if err != nil {
		return err
	}
	for _, b := range []string{"kubelet", "kube-scheduler", "kube-proxy", "kube-controller-manager"} {
		if fi, err := os.Stat(filepath.Join(bin, b)); err != nil || fi.IsDir() {
			return fmt.Errorf("$%s=%s has no %s (run integration/kube/tools/build.sh again)", kubeapi.EnvBinDir, bin, b)
		}
	}
	return nil
}

// CNIBinDir is where Debian's containernetworking-plugins are.
const CNIBinDir = "/usr/lib/cni"

// Start brings the node up with its files in dir, loads the images in images (docker-archive
// tarballs) and returns when the node is Ready and CoreDNS answers. On error everything
// started is stopped. The caller calls Stop.
func Start(ctx context.Context, dir string, images []string) (n *Node, err error) {
	if err := Requirements(); err != nil {
		return nil, err
	}
	n = &Node{Dir: dir, Started: time.Now()}
	defer func() {
		if err != nil {
			if serr := n.Stop(); serr != nil {
				err = fmt.Errorf("%w (and the teardown: %v)", err, serr)
			}
			n = nil
		}
	}()
	if n.network, err = newNetwork(ServiceCIDR); err != nil {
		return n, err
	}
	saveSysctls(n.undo)
	netnsSnapshot(n.undo)
	cgroupSnapshot(n.undo)
	if err := chainsSnapshot(n.undo); err != nil {
		return n, err
	}
	if err := ipsetSnapshot(n.undo); err != nil {
		return n, err
	}
	n.undo("mounts under "+dir, func() error { return unmountUnder(dir) })
	if err := n.network.setUp(n.undo); err != nil {
		return n, err
	}
	for k, v := range map[string]string{"net/ipv4/ip_forward": "1", "net/bridge/bridge-nf-call-iptables": "1"} {
		if err := setSysctl(k, v); err != nil {
			return n, err
		}
	}
	if err := sharedNetns(n.undo); err != nil {
		return n, err
	}
	if err := n.hostDirs(); err != nil {
		return n, err
	}
	if n.API, err = kubeapi.StartWith(mustBinDir(), filepath.Join(dir, "api"), kubeapi.Options{Host: n.NodeIP, ServiceCIDR: ServiceCIDR, KubeletClient: true}); err != nil {
		return n, err
	}
	if err := n.startContainerd(ctx); err != nil {
		return n, err
	}
	if err := n.importImages(ctx, images); err != nil {
		return n, err
	}
	if err := n.startControlPlane(ctx); err != nil {
		return n, err
	}
	if err := n.startKubelet(ctx); err != nil {
		return n, err
	}
	if err := n.startKubeProxy(ctx); err != nil {
		return n, err
	}
	if err := n.waitNodeReady(ctx); err != nil {
		return n, err
	}
	if err := n.startDNS(ctx); err != nil {
		return n, err
	}
	return n, nil
}

//go:embed addons/coredns.yaml
var corednsYAML []byte

// startDNS applies CoreDNS and waits until its Deployment is available.
func (n *Node) startDNS(ctx context.Context) error {
	path := filepath.Join(n.Dir, "coredns.yaml")
	if err := os.WriteFile(path, corednsYAML, 0o644); err != nil {
		return err
	}
	if _, err := n.Kubectl(ctx, "apply", "-f", path); err != nil {
		return err
	}
	return n.WaitRollout(ctx, "kube-system", "deployment/coredns")
}

// WaitRollout waits (kubectl rollout status, bounded by ReadyTimeout) until a Deployment's or
// DaemonSet's pods are up to date and available.
func (n *Node) WaitRollout(ctx context.Context, ns, what string) error {
	out, err := n.Kubectl(ctx, "-n", ns, "rollout", "status", what, "--timeout="+ReadyTimeout.String())
	if err != nil {
		pods, _ := n.Kubectl(ctx, "-n", ns, "get", "pods", "-o", "wide")
		events, _ := n.Kubectl(ctx, "-n", ns, "get", "events", "--sort-by=.lastTimestamp")
		logs, _ := n.Kubectl(ctx, "-n", ns, "logs", what, "--all-containers", "--tail=40")
		prev, _ := n.Kubectl(ctx, "-n", ns, "logs", what, "--all-containers", "--tail=40", "--previous")
		return fmt.Errorf("node: %s/%s: %w\n%s\npods:\n%s\nevents:\n%s\nlogs:\n%s\nprevious container's logs:\n%s", ns, what, err, out, pods, Last(events, 30), logs, prev)
	}
	return nil
}

// Last returns the last n lines of s.
func Last(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func mustBinDir() string { d, _ := kubeapi.BinDir(); return d }

// undo registers a step of the teardown; they run in reverse order.
func (n *Node) undo(what string, fn func() error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.undos = append(n.undos, undoStep{what, fn})
}

// hostDirs registers the removal of the host folders the pods' hostPath volumes create
// (the ztunnel DaemonSet's /var/run/ztunnel) and containerd's shims and runc use whatever the
// configuration says (/run/containerd/s, /run/containerd/runc), when they did not exist before.
func (n *Node) hostDirs() error {
	for _, d := range []string{"/run/ztunnel", "/run/containerd", "/run/istio-cni"} {
		if _, err := os.Lstat(d); err == nil {
			continue
		}
		n.undo("host folder "+d, func() error { return os.RemoveAll(d) })
	}
	return nil
}

// Stop kills every process it started, by PID, newest first (kubelet before containerd; the
// pods' containers with containerd's shims), then undoes the host changes; it returns what
// could not be undone.
func (n *Node) Stop() error {
	var errs []error
	n.mu.Lock()
	preStops := n.preStops
	n.preStops = nil
	n.mu.Unlock()
	for i := len(preStops) - 1; i >= 0; i-- {
		if err := preStops[i].fn(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", preStops[i].what, err))
		}
	}
	n.mu.Lock()
	procs := n.procs
	n.procs = nil
	undos := n.undos
	n.undos = nil
	n.mu.Unlock()
	var containerd *proc
	for i := len(procs) - 1; i >= 0; i-- {
		if procs[i].name == "containerd" {
			containerd = procs[i]
			continue
		}
		procs[i].stop()
	}
	if containerd != nil {
		errs = append(errs, n.removePods())
		containerd.stop()
	}
	if n.API != nil {
		n.API.Stop()
	}
	for i := len(undos) - 1; i >= 0; i-- {
		if err := undos[i].fn(); err != nil {
			errs = append(errs, fmt.Errorf("undo %s: %w", undos[i].what, err))
		}
	}
	return errors.Join(errs...)
}

// waitNodeReady waits until the node is Ready.
func (n *Node) waitNodeReady(ctx context.Context) error {
	return n.poll(ctx, "node "+Name+" Ready", func(ctx context.Context) (bool, error) {
		node, err := n.API.Kube.CoreV1().Nodes().Get(ctx, Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				n.ReadyAt = time.Now()
				return true, nil
			}
		}
		return false, nil
	})
}

// poll calls cond every 200 ms until it holds, fails, a started process exits, or
// ReadyTimeout passes.
func (n *Node) poll(ctx context.Context, what string, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, ReadyTimeout)
	defer cancel()
	for {
		ok, err := cond(ctx)
		if err != nil {
			return fmt.Errorf("node: %s: %w", what, err)
		}
		if ok {
			return nil
		}
		if p := n.exited(); p != nil {
			return fmt.Errorf("node: waiting for %s: %s exited (%v); its log:\n%s", what, p.name, p.cmd.ProcessState, Tail(p.log, 40))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node: %s: not after %v", what, ReadyTimeout)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Logs are the node's log files, by component.
func (n *Node) Logs() map[string]string {
	m := map[string]string{}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range n.procs {
		m[p.name] = p.log
	}
	if n.API != nil {
		m["etcd"] = filepath.Join(n.API.Dir, "etcd.log")
		m["kube-apiserver"] = filepath.Join(n.API.Dir, "kube-apiserver.log")
	}
	return m
}

// Kubectl runs kubectl as the administrator.
func (n *Node) Kubectl(ctx context.Context, args ...string) (string, error) {
	out, err := n.API.Kubectl(ctx, args...)
	return strings.TrimSpace(string(out)), err
}
