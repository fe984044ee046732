package metrics

import (
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// scrape GETs path from h and returns the body, failing unless the answer is 200.
func scrape(t *testing.T, h http.Handler, path string) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET %s = %d", path, rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("GET %s: Content-Type %q, want the Prometheus text format", path, ct)
	}
	b, err := io.ReadAll(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// istioLines keeps the lines about istio_* metrics, HELP and TYPE included.
func istioLines(body string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "istio_") || strings.HasPrefix(l, "# HELP istio_") || strings.HasPrefix(l, "# TYPE istio_") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n") + "\n"
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s: scrape differs from the golden file (go test -update to accept)\n--- got\n%s--- want\n%s", path, got, want)
	}
}

// handson step 2: curl-allow (node worker) → handson-blue (node worker2) through the Service
// handson, over HBONE with mTLS.
func sourceLabels(client string) Labels {
	return Labels{
		SourceWorkload:          client,
		SourceCanonicalService:  client,
		SourceCanonicalRevision: "latest",
		SourceWorkloadNamespace: "handson",
		SourceApp:               client,
		SourceVersion:           "latest",
		SourceCluster:           "Kubernetes",

		DestinationService:          "handson.handson.svc.cluster.local",
		DestinationServiceNamespace: "handson",
		DestinationServiceName:      "handson",

		DestinationWorkload:          "handson-blue",
		DestinationCanonicalService:  "handson",
		DestinationCanonicalRevision: "blue",
		DestinationWorkloadNamespace: "handson",
		DestinationPrincipal:         "spiffe://cluster.local/ns/handson/sa/handson-blue",
		DestinationApp:               "handson",
		DestinationVersion:           "blue",
		DestinationCluster:           "Kubernetes",

		ConnectionSecurityPolicy: SecurityMutualTLS,
	}
}

// TestAllowedConnection: the source's ztunnel (outbound) and the destination's (inbound) both
// report one connection on which the client sent 80 bytes and the server answered 175.
func TestAllowedConnection(t *testing.T) {
	m := New()

	src := sourceLabels("curl-allow")
	src.Reporter = ReporterSource
	src.SourcePrincipal = "spiffe://cluster.local/ns/handson/sa/curl-allow"
	m.ConnOpened(src)
	// The source's workload sent the request (80) and received the response (175).
	m.ConnClosed(src, 80, 175)

	dst := src
	dst.Reporter = ReporterDestination
	c := m.Open(dst)
	// The destination's workload received the request and sent the response, in pieces.
	c.Received(30)
	c.Sent(100)
	c.Received(50)
	c.Sent(75)
	if sent, recv := c.Close(FlagNone); sent != 175 || recv != 80 {
		t.Errorf("Close = sent %d, recv %d; want 175, 80 (the access log's bytes_sent, bytes_recv)", sent, recv)
	}
	c.Close(FlagNone) // a second Close counts nothing

	body := scrape(t, m.Handler(), "/metrics")
	got := istioLines(body)
	golden(t, "allowed", got)

	// Istio's convention, whoever reports: received_bytes = request bytes (80),
	// sent_bytes = response bytes (175). Both reporters agree on the numbers.
	for _, r := range []string{"source", "destination"} {
		for metric, want := range map[string]string{
			"istio_tcp_received_bytes_total":     " 80",
			"istio_tcp_sent_bytes_total":         " 175",
			"istio_tcp_connections_opened_total": " 1",
			"istio_tcp_connections_closed_total": " 1",
		} {
			if !hasSeries(got, metric, `reporter="`+r+`"`, want) {
				t.Errorf("no %s{reporter=%q} with value%s", metric, r, want)
			}
		}
	}

	if other := scrape(t, m.Handler(), "/stats/prometheus"); istioLines(other) != got {
		t.Errorf("/stats/prometheus and /metrics differ:\n%s\n%s", istioLines(other), got)
	}
	for _, want := range []string{"\ngo_goroutines ", "\nprocess_start_time_seconds "} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q (Go and process collectors)", strings.TrimSpace(want))
		}
	}
}

