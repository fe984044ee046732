package node

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// containerdConfig is containerd 1.6's configuration (version 2) with every path in the
// node's folder: its own socket, root and state, the CRI plugin with the local pause image,
// cgroupfs (no systemd here), the CNI configuration of the node, and restrict_oom_score_adj
// when the process lacks CAP_SYS_RESOURCE (runc then fails every container that asks for a
// lower oom_score_adj than its parent's).
const containerdConfig = `version = 2
root = %[1]q
state = %[2]q
oom_score = 0
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  restrict_oom_score_adj = %[7]t
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[8]q
    conf_dir = %[9]q
    max_conf_num = 1
`

// cniConfig is the pods' network: the bridge plugin (the pods' gateway on the bridge, no
// masquerade, hairpin so that a pod reaches itself through a Service) with host-local
// addresses kept in the node's folder.
const cniConfig = `{
  "cniVersion": "0.4.0",
  "name": "goambient-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": %q,
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q, "gateway": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": %q
      }
    },
    {"type": "loopback"}
  ]
}
`

func (n *Node) startContainerd(ctx context.Context) error {
	d := filepath.Join(n.Dir, "containerd")
	for _, sub := range []string{"root", "state", "opt", "net.d", "ipam", "bin"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
			return err
		}
	}
	n.Containerd = filepath.Join(d, "containerd.sock")
	// The node's CNI plugins: Debian's, linked into a folder of the node's own, where Istio's
	// install-cni adds its plugin.
	plugins, err := filepath.Glob(filepath.Join(CNIBinDir, "*"))
	if err != nil {
		return err
	}
	for _, p := range plugins {
		if err := os.Symlink(p, filepath.Join(n.CNIBinDir(), filepath.Base(p))); err != nil {
			return err
		}
	}
	cfg := fmt.Sprintf(containerdConfig, filepath.Join(d, "root"), filepath.Join(d, "state"), n.Containerd,
		n.Containerd+".ttrpc", filepath.Join(d, "opt"), PauseImage, !hasCapSysResource(),
		n.CNIBinDir(), n.CNIConfDir())
	if err := os.WriteFile(filepath.Join(d, "config.toml"), []byte(cfg), 0o644); err != nil {
		return err
	}
	cni := fmt.Sprintf(cniConfig, n.PodBridge, n.PodCIDR, n.PodGateway, filepath.Join(d, "ipam"))
	if err := os.WriteFile(filepath.Join(n.CNIConfDir(), "10-goambient-node.conflist"), []byte(cni), 0o644); err != nil {
		return err
	}
	// containerd, and so the pods, run in a PID namespace of their own whose /proc the pods'
	// hostPath /proc shows: Istio's node agent opens /host/proc/1/ns/net (the host's network
	// namespace, PID 1's), and on this VM the real PID 1 cannot be inspected even by root. PID 1
	// is then containerd, in the host's network namespace. The node's folder is a shared mount
	// first, so that what the kubelet mounts there (the pods' volumes) reaches containerd's
	// mount namespace.
	if err := run("mount", "--bind", n.Dir, n.Dir); err != nil {
		return err
	}
	if err := run("mount", "--make-shared", n.Dir); err != nil {
		return err
	}
	if _, err := n.start("containerd", "unshare", []string{"--pid", "--fork", "--mount-proc", "--propagation", "unchanged",
		"--kill-child=SIGTERM", "containerd", "--config", filepath.Join(d, "config.toml")}); err != nil {
		return err
	}
	return n.poll(ctx, "containerd", func(ctx context.Context) (bool, error) {
		return exec.CommandContext(ctx, "ctr", "--address", n.Containerd, "version").Run() == nil, nil
	})
}

// CNIBinDir is the node's CNI plugins' folder (containerd's bin_dir).
func (n *Node) CNIBinDir() string { return filepath.Join(n.Dir, "containerd", "bin") }

// CNIConfDir is the node's CNI configuration folder (containerd's conf_dir).
func (n *Node) CNIConfDir() string { return filepath.Join(n.Dir, "containerd", "net.d") }

// hasCapSysResource says whether this process has CAP_SYS_RESOURCE in its effective set.
func hasCapSysResource() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			var caps uint64
			fmt.Sscanf(strings.TrimSpace(v), "%x", &caps)
			const capSysResource = 24
			return caps&(1<<capSysResource) != 0
		}
	}
	return false
}

