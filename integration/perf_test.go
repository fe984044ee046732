package integration

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/proxy"
)

var (
	perf         = flag.Bool("perf", false, "run TestPerf: the whole-binary CPU and RSS measurement (slow)")
	perfDuration = flag.Duration("perf.duration", 10*time.Second, "TestPerf: how long the load runs")
	perfRate     = flag.Int("perf.rps", 1000, "TestPerf: requests per second")
	perfConns    = flag.Int("perf.conns", 10, "TestPerf: long-lived proxied connections sharing the rate")
	perfSize     = flag.Int("perf.size", 1024, "TestPerf: request and response size in bytes")
	perfProcs    = flag.String("perf.gomaxprocs", "", "TestPerf: GOMAXPROCS of the ztunnels (empty: inherited)")
	perfProfile  = flag.String("perf.profile", "", "TestPerf: a directory to write each ztunnel's CPU profile of the load to")
)

// perfProcSample is a process's CPU time (user+system) and resident memory at one moment.
type perfProcSample struct {
	at       time.Time
	cpu      time.Duration
	rss, hwm int64 // bytes: VmRSS, VmHWM
	anon     int64 // bytes: RssAnon, the process's private memory (the rest of VmRSS is mapped files, mostly its own executable)
}

// perfClkTck is the kernel's USER_HZ, the unit of utime and stime in /proc/<pid>/stat.
func perfClkTck(t *testing.T) float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err != nil {
		return 100
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
	if err != nil || v <= 0 {
		return 100
	}
	return v
}

func perfSampleProc(t *testing.T, pid int, hz float64) perfProcSample {
	t.Helper()
	s := perfProcSample{at: time.Now()}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after "(comm)": state is field 3, utime 14, stime 15.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	s.cpu = time.Duration((ut + st) / hz * float64(time.Second))
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			s.rss = kb << 10
		case "VmHWM":
			s.hwm = kb << 10
		case "RssAnon":
			s.anon = kb << 10
		}
	}
	return s
}

