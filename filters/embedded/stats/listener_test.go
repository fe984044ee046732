package stats

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	is "github.com/goambient/goambient/filters/istiostats"
	"github.com/goambient/goambient/internal/metricshttp"
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
		{"GET", "/stats/prometheus", strings.Repeat("a", 2*metricshttp.MaxHeaderBytes), 431},
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
