package metricshttp

import (
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

func serve(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := Server(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "metric 1\n") }))
	go Serve(hs, ln)
	t.Cleanup(func() { hs.Close() })
	return ln.Addr().String()
}

// Only GET and HEAD; headers past MaxHeaderBytes are refused.
func TestReadOnly(t *testing.T) {
	addr := serve(t)
	c := &http.Client{Timeout: 10 * time.Second}
	for _, tc := range []struct {
		method, header string
		want           int
	}{{"GET", "", 200}, {"HEAD", "", 200}, {"POST", "", 405}, {"DELETE", "", 405}, {"GET", strings.Repeat("a", 2*MaxHeaderBytes), 431}} {
		req, _ := http.NewRequest(tc.method, "http://"+addr+"/metrics", nil)
		if tc.header != "" {
			req.Header.Set("X-Big", tc.header)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s (header %d bytes) = %d, want %d", tc.method, len(tc.header), resp.StatusCode, tc.want)
		}
	}
}

// Connections that never finish their headers: at most MaxConns are served at once (the rest
// wait in the kernel's backlog), the goroutines stay bounded and come back when they leave.
func TestSlowClients(t *testing.T) {
	addr := serve(t)
	base := runtime.NumGoroutine()
	var conns []net.Conn
	for range 10 * MaxConns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n") // never ends
		conns = append(conns, c)
	}
	peak := 0
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
		peak = max(peak, runtime.NumGoroutine()-base)
		time.Sleep(20 * time.Millisecond) // sampling, not synchronisation
	}
	if limit := 3*MaxConns + 4; peak > limit {
		t.Errorf("%d slow connections: %d more goroutines, want at most %d", len(conns), peak, limit)
	}
	for _, c := range conns {
		c.Close()
	}
	deadline := time.Now().Add(15 * time.Second)
	for runtime.NumGoroutine() > base+2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base+2 {
		t.Errorf("%d goroutines after the slow clients left, want about %d", n, base)
	}
	t.Logf("%d slow connections: at most %d goroutines more", len(conns), peak)
}
