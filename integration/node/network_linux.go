package node

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// network is what the node changes in the host's network namespace: a bridge holding the
// node's address (no ports: the address is local, reachable by the pods through their
// gateway), the pods' bridge (made by the CNI bridge plugin, deleted here), forwarding
// sysctls, and the guard rules. Each change is recorded with its undo.
type network struct {
	id         string // short random suffix of every name
	NodeBridge string
	PodBridge  string
	NodeIP     string
	PodCIDR    string // /24
	PodGateway string
	// ServiceCIDR is the Services' range, routed nowhere by the host but kube-proxy's DNAT.
	ServiceCIDR string
	guards      []guardRule
}

// guardRule is an iptables rule of the mangle table that drops and counts what a pod sends
// to an address the test did not create.
type guardRule struct {
	chain string
	spec  []string
}

// newNetwork picks free names and addresses: the pod subnet 10.244.X.0/24 and the node address
// 10.245.X.1 for a random X whose subnets no route of the host covers.
func newNetwork(serviceCIDR string) (*network, error) {
	for range 20 {
		x := 1 + rand.IntN(250)
		n := &network{
			id:      fmt.Sprintf("%04x", rand.IntN(0x10000)),
			NodeIP:  fmt.Sprintf("10.245.%d.1", x),
			PodCIDR: fmt.Sprintf("10.244.%d.0/24", x),
		}
		n.PodGateway = fmt.Sprintf("10.244.%d.1", x)
		n.ServiceCIDR = serviceCIDR
		n.NodeBridge, n.PodBridge = "gmn"+n.id, "gmp"+n.id
		svc, _, _ := strings.Cut(serviceCIDR, "/")
		if used, err := routed(n.NodeIP, n.PodGateway, svc); err != nil {
			return nil, err
		} else if !used {
			if _, err := net.InterfaceByName(n.NodeBridge); err != nil {
				return n, nil
			}
		}
	}
	return nil, fmt.Errorf("node: no free 10.244.X.0/24 and 10.245.X.1 after 20 tries")
}

// routed says whether the host already routes one of addrs other than by its default route.
func routed(addrs ...string) (bool, error) {
	for _, a := range addrs {
		out, err := exec.Command("ip", "-4", "route", "get", a).CombinedOutput()
		if err != nil {
			return false, fmt.Errorf("node: ip route get %s: %v: %s", a, err, out)
		}
		s := string(out)
		if !strings.Contains(s, " via ") || strings.HasPrefix(s, "local ") {
			return true, nil
		}
	}
	return false, nil
}

// setUp makes the node's bridge and address and the guard rules; undo is given each step's
// undo, in order.
func (n *network) setUp(undo func(string, func() error)) error {
	if err := run("ip", "link", "add", n.NodeBridge, "type", "bridge"); err != nil {
		return err
	}
	undo("bridge "+n.NodeBridge, func() error { return run("ip", "link", "del", n.NodeBridge) })
	undo("bridge "+n.PodBridge, func() error {
		if _, err := net.InterfaceByName(n.PodBridge); err != nil {
			return nil // no pod was ever made
		}
		return run("ip", "link", "del", n.PodBridge)
	})
	if err := run("ip", "addr", "add", n.NodeIP+"/32", "dev", n.NodeBridge); err != nil {
		return err
	}
	if err := run("ip", "link", "set", n.NodeBridge, "up"); err != nil {
		return err
	}
	// A pod may reach the pods' subnet and the node's address; whatever else it sends is
	// dropped and counted: forwarded out of any other interface, or delivered to any other of
	// the host's own addresses. The mangle table's INPUT and FORWARD see packets after
	// kube-proxy's DNAT, and nothing else here writes them.
	n.guards = []guardRule{
		{"FORWARD", []string{"-i", n.PodBridge, "!", "-o", n.PodBridge}},
		{"INPUT", []string{"-i", n.PodBridge, "!", "-d", n.PodCIDR}},
	}
	for i := range n.guards {
		n.guards[i].spec = append(n.guards[i].spec, "-m", "comment", "--comment", "goambient-guard-"+n.id)
	}
	// INPUT: node address first (RETURN: the built-in chain's policy, ACCEPT), then the drop.
	inputDrop := append([]string{"-t", "mangle", "-I", "INPUT", "1"}, append(n.guards[1].spec, "-j", "DROP")...)
	if err := run("iptables", inputDrop...); err != nil {
		return err
	}
	undo("guard INPUT drop", func() error {
		return run("iptables", append([]string{"-t", "mangle", "-D", "INPUT"}, append(n.guards[1].spec, "-j", "DROP")...)...)
	})
	allowNode := []string{"-i", n.PodBridge, "-d", n.NodeIP + "/32", "-m", "comment", "--comment", "goambient-guard-" + n.id}
	if err := run("iptables", append([]string{"-t", "mangle", "-I", "INPUT", "1"}, append(allowNode, "-j", "RETURN")...)...); err != nil {
		return err
	}
	undo("guard INPUT node address", func() error {
		return run("iptables", append([]string{"-t", "mangle", "-D", "INPUT"}, append(allowNode, "-j", "RETURN")...)...)
	})
	fwd := append([]string{"-t", "mangle", "-I", "FORWARD", "1"}, append(n.guards[0].spec, "-j", "DROP")...)
	if err := run("iptables", fwd...); err != nil {
		return err
	}
	undo("guard FORWARD drop", func() error {
		return run("iptables", append([]string{"-t", "mangle", "-D", "FORWARD"}, append(n.guards[0].spec, "-j", "DROP")...)...)
	})
	// Each dropped packet is also logged (kernel log, rate-limited), so that a failing test
	// says what a pod tried to reach.
	for _, g := range n.guards {
		logRule := append(append([]string{}, g.spec...), "-m", "limit", "--limit", "10/min", "-j", "LOG", "--log-prefix", n.LogPrefix())
		pos := "1" // just before the drop: in INPUT, after the node address's exception
		if g.chain == "INPUT" {
			pos = "2"
		}
		if err := run("iptables", append([]string{"-t", "mangle", "-I", g.chain, pos}, logRule...)...); err != nil {
			return err
		}
		chain := g.chain
		undo("guard "+chain+" log", func() error {
			return run("iptables", append([]string{"-t", "mangle", "-D", chain}, logRule...)...)
		})
	}
	// The Services' range belongs to the node: routed to the node's bridge, which has no
	// ports, instead of the host's default route out of the machine. kube-proxy's DNAT (nat
	// PREROUTING for pods, OUTPUT for the host's own connections, which need a route to exist
	// before it) sends Service traffic to its endpoints; a packet from a pod to a Service
	// address kube-proxy has not translated (yet, or ever) is dropped here, not counted by the
	// guard: it stays on the node.
	if err := run("ip", "route", "add", n.ServiceCIDR, "dev", n.NodeBridge); err != nil {
		return err
	}
	undo("route "+n.ServiceCIDR, func() error {
		if _, err := net.InterfaceByName(n.NodeBridge); err != nil {
			return nil // gone with the bridge
		}
		return run("ip", "route", "del", n.ServiceCIDR, "dev", n.NodeBridge)
	})
	untranslated := []string{"-i", n.PodBridge, "-o", n.NodeBridge, "-d", n.ServiceCIDR, "-m", "comment", "--comment", "goambient-untranslated-service-" + n.id, "-j", "DROP"}
	if err := run("iptables", append([]string{"-t", "mangle", "-I", "FORWARD", "1"}, untranslated...)...); err != nil {
		return err
	}
	undo("untranslated Service drop", func() error {
		return run("iptables", append([]string{"-t", "mangle", "-D", "FORWARD"}, untranslated...)...)
	})
	return nil
}

