package integration

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestZtunnelIdleConnectionFlood is issue 11's file-descriptor exhaustion against the real
// binary: the ztunnel serving handson-blue runs with 256 open files (prlimit), and a client
// without a certificate opens 400 TCP connections to its HBONE port and never speaks. The
// ztunnel closes all but its per-source handshake limit at once, so the curls from another
// address meanwhile still get the app's answer over HBONE (on 29de288 the accepts fail with
// EMFILE until the handshakes time out).
func TestZtunnelIdleConnectionFlood(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("needs prlimit (util-linux) to lower the ztunnel's open-file limit")
	}
	bins := buildBinaries(t)
	dir := t.TempDir()
	svids := filepath.Join(dir, "svids")
	meshctl(t, bins["meshctl"], "certs", "root", "--dir", svids)
	meshctl(t, bins["meshctl"], "certs", "issue-from-mesh", "--dir", svids, "-f", "../manifests/examples/handson/mesh.yaml")
	a, b := 10+rand.IntN(90), 1+rand.IntN(250)
	podNet := fmt.Sprintf("127.%d.%d", a, b)
	blue, allow := podNet+".5", podNet+".2"
	stateFile := filepath.Join(dir, "state.yaml")
	writeAtomic(t, stateFile, handsonState(podNet, nil))
	serveHTTP(t, fmt.Sprintf("127.%d.%d.5:8080", a+100, b), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "handson-blue")
	}))

	// The ztunnel of worker2 under a 256-file limit (soft and hard: Go raises the soft one).
	limited := filepath.Join(dir, "ztunnel-256")
	script := fmt.Sprintf("#!/bin/sh\nexec %s --nofile=256:256 -- %s \"$@\"\n", prlimit, bins["ztunnel"])
	if err := os.WriteFile(limited, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	worker := startZtunnel(t, bins["ztunnel"], "worker", podNet+".250", stateFile, svids)
	worker2 := startZtunnel(t, limited, "worker2", podNet+".251", stateFile, svids)
	socks := worker.host + ":15080"
	get := func() error {
		code, body, err := curl(socks, allow, "http://handson:8080/")
		if err == nil && (code != 200 || !strings.Contains(body, "handson-blue")) {
			err = fmt.Errorf("%d %q", code, body)
		}
		return err
	}
	if err := get(); err != nil {
		t.Fatalf("before the flood: %v", err)
	}

	const flood = 400
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 2 * time.Second}
	for range flood {
		c, err := d.Dial("tcp", blue+":15008")
		if err != nil {
			break // the backlog is full
		}
		open = append(open, c)
	}
	t.Logf("%d idle connections opened to %s:15008", len(open), blue)
	// Within the handshake timeout (10 s) of the first ones: the app is still reachable.
	failed := 0
	for i := range 5 {
		if err := get(); err != nil {
			failed++
			t.Errorf("curl %d during the flood: %v", i, err)
		}
	}
	// The ztunnel accepted them (the kernel had completed them): those over its limits were
	// closed at once, and read EOF or a reset here.
	var closed atomic.Int32
	var wg sync.WaitGroup
	for _, c := range open {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
				closed.Add(1)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d of them closed by the ztunnel", closed.Load())
	if failed > 0 {
		t.Logf("worker2 log:\n%s", lastLines(worker2.out.String(), 20))
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// lastLines is the end of a log.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
