package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/proxy"
)

// TestPerfBaggage measures what the baggage costs the ztunnels: two pairs of ztunnels in the
// same run, one as Istio's (baggage on every CONNECT and answer, read into the metrics'
// labels), one with --baggage=false; each carries perf.rps new connections a second (a SOCKS5
// connect, 1 KB each way, close: a new HBONE stream each, so a baggage header each way), in
// turn, twice. It reports each ztunnel's vCPU and the ratio. A measurement: run with -perf.
func TestPerfBaggage(t *testing.T) {
	if !*perf {
		t.Skip("a measurement: run with -perf")
	}
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("needs /proc")
	}
	bins := buildBinaries(t)
	hz := perfClkTck(t)
	type pair struct {
		name     string
		src, dst *ztunnelProc
		socks    proxy.ContextDialer
		blue     string
	}
	var pairs []*pair
	for i, extra := range [][]string{nil, {"--baggage=false"}} {
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
		stateFile := filepath.Join(dir, "state.yaml")
		writeAtomic(t, stateFile, handsonState(podNet, nil))
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
		p := &pair{name: map[int]string{0: "baggage on", 1: "baggage off"}[i], blue: podNet + ".5"}
		p.src = startZtunnel(t, bins["ztunnel"], "worker", podNet+".250", stateFile, svids, extra...)
		p.dst = startZtunnel(t, bins["ztunnel"], "worker2", podNet+".251", stateFile, svids, extra...)
		fwd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(podNet + ".2")}, Timeout: 5 * time.Second}
		d, err := proxy.SOCKS5("tcp", p.src.host+":15080", nil, fwd)
		if err != nil {
			t.Fatal(err)
		}
		p.socks = d.(proxy.ContextDialer)
		pairs = append(pairs, p)
	}
	// load opens rps connections a second for dur through p, each carrying one 1 KB exchange,
	// spread over 20 workers each on its own schedule.
	load := func(p *pair, dur time.Duration, rps int) (int, error) {
		const workers = 20
		var mu sync.Mutex
		var wg sync.WaitGroup
		var firstErr error
		done := 0
		per := time.Duration(float64(time.Second) * workers / float64(rps))
		start := time.Now()
		for w := range workers {
			wg.Go(func() {
				msg, buf := make([]byte, *perfSize), make([]byte, *perfSize)
				next := start.Add(per * time.Duration(w) / workers)
				for next.Before(start.Add(dur)) {
					time.Sleep(time.Until(next))
					next = next.Add(per)
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					c, err := p.socks.DialContext(ctx, "tcp", p.blue+":8080")
					cancel()
					if err == nil {
						c.SetDeadline(time.Now().Add(5 * time.Second))
						if _, err = c.Write(msg); err == nil {
							_, err = io.ReadFull(c, buf)
						}
						c.Close()
					}
					mu.Lock()
					if err != nil {
						firstErr = perfFirstErr(firstErr, err)
					} else {
						done++
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		return done, firstErr
	}
	for _, p := range pairs { // warm-up: TLS, pooled HBONE connections, the heap at this load
		if _, err := load(p, time.Second, *perfRate); err != nil {
			t.Fatal(err)
		}
	}
	cpu := map[string]map[string]time.Duration{}
	wall := map[string]time.Duration{}
	for round := range 4 {
		order := pairs
		if round%2 == 1 { // each goes first every other round
			order = []*pair{pairs[1], pairs[0]}
		}
		for _, p := range order {
			pids := map[string]int{"source": p.src.cmd.Process.Pid, "destination": p.dst.cmd.Process.Pid}
			before := map[string]perfProcSample{}
			for n, pid := range pids {
				before[n] = perfSampleProc(t, pid, hz)
			}
			n, err := load(p, *perfDuration, *perfRate)
			if err != nil {
				t.Fatalf("%s: %v", p.name, err)
			}
			if cpu[p.name] == nil {
				cpu[p.name] = map[string]time.Duration{}
			}
			for name, pid := range pids {
				a := perfSampleProc(t, pid, hz)
				cpu[p.name][name] += a.cpu - before[name].cpu
				if name == "source" {
					wall[p.name] += a.at.Sub(before[name].at)
				}
			}
			t.Logf("round %d, %s: %d connections in %v (%.0f/s)", round, p.name, n, *perfDuration, float64(n)/perfDuration.Seconds())
		}
	}
	vcpu := func(p, side string) float64 { return cpu[p][side].Seconds() / wall[p].Seconds() }
	for _, side := range []string{"source", "destination"} {
		on, off := vcpu("baggage on", side), vcpu("baggage off", side)
		t.Logf("ztunnel %s at %d new connections/s: %.3f vCPU with baggage, %.3f without: on/off %.2f", side, *perfRate, on, off, on/off)
	}
}
