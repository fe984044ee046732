package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// removePods kills every container of containerd's k8s.io namespace (the kubelet is stopped
// by then: nothing restarts them) and deletes their tasks and containers, so that containerd's
// shims exit and the pods' network namespaces lose their processes.
func (n *Node) removePods() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := n.Ctr(ctx, "containers", "list", "-q")
	if err != nil {
		return err
	}
	var errs []error
	ids := strings.Fields(out)
	for _, id := range ids {
		n.Ctr(ctx, "tasks", "kill", "-s", "SIGKILL", id) // a container without a task has nothing to kill
	}
	for _, id := range ids {
		// delete waits for the task's exit
		if out, err := n.Ctr(ctx, "tasks", "delete", "-f", id); err != nil && !strings.Contains(out, "not found") {
			errs = append(errs, err)
		}
		if _, err := n.Ctr(ctx, "containers", "delete", id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// unmountUnder detaches every mount under dir (the kubelet's volumes, containerd's root
// filesystems), deepest first.
func unmountUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			mounts = append(mounts, unescapeMount(fields[4]))
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	var errs []error
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("umount %s: %w", m, err))
		}
	}
	return errors.Join(errs...)
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// netnsSnapshot registers the removal of the network namespaces containerd creates in
// /run/netns (cni-*) during the node's life.
func netnsSnapshot(undo func(string, func() error)) {
	before := map[string]bool{}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		before[e.Name()] = true
	}
	undo("pods' network namespaces", func() error {
		entries, _ := os.ReadDir("/run/netns")
		var errs []error
		for _, e := range entries {
			if before[e.Name()] || !strings.HasPrefix(e.Name(), "cni-") {
				continue
			}
			p := filepath.Join("/run/netns", e.Name())
			if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
				errs = append(errs, fmt.Errorf("umount %s: %w", p, err))
			}
			if err := os.Remove(p); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
}

// chainsSnapshot registers the removal of the iptables chains named KUBE-*, CNI-* or ISTIO_*
// that appear during the node's life (kubelet's and kube-proxy's, what kube-proxy --cleanup
// leaves; the node agent's host rules when its pod did not end gracefully), with the rules of
// the built-in chains that jump to them.
func chainsSnapshot(undo func(string, func() error)) error {
	tables := []string{"filter", "nat", "mangle"}
	before := map[string]bool{}
	for _, t := range tables {
		chains, _, err := iptablesChains(t)
		if err != nil {
			return err
		}
		for _, c := range chains {
			before[t+"/"+c] = true
		}
	}
	undo("iptables chains", func() error {
		var errs []error
		for _, t := range tables {
			chains, rules, err := iptablesChains(t)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			ours := map[string]bool{}
			for _, c := range chains {
				if !before[t+"/"+c] && (strings.HasPrefix(c, "KUBE-") || strings.HasPrefix(c, "CNI-") || strings.HasPrefix(c, "ISTIO_")) {
					ours[c] = true
				}
			}
			if len(ours) == 0 {
				continue
			}
			for _, r := range rules { // -A CHAIN ... -j TARGET
				f := strings.Fields(r)
				for i := range f {
					if (f[i] == "-j" || f[i] == "-g") && i+1 < len(f) && ours[f[i+1]] && !ours[f[1]] {
						args := append([]string{"-t", t, "-D"}, f[1:]...)
						if err := run("iptables", args...); err != nil {
							errs = append(errs, err)
						}
					}
				}
			}
			for c := range ours {
				if err := run("iptables", "-t", t, "-F", c); err != nil {
					errs = append(errs, err)
				}
			}
			for c := range ours {
				if err := run("iptables", "-t", t, "-X", c); err != nil {
					errs = append(errs, err)
				}
			}
		}
		return errors.Join(errs...)
	})
	return nil
}

// iptablesChains returns a table's chains and its rules (iptables -S lines beginning with -A).
func iptablesChains(table string) (chains, rules []string, err error) {
	out, err := exec.Command("iptables", "-t", table, "-S").Output()
	if err != nil {
		return nil, nil, fmt.Errorf("iptables -t %s -S: %w", table, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && (f[0] == "-N" || f[0] == "-P"):
			chains = append(chains, f[1])
		case len(f) >= 2 && f[0] == "-A":
			rules = append(rules, line)
		}
	}
	return chains, rules, nil
}

// cgroupSnapshot registers the removal of the cgroups named kubepods the kubelet creates in
// each cgroup v1 hierarchy (and the v2 one), deepest first, once their processes are gone.
func cgroupSnapshot(undo func(string, func() error)) {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/kubepods")
	if _, err := os.Stat("/sys/fs/cgroup/kubepods"); err == nil {
		roots = append(roots, "/sys/fs/cgroup/kubepods")
	}
	existed := map[string]bool{}
	for _, r := range roots {
		existed[r] = true
	}
	undo("kubepods cgroups", func() error {
		var all []string
		for _, pattern := range []string{"/sys/fs/cgroup/*/kubepods", "/sys/fs/cgroup/kubepods"} {
			found, _ := filepath.Glob(pattern)
			for _, r := range found {
				if existed[r] {
					continue
				}
				filepath.WalkDir(r, func(p string, d os.DirEntry, err error) error {
					if err == nil && d.IsDir() {
						all = append(all, p)
					}
					return nil
				})
			}
		}
		sort.Slice(all, func(i, j int) bool { return len(all[i]) > len(all[j]) })
		var errs []error
		for _, p := range all {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
}

// ipsetSnapshot registers the removal of the ipsets named istio-* that appear during the
// node's life (the node agent's istio-inpod-probes-v4, left when its pod did not end
// gracefully).
func ipsetSnapshot(undo func(string, func() error)) error {
	list := func() (map[string]bool, error) {
		out, err := exec.Command("ipset", "list", "-n").Output()
		if err != nil {
			return nil, fmt.Errorf("ipset list -n: %w", err)
		}
		m := map[string]bool{}
		for _, s := range strings.Fields(string(out)) {
			m[s] = true
		}
		return m, nil
	}
	before, err := list()
	if err != nil {
		return err
	}
	undo("ipsets", func() error {
		now, err := list()
		if err != nil {
			return err
		}
		var errs []error
		for s := range now {
			if !before[s] && strings.HasPrefix(s, "istio-") {
				if err := run("ipset", "destroy", s); err != nil {
					errs = append(errs, err)
				}
			}
		}
		return errors.Join(errs...)
	})
	return nil
}
