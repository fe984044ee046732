package model_test

import (
	"strings"
	"testing"

	"github.com/goambient/goambient/xdsserver/model"
)

// From a cluster, a pod the kubelet has not given an IP yet is left out (istiod sends no
// workload without an address), with no error; a pod with its IP is kept; nothing is allocated.
func TestFromClusterLeavesOutPodsWithoutIP(t *testing.T) {
	cfg := model.DefaultConfig()
	cfg.FromCluster = true
	running := strings.Replace(podCart, "name: cart,", "name: running,", 1)
	running = strings.Replace(running, "spec:", "status: {podIP: 10.1.2.3, phase: Running}\nspec:", 1)
	m := build(t, cfg, nsAmbient, podCart, running, svcCart)
	noErrors(t, m)
	if len(m.Workloads) != 1 || m.Workloads[0].Name != "running" || m.Workloads[0].IPs[0].String() != "10.1.2.3" {
		t.Fatalf("workloads: %+v", m.Workloads)
	}
	if len(m.Warnings) != 0 {
		t.Errorf("a starting pod is not a problem: %v", messages(m.Warnings))
	}
	if s := service(t, m, "shop", "cart"); len(s.VIPs) != 0 {
		t.Errorf("a Service without a cluster IP was given %v", s.VIPs)
	}
}
