package envoytest_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/envoyproxy/envoy/contrib/golang/common/go/api"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/goambient/goambient/filters/envoytest"
)

// probe is a filter whose DecodeHeaders is the test's function.
type probe struct {
	api.PassThroughStreamFilter
	cb     api.FilterCallbackHandler
	decode func(cb api.FilterCallbackHandler, h api.RequestHeaderMap) api.StatusType
	data   func(cb api.FilterCallbackHandler, b api.BufferInstance) api.StatusType
}

func (p *probe) DecodeHeaders(h api.RequestHeaderMap, _ bool) api.StatusType {
	return p.decode(p.cb, h)
}
func (p *probe) DecodeData(b api.BufferInstance, _ bool) api.StatusType {
	if p.data == nil {
		return api.Continue
	}
	return p.data(p.cb, b)
}

func plugin(decode func(api.FilterCallbackHandler, api.RequestHeaderMap) api.StatusType) envoytest.Plugin {
	return envoytest.Plugin{Name: "probe", Factory: func(_ any, cb api.FilterCallbackHandler) api.StreamFilter {
		return &probe{cb: cb, decode: decode}
	}}
}

func TestHeaderMapIsEnvoys(t *testing.T) {
	h := envoytest.NewHost(nil)
	req := httptest.NewRequest("GET", "http://example.com:8080/a/b?x=1", nil)
	req.Header.Add("X-Multi", "1")
	req.Header.Add("X-Multi", "2")
	req.Header.Set("Content-Type", "text/plain")
	var seen map[string][]string
	resp := h.Do(plugin(func(_ api.FilterCallbackHandler, hm api.RequestHeaderMap) api.StatusType {
		if hm.Method() != "GET" || hm.Path() != "/a/b?x=1" || hm.Host() != "example.com:8080" || hm.Scheme() != "http" {
			t.Errorf("pseudo-headers: %s %s %s %s", hm.Method(), hm.Path(), hm.Host(), hm.Scheme())
		}
		if v, ok := hm.Get("X-MULTI"); !ok || v != "1" {
			t.Errorf("Get of a repeated header = %q, %v; want the first", v, ok)
		}
		if got := hm.Values("x-multi"); !slices.Equal(got, []string{"1", "2"}) {
			t.Errorf("Values = %q", got)
		}
		if _, ok := hm.Get("host"); ok {
			t.Error("Host must be :authority only")
		}
		if hm.GetRaw("X-Multi") != "" || hm.GetRaw("x-multi") != "1" {
			t.Error("GetRaw is case-sensitive over lower-case keys")
		}
		hm.Set("X-Multi", "3")
		hm.Add("x-added", "a")
		hm.Add("X-Added", "b")
		hm.Del("Content-Type")
		hm.SetPath("/rewritten")
		n := 0
		hm.Range(func(k, v string) bool { n++; return true })
		if n != 7 { // :method :path :authority :scheme x-multi x-added×2
			t.Errorf("Range visited %d values, want 7", n)
		}
		seen = hm.GetAllHeaders()
		return api.Continue
	}), nil, req, envoytest.Stream{})
	if !resp.Continued {
		t.Fatalf("not continued: %+v", resp.LocalReply)
	}
	if !slices.Equal(seen["x-added"], []string{"a", "b"}) || seen["content-type"] != nil {
		t.Errorf("GetAllHeaders = %v", seen)
	}
	if resp.RequestHeaders.Get("X-Multi") != "3" || resp.RequestHeaders.Get(":path") != "/rewritten" {
		t.Errorf("headers after the filter: %v", resp.RequestHeaders)
	}
}

func TestLocalReplies(t *testing.T) {
	h := envoytest.NewHost(nil)
	deny := plugin(func(cb api.FilterCallbackHandler, _ api.RequestHeaderMap) api.StatusType {
		cb.DecoderFilterCallbacks().SendLocalReply(403, "no", map[string][]string{"X-Why": {"because"}, "X-Empty": {""}}, 7, "denied_here")
		return api.LocalReply
	})
	resp := h.Do(deny, nil, httptest.NewRequest("GET", "http://x/", nil), envoytest.Stream{})
	lr := resp.LocalReply
	if resp.Continued || lr == nil || lr.Status != 403 || lr.Body != "no" || lr.Details != "denied_here" ||
		lr.Headers["x-why"][0] != "because" || lr.Headers["x-empty"] != nil || lr.Headers["content-type"][0] != "text/plain" {
		t.Errorf("HTTP local reply = %+v", lr)
	}
	greq := httptest.NewRequest("POST", "http://x/pkg.S/M", strings.NewReader("x"))
	greq.Header.Set("Content-Type", "application/grpc+proto")
	lr = h.Do(deny, nil, greq, envoytest.Stream{}).LocalReply
	if lr.Status != 200 || lr.Body != "" || lr.Headers["grpc-status"][0] != "7" || lr.Headers["grpc-message"][0] != "no" || lr.FilterCode != 403 {
		t.Errorf("gRPC local reply = %+v", lr)
	}
}