// TestPerf measures one ztunnel binary under load, as Istio states its ztunnel's cost (0.06
// vCPU and 12 MB at 1,000 requests per second of 1 KB): two ztunnels in loopback mode (the
// handson scenario of TestZtunnelHandsonLoopback), a paced client sending -perf.rps requests
// of -perf.size bytes over -perf.conns long-lived SOCKS5 connections through the source
// ztunnel, HBONE to the destination ztunnel, to a TCP echo app. It logs CPU (utime+stime from
// /proc/<pid>/stat over the load) and VmRSS of both ztunnels, and the client's latencies. It
// asserts nothing about them. Skipped unless -perf is given:
//
//	go test -run TestPerf -v ./integration/ -perf
//
// (-perf after the package: go test hands every argument from the first flag it does not know
// on to the test binary.) -perf.gomaxprocs=1 runs the ztunnels with GOMAXPROCS=1.
func TestPerf(t *testing.T) {
	if !*perf {
		t.Skip("a measurement: run with -perf")
	}
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("needs /proc")
	}
	bins := buildBinaries(t)
	dir := t.TempDir()
	svids := filepath.Join(dir, "svids")
	for _, args := range [][]string{
		{"certs", "root", "--dir", svids},
		{"certs", "issue-from-mesh", "--dir", svids, "-f", "../manifests/examples/handson/mesh.yaml"},
	} {
		if b, err := exec.Command(bins["meshctl"], args...).CombinedOutput(); err != nil {
			t.Fatalf("meshctl %v: %v\n%s", args, err, b)
		}
	}
	a, b := 10+rand.IntN(90), 1+rand.IntN(250)
	podNet := fmt.Sprintf("127.%d.%d", a, b)
	blue, client := podNet+".5", podNet+".2"
	stateFile := filepath.Join(dir, "state.yaml")
	writeAtomic(t, stateFile, handsonState(podNet, nil))

	// The app: a TCP echo on handson-blue's private address.
	ln, err := net.Listen("tcp", fmt.Sprintf("127.%d.%d.5:8080", a+100, b))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); bufio.NewReader(c).WriteTo(c) }()
		}
	}()

	if *perfProcs != "" {
		t.Setenv("GOMAXPROCS", *perfProcs) // inherited by the ztunnel processes
	}
	src := startZtunnel(t, bins["ztunnel"], "worker", podNet+".250", stateFile, svids)
	dst := startZtunnel(t, bins["ztunnel"], "worker2", podNet+".251", stateFile, svids)

	fwd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(client)}, Timeout: 5 * time.Second}
	d, err := proxy.SOCKS5("tcp", src.host+":15080", nil, fwd)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, *perfConns)
	for i := range conns {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conns[i], err = d.(proxy.ContextDialer).DialContext(ctx, "tcp", blue+":8080")
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		defer conns[i].Close()
	}

	// load sends rps requests per second, spread over the connections, for dur; each
	// connection sends on its own schedule (request k at start + k/rate, never bunched to catch
	// up more than the backlog) and waits for each echo before the next.
	load := func(conns []net.Conn, dur time.Duration, rps int) (lat []time.Duration, sent int, err error) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		var firstErr error
		perConn := time.Duration(float64(time.Second) * float64(len(conns)) / float64(rps))
		start := time.Now()
		for i, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				msg, buf := make([]byte, *perfSize), make([]byte, *perfSize)
				var my []time.Duration
				next := start.Add(perConn * time.Duration(i) / time.Duration(len(conns)))
				end := start.Add(dur)
				for next.Before(end) {
					time.Sleep(time.Until(next))
					t0 := time.Now()
					c.SetDeadline(t0.Add(5 * time.Second))
					_, err := c.Write(msg)
					if err == nil {
						_, err = io.ReadFull(c, buf)
					}
					if err != nil {
						mu.Lock()
						firstErr = perfFirstErr(firstErr, err)
						mu.Unlock()
						break
					}
					my = append(my, time.Since(t0))
					next = next.Add(perConn)
				}
				mu.Lock()
				lat = append(lat, my...)
				mu.Unlock()
			}()
		}
		wg.Wait()
		return lat, len(lat), firstErr
	}

	// Warm-up: TLS, the pooled HBONE connection, the Go runtime's heap at this load.
	if _, _, err := load(conns, time.Second, *perfRate); err != nil {
		t.Fatal(err)
	}
	hz := perfClkTck(t)
	pids := map[string]int{"source (worker)": src.cmd.Process.Pid, "destination (worker2)": dst.cmd.Process.Pid}
	// Idle: the same connections open, no requests, for a baseline of the processes' own cost.
	idle := map[string]perfProcSample{}
	for name, pid := range pids {
		idle[name] = perfSampleProc(t, pid, hz)
	}
	time.Sleep(2 * time.Second)
	before := map[string]perfProcSample{}
	for name, pid := range pids {
		before[name] = perfSampleProc(t, pid, hz)
	}
	profiled := perfStartProfiles(t, *perfProfile, *perfDuration, map[string]*ztunnelProc{"source": src, "destination": dst})
	lat, n, err := load(conns, *perfDuration, *perfRate)
	if err != nil {
		t.Fatal(err)
	}
	profiled()
	after := map[string]perfProcSample{}
	for name, pid := range pids {
		after[name] = perfSampleProc(t, pid, hz)
	}
	slices.Sort(lat)
	pct := func(q int) time.Duration { return lat[min(len(lat)-1, len(lat)*q/100)] }
	t.Logf("load: %d requests of %d B in %v over %d connections = %.0f rps; client round trip p50 %v p99 %v",
		n, *perfSize, *perfDuration, len(conns), float64(n)/perfDuration.Seconds(), pct(50), pct(99))
	for _, name := range []string{"source (worker)", "destination (worker2)"} {
		i, b, a := idle[name], before[name], after[name]
		vcpu := (a.cpu - b.cpu).Seconds() / a.at.Sub(b.at).Seconds()
		idleCPU := (b.cpu - i.cpu).Seconds() / b.at.Sub(i.at).Seconds()
		t.Logf("ztunnel %s: %.3f vCPU under load (%v CPU in %v; idle %.3f vCPU); VmRSS %.1f MB before, %.1f MB after (private %.1f MB), VmHWM %.1f MB",
			name, vcpu, a.cpu-b.cpu, a.at.Sub(b.at).Round(time.Millisecond), idleCPU,
			float64(b.rss)/1e6, float64(a.rss)/1e6, float64(a.anon)/1e6, float64(a.hwm)/1e6)
	}
	t.Logf("Istio's Rust ztunnel at 1,000 rps of 1 KB: 0.06 vCPU, 12 MB")

	// The baseline, same machine, same load: two plain TCP relays in place of the ztunnels.
	relayBin := filepath.Join(dir, "plainrelay")
	if b, err := exec.Command("go", "build", "-o", relayBin, "./testdata/plainrelay").CombinedOutput(); err != nil {
		t.Fatalf("go build plainrelay: %v\n%s", err, b)
	}
	second := perfStartRelay(t, relayBin, podNet+".253:0", ln.Addr().String())
	first := perfStartRelay(t, relayBin, podNet+".254:0", second.addr)
	plain := make([]net.Conn, len(conns))
	for i := range plain {
		if plain[i], err = net.DialTimeout("tcp", first.addr, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		defer plain[i].Close()
	}
	if _, _, err := load(plain, time.Second, *perfRate); err != nil {
		t.Fatal(err)
	}
	relays := map[string]int{"first": first.pid, "second": second.pid}
	before = map[string]perfProcSample{}
	for name, pid := range relays {
		before[name] = perfSampleProc(t, pid, hz)
	}
	if _, _, err := load(plain, *perfDuration, *perfRate); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"first", "second"} {
		b, a := before[name], perfSampleProc(t, relays[name], hz)
		t.Logf("baseline: plain TCP relay (%s hop): %.3f vCPU under the same load; VmRSS %.1f MB (private %.1f MB)",
			name, (a.cpu-b.cpu).Seconds()/a.at.Sub(b.at).Seconds(), float64(a.rss)/1e6, float64(a.anon)/1e6)
	}
}

