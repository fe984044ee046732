package integration

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestWaypointPerf measures the embedded waypoint binary under load as TestPerf measures a
// ztunnel, beside Istio's published figure for its Envoy waypoint (0.25 vCPU and 60 MB at
// 1,000 requests per second, Istio 1.24): handson step 3 (startHandsonWaypoint: the L7 policy
// evaluated on every request), a paced client sending -perf.rps POSTs of -perf.size bytes as
// curl-allow over -perf.conns keep-alive HTTP/1.1 connections through the source ztunnel, HBONE
// to the waypoint, HBONE to the destination ztunnel, to an app that echoes the body. It logs
// the waypoint's CPU (utime+stime over the load) and VmRSS, the ztunnels' for the same
// traffic, the client's latencies, and a plain TCP relay's CPU under the same load as a
// baseline. It asserts nothing about them. Skipped unless -perf is given:
//
//	go test -run TestWaypointPerf -v ./integration/ -perf
func TestWaypointPerf(t *testing.T) {
	if !*perf {
		t.Skip("a measurement: run with -perf")
	}
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("needs /proc")
	}
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		w.Write(b)
	})
	if *perfProcs != "" {
		t.Setenv("GOMAXPROCS", *perfProcs) // inherited by the processes started below
	}
	h := startHandsonWaypoint(t, echo, "--log-level", "info") // its access log is written, as Istio's waypoint writes one

	dial := func() (net.Conn, error) { return socksDial(h.socks, h.curlAllow, "handson:8080") }
	conns := make([]net.Conn, *perfConns)
	for i := range conns {
		c, err := dial()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
		defer c.Close()
	}
	body := bytes.Repeat([]byte("x"), *perfSize)
	// load sends rps POSTs per second spread over the connections for dur, each connection on
	// its own schedule and waiting for each answer before the next (as TestPerf's load).
	load := func(conns []net.Conn, host string, dur time.Duration, rps int) ([]time.Duration, error) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		var lat []time.Duration
		var firstErr error
		perConn := time.Duration(float64(time.Second) * float64(len(conns)) / float64(rps))
		start := time.Now()
		for i, c := range conns {
			wg.Go(func() {
				br := bufio.NewReader(c)
				var my []time.Duration
				next := start.Add(perConn * time.Duration(i) / time.Duration(len(conns)))
				end := start.Add(dur)
				var err error
				for next.Before(end) {
					time.Sleep(time.Until(next))
					t0 := time.Now()
					c.SetDeadline(t0.Add(5 * time.Second))
					req, _ := http.NewRequest("POST", "http://"+host+"/echo", bytes.NewReader(body))
					if err = req.Write(c); err != nil {
						break
					}
					var resp *http.Response
					if resp, err = http.ReadResponse(br, req); err != nil {
						break
					}
					n, _ := io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 || n != int64(len(body)) {
						err = fmt.Errorf("answer %d with %d bytes", resp.StatusCode, n)
						break
					}
					my = append(my, time.Since(t0))
					next = next.Add(perConn)
				}
				mu.Lock()
				lat = append(lat, my...)
				firstErr = perfFirstErr(firstErr, err)
				mu.Unlock()
			})
		}
		wg.Wait()
		return lat, firstErr
	}

	// Warm-up: TLS, the pooled HBONE connections, the heaps at this load.
	if _, err := load(conns, "handson:8080", time.Second, *perfRate); err != nil {
		t.Fatal(err)
	}
	hz := perfClkTck(t)
	pids := map[string]int{"waypoint": h.wp.Process.Pid}
	for _, z := range h.ztunnels {
		pids["ztunnel "+z.name] = z.cmd.Process.Pid
	}
	idle := map[string]perfProcSample{}
	for name, pid := range pids {
		idle[name] = perfSampleProc(t, pid, hz)
	}
	time.Sleep(2 * time.Second)
	before := map[string]perfProcSample{}
	for name, pid := range pids {
		before[name] = perfSampleProc(t, pid, hz)
	}
	lat, err := load(conns, "handson:8080", *perfDuration, *perfRate)
	if err != nil {
		t.Fatal(err)
	}
	after := map[string]perfProcSample{}
	for name, pid := range pids {
		after[name] = perfSampleProc(t, pid, hz)
	}
	slices.Sort(lat)
	pct := func(q int) time.Duration { return lat[min(len(lat)-1, len(lat)*q/100)] }
	t.Logf("load: %d POSTs of %d B (echoed) in %v over %d connections = %.0f rps; client round trip p50 %v p99 %v",
		len(lat), *perfSize, *perfDuration, len(conns), float64(len(lat))/perfDuration.Seconds(), pct(50), pct(99))
	names := []string{"waypoint"}
	for _, z := range h.ztunnels {
		names = append(names, "ztunnel "+z.name)
	}
	for _, name := range names {
		i, b, a := idle[name], before[name], after[name]
		t.Logf("%s: %.3f vCPU under load (%v CPU in %v; idle %.3f vCPU); VmRSS %.1f MB before, %.1f MB after (private %.1f MB), VmHWM %.1f MB",
			name, (a.cpu-b.cpu).Seconds()/a.at.Sub(b.at).Seconds(), a.cpu-b.cpu, a.at.Sub(b.at).Round(time.Millisecond),
			(b.cpu-i.cpu).Seconds()/b.at.Sub(i.at).Seconds(), float64(b.rss)/1e6, float64(a.rss)/1e6, float64(a.anon)/1e6, float64(a.hwm)/1e6)
	}
	t.Logf("Istio's Envoy waypoint at 1,000 rps (Istio 1.24): 0.25 vCPU, 60 MB")

	// The baseline, same machine, same load: one plain TCP relay in front of an echo app.
	dir := t.TempDir()
	relayBin := filepath.Join(dir, "plainrelay")
	if b, err := exec.Command("go", "build", "-o", relayBin, "./testdata/plainrelay").CombinedOutput(); err != nil {
		t.Fatalf("go build plainrelay: %v\n%s", err, b)
	}
	n, _, _ := randomNet()
	app := n + ".5:8080"
	serveHTTP(t, app, echo)
	relay := perfStartRelay(t, relayBin, n+".254:0", app)
	plain := make([]net.Conn, len(conns))
	for i := range plain {
		if plain[i], err = net.DialTimeout("tcp", relay.addr, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		defer plain[i].Close()
	}
	if _, err := load(plain, "handson:8080", time.Second, *perfRate); err != nil {
		t.Fatal(err)
	}
	b := perfSampleProc(t, relay.pid, hz)
	if _, err := load(plain, "handson:8080", *perfDuration, *perfRate); err != nil {
		t.Fatal(err)
	}
	a := perfSampleProc(t, relay.pid, hz)
	t.Logf("baseline: plain TCP relay under the same load: %.3f vCPU; VmRSS %.1f MB (private %.1f MB)",
		(a.cpu-b.cpu).Seconds()/a.at.Sub(b.at).Seconds(), float64(a.rss)/1e6, float64(a.anon)/1e6)
}
