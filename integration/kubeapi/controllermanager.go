package kubeapi

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// DefaultControllers are the kube-controller-manager controllers StartControllerManager runs
// when given none: the garbage collector (owner references), the Deployment and ReplicaSet
// controllers (a Deployment makes pods), and the ServiceAccount controller (every namespace's
// default ServiceAccount). No scheduler nor kubelet runs: the pods made stay unscheduled, and
// a test writes their status (SetPodRunning).
var DefaultControllers = []string{"garbagecollector", "deployment", "replicaset", "serviceaccount"}

// HasControllerManager says whether binDir has kube-controller-manager (an older cache of
// integration/kube/tools/build.sh lacks it; run it again).
func HasControllerManager(binDir string) error {
	if fi, err := os.Stat(filepath.Join(binDir, "kube-controller-manager")); err != nil || fi.IsDir() {
		return fmt.Errorf("$%s=%s has no kube-controller-manager (run integration/kube/tools/build.sh again)", EnvBinDir, binDir)
	}
	return nil
}

// StartControllerManager starts kube-controller-manager against the server with the given
// controllers (DefaultControllers when none), as the administrator, and waits for its
// /healthz. It is stopped with the server. Start it after the CRDs a test's owner references
// name are Established: the garbage collector discovers resources when it starts, and again
// every 30 s. t fails when the binary is missing.
func (s *Server) StartControllerManager(t testing.TB, controllers ...string) {
	t.Helper()
	if err := HasControllerManager(s.BinDir); err != nil {
		t.Fatal(err)
	}
	if len(controllers) == 0 {
		controllers = DefaultControllers
	}
	host, _, err := net.SplitHostPort(strings.TrimPrefix(s.Config.Host, "https://"))
	if err != nil {
		t.Fatal(err)
	}
	var p *proc
	for range 3 { // a port taken between its choice and the bind: another one
		ports, err := FreePorts(host, 1)
		if err != nil {
			t.Fatal(err)
		}
		p, err = startProc(filepath.Join(s.BinDir, "kube-controller-manager"), filepath.Join(s.Dir, "kube-controller-manager.log"),
			"--kubeconfig="+s.Kubeconfig,
			"--authentication-kubeconfig="+s.Kubeconfig, "--authorization-kubeconfig="+s.Kubeconfig,
			"--bind-address="+host, "--secure-port="+strconv.Itoa(ports[0]),
			"--controllers="+strings.Join(controllers, ","),
			"--leader-elect=false", "--use-service-account-credentials=false",
			"--concurrent-gc-syncs=5", "-v=1",
		)
		if err != nil {
			t.Fatal(err)
		}
		// Its serving certificate is self-signed: only its /healthz is read, over loopback.
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		url := "https://" + net.JoinHostPort(host, strconv.Itoa(ports[0])) + "/healthz"
		if err = waitFor(p, func() bool { return httpOK(hc, url) }); err == nil {
			break
		}
		p.kill()
		if !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("kubeapi: kube-controller-manager: %v", err)
		}
		p = nil
	}
	if p == nil {
		t.Fatal("kubeapi: kube-controller-manager: no free port")
	}
	s.procs = append(s.procs, p)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kube-controller-manager.log (last lines):\n%s", Tail(p.log, 60))
		}
	})
}
