package app

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/goambient/goambient/filters/istiostats"
	"github.com/goambient/goambient/internal/promtext"
)

// scrape reads the waypoint's /stats/prometheus as Prometheus would.
func scrape(t testing.TB, w *waypoint) []promtext.Sample {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + w.wp.MetricsAddr().String() + "/stats/prometheus")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/stats/prometheus: %s", resp.Status)
	}
	s, err := promtext.Parse(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRequestMetrics: handson's step 3 through the embedded waypoint with its metrics listener:
// istio_requests_total and the three histograms carry Istio's full label set with
// reporter="waypoint", the source from the forwarded address (the curl pod) and the HBONE peer,
// the destination Service and the endpoint (handson-blue), mTLS, and the 403s in response_code
// (no destination workload: the request never reached one). Peers: the real HBONE client and
// server, xdsserver's translation served by go-control-plane, a loopback app.
func TestRequestMetrics(t *testing.T) {
	f := setup(t, wpConfig{metrics: true})
	f.configure(t, true)
	eventually(t, "readiness 200", func() bool { return f.ready() == http.StatusOK })
	s := f.connect(t, "curl")
	if code, _ := s.do(t, "GET", "/", ""); code != 200 {
		t.Fatalf("GET / = %d", code)
	}
	for range 2 {
		if code, _ := s.do(t, "POST", "/", "{}"); code != 403 {
			t.Fatalf("POST / = %d", code)
		}
	}
	want := map[string]float64{
		`reporter=waypoint source_workload=curl source_workload_namespace=handson source_principal=spiffe://cluster.local/ns/handson/sa/curl ` +
			`source_app=curl destination_service=handson.handson.svc.cluster.local destination_service_name=handson destination_service_namespace=handson ` +
			`destination_workload=handson-blue destination_workload_namespace=handson destination_principal=spiffe://cluster.local/ns/handson/sa/handson ` +
			`destination_app=handson destination_version=blue response_code=200 response_flags=- connection_security_policy=mutual_tls request_protocol=http`: 1,
		`reporter=waypoint source_workload=curl source_principal=spiffe://cluster.local/ns/handson/sa/curl destination_service=handson.handson.svc.cluster.local ` +
			`destination_workload=unknown response_code=403 connection_security_policy=mutual_tls`: 2,
	}
	samples := scrape(t, f.waypoint)
	var got []promtext.Sample
	for _, smp := range samples {
		if smp.Name == istiostats.RequestsTotal {
			got = append(got, smp)
			if len(smp.Labels) != len(istiostats.LabelNames)-1 { // grpc_response_status is empty, so absent
				t.Errorf("%s has %d labels, want %d (all but the empty grpc_response_status)", smp.Key(), len(smp.Labels), len(istiostats.LabelNames)-1)
			}
		}
	}
	for w, n := range want {
		found := false
		for _, smp := range got {
			if matches(smp.Labels, w) {
				found = true
				if smp.Value != n {
					t.Errorf("%s = %v, want %v", smp.Key(), smp.Value, n)
				}
			}
		}
		if !found {
			t.Errorf("no istio_requests_total series with %s; got:\n%v", w, got)
		}
	}
	// The histograms: Istio's buckets, one series set per label set.
	for _, name := range []string{istiostats.RequestDuration, istiostats.RequestBytes, istiostats.ResponseBytes} {
		buckets := 0
		for _, smp := range samples {
			if smp.Name == name+"_bucket" && smp.Labels["response_code"] == "200" {
				buckets++
			}
		}
		if buckets != len(istiostats.Buckets)+1 {
			t.Errorf("%s_bucket for the 200: %d series, want %d (Istio's buckets and +Inf)", name, buckets, len(istiostats.Buckets)+1)
		}
	}
}

// matches reports whether labels has every k=v of want (space separated).
func matches(labels map[string]string, want string) bool {
	for _, kv := range strings.Fields(want) {
		k, v, _ := strings.Cut(kv, "=")
		if labels[k] != v {
			return false
		}
	}
	return true
}
