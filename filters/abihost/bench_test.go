package abihost_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/envoytest"
	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/policies/policytest"
)

// BenchmarkABI100Policies: filters/authz's benchmark request (100 waypoint policies that all
// apply, allowed) through the real cgo boundary — host.c driving filters.so, timed in C with
// CLOCK_MONOTONIC over b.N requests (headers, complete, log, destroy) — and, in the same run,
// the same request through the boundary with a pass-through filter (an unregistered plugin_name),
// through envoytest in-process, and the engine alone.
func BenchmarkABI100Policies(b *testing.B) {
	yaml, engine, req, err := policytest.WaypointBenchSet(100)
	if err != nil {
		b.Fatal(err)
	}
	var d policies.Decision

	a, err := authzconfig.EncodeConfig(&authzconfig.Config{Namespace: "bench", Gateway: "waypoint", GatewayClass: "istio-waypoint", Policies: yaml})
	if err != nil {
		b.Fatal(err)
	}
	ra, _ := authzconfig.EncodeRoute(&authzconfig.Route{Service: "web", ServiceNamespace: "bench"})
	c := call{name: "bench", method: http.MethodGet, url: "http://" + req.Host + req.Path, headers: req.Headers, stream: envoytest.Stream{
		FilterState:             map[string]string{authzconfig.PeerPrincipalKey: "spiffe://" + req.Principal},
		DownstreamRemoteAddress: req.SourceIP.String() + ":40000",
		DownstreamLocalAddress:  req.SourceIP.String() + ":8080",
	}}

	oh := envoytest.NewHost(nil)
	ocfg, err := oh.Parse(plugin, a)
	if err != nil {
		b.Fatal(err)
	}
	orc, err := oh.ParseRoute(plugin, ra)
	if err != nil {
		b.Fatal(err)
	}
	merged := oh.Merge(plugin, ocfg, orc)
	hr := c.request()
	if resp := oh.Do(plugin, merged, hr, c.stream); !resp.Continued {
		b.Fatalf("envoytest: the benchmark request must be allowed: %+v", resp.LocalReply)
	}

	// Log level critical: the pass-through plugin's "not found" error line is not printed.
	h := startHost(b, "HOST_LOG_LEVEL=5")
	if !h.config("w", authzconfig.PluginName, a) || !h.route("r", ra) || !h.config("pass", "goambient.bench-passthrough", a) {
		b.Fatalf("config rejected: %q", h.takeLogs())
	}
	if got := h.do(c, "w", "r"); got.kind != "continued" {
		b.Fatalf("host: the benchmark request must be allowed: %s", got.line)
	}
	bench := func(cfg, route string, n int) float64 {
		h.send(append([]string{"bench", strconv.Itoa(n)}, c.fields(b, cfg, route)...)...)
		f := h.expect("bench")
		ns, _ := strconv.ParseFloat(strings.TrimPrefix(f[2], "ns="), 64)
		if !strings.HasPrefix(f[3], "continued="+strconv.Itoa(n)) {
			b.Fatalf("bench: not every request continued: %q", f)
		}
		return ns / float64(n)
	}

	engineNs := nsPerOp(func() { engine.Evaluate(&req, &d) })
	envoytestNs := nsPerOp(func() { oh.Do(plugin, merged, hr, c.stream) })
	passNs := bench("pass", "", max(b.N, 1000))

	b.ResetTimer()
	abiNs := bench("w", "r", b.N)
	b.StopTimer()
	b.ReportMetric(abiNs, "abi_ns")
	b.ReportMetric(passNs, "abi_passthrough_ns")
	b.ReportMetric(envoytestNs, "envoytest_ns")
	b.ReportMetric(engineNs, "engine_ns")
	b.ReportMetric(abiNs/envoytestNs, "x_envoytest")
	b.ReportMetric(abiNs/engineNs, "x_engine")
	b.ReportMetric((abiNs-passNs)/engineNs, "x_engine_net")
}

// nsPerOp times f over at least 100 ms (as filters/authz's benchmark does).
func nsPerOp(f func()) float64 {
	for n := 1; ; n *= 2 {
		start := time.Now()
		for range n {
			f()
		}
		if d := time.Since(start); d >= 100*time.Millisecond || n >= 1<<24 {
			return float64(d.Nanoseconds()) / float64(n)
		}
	}
}