// LogPrefix is the kernel log prefix of the packets the guard drops.
func (n *network) LogPrefix() string { return "goambient-guard-" + n.id + " " }

// GuardLog returns the kernel log's lines about packets the guard dropped.
func (n *network) GuardLog() string {
	out, err := exec.Command("dmesg").Output()
	if err != nil {
		return "dmesg: " + err.Error()
	}
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, n.LogPrefix()) {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

// GuardHits returns the packets the guard rules dropped so far, by chain.
func (n *network) GuardHits() (map[string]int, error) {
	hits := map[string]int{}
	for _, chain := range []string{"FORWARD", "INPUT"} {
		out, err := exec.Command("iptables", "-t", "mangle", "-L", chain, "-v", "-x", "-n").CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("node: iptables -L %s: %v: %s", chain, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 3 || f[2] != "DROP" || !strings.Contains(line, "goambient-guard-"+n.id) {
				continue
			}
			c, err := strconv.Atoi(f[0])
			if err != nil {
				return nil, fmt.Errorf("node: guard counter %q: %w", line, err)
			}
			hits[chain] += c
		}
	}
	return hits, nil
}

// Sysctls the node's components change (kubelet: kernel and vm settings it checks or sets;
// kube-proxy: bridge netfilter, route_localnet) or the bring-up sets (forwarding): saved
// before the start and written back at teardown.
var Sysctls = []string{
	"net/ipv4/ip_forward",
	"net/bridge/bridge-nf-call-iptables",
	"net/ipv4/conf/all/route_localnet",
	"vm/overcommit_memory",
	"vm/panic_on_oom",
	"kernel/panic",
	"kernel/panic_on_oops",
	"kernel/keys/root_maxkeys",
	"kernel/keys/root_maxbytes",
	"net/netfilter/nf_conntrack_max",
}

// saveSysctls reads the current values of Sysctls (those that exist) and registers their
// restoration.
func saveSysctls(undo func(string, func() error)) {
	for _, k := range Sysctls {
		path := filepath.Join("/proc/sys", k)
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		v := strings.TrimSpace(string(b))
		undo("sysctl "+k, func() error {
			cur, err := os.ReadFile(path)
			if err == nil && strings.TrimSpace(string(cur)) == v {
				return nil
			}
			return os.WriteFile(path, []byte(v), 0o644)
		})
	}
}

func setSysctl(k, v string) error {
	return os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644)
}

// sharedNetns makes /run/netns a shared mount (hostPath mounts with propagation need it), as
// `ip netns add` does, when it is not one already; the undo unmounts only what it mounted, and
// only when no network namespace is mounted inside.
func sharedNetns(undo func(string, func() error)) error {
	out, err := exec.Command("findmnt", "-n", "-o", "PROPAGATION", "/run/netns").Output()
	if err == nil && strings.Contains(string(out), "shared") {
		return nil
	}
	if err == nil { // a mount, not shared
		return run("mount", "--make-shared", "/run/netns")
	}
	if err := os.MkdirAll("/run/netns", 0o755); err != nil {
		return err
	}
	if err := run("mount", "--bind", "/run/netns", "/run/netns"); err != nil {
		return err
	}
	undo("mount /run/netns", func() error {
		if entries, _ := os.ReadDir("/run/netns"); len(entries) > 0 {
			return nil // another namespace lives there now (ip netns add keeps the mount too)
		}
		return run("umount", "/run/netns")
	})
	return run("mount", "--make-shared", "/run/netns")
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
