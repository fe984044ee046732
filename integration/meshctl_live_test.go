package integration

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"

	"github.com/goambient/goambient/ztunnel/identity"
)

// runMeshctl runs the meshctl binary and returns its standard output and exit status.
func runMeshctl(t *testing.T, bin string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if code != 0 {
		t.Logf("meshctl %v: exit %d\n%s", args, code, stderr.String())
	}
	return string(out), code
}

// TestMeshctlLive: meshctl as a cluster user uses it, against real binaries (xdsserver with its
// CA, a ztunnel taking its workloads and SVIDs from it over TLS with a bootstrap token).
//   - meshctl ztunnel config reads the ztunnel's admin /config_dump: its workloads, services,
//     policies, and the certificates it holds (leaf and root, valid, state Available); the dump
//     never carries a private key;
//   - meshctl xds dump --xds-address asks the running xdsserver as a node over delta ADS: a
//     ztunnel's workload API, on the plaintext listener and on the TLS one with the token, is
//     what --config-dir computes from the same folder; a waypoint's Envoy resources too; a node
//     the server does not know gets no answer, and meshctl says so.
func TestMeshctlLive(t *testing.T) {
	e := newCAEnv(t)
	z := startCAZtunnel(t, e.bins["ztunnel"], "node-a", e.hostA, e.plain, e.secure, e.root, e.tokA)
	startCAZtunnel(t, e.bins["ztunnel"], "node-b", e.hostB, e.plain, e.secure, e.root, e.tokB)
	e.call(t, "hello\n") // node-a's client workload has its SVID
	mc := e.bins["meshctl"]

	table, code := runMeshctl(t, mc, "ztunnel", "config", "all", "--admin", z.host+":15000")
	if code != 0 {
		t.Fatalf("ztunnel config: exit %d", code)
	}
	for _, want := range []string{"NAMESPACE  POD NAME", "catest", "client", "POLICY NAME", "spiffe://cluster.local/ns/catest/sa/client  Leaf  Available  true", "Root  Available  true"} {
		if !strings.Contains(table, want) {
			t.Errorf("ztunnel config all lacks %q:\n%s", want, table)
		}
	}
	js, code := runMeshctl(t, mc, "ztunnel", "config", "certificates", "--admin", z.host+":15000", "-o", "json")
	var certs []identity.CertsDump
	if err := json.Unmarshal([]byte(js), &certs); code != 0 || err != nil || len(certs) == 0 || len(certs[0].CertChain) == 0 || len(certs[0].RootCerts) != 1 {
		t.Fatalf("certificates -o json: exit %d, %v\n%s", code, err, js)
	}
	if dump := z.get(t, ":15000/config_dump"); strings.Contains(dump, "PRIVATE KEY") || !strings.Contains(dump, `"certificates"`) {
		t.Error("the config dump carries a private key, or no certificates")
	}

	want, code := runMeshctl(t, mc, "xds", "dump", "--node", "node-a", "--config-dir", e.cfg, "--loopback", "-o", "json")
	if code != 0 {
		t.Fatal("xds dump --config-dir failed")
	}
	for name, args := range map[string][]string{
		"plaintext": {"--xds-address", e.plain},
		"TLS":       {"--xds-address", e.secure, "--xds-root", e.root, "--xds-token-file", e.tokA},
	} {
		got, code := runMeshctl(t, mc, append([]string{"xds", "dump", "--node", "node-a", "-o", "json"}, args...)...)
		if code != 0 || got != want {
			t.Errorf("%s: the running xdsserver's workload API (exit %d) differs from --config-dir's:\n%s\nwant\n%s", name, code, got, want)
		}
	}

	x := startXdsserver(t, e.bins["xdsserver"], "../manifests/examples/handson")
	wp := "waypoint~127.0.0.1~handson.handson~handson.svc.cluster.local"
	want, _ = runMeshctl(t, mc, "xds", "dump", "--node", wp, "--config-dir", "../manifests/examples/handson", "--loopback", "-o", "json")
	got, code := runMeshctl(t, mc, "xds", "dump", "--node", wp, "--xds-address", x.xds, "-o", "json")
	if code != 0 || got != want || !strings.Contains(got, "connect_terminate") {
		t.Errorf("the waypoint's resources from the running xdsserver (exit %d) differ from --config-dir's:\n%s\nwant\n%s", code, got, want)
	}
	if _, code := runMeshctl(t, mc, "xds", "dump", "--node", "waypoint~127.0.0.1~nobody.nowhere~nowhere.svc.cluster.local", "--xds-address", x.xds, "--timeout", "2s"); code != 1 {
		t.Errorf("an unknown waypoint node: exit %d, want 1", code)
	}
}
