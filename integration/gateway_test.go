package integration

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGatewayAPIScenario plays the gateway-api scenario (manifests/examples/gateway-api) with
// the real binaries: meshctl demo builds xdsserver, ztunnel and cmd/waypoint and runs them as
// processes (two ztunnels, the embedded waypoint, and cmd/waypoint with a router~ node id as
// the ingress gateway); a plain HTTP client outside the mesh sends to the gateway's address.
// Every check of the scenario must pass: status codes, the waypoint's access log naming the
// gateway's identity, the fault VirtualService at the waypoint, the 403 with Istio's details
// for appa once the policy leaves it out while the gateway still passes.
func TestGatewayAPIScenario(t *testing.T) {
	if testing.Short() {
		t.Skip("plays a whole scenario with the built binaries")
	}
	bins := buildBinaries(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bins["meshctl"], "demo", "--scenario", "gateway-api", "--root", root)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "gateway-api: all 11 checks passed") {
		t.Fatalf("meshctl demo --scenario gateway-api: %v\n%s", err, out)
	}
	for _, want := range []string{
		"(gateway default/gateway has its listeners and routes)",
		"waypoint access log: authority=appb.opssec.in downstream_peer_uri_san=spiffe://cluster.local/ns/default/sa/gateway-istio",
		"rbac_access_denied_matched_policy[none]",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the run's output lacks %q", want)
		}
	}
}
