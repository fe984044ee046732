package integration

// The ztunnel's delta ADS over the control plane's TLS listener, as Istio's ztunnel talks to
// istiod:15012: state and certificates both from the secure listener, no plaintext xDS.

import (
	"os/exec"
	"testing"
)

// TestCAXdsOverTLS: two ztunnels are given only xdsserver's secure listener, for their ADS
// (--xds-root, --xds-token-file) and their SVIDs (--ca-address); they receive the state and the
// certificates over it, and a call between the two workloads succeeds over HBONE.
func TestCAXdsOverTLS(t *testing.T) {
	e := newCAEnv(t)
	xlog, plain, secure, root, tokA, tokB := e.xlog, e.plain, e.secure, e.root, e.tokA, e.tokB
	// The same root and token for the ADS as for the CA; the server name is the default one
	// (istiod.istio-system.svc), which the serving certificate carries.
	za := startCAZtunnel(t, e.bins["ztunnel"], "node-a", e.hostA, secure, secure, root, tokA, "--xds-root", root, "--xds-token-file", tokA)
	zb := startCAZtunnel(t, e.bins["ztunnel"], "node-b", e.hostB, secure, secure, root, tokB, "--xds-root", root, "--xds-token-file", tokB)
	e.call(t, "hello over the secure listener\n")

	for _, z := range []*ztunnelProc{za, zb} {
		if len(z.out.lines("xds stream opened", secure, "tls=true")) == 0 {
			t.Errorf("%s: no TLS xds stream to %s logged", z.name, secure)
		}
		if len(z.out.lines(plain)) != 0 {
			t.Errorf("%s: the plaintext listener %s appears in its log", z.name, plain)
		}
		if len(xlog.lines("ztunnel subscribed", "ztunnel-"+z.name)) == 0 {
			t.Errorf("xdsserver did not log the subscription of %s", z.name)
		}
	}
	if len(za.out.lines("fetched SVID", "ns/catest/sa/client")) == 0 || len(zb.out.lines("fetched SVID", "ns/catest/sa/server")) == 0 {
		t.Error("the ztunnels did not log their SVIDs")
	}
	if len(za.out.lines("state received", secure)) == 0 {
		t.Error("node-a did not log the state received from the secure listener")
	}
}

// TestCAXdsFlags: the ADS's TLS flags need their companions.
func TestCAXdsFlags(t *testing.T) {
	bins := buildBinaries(t)
	for _, args := range [][]string{
		{"--node", "n", "--svid-dir", "x", "--config-file", "f", "--xds-root", "r"},
		{"--node", "n", "--svid-dir", "x", "--xds-address", "127.0.0.1:1", "--xds-token-file", "t"},
	} {
		err := exec.Command(bins["ztunnel"], args...).Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Errorf("ztunnel %v: %v, want exit status 2", args, err)
		}
	}
}
