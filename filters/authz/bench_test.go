package authz_test

import (
	"net/http/httptest"
	"testing"
	"time"

	"github.com/envoyproxy/envoy/contrib/golang/common/go/api"

	"github.com/goambient/goambient/filters/authz"
	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/envoytest"
	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/policies/policytest"
)

// BenchmarkFilter100Policies runs one request through the filter on the fake host, with 100
// policies attached to the waypoint, every one applying (policytest's namespace-wide set, the
// worst case). In the same run it measures two baselines on the same request: the engine's
// Evaluate alone, and the fake host running a pass-through filter. It reports
//
//	x_engine          filter+host time / engine time
//	x_engine_net      (filter+host − host) time / engine time: what the filter adds to the engine
//	engine_ns, host_ns, net_allocs (allocations of filter+host minus those of the host alone)
func BenchmarkFilter100Policies(b *testing.B) {
	yaml, engine, req, err := policytest.WaypointBenchSet(100)
	if err != nil {
		b.Fatal(err)
	}
	var d policies.Decision

	// The filter on the fake host.
	h := envoytest.NewHost(nil)
	a, err := authzconfig.EncodeConfig(&authzconfig.Config{Namespace: "bench", Gateway: "waypoint", GatewayClass: "istio-waypoint", Policies: yaml})
	if err != nil {
		b.Fatal(err)
	}
	cfg, err := h.Parse(plugin, a)
	if err != nil {
		b.Fatal(err)
	}
	ra, _ := authzconfig.EncodeRoute(&authzconfig.Route{Service: "web", ServiceNamespace: "bench"})
	rc, err := h.ParseRoute(plugin, ra)
	if err != nil {
		b.Fatal(err)
	}
	merged := h.Merge(plugin, cfg, rc)
	hr := httptest.NewRequest("GET", "http://"+req.Host+req.Path, nil)
	for k, v := range req.Headers {
		hr.Header.Set(k, v)
	}
	stream := envoytest.Stream{
		FilterState:             map[string]string{authzconfig.PeerPrincipalKey: "spiffe://" + req.Principal},
		DownstreamRemoteAddress: req.SourceIP.String() + ":40000",
		DownstreamLocalAddress:  req.SourceIP.String() + ":8080",
	}
	if resp := h.Do(plugin, merged, hr, stream); !resp.Continued {
		b.Fatalf("filter: the benchmark request must be allowed: %+v", resp.LocalReply)
	}
	passThrough := envoytest.Plugin{Name: "passthrough", Parser: plugin.Parser,
		Factory: func(any, api.FilterCallbackHandler) api.StreamFilter { return &api.PassThroughStreamFilter{} }}

	engineNs := nsPerOp(func() { engine.Evaluate(&req, &d) })
	engineAllocs := testing.AllocsPerRun(100, func() { engine.Evaluate(&req, &d) })
	hostNs := nsPerOp(func() { h.Do(passThrough, merged, hr, stream) })
	hostAllocs := testing.AllocsPerRun(100, func() { h.Do(passThrough, merged, hr, stream) })
	filterAllocs := testing.AllocsPerRun(100, func() { h.Do(plugin, merged, hr, stream) })

	b.ReportAllocs()
	for b.Loop() {
		h.Do(plugin, merged, hr, stream)
	}
	perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(perOp/engineNs, "x_engine")
	b.ReportMetric((perOp-hostNs)/engineNs, "x_engine_net")
	b.ReportMetric(engineNs, "engine_ns")
	b.ReportMetric(hostNs, "host_ns")
	b.ReportMetric(filterAllocs-hostAllocs, "net_allocs")
	b.ReportMetric(engineAllocs, "engine_allocs")
}