func TestPanicIsEnvoys500(t *testing.T) {
	h := envoytest.NewHost(nil)
	p := plugin(func(api.FilterCallbackHandler, api.RequestHeaderMap) api.StatusType { panic("boom") })
	resp := h.Do(p, nil, httptest.NewRequest("GET", "http://x/", nil), envoytest.Stream{})
	if resp.LocalReply == nil || resp.LocalReply.Status != 500 || resp.LocalReply.Body != "error happened in filter\r\n" {
		t.Errorf("panic reply = %+v", resp.LocalReply)
	}
	if h.Counter("golang.panic_error") != 1 {
		t.Error("golang.panic_error not counted")
	}
}

func TestRunningThenContinueFromAGoroutine(t *testing.T) {
	h := envoytest.NewHost(nil)
	p := plugin(func(cb api.FilterCallbackHandler, hm api.RequestHeaderMap) api.StatusType {
		go func() {
			defer cb.DecoderFilterCallbacks().RecoverPanic()
			if hm.Path() == "/deny" {
				cb.DecoderFilterCallbacks().SendLocalReply(401, "", nil, 16, "async_deny")
				return
			}
			cb.DecoderFilterCallbacks().Continue(api.Continue)
		}()
		return api.Running
	})
	if resp := h.Do(p, nil, httptest.NewRequest("GET", "http://x/ok", nil), envoytest.Stream{}); !resp.Continued {
		t.Errorf("async Continue: %+v", resp.LocalReply)
	}
	if resp := h.Do(p, nil, httptest.NewRequest("GET", "http://x/deny", nil), envoytest.Stream{}); resp.Continued || resp.LocalReply.Details != "async_deny" {
		t.Errorf("async deny: %+v", resp.LocalReply)
	}
	// A filter that never resumes is cut off by the request's context.
	hang := plugin(func(api.FilterCallbackHandler, api.RequestHeaderMap) api.StatusType { return api.Running })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if resp := h.Do(hang, nil, httptest.NewRequest("GET", "http://x/", nil).WithContext(ctx), envoytest.Stream{}); resp.Continued || resp.LocalReply == nil {
		t.Errorf("hung filter: %+v", resp)
	}
}

func TestBodyIsDelivered(t *testing.T) {
	h := envoytest.NewHost(nil)
	var got string
	p := envoytest.Plugin{Name: "body", Factory: func(_ any, cb api.FilterCallbackHandler) api.StreamFilter {
		return &probe{cb: cb,
			decode: func(api.FilterCallbackHandler, api.RequestHeaderMap) api.StatusType { return api.StopAndBuffer },
			data: func(_ api.FilterCallbackHandler, b api.BufferInstance) api.StatusType {
				got = b.String()
				return api.Continue
			}}
	}}
	if resp := h.Do(p, nil, httptest.NewRequest("POST", "http://x/", strings.NewReader(`{"a":1}`)), envoytest.Stream{}); !resp.Continued || got != `{"a":1}` {
		t.Errorf("continued %v body %q", resp.Continued, got)
	}
}

