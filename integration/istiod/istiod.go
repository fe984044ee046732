// Package istiod runs Istio's control plane (pilot-discovery, built by integration/istiod/tools/build.sh and found through $GOAMBIENT_ISTIO_BIN_DIR) on loopback against a kubeapi API server, for the tests that check goambient against istiod as a peer.
package istiod

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/goambient/goambient/integration/kubeapi"
)

// EnvBinDir names the folder holding pilot-discovery (.ci/run sets it to the output of
// integration/istiod/tools/build.sh).
const EnvBinDir = "GOAMBIENT_ISTIO_BIN_DIR"

// ServerName is the DNS name istiod's serving certificate carries (its Service's).
const ServerName = "istiod.istio-system.svc"

// ReadyTimeout bounds istiod's start (its informers, its CA, the first push) on a loaded machine.
const ReadyTimeout = 3 * time.Minute

// Env is the environment istiod runs with outside a cluster: its namespace (POD_NAMESPACE,
// where its CA keeps istio-ca-secret), ambient on, the ztunnel's ServiceAccount trusted to ask
// for its node's workloads' certificates (CA_TRUSTED_NODE_ACCOUNTS, which Istio's chart sets
// when ztunnel is installed), and off everything that would act on the
// cluster beyond serving xDS and certificates — the Gateway deployment controller (it would
// deploy waypoints, and server-side-apply a Service named after each Gateway over an
// application's Service of the same name, as handson's), the GatewayClass controller, Gateway
// status, and the webhook configurations' patchers.
var Env = []string{
	"POD_NAMESPACE=istio-system",
	"POD_NAME=istiod-peer",
	"PILOT_ENABLE_AMBIENT=true",
	"CA_TRUSTED_NODE_ACCOUNTS=istio-system/ztunnel",
	"PILOT_ENABLE_GATEWAY_API_DEPLOYMENT_CONTROLLER=false",
	"PILOT_ENABLE_GATEWAY_API_GATEWAYCLASS_CONTROLLER=false",
	"PILOT_ENABLE_GATEWAY_API_STATUS=false",
	"VALIDATION_WEBHOOK_CONFIG_NAME=",
	"INJECTION_WEBHOOK_CONFIG_NAME=",
	"PILOT_ENABLE_STATUS=false",
}

// Istiod is a running pilot-discovery.
type Istiod struct {
	Host       string // the loopback address it listens on
	GRPC       string // host:port of the plaintext xDS listener (Istio's 15010)
	Secure     string // host:port of the TLS listener: xDS and the CA (Istio's 15012)
	HTTP       string // host:port of the debug/readiness listener (Istio's 8080)
	Monitoring string // host:port of /metrics (Istio's 15014)
	RootFile   string // PEM of its CA's root (istio-ca-secret), which verifies Secure
	Dir        string // its working directory and log (istiod.log)

	cmd    *exec.Cmd
	exited chan struct{}
}

// BinDir returns the folder of pilot-discovery, or why it cannot be used.
func BinDir() (string, error) {
	dir := os.Getenv(EnvBinDir)
	if dir == "" {
		return "", fmt.Errorf("$%s is not set (run integration/istiod/tools/build.sh, or `make istiod-bin`, and point it at the folder it prints)", EnvBinDir)
	}
	if fi, err := os.Stat(filepath.Join(dir, "pilot-discovery")); err != nil || fi.IsDir() {
		return "", fmt.Errorf("$%s=%s has no pilot-discovery binary", EnvBinDir, dir)
	}
	return dir, nil
}

// SkipIfMissing skips t when pilot-discovery is not there.
func SkipIfMissing(t testing.TB) string {
	t.Helper()
	dir, err := BinDir()
	if err != nil {
		t.Skip("no istiod for this peer test: " + err.Error())
	}
	return dir
}

// Start runs pilot-discovery against s as its administrator on host (a loopback address),
// with free ports, the Env above and extraEnv, and waits until it is ready and its CA's root
// is published. It is killed when t ends; its log is printed if t failed. It skips t when the
// binary is missing.
func Start(t testing.TB, s *kubeapi.Server, host string, extraEnv ...string) *Istiod {
	t.Helper()
	bin := SkipIfMissing(t)
	dir := t.TempDir()
	var (
		d   *Istiod
		err error
	)
	for range 3 { // a port taken between its choice and istiod's bind: try other ports
		if d, err = start(bin, s, host, dir, extraEnv); err == nil || !errors.Is(err, errPortTaken) {
			break
		}
	}
	if d != nil {
		t.Cleanup(d.Stop)
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("istiod log (last lines):\n%s", kubeapi.Tail(filepath.Join(dir, "istiod.log"), 150))
			}
		})
	}
	if err != nil {
		if d != nil {
			d.Stop()
		}
		t.Fatal(err)
	}
	return d
}