// BenchmarkDecodeHeaders100Policies is the filter alone on the same request and policies:
// Factory and DecodeHeaders with minimal callbacks (no fake-host overhead), against the
// engine's Evaluate measured in the same run (x_engine).
func BenchmarkDecodeHeaders100Policies(b *testing.B) {
	yaml, engine, req, err := policytest.WaypointBenchSet(100)
	if err != nil {
		b.Fatal(err)
	}
	var d policies.Decision
	engineNs := nsPerOp(func() { engine.Evaluate(&req, &d) })

	h := envoytest.NewHost(nil)
	a, _ := authzconfig.EncodeConfig(&authzconfig.Config{Namespace: "bench", Gateway: "waypoint", GatewayClass: "istio-waypoint", Policies: yaml})
	cfg, err := h.Parse(plugin, a)
	if err != nil {
		b.Fatal(err)
	}
	ra, _ := authzconfig.EncodeRoute(&authzconfig.Route{Service: "web", ServiceNamespace: "bench"})
	rc, _ := h.ParseRoute(plugin, ra)
	merged := h.Merge(plugin, cfg, rc)
	hm := &benchHeaders{h: map[string]string{":method": req.Method, ":path": req.Path, ":authority": req.Host, ":scheme": "http"}}
	for k, v := range req.Headers {
		hm.h[k] = v
	}
	cb := &benchCallbacks{si: benchStreamInfo{
		state:  map[string]string{authzconfig.PeerPrincipalKey: "spiffe://" + req.Principal},
		local:  req.SourceIP.String() + ":8080",
		remote: req.SourceIP.String() + ":40000",
	}}
	if st := authz.Factory(merged, cb).DecodeHeaders(hm, true); st != api.Continue {
		b.Fatalf("the benchmark request must be allowed: status %d, details %q", st, cb.dec.details)
	}
	b.ReportAllocs()
	for b.Loop() {
		authz.Factory(merged, cb).DecodeHeaders(hm, true)
	}
	perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(perOp/engineNs, "x_engine")
	b.ReportMetric(engineNs, "engine_ns")
}

// Minimal callbacks for BenchmarkDecodeHeaders100Policies: only what the filter calls on an
// allowed request without JWT policies. Other methods are the nil embedded interface's.
type benchCallbacks struct {
	api.FilterCallbackHandler
	dec benchDecoder
	si  benchStreamInfo
}

func (c *benchCallbacks) StreamInfo() api.StreamInfo                         { return c.si }
func (c *benchCallbacks) DecoderFilterCallbacks() api.DecoderFilterCallbacks { return &c.dec }
func (c *benchCallbacks) Log(api.LogType, string)                            {}

type benchDecoder struct {
	api.DecoderFilterCallbacks
	details string
}

func (c *benchDecoder) SendLocalReply(_ int, _ string, _ map[string][]string, _ int64, details string) {
	c.details = details
}

type benchStreamInfo struct {
	api.StreamInfo
	state         map[string]string
	local, remote string
}

func (s benchStreamInfo) FilterState() api.FilterState               { return benchState(s.state) }
func (s benchStreamInfo) DownstreamLocalAddress() string             { return s.local }
func (s benchStreamInfo) DownstreamRemoteAddress() string            { return s.remote }
func (s benchStreamInfo) DownstreamSslConnection() api.SslConnection { return nil }

type benchState map[string]string

func (m benchState) GetString(k string) string                                                { return m[k] }
func (m benchState) SetString(string, string, api.StateType, api.LifeSpan, api.StreamSharing) {}

type benchHeaders struct {
	api.RequestHeaderMap
	h map[string]string
}

func (m *benchHeaders) Method() string { return m.h[":method"] }
func (m *benchHeaders) Path() string   { return m.h[":path"] }
func (m *benchHeaders) Host() string   { return m.h[":authority"] }
func (m *benchHeaders) Range(f func(k, v string) bool) {
	for k, v := range m.h {
		if !f(k, v) {
			return
		}
	}
}

// nsPerOp times f over doubling batches until one takes at least 100ms (testing.Benchmark
// cannot be called from inside a benchmark: it would wait for the running one).
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
