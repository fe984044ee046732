// Command probe is a test-only Envoy Go filter library (abihost.probe) that drives the parts of the ABI the authz filter does not use, so that filters/abihost's tests can check the C host's side of them.
package main

import (
	"fmt"
	"sort"
	"strings"

	"github.com/envoyproxy/envoy/contrib/golang/common/go/api"
	"github.com/envoyproxy/envoy/contrib/golang/filters/http/source/go/pkg/http"
	"google.golang.org/protobuf/types/known/anypb"
)

func init() {
	http.RegisterHttpFilterFactoryAndConfigParser("abihost.probe", factory, parser{})
}

func main() {}

type config struct {
	requests api.CounterMetric
	inFlight api.GaugeMetric
}

type parser struct{}

func (parser) Parse(_ *anypb.Any, cb api.ConfigCallbackHandler) (any, error) {
	if cb == nil {
		return &config{}, nil
	}
	return &config{requests: cb.DefineCounterMetric("probe.requests"), inFlight: cb.DefineGaugeMetric("probe.in_flight")}, nil
}

func (parser) Merge(parent, _ any) any { return parent }

func factory(c any, cb api.FilterCallbackHandler) api.StreamFilter {
	return &filter{cb: cb, cfg: c.(*config)}
}

type filter struct {
	api.PassThroughStreamFilter
	cb   api.FilterCallbackHandler
	cfg  *config
	mode string
}

// report answers the request with what the filter saw, one "key=value" per line.
func (f *filter) report(code int, details string, lines ...string) api.StatusType {
	f.cb.DecoderFilterCallbacks().SendLocalReply(code, strings.Join(lines, "\n"), map[string][]string{"x-probe": {f.mode}, "x-empty": {""}}, 0, details)
	return api.LocalReply
}

func prop(cb api.FilterCallbackHandler, key string) string {
	v, err := cb.GetProperty(key)
	if err != nil {
		return key + "!" + err.Error()
	}
	return key + "=" + v
}

func (f *filter) DecodeHeaders(h api.RequestHeaderMap, end bool) api.StatusType {
	f.cfg.requests.Increment(1)
	f.cfg.inFlight.Increment(1)
	f.mode, _ = h.Get("x-probe")
	si := f.cb.StreamInfo()
	switch f.mode {
	case "headers":
		h.Set("x-set", "1")
		h.Add("x-add", "a")
		h.Add("x-add", "b")
		h.Del("x-del")
		si.FilterState().SetString("probe.key", "probe-value", api.StateTypeReadOnly, api.LifeSpanRequest, api.None)
		proto, _ := si.Protocol()
		var keys []string
		h.Range(func(k, v string) bool { keys = append(keys, k+":"+v); return true })
		sort.Strings(keys)
		var sans []string
		if ssl := si.DownstreamSslConnection(); ssl != nil {
			sans = ssl.UriSanPeerCertificate()
		}
		_, hasCode := si.ResponseCode()
		return f.report(200, "probe_headers",
			"raw="+h.GetRaw("x-in"),
			"headers="+strings.Join(keys, ","),
			"state="+si.FilterState().GetString("probe.key"),
			"missing_state="+si.FilterState().GetString("nope"),
			"protocol="+proto,
			"local="+si.DownstreamLocalAddress(),
			"remote="+si.DownstreamRemoteAddress(),
			"route="+si.GetRouteName(),
			fmt.Sprintf("sans=%q", sans),
			fmt.Sprintf("response_code_before_reply=%v", hasCode),
			prop(f.cb, "request.method"), prop(f.cb, "request.url_path"), prop(f.cb, "source.port"),
			prop(f.cb, "connection.mtls"), prop(f.cb, "request.headers"), prop(f.cb, "no.such.attribute"),
			fmt.Sprintf("requests=%d", f.cfg.requests.Get()),
		)
	case "mutate":
		h.Set("x-set", "1")
		h.Add("x-add", "b")
		h.Del("x-del")
		return api.Continue
	case "async":
		go func() {
			defer f.cb.DecoderFilterCallbacks().RecoverPanic()
			h.Set("x-async", si.FilterState().GetString("io.istio.peer_principal"))
			f.cb.DecoderFilterCallbacks().Continue(api.Continue)
		}()
		return api.Running
	case "async-reply":
		go func() {
			defer f.cb.DecoderFilterCallbacks().RecoverPanic()
			f.report(418, "probe_async_reply", "async")
		}()
		return api.Running
	case "panic":
		panic("probe panic")
	case "body":
		if end {
			return f.report(400, "probe_no_body", "no body")
		}
		return api.StopAndBuffer
	case "trailers":
		return api.Continue
	}
	return api.Continue
}

func (f *filter) DecodeData(b api.BufferInstance, end bool) api.StatusType {
	if f.mode != "body" {
		return api.Continue
	}
	before := b.String()
	b.AppendString(">")
	b.PrependString("<")
	after := b.String()
	b.SetString(strings.ToUpper(before))
	return f.report(200, "probe_body", "before="+before, "after="+after, fmt.Sprintf("end=%v", end), "set="+b.String(), fmt.Sprintf("len=%d", b.Len()))
}

func (f *filter) DecodeTrailers(t api.RequestTrailerMap) api.StatusType {
	v, _ := t.Get("x-trailer")
	t.Set("x-trailer-seen", v)
	seen, _ := t.Get("x-trailer-seen")
	return f.report(200, "probe_trailers", "trailer="+v, "seen="+seen)
}

func (f *filter) OnLog(req api.RequestHeaderMap, _ api.RequestTrailerMap, resp api.ResponseHeaderMap, _ api.ResponseTrailerMap) {
	code, _ := f.cb.StreamInfo().ResponseCode()
	details, _ := f.cb.StreamInfo().ResponseCodeDetails()
	status := ""
	if resp != nil {
		status, _ = resp.Get(":status")
	}
	f.cb.Log(api.Info, fmt.Sprintf("onlog mode=%s code=%d details=%s resp_status=%s method=%s", f.mode, code, details, status, req.Method()))
}

func (f *filter) OnDestroy(r api.DestroyReason) {
	f.cfg.inFlight.Increment(-1)
	if r != api.Normal {
		f.cb.Log(api.Warn, fmt.Sprintf("ondestroy reason=%d", r))
	}
}
