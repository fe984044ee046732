package proxy

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/proxy"

	"github.com/goambient/goambient/internal/promtext"
	"github.com/goambient/goambient/ztunnel/hbone"
)

// tcpSeries reads the proxy's istio_tcp_connections_opened_total series.
func tcpSeries(t *testing.T, tp *testProxy) []promtext.Sample {
	t.Helper()
	rec := httptest.NewRecorder()
	tp.p.Metrics().Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/stats/prometheus", nil))
	all, err := promtext.Parse(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out []promtext.Sample
	for _, s := range all {
		if s.Name == "istio_tcp_connections_opened_total" {
			out = append(out, s)
		}
	}
	return out
}

// hasSeries reports whether one of ss has every k=v of want.
func hasSeries(ss []promtext.Sample, want string) bool {
	for _, s := range ss {
		if matches(s.Labels, want) {
			return true
		}
	}
	return false
}

func matches(labels map[string]string, want string) bool {
	for _, kv := range strings.Fields(want) {
		k, v, _ := strings.Cut(kv, "=")
		if labels[k] != v {
			return false
		}
	}
	return true
}

const baggageState = `workloads:
- {uid: Kubernetes//Pod/a/sleep, name: sleep-1, namespace: a, serviceAccount: sleep, addresses: [%q], node: n1, tunnelProtocol: HBONE,
   workloadType: DEPLOYMENT, workloadName: sleep, canonicalName: sleep, canonicalRevision: v1, clusterId: Kubernetes}
- {uid: Kubernetes//Pod/b/app, name: app-1, namespace: b, serviceAccount: app, addresses: [%q], node: n1, tunnelProtocol: HBONE,
   workloadType: DEPLOYMENT, workloadName: app-v2, canonicalName: app, canonicalRevision: v2, clusterId: Kubernetes,
   locality: {region: r1, zone: z1}}
`

// TestBaggage: a connection from sleep to app through the ztunnel (SOCKS5 in, HBONE out to
// app's inbound on the same ztunnel). The CONNECT carries sleep's baggage with Istio ztunnel's
// keys, app's inbound answers with app's, and the source side labels its reporter="source"
// series from it as ztunnel's with_derived_destination does (destination_app is the workload
// name there). Peers: the real HBONE client and server, x/net's SOCKS5 client.
func TestBaggage(t *testing.T) {
	net3 := randomNet()
	sleep, app := net3+".11", net3+".12"
	startEcho(t, app, 7090)
	tp := startProxy(t, parseState(t, fmt.Sprintf(baggageState, sleep, app)), func(c *Config) {
		c.Listen = Listen{SOCKS5: "127.0.0.1:0"}
	})
	d, err := proxy.SOCKS5("tcp", tp.p.Addr("socks5").String(), nil, &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(sleep)}, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.Dial("tcp", app+":7090")
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintln(c, "hello")
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "hello\n" {
		t.Fatalf("echo through the ztunnel: %q %v", line, err)
	}
	c.Close()
	eventually(t, "both sides' connection lines", func() bool { return strings.Count(tp.logs.String(), "connection complete") >= 2 })
	series := tcpSeries(t, tp)
	for _, want := range []string{
		// The source's view: the destination from app's answer (derived), its principal verified.
		"reporter=source source_workload=sleep source_app=sleep destination_workload=app-v2 destination_app=app-v2 destination_canonical_service=app " +
			"destination_version=v2 destination_workload_namespace=b destination_cluster=Kubernetes destination_principal=spiffe://cluster.local/ns/b/sa/app",
		// The destination's view: both from its own state (the state wins over baggage).
		"reporter=destination source_workload=sleep source_app=sleep source_canonical_service=sleep source_version=v1 destination_app=app destination_workload=app-v2",
	} {
		if !hasSeries(series, want) {
			t.Errorf("no istio_tcp_connections_opened_total series with %s; got:\n%v", want, series)
		}
	}
}

// TestBaggageInbound: what an HBONE client sends and gets back: app's inbound answers with
// app's baggage (Istio ztunnel's keys and order); a source the state does not know is labelled
// from its baggage (ztunnel's with_derived_source: source_app is the workload name), with the
// principal from its certificate; hostile baggage (too long, too many members, bad bytes) is
// ignored within its bounds.
func TestBaggageInbound(t *testing.T) {
	net3 := randomNet()
	sleep, app := net3+".11", net3+".12"
	startEcho(t, app, 7090)
	tp := startProxy(t, parseState(t, fmt.Sprintf(baggageState, sleep, app)), nil)
	c, err := hbone.NewClient(hbone.ClientConfig{Bundle: tp.ca.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	svid, err := tp.ca.IssueSVID(spiffeid.RequireFromString("spiffe://cluster.local/ns/remote/sa/ghost"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(bag []hbone.KeyValue, from string) *hbone.Conn {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ip := netip.MustParseAddr(app)
		conn, err := c.Dial(ctx, hbone.Target{
			Source: svid, Address: netip.AddrPortFrom(ip, PortInboundHBONE), Authority: netip.AddrPortFrom(ip, 7090).String(),
			Identities: []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/b/sa/app")},
			SourceAddr: netip.MustParseAddrPort(from), Baggage: bag,
		})
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}
	conn := dial([]hbone.KeyValue{
		{Key: "k8s.cluster.name", Value: "east"}, {Key: "k8s.namespace.name", Value: "remote"},
		{Key: "k8s.deployment.name", Value: "ghost"}, {Key: "service.name", Value: "ghost-svc"}, {Key: "service.version", Value: "v9"},
	}, "10.9.9.9:40000")
	want := "k8s.cluster.name=Kubernetes,k8s.namespace.name=b,k8s.deployment.name=app-v2,service.name=app,service.version=v2,cloud.region=r1,cloud.availability_zone=z1"
	if got := conn.ResponseHeader().Get(hbone.HeaderBaggage); got != want {
		t.Errorf("app's answer baggage = %q, want %q", got, want)
	}
	conn.Close()
	eventually(t, "the inbound line", func() bool { return strings.Count(tp.logs.String(), "connection complete") >= 1 })
	if s := tcpSeries(t, tp); !hasSeries(s, "reporter=destination source_workload=ghost source_app=ghost source_canonical_service=ghost-svc "+
		"source_version=v9 source_workload_namespace=remote source_cluster=east source_principal=spiffe://cluster.local/ns/remote/sa/ghost destination_app=app") {
		t.Errorf("no series labelled from the source's baggage; got:\n%v", s)
	}

	for _, tc := range []struct {
		name string
		v    string
	}{
		{"too long", "k8s.deployment.name=" + strings.Repeat("x", maxBaggageLen)},
		{"member past the bound", strings.Repeat("junk=1,", maxBaggageMembers) + "k8s.deployment.name=late"},
		{"bad bytes", "k8s.deployment.name=a\"b,service.name=" + strings.Repeat("y", maxBaggageValue+1)},
	} {
		if d, ok := parseBaggage(tc.v); ok || d != (derivedWorkload{}) {
			t.Errorf("%s: parseBaggage = %+v, %v; want nothing", tc.name, d, ok)
		}
	}
}

// eventually polls cond for up to 10 s (readiness, not synchronisation).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestInboundServiceGuess: the destination's reporter="destination" series names the Service as
// Istio's ztunnel guesses it: the forwarded host among the workload's own Services, else the
// Service whose target port the connection is for; a host naming another Service is not taken.
func TestInboundServiceGuess(t *testing.T) {
	pod := randomNet() + ".14"
	startEcho(t, pod, 7091)
	tp := startProxy(t, parseState(t, fmt.Sprintf(`workloads:
- {uid: Kubernetes//Pod/b/app, name: app-1, namespace: b, serviceAccount: app, addresses: [%q], node: n1, tunnelProtocol: HBONE,
   services: {b/one.b.svc.cluster.local: {ports: [{servicePort: 80, targetPort: 7091}]}, b/two.b.svc.cluster.local: {ports: [{servicePort: 81, targetPort: 7091}]}}}
services:
- {name: one, namespace: b, hostname: one.b.svc.cluster.local, addresses: [{address: 10.96.0.1}], ports: [{servicePort: 80, targetPort: 7091}]}
- {name: two, namespace: b, hostname: two.b.svc.cluster.local, addresses: [{address: 10.96.0.2}], ports: [{servicePort: 81, targetPort: 7091}]}
- {name: other, namespace: b, hostname: other.b.svc.cluster.local, addresses: [{address: 10.96.0.3}], ports: [{servicePort: 82, targetPort: 7091}]}
`, pod)), nil)
	c, err := hbone.NewClient(hbone.ClientConfig{Bundle: tp.ca.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	svid, err := tp.ca.IssueSVID(spiffeid.RequireFromString("spiffe://cluster.local/ns/b/sa/client"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for i, host := range []string{"two.b.svc.cluster.local", "", "other.b.svc.cluster.local"} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ip := netip.MustParseAddr(pod)
		conn, err := c.Dial(ctx, hbone.Target{
			Source: svid, Address: netip.AddrPortFrom(ip, PortInboundHBONE), Authority: netip.AddrPortFrom(ip, 7091).String(),
			Identities: []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/b/sa/app")},
			SourceAddr: netip.MustParseAddrPort("10.9.9.9:40000"), Host: host,
		})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
		eventually(t, "the inbound line", func() bool { return strings.Count(tp.logs.String(), "connection complete") >= i+1 })
	}
	s := tcpSeries(t, tp)
	for _, want := range []string{"destination_service=two.b.svc.cluster.local", "destination_service=one.b.svc.cluster.local destination_service_name=one destination_service_namespace=b"} {
		if !hasSeries(s, "reporter=destination "+want) {
			t.Errorf("no series with %s; got:\n%v", want, s)
		}
	}
	if hasSeries(s, "destination_service=other.b.svc.cluster.local") {
		t.Error("a forwarded host naming another Service was taken")
	}
}
