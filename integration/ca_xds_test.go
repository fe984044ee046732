package integration

// The ztunnel's delta ADS over the control plane's TLS listener, as Istio's ztunnel talks to
// istiod:15012: state and certificates both from the secure listener, no plaintext xDS.

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/goambient/goambient/ztunnel/identity"
)

// TestCAXdsOverTLS: two ztunnels are given only xdsserver's secure listener, for their ADS
// (--xds-root, --xds-token-file) and their SVIDs (--ca-address); they receive the state and the
// certificates over it, and a call between the two workloads succeeds over HBONE.
func TestCAXdsOverTLS(t *testing.T) {
	bins := buildXDSBinaries(t)
	xdsBin := bins["xdsserver"]
	dir := t.TempDir()
	net24, _, _ := randomNet()
	clientIP, serverIP := net24+".10", net24+".20"
	hostA, hostB := net24+".1", net24+".2"

	cfg := filepath.Join(dir, "config")
	caDir := filepath.Join(dir, "ca")
	if err := os.MkdirAll(cfg, 0o755); err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, filepath.Join(cfg, "mesh.yaml"), caMesh(clientIP, serverIP))
	tokens := filepath.Join(dir, "tokens")
	writeAtomic(t, tokens, caTokenA+" ztunnel node-a\n"+caTokenB+" ztunnel node-b\n")
	tokA, tokB := filepath.Join(dir, "token-a"), filepath.Join(dir, "token-b")
	writeAtomic(t, tokA, caTokenA+"\n")
	writeAtomic(t, tokB, caTokenB+"\n")

	xlog, plain, _, secure := startCAXdsserver(t, xdsBin, "--config-dir", cfg, "--loopback",
		"--xds-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--secure-listen", "127.0.0.1:0",
		"--ca-dir", caDir, "--bootstrap-tokens", tokens)
	root := filepath.Join(caDir, identity.RootCertFile)

	// The same root and token for the ADS as for the CA; the server name is the default one
	// (istiod.istio-system.svc), which the serving certificate carries.
	za := startCAZtunnel(t, bins["ztunnel"], "node-a", hostA, secure, secure, root, tokA, "--xds-root", root, "--xds-token-file", tokA)
	zb := startCAZtunnel(t, bins["ztunnel"], "node-b", hostB, secure, secure, root, tokB, "--xds-root", root, "--xds-token-file", tokB)
	serveHTTP(t, appAddrOf(serverIP, 8080), http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello over the secure listener\n")
	}))

	var code int
	var body string
	eventually(t, 15*time.Second, "client → server through both ztunnels", func() bool {
		var err error
		code, body, err = curl(hostA+":15080", clientIP, "http://"+serverIP+":8080/")
		return err == nil && code == 200
	})
	if body != "hello over the secure listener\n" {
		t.Fatalf("body %q", body)
	}

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