// TestDeniedConnection: curl-deny is refused by handson/layer4-authz at the destination. As in
// ztunnel, the connection is counted opened (flag "-"), closed with DENY, and its byte series
// exist at 0 with flag "-".
func TestDeniedConnection(t *testing.T) {
	m := New()
	l := sourceLabels("curl-deny")
	l.Reporter = ReporterDestination
	l.SourcePrincipal = "spiffe://cluster.local/ns/handson/sa/curl-deny"
	l.ResponseFlags = FlagDeny // ignored by Open: the outcome is not known when it opens

	c := m.Open(l)
	if sent, recv := c.Close(FlagDeny); sent != 0 || recv != 0 {
		t.Errorf("Close = %d, %d; want 0, 0", sent, recv)
	}
	got := istioLines(scrape(t, m.Handler(), "/metrics"))
	golden(t, "denied", got)
	if !hasSeries(got, "istio_tcp_connections_closed_total", `response_flags="DENY"`, " 1") {
		t.Error("no closed connection with response_flags=DENY")
	}
	if !hasSeries(got, "istio_tcp_connections_opened_total", `response_flags="-"`, " 1") {
		t.Error("no opened connection with response_flags=-")
	}
}

// TestUnknownLabels: everything left empty is "unknown", with ztunnel's defaults for the rest.
func TestUnknownLabels(t *testing.T) {
	m := New()
	m.ConnFailed(Labels{ResponseFlags: FlagConnect})
	got := istioLines(scrape(t, m.Handler(), "/metrics"))
	want := `# HELP istio_tcp_connections_failed_total The total number of TCP connections that failed to establish (unstable)
# TYPE istio_tcp_connections_failed_total counter
istio_tcp_connections_failed_total{connection_security_policy="unknown",destination_app="unknown",destination_canonical_revision="unknown",destination_canonical_service="unknown",destination_cluster="unknown",destination_principal="unknown",destination_service="unknown",destination_service_name="unknown",destination_service_namespace="unknown",destination_version="unknown",destination_workload="unknown",destination_workload_namespace="unknown",reporter="source",request_protocol="tcp",response_flags="CONNECT",source_app="unknown",source_canonical_revision="unknown",source_canonical_service="unknown",source_cluster="unknown",source_principal="unknown",source_version="unknown",source_workload="unknown",source_workload_namespace="unknown"} 1
`
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// TestOwnRegistry: two instances do not share series, and nothing lands in the global registry.
func TestOwnRegistry(t *testing.T) {
	a, b := New(), New()
	a.ConnOpened(Labels{})
	if strings.Contains(scrape(t, b.Handler(), "/metrics"), "istio_tcp_connections_opened_total{") {
		t.Error("a connection counted in one instance shows in another")
	}
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("GET / = %d, want 404", rec.Code)
	}
}

func hasSeries(text, metric, label, value string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, metric+"{") && strings.Contains(l, label) && strings.HasSuffix(l, "}"+value) {
			return true
		}
	}
	return false
}

func TestLabelNamesMatchValues(t *testing.T) {
	var l Labels
	if got, want := len(l.values()), len(labelNames); got != want {
		t.Fatalf("%d values for %d label names", got, want)
	}
}

// Label sets past MaxLabelSets (a peer naming a new workload in its baggage on every
// connection) are counted in the overflow counter, not kept as series.
func TestMaxLabelSets(t *testing.T) {
	m := New()
	for i := range MaxLabelSets + 50 {
		c := m.Open(Labels{Reporter: ReporterDestination, SourceWorkload: "w" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + strconv.Itoa(i)})
		c.Received(10)
		if sent, recv := c.Close(FlagNone); recv != 10 || sent != 0 {
			t.Fatalf("byte totals %d/%d, want 0/10 (kept for the access log even when not counted)", sent, recv)
		}
	}
	if n := len(m.sets); n != MaxLabelSets {
		t.Errorf("%d label sets kept, want %d", n, MaxLabelSets)
	}
	if body := scrape(t, m.Handler(), "/metrics"); !strings.Contains(body, "goambient_tcp_metrics_overflow_total 50") {
		t.Errorf("overflow not counted:\n%s", body[:min(len(body), 2000)])
	}
}