// Ctr runs containerd's ctr in the kubelet's namespace k8s.io.
func (n *Node) Ctr(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "ctr", append([]string{"--address", n.Containerd, "-n", "k8s.io"}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// importImages imports docker-archive tarballs into containerd's k8s.io namespace.
func (n *Node) importImages(ctx context.Context, images []string) error {
	for _, img := range images {
		if _, err := n.Ctr(ctx, "images", "import", "--no-unpack=false", img); err != nil {
			return fmt.Errorf("node: import %s: %w", img, err)
		}
	}
	return nil
}

// startControlPlane starts kube-controller-manager (every default controller) and
// kube-scheduler against the API server, as the administrator, on the node's address.
func (n *Node) startControlPlane(ctx context.Context) error {
	bin := mustBinDir()
	kc := n.API.Kubeconfig
	for _, c := range []struct {
		name string
		args []string
	}{
		{"kube-controller-manager", []string{"--controllers=*", "--use-service-account-credentials=false",
			"--service-account-private-key-file=" + filepath.Join(n.API.Dir, "pki", "sa.key"),
			"--root-ca-file=" + filepath.Join(n.API.Dir, "pki", "ca.crt"), "--concurrent-gc-syncs=5"}},
		{"kube-scheduler", nil},
	} {
		port, err := n.freePort()
		if err != nil {
			return err
		}
		args := append([]string{"--kubeconfig=" + kc, "--authentication-kubeconfig=" + kc, "--authorization-kubeconfig=" + kc,
			"--bind-address=" + n.NodeIP, "--secure-port=" + port, "--leader-elect=false", "-v=1"}, c.args...)
		if _, err := n.start(c.name, filepath.Join(bin, c.name), args); err != nil {
			return err
		}
		// Their serving certificates are self-signed: only /healthz is read, on the node's address.
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		url := "https://" + n.NodeIP + ":" + port + "/healthz"
		if err := n.poll(ctx, c.name, func(ctx context.Context) (bool, error) {
			resp, err := hc.Get(url)
			if err != nil {
				return false, nil
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK, nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// kubeletConfig is the KubeletConfiguration: cgroupfs and cgroup v1 allowed, swap allowed,
// the node's own folders for logs and state, the cluster DNS, an empty resolv.conf (no
// upstream: a pod never queries the host's resolvers), authentication of the API server by
// its client certificate only, eviction and image garbage collection out of the way of a
// test's disk.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %[1]s
port: %[2]s
readOnlyPort: 0
healthzPort: 0
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%[3]s
podLogsDir: %[4]s
resolvConf: %[5]s
clusterDNS: [%[6]s]
clusterDomain: cluster.local
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %[7]s}
authorization:
  mode: AlwaysAllow
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%%"
  imagefs.available: "1%%"
  nodefs.inodesFree: "1%%"
serializeImagePulls: false
registerNode: true
maxPods: 60
`

func (n *Node) startKubelet(ctx context.Context) error {
	d := filepath.Join(n.Dir, "kubelet")
	for _, sub := range []string{"root", "logs", "certs"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
			return err
		}
	}
	resolv := filepath.Join(d, "resolv.conf")
	if err := os.WriteFile(resolv, nil, 0o644); err != nil {
		return err
	}
	port, err := n.freePort()
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf(kubeletConfig, n.NodeIP, port, n.Containerd, filepath.Join(d, "logs"), resolv, DNSAddress,
		filepath.Join(n.API.Dir, "pki", "ca.crt"))
	if err := os.WriteFile(filepath.Join(d, "config.yaml"), []byte(cfg), 0o644); err != nil {
		return err
	}
	_, err = n.start("kubelet", filepath.Join(mustBinDir(), "kubelet"), []string{
		"--config=" + filepath.Join(d, "config.yaml"), "--kubeconfig=" + n.API.Kubeconfig,
		"--root-dir=" + filepath.Join(d, "root"), "--cert-dir=" + filepath.Join(d, "certs"),
		"--hostname-override=" + Name, "--node-ip=" + n.NodeIP, "-v=1",
	})
	return err
}

// kubeProxyConfig: iptables mode, node ports on the node's address only, conntrack sysctls
// left as they are.
const kubeProxyConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %[1]s
mode: iptables
clusterCIDR: %[2]s
hostnameOverride: %[3]s
bindAddress: %[4]s
healthzBindAddress: %[4]s:%[5]s
metricsBindAddress: %[4]s:%[6]s
nodePortAddresses: [%[4]s/32]
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`

func (n *Node) startKubeProxy(ctx context.Context) error {
	hp, err := n.freePort()
	if err != nil {
		return err
	}
	mp, err := n.freePort()
	if err != nil {
		return err
	}
	path := filepath.Join(n.Dir, "kube-proxy.yaml")
	cfg := fmt.Sprintf(kubeProxyConfig, n.API.Kubeconfig, n.PodCIDR, Name, n.NodeIP, hp, mp)
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return err
	}
	bin := filepath.Join(mustBinDir(), "kube-proxy")
	n.undo("kube-proxy's iptables rules", func() error {
		return exec.Command(bin, "--cleanup", "--config="+path).Run()
	})
	if _, err := n.start("kube-proxy", bin, []string{"--config=" + path, "-v=1"}); err != nil {
		return err
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	return n.poll(ctx, "kube-proxy", func(ctx context.Context) (bool, error) {
		resp, err := hc.Get("http://" + n.NodeIP + ":" + hp + "/livez")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}
