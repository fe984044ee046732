package stats

import (
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	is "github.com/goambient/goambient/filters/istiostats"
)

func serve(t *testing.T) (string, *Prometheus) {
	t.Helper()
	reg := prometheus.NewRegistry()
	p, err := NewPrometheus(reg, 3)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := Server(reg)
	go Serve(hs, ln)
	t.Cleanup(func() { hs.Close() })
	return ln.Addr().String(), p
}

// The listener serves only GET/HEAD of the two paths and refuses large headers.
func TestListenerReadOnly(t *testing.T) {
	addr, p := serve(t)
	p.Record(&is.Labels{ResponseCode: "200"}, time.Millisecond, 1, 2)
	c := &http.Client{Timeout: 10 * time.Second}
	for _, tc := range []struct {
		method, path string
		header       string
		want         int
	}{
		{"GET", "/stats/prometheus", "", 200},
		{"HEAD", "/metrics", "", 200},
		{"POST", "/stats/prometheus", "", 405},
		{"GET", "/debug/pprof/", "", 404},
		{"GET", "/stats/prometheus", strings.Repeat("a", 2*MaxHeaderBytes), 431},
	} {
		req, _ := http.NewRequest(tc.method, "http://"+addr+tc.path, nil)
		if tc.header != "" {
			req.Header.Set("X-Big", tc.header)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s = %d, want %d", tc.method, tc.path, resp.StatusCode, tc.want)
		}
		if tc.want == 200 && tc.method == "GET" && !strings.Contains(string(body), `istio_requests_total{`) {
			t.Errorf("GET %s lacks istio_requests_total:\n%s", tc.path, body)
		}
	}
}

// Connections that never finish their headers: the server holds at most MaxConns of them (the
// rest wait in the kernel's backlog), its goroutines stay bounded, and come back once they go.
func TestListenerSlowClients(t *testing.T) {
	addr, _ := serve(t)
	base := runtime.NumGoroutine()
	var conns []net.Conn
	for range 10 * MaxConns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET /stats/prometheus HTTP/1.1\r\nHost: x\r\n") // never ends
		conns = append(conns, c)
	}
	deadline := time.Now().Add(5 * time.Second)
	peak := 0
	for time.Now().Before(deadline) {
		peak = max(peak, runtime.NumGoroutine()-base)
		time.Sleep(20 * time.Millisecond) // sampling, not synchronisation
	}
	// Each served connection: its conn goroutine and a background read; the accept loop.
	if limit := 3*MaxConns + 4; peak > limit {
		t.Errorf("%d slow connections: %d more goroutines, want at most %d", len(conns), peak, limit)
	}
	for _, c := range conns {
		c.Close()
	}
	deadline = time.Now().Add(15 * time.Second)
	for runtime.NumGoroutine() > base+2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base+2 {
		t.Errorf("%d goroutines after the slow clients left, want about %d", n, base)
	}
	t.Logf("%d slow connections: at most %d goroutines more", len(conns), peak)
}

// Label sets past the bound are counted, not kept.
func TestMaxSeries(t *testing.T) {
	_, p := serve(t)
	for i := range 10 {
		p.Record(&is.Labels{ResponseCode: string(rune('a' + i))}, time.Millisecond, 0, 0)
	}
	if len(p.seen) != 3 {
		t.Errorf("%d label sets kept, want 3", len(p.seen))
	}
}