func TestStreamInfo(t *testing.T) {
	h := envoytest.NewHost(nil)
	s := envoytest.Stream{
		FilterState:             map[string]string{"io.istio.peer_principal": "spiffe://td/ns/a/sa/b"},
		DownstreamRemoteAddress: "10.0.0.1:5000",
		DownstreamLocalAddress:  "10.96.0.1:8080",
		PeerURISANs:             []string{"spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa/c"},
		DynamicMetadata:         map[string]map[string]any{"envoy.filters.http.jwt_authn": {"payload": map[string]any{"iss": "i", "n": 3, "aud": []string{"x"}}}},
	}
	h.Do(plugin(func(cb api.FilterCallbackHandler, _ api.RequestHeaderMap) api.StatusType {
		si := cb.StreamInfo()
		if si.FilterState().GetString("io.istio.peer_principal") != "spiffe://td/ns/a/sa/b" || si.FilterState().GetString("other") != "" {
			t.Error("filter state")
		}
		si.FilterState().SetString("k", "v", api.StateTypeReadOnly, api.LifeSpanRequest, api.None)
		if si.FilterState().GetString("k") != "v" {
			t.Error("SetString")
		}
		if si.DownstreamRemoteAddress() != "10.0.0.1:5000" || si.DownstreamLocalAddress() != "10.96.0.1:8080" {
			t.Error("addresses")
		}
		if ssl := si.DownstreamSslConnection(); ssl == nil || len(ssl.UriSanPeerCertificate()) != 2 {
			t.Error("SSL connection")
		}
		p := si.DynamicMetadata().Get("envoy.filters.http.jwt_authn")["payload"].(map[string]any)
		if p["n"] != float64(3) || p["aud"].([]any)[0] != "x" {
			t.Errorf("metadata is not Struct-shaped: %#v", p)
		}
		if v, err := cb.GetProperty("connection.uri_san_peer_certificate"); err != nil || v != "spiffe://td/ns/a/sa/b" {
			t.Errorf("GetProperty uri san = %q, %v (Envoy returns the first)", v, err)
		}
		if v, err := cb.GetProperty("destination.port"); err != nil || v != "8080" {
			t.Errorf("destination.port = %q, %v", v, err)
		}
		if _, err := cb.GetProperty("request.headers"); !errors.Is(err, api.ErrSerializationFailure) {
			t.Errorf("maps: %v", err)
		}
		if _, err := cb.GetProperty("no.such"); !errors.Is(err, api.ErrValueNotFound) {
			t.Errorf("unknown: %v", err)
		}
		return api.Continue
	}), nil, httptest.NewRequest("GET", "http://x/", nil), s)
	h.Do(plugin(func(cb api.FilterCallbackHandler, _ api.RequestHeaderMap) api.StatusType {
		if cb.StreamInfo().DownstreamSslConnection() != nil {
			t.Error("plaintext stream has an SSL connection")
		}
		return api.Continue
	}), nil, httptest.NewRequest("GET", "http://x/", nil), envoytest.Stream{})
}

// TestUnregisteredPluginPassesThrough shows Envoy's fail-open trap: no factory, no filter.
func TestUnregisteredPluginPassesThrough(t *testing.T) {
	var logs bytes.Buffer
	h := envoytest.NewHost(slog.New(slog.NewTextHandler(&logs, nil)))
	resp := h.Do(envoytest.Plugin{Name: "typo"}, nil, httptest.NewRequest("GET", "http://x/", nil), envoytest.Stream{})
	if !resp.Continued || !strings.Contains(logs.String(), "plugin typo not found, pass through by default") {
		t.Errorf("continued %v, logs %q", resp.Continued, logs.String())
	}
}

type countingParser struct{}

func (countingParser) Parse(a *anypb.Any, cb api.ConfigCallbackHandler) (any, error) {
	if cb != nil {
		cb.DefineCounterMetric("parsed").Increment(1)
		cb.DefineGaugeMetric("g").Record(5)
	}
	var s wrapperspb.StringValue
	if err := a.UnmarshalTo(&s); err != nil {
		return nil, err
	}
	return s.Value, nil
}
func (countingParser) Merge(p, c any) any { return p.(string) + "+" + c.(string) }

func TestParseMergeAndMetrics(t *testing.T) {
	h := envoytest.NewHost(nil)
	p := envoytest.Plugin{Name: "p", Parser: countingParser{}}
	a, _ := anypb.New(wrapperspb.String("base"))
	r, _ := anypb.New(wrapperspb.String("route"))
	cfg, err := h.Parse(p, a)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := h.ParseRoute(p, r)
	if err != nil {
		t.Fatal(err)
	}
	if got := h.Merge(p, cfg, rc); got != "base+route" {
		t.Errorf("Merge = %v", got)
	}
	if h.Counter("parsed") != 1 || h.Gauge("g") != 5 || h.Counter("undefined") != 0 {
		t.Error("metrics: only the filter-level parse defines them")
	}
	if _, err := h.Parse(p, nil); err == nil {
		t.Error("an absent plugin_config is an empty Any")
	}
}

func TestLogsFollowTheLoggerLevel(t *testing.T) {
	var buf bytes.Buffer
	h := envoytest.NewHost(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	resp := h.Do(plugin(func(cb api.FilterCallbackHandler, _ api.RequestHeaderMap) api.StatusType {
		cb.Log(api.Debug, "dbg")
		cb.Log(api.Trace, "trc")
		api.LogInfof("package-level %d", 1)
		return api.Continue
	}), nil, httptest.NewRequest("GET", "http://x/", nil), envoytest.Stream{})
	if !slices.Equal(resp.Logs, []string{"debug: dbg"}) {
		t.Errorf("Logs = %q", resp.Logs)
	}
	if !strings.Contains(buf.String(), "package-level 1") {
		t.Errorf("api.LogInfof did not reach the host's logger: %q", buf.String())
	}
}

var _ = http.MethodGet