var errPortTaken = errors.New("address already in use")

func start(bin string, s *kubeapi.Server, host, dir string, extraEnv []string) (*Istiod, error) {
	ports, err := kubeapi.FreePorts(host, 6)
	if err != nil {
		return nil, err
	}
	addr := func(i int) string { return net.JoinHostPort(host, strconv.Itoa(ports[i])) }
	d := &Istiod{Host: host, GRPC: addr(0), Secure: addr(1), HTTP: addr(2), Monitoring: addr(3), Dir: dir, exited: make(chan struct{})}
	logPath := filepath.Join(dir, "istiod.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	d.cmd = exec.Command(filepath.Join(bin, "pilot-discovery"), "discovery",
		"--kubeconfig", s.Kubeconfig,
		"--grpcAddr", d.GRPC, "--secureGRPCAddr", d.Secure, "--httpAddr", d.HTTP, "--monitoringAddr", d.Monitoring,
		"--httpsAddr", addr(4), // the webhooks' server: no webhook configuration points at it
		"--ctrlz_address", host, "--ctrlz_port", strconv.Itoa(ports[5]),
		"--domain", "cluster.local", "--log_output_level", "default:info",
	)
	d.cmd.Dir = dir // its ./etc/istio/config/mesh (absent: the default mesh) and ./var/run/secrets
	d.cmd.Env = append(append(os.Environ(), Env...), extraEnv...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := kubeapi.Spawn(d.cmd); err != nil {
		logf.Close()
		return nil, fmt.Errorf("istiod: start: %w", err)
	}
	go func() {
		d.cmd.Wait()
		logf.Close()
		close(d.exited)
	}()
	if err := d.waitReady(s, logPath); err != nil {
		return d, err
	}
	return d, nil
}

// waitReady polls /ready, then reads the CA's root from istio-ca-secret and checks that it
// verifies the TLS listener's serving certificate for ServerName.
func (d *Istiod) waitReady(s *kubeapi.Server, logPath string) error {
	deadline := time.Now().Add(ReadyTimeout)
	c := &http.Client{Timeout: 5 * time.Second}
	for {
		select {
		case <-d.exited:
			err := fmt.Errorf("istiod exited (%v):\n%s", d.cmd.ProcessState, kubeapi.Tail(logPath, 60))
			if strings.Contains(kubeapi.Tail(logPath, 60), "address already in use") {
				err = fmt.Errorf("%w: %w", errPortTaken, err)
			}
			return err
		default:
		}
		if resp, err := c.Get("http://" + d.HTTP + "/ready"); err == nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("istiod not ready after %v:\n%s", ReadyTimeout, kubeapi.Tail(logPath, 60))
		}
		time.Sleep(200 * time.Millisecond) // a poll of a starting process, bounded by deadline
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sec, err := s.Kube.CoreV1().Secrets("istio-system").Get(ctx, "istio-ca-secret", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("istiod: its CA's secret: %w", err)
	}
	root := sec.Data["ca-cert.pem"]
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(root) {
		return errors.New("istiod: istio-ca-secret has no ca-cert.pem")
	}
	d.RootFile = filepath.Join(d.Dir, "root-cert.pem")
	if err := os.WriteFile(d.RootFile, root, 0o644); err != nil {
		return err
	}
	conn, err := tls.Dial("tcp", d.Secure, &tls.Config{RootCAs: pool, ServerName: ServerName, NextProtos: []string{"h2"}})
	if err != nil {
		return fmt.Errorf("istiod: its TLS listener with its root for %s: %w", ServerName, err)
	}
	return conn.Close()
}

// Stop kills istiod by its PID and waits for it.
func (d *Istiod) Stop() {
	if d.cmd.Process != nil {
		d.cmd.Process.Kill()
		<-d.exited
	}
}

// Log returns istiod's log so far.
func (d *Istiod) Log() string {
	b, _ := os.ReadFile(filepath.Join(d.Dir, "istiod.log"))
	return string(b)
}
