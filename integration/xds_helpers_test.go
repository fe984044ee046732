package integration

// Helpers of the tests where a real xdsserver serves the ztunnels (xds_test.go).

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/source/files"
)

// buildXDSBinaries builds ztunnel, meshctl and xdsserver.
func buildXDSBinaries(t *testing.T) map[string]string {
	t.Helper()
	bins := buildBinaries(t)
	out := filepath.Join(filepath.Dir(bins["ztunnel"]), "xdsserver")
	if b, err := exec.Command("go", "build", "-o", out, "../cmd/xdsserver").CombinedOutput(); err != nil {
		t.Fatalf("go build xdsserver: %v\n%s", err, b)
	}
	bins["xdsserver"] = out
	return bins
}

type xdsserverProc struct {
	cmd      *exec.Cmd
	out      *syncBuf
	xds      string // host:port of its delta ADS listener
	http     string // host:port of /healthz/ready and /metrics
	exited   chan struct{}
	pushes   func() int // "mesh pushed" log lines so far
	logLines func(subs ...string) []string
}

var startedRE = regexp.MustCompile(`xdsserver started.* xds=(\S+) http=(\S+)`)

// startXdsserver runs xdsserver --loopback on configDir with its listeners on loopback :0, and
// waits until it is ready (it has a mesh).
func startXdsserver(t *testing.T, bin, configDir string, extra ...string) *xdsserverProc {
	t.Helper()
	x := &xdsserverProc{out: &syncBuf{}, exited: make(chan struct{})}
	args := append([]string{"--config-dir", configDir, "--loopback", "--xds-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"}, extra...)
	x.cmd = exec.Command(bin, args...)
	x.cmd.Stdout, x.cmd.Stderr = x.out, x.out
	if err := x.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { x.cmd.Wait(); close(x.exited) }()
	t.Cleanup(func() {
		x.cmd.Process.Kill()
		<-x.exited
		if t.Failed() {
			t.Logf("xdsserver log:\n%s", x.out)
		}
	})
	x.pushes = func() int { return len(x.out.lines("mesh pushed")) }
	x.logLines = x.out.lines
	eventually(t, 10*time.Second, "xdsserver's listeners", func() bool {
		m := startedRE.FindStringSubmatch(x.out.String())
		if m == nil {
			return false
		}
		x.xds, x.http = strings.Trim(m[1], `"`), strings.Trim(m[2], `"`)
		return true
	})
	eventually(t, 10*time.Second, "xdsserver ready", func() bool {
		resp, err := http.Get("http://" + x.http + "/healthz/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return x
}

// startZtunnelXDS starts a ztunnel for node fed by the xdsserver at xdsAddr (delta ADS),
// with its own listeners on host; it waits until the ztunnel is ready (it has the state).
func startZtunnelXDS(t *testing.T, bin, node, host, xdsAddr, svidDir string) *ztunnelProc {
	t.Helper()
	return runZtunnel(t, bin, node, host, "--xds-address", xdsAddr, "--svid-dir", svidDir)
}

// meshPlacement is where xdsserver --loopback places the pods and Services of a folder: pod
// and Service "ns/name" → address. It runs the same model in-process.
type meshPlacement struct {
	pods, vips map[string]string
}

func placementOf(t *testing.T, paths ...string) meshPlacement {
	t.Helper()
	cfg := model.DefaultConfig()
	cfg.Placement = model.LoopbackPlacement
	m, err := files.New(files.Options{Paths: paths, Model: cfg}).Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range m.Errors {
		t.Fatalf("mesh error: %v", e)
	}
	p := meshPlacement{pods: map[string]string{}, vips: map[string]string{}}
	for _, w := range m.Workloads {
		if len(w.IPs) > 0 {
			p.pods[w.Key()] = w.IPs[0].String()
		}
	}
	for _, s := range m.Services {
		if len(s.VIPs) > 0 {
			p.vips[s.Key()] = s.VIPs[0].String()
		}
	}
	return p
}

func (p meshPlacement) pod(t *testing.T, key string) string {
	t.Helper()
	ip, ok := p.pods[key]
	if !ok {
		t.Fatalf("no pod %s in the mesh", key)
	}
	return ip
}

// applyFile copies the scenario file src into the config folder dir (kubectl apply -f),
// atomically, and returns the time of the write.
func applyFile(t *testing.T, dir, src string) time.Time {
	t.Helper()
	content := readFile(t, src)
	at := time.Now()
	writeAtomic(t, filepath.Join(dir, filepath.Base(src)), content)
	return at
}

// writeConfig writes content as the file name of the config folder dir, atomically.
func writeConfig(t *testing.T, dir, name, content string) time.Time {
	t.Helper()
	at := time.Now()
	writeAtomic(t, filepath.Join(dir, name), content)
	return at
}

// deleteFile removes the file name from the config folder dir (kubectl delete -f).
func deleteFile(t *testing.T, dir, name string) time.Time {
	t.Helper()
	at := time.Now()
	if err := os.Remove(filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
	return at
}

// changeLatency polls cond every 20 ms (10 s at most) after a config write at written, and
// returns how long the behaviour took to change; it logs it as what.
func changeLatency(t *testing.T, what string, written time.Time, cond func() bool) time.Duration {
	t.Helper()
	deadline := written.Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the behaviour did not change within 10s of the file write", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	d := time.Since(written)
	t.Logf("LATENCY %s: %v from the file write to the first observed change", what, d.Round(time.Millisecond))
	return d
}