// perfRelay is a running plainrelay process.
type perfRelay struct {
	pid  int
	addr string
}

// perfStartRelay starts plainrelay listening on listen and relaying to target; it is killed
// at the end of the test.
func perfStartRelay(t *testing.T, bin, listen, target string) perfRelay {
	t.Helper()
	cmd := exec.Command(bin, listen, target)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("plainrelay: %v", err)
	}
	return perfRelay{pid: cmd.Process.Pid, addr: strings.TrimSpace(line)}
}

// perfStartProfiles starts a CPU profile of each ztunnel (its admin /debug/pprof/profile) for
// dur when dir is set; the returned function waits for them and writes <dir>/<name>.pprof.
func perfStartProfiles(t *testing.T, dir string, dur time.Duration, zs map[string]*ztunnelProc) func() {
	if dir == "" {
		return func() {}
	}
	var wg sync.WaitGroup
	for name, z := range zs {
		wg.Go(func() {
			url := fmt.Sprintf("http://%s:15000/debug/pprof/profile?seconds=%d", z.host, int(dur.Seconds()))
			resp, err := http.Get(url)
			if err != nil {
				t.Errorf("profile of %s: %v", name, err)
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err == nil {
				err = os.WriteFile(filepath.Join(dir, name+".pprof"), b, 0o644)
			}
			if err != nil {
				t.Errorf("profile of %s: %v", name, err)
			}
		})
	}
	return wg.Wait
}

func perfFirstErr(old, err error) error {
	if old != nil {
		return old
	}
	return err
}
