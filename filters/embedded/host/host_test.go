package host

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/envoy/contrib/golang/common/go/api"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/goambient/goambient/filters/authz"
	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/envoytest"
)

const layer7 = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: layer7-authz, namespace: handson}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: handson}]
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/handson/sa/curl]}}]
    to: [{operation: {notMethods: [GET]}}]
`

func must(a *anypb.Any, err error) *anypb.Any {
	if err != nil {
		panic(err)
	}
	return a
}

// authzHost is filters/authz on the host, with handson's L7 policy merged with the Service's
// route config.
func authzHost(t testing.TB) (*Host, any) {
	t.Helper()
	h, err := New(Plugin{Name: authzconfig.PluginName, Factory: authz.Factory, Parser: authz.Parser{}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := h.Parse(must(authzconfig.EncodeConfig(&authzconfig.Config{Namespace: "handson", Gateway: "handson", Policies: layer7})))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := h.ParseRoute(must(authzconfig.EncodeRoute(&authzconfig.Route{Service: "handson", ServiceNamespace: "handson"})))
	if err != nil {
		t.Fatal(err)
	}
	return h, h.Merge(cfg, rc)
}

func request(method, path string, hdr http.Header) *Request {
	r := &Request{}
	if hdr == nil {
		hdr = http.Header{"User-Agent": {"curl/8"}, "Accept": {"*/*"}}
	}
	r.Reset(method, path, "handson:8080", "http", "HTTP/1.1", hdr)
	return r
}

func conn(principal string) Conn {
	return Conn{PeerPrincipal: principal, PeerPrincipalKey: authzconfig.PeerPrincipalKey,
		DownstreamRemoteAddress: "10.244.1.5:43210", DownstreamLocalAddress: "10.96.0.10:8080"}
}

// TestAuthzOnHost: handson step 3 through the production host, the same decisions as through
// the fake (filters/envoytest), which is the reference.
func TestAuthzOnHost(t *testing.T) {
	h, merged := authzHost(t)
	fake := envoytest.NewHost(nil)
	p := envoytest.Plugin{Name: authzconfig.PluginName, Factory: authz.Factory, Parser: authz.Parser{}}
	fcfg, _ := fake.Parse(p, must(authzconfig.EncodeConfig(&authzconfig.Config{Namespace: "handson", Gateway: "handson", Policies: layer7})))
	frc, _ := fake.ParseRoute(p, must(authzconfig.EncodeRoute(&authzconfig.Route{Service: "handson", ServiceNamespace: "handson"})))
	fmerged := fake.Merge(p, fcfg, frc)
	for _, tc := range []struct {
		method, principal string
		allowed           bool
	}{
		{"GET", "spiffe://cluster.local/ns/handson/sa/curl", true},
		{"POST", "spiffe://cluster.local/ns/handson/sa/curl", false},
		{"DELETE", "spiffe://cluster.local/ns/handson/sa/curl", false},
		{"POST", "spiffe://cluster.local/ns/handson/sa/curl-allow", true},
		{"POST", "", true},
	} {
		res := h.Decode(context.Background(), merged, request(tc.method, "/", nil), conn(tc.principal))
		ref := fake.Do(p, fmerged, httptest.NewRequest(tc.method, "http://handson:8080/", nil), envoytest.Stream{
			FilterState: map[string]string{authzconfig.PeerPrincipalKey: tc.principal}, DownstreamRemoteAddress: "10.244.1.5:43210", DownstreamLocalAddress: "10.96.0.10:8080",
		})
		if res.Continue != tc.allowed || ref.Continued != tc.allowed {
			t.Errorf("%s from %q: host continue=%v, fake continue=%v, want %v", tc.method, tc.principal, res.Continue, ref.Continued, tc.allowed)
		}
		if !tc.allowed {
			if res.Reply == nil || res.Reply.Status != 403 || res.Reply.Body != "RBAC: access denied" ||
				res.Reply.Details != "rbac_access_denied_matched_policy[ns[handson]-policy[layer7-authz]-rule[0]]" || res.Reply.Details != ref.LocalReply.Details {
				t.Errorf("%s: reply %+v (fake: %+v)", tc.method, res.Reply, ref.LocalReply)
			}
		}
	}
	if h.Counter("goambient_authz.denied") != 2 || h.Counter("goambient_authz.allowed") != 3 {
		t.Errorf("counters: denied %d allowed %d", h.Counter("goambient_authz.denied"), h.Counter("goambient_authz.allowed"))
	}
}

// testFilter does what its config says, to exercise the host's callbacks.
type testFilter struct {
	api.PassThroughStreamFilter
	cb   api.FilterCallbackHandler
	mode string
}

type testParser struct{}

func (testParser) Parse(a *anypb.Any, _ api.ConfigCallbackHandler) (any, error) { return a, nil }
func (testParser) Merge(p, c any) any                                           { return c }

func (f *testFilter) DecodeHeaders(h api.RequestHeaderMap, _ bool) api.StatusType {
	switch f.mode {
	case "panic":
		panic("boom")
	case "async":
		go func() {
			defer f.cb.DecoderFilterCallbacks().RecoverPanic()
			time.Sleep(time.Millisecond) // the filter's own work; the host waits for Continue
			h.Set("X-Added", "yes")
			f.cb.DecoderFilterCallbacks().Continue(api.Continue)
		}()
		return api.Running
	case "async-reply":
		go func() {
			f.cb.DecoderFilterCallbacks().SendLocalReply(429, "slow down", map[string][]string{"retry-after": {"1"}, "empty": {""}}, 8, "test_limited")
		}()
		return api.Running
	case "never":
		return api.Running
	case "reply":
		f.cb.DecoderFilterCallbacks().SendLocalReply(403, "no", nil, 7, "test_denied")
		return api.LocalReply
	case "lie":
		return api.LocalReply
	case "rewrite":
		h.SetPath("/rewritten")
		h.Del("accept")
		if v, _ := h.Get("User-Agent"); v != "curl/8" {
			panic("Get is not case-insensitive: " + v)
		}
		if f.cb.StreamInfo().FilterState().GetString(authzconfig.PeerPrincipalKey) != "spiffe://cluster.local/ns/a/sa/b" {
			panic("no peer principal")
		}
		return api.Continue
	}
	return api.Continue
}

func TestCallbacks(t *testing.T) {
	for _, tc := range []struct {
		mode, grpc      string
		cont            bool
		status          int
		details, header string
	}{
		{mode: "pass", cont: true},
		{mode: "panic", status: 500, details: ""},
		{mode: "async", cont: true, header: "x-added=yes"},
		{mode: "async-reply", status: 429, details: "test_limited", header: "retry-after=1"},
		{mode: "never", status: 504, details: "goambient_filter_never_resumed"},
		{mode: "reply", status: 403, details: "test_denied"},
		{mode: "reply", grpc: "yes", status: 200, details: "test_denied", header: "grpc-status=7"},
		{mode: "lie", status: 500, details: "goambient_filter_local_reply_without_reply"},
		{mode: "rewrite", cont: true},
	} {
		t.Run(tc.mode+tc.grpc, func(t *testing.T) {
			var f *testFilter
			h, err := New(Plugin{Name: "test", Parser: testParser{}, Factory: func(_ any, cb api.FilterCallbackHandler) api.StreamFilter {
				f = &testFilter{cb: cb, mode: tc.mode}
				return f
			}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			r := request("GET", "/", nil)
			c := conn("spiffe://cluster.local/ns/a/sa/b")
			c.GRPC = tc.grpc != ""
			res := h.Decode(ctx, nil, r, c)
			if res.Continue != tc.cont {
				t.Fatalf("continue %v, want %v (reply %+v)", res.Continue, tc.cont, res.Reply)
			}
			if !tc.cont && (res.Reply == nil || res.Reply.Status != tc.status || res.Reply.Details != tc.details) {
				t.Fatalf("reply %+v, want %d %q", res.Reply, tc.status, tc.details)
			}
			if tc.header != "" {
				k, v, _ := strings.Cut(tc.header, "=")
				got := ""
				if res.Reply != nil {
					for _, hh := range res.Reply.Headers {
						if hh.Name == k {
							got = hh.Value
						}
					}
				} else {
					got, _ = r.Header(k)
				}
				if got != v {
					t.Errorf("%s = %q, want %q (reply %+v)", k, got, v, res.Reply)
				}
			}
			if tc.mode == "rewrite" {
				if r.Path() != "/rewritten" || !r.Dirty() {
					t.Errorf("path %q dirty %v", r.Path(), r.Dirty())
				}
				if _, ok := r.Header("accept"); ok {
					t.Error("accept was not removed")
				}
				if hh := r.HTTPHeader(); hh.Get("User-Agent") != "curl/8" || hh.Get("Accept") != "" {
					t.Errorf("HTTPHeader %v", hh)
				}
			}
			if tc.mode == "panic" && h.Counter("golang.panic_error") != 1 {
				t.Error("panic not counted")
			}
		})
	}
}

func TestRefusesIncompletePlugins(t *testing.T) {
	if _, err := New(Plugin{Name: "x", Parser: testParser{}}, nil); err == nil {
		t.Error("a plugin without factory was accepted (Envoy would pass everything through)")
	}
}

// BenchmarkAuthz: one allowed request through filters/authz on this host and on the test
// fake, in the same run (allocations per request are the point: the fake's header map made 34).
func BenchmarkAuthz(b *testing.B) {
	h, merged := authzHost(b)
	fake := envoytest.NewHost(nil)
	p := envoytest.Plugin{Name: authzconfig.PluginName, Factory: authz.Factory, Parser: authz.Parser{}}
	fcfg, _ := fake.Parse(p, must(authzconfig.EncodeConfig(&authzconfig.Config{Namespace: "handson", Gateway: "handson", Policies: layer7})))
	frc, _ := fake.ParseRoute(p, must(authzconfig.EncodeRoute(&authzconfig.Route{Service: "handson", ServiceNamespace: "handson"})))
	fmerged := fake.Merge(p, fcfg, frc)
	hdr := http.Header{"User-Agent": {"curl/8"}, "Accept": {"*/*"}, "X-Request-Id": {"abc"}}
	c := conn("spiffe://cluster.local/ns/handson/sa/curl")
	b.Run("host", func(b *testing.B) {
		r := &Request{}
		b.ReportAllocs()
		for b.Loop() {
			r.Reset("GET", "/", "handson:8080", "http", "HTTP/1.1", hdr)
			if !h.Decode(context.Background(), merged, r, c).Continue {
				b.Fatal("denied")
			}
		}
	})
	b.Run("envoytest", func(b *testing.B) {
		req := httptest.NewRequest("GET", "http://handson:8080/", nil)
		req.Header = hdr
		s := envoytest.Stream{FilterState: map[string]string{authzconfig.PeerPrincipalKey: c.PeerPrincipal}, DownstreamRemoteAddress: c.DownstreamRemoteAddress, DownstreamLocalAddress: c.DownstreamLocalAddress}
		b.ReportAllocs()
		for b.Loop() {
			if !fake.Do(p, fmerged, req, s).Continued {
				b.Fatal("denied")
			}
		}
	})
}

// lateFilter goes on in its own goroutine (api.Running) and acts only when the test says so:
// it then sets a header and continues, or answers 403 (deny).
type lateFilter struct {
	api.PassThroughStreamFilter
	cb      api.FilterCallbackHandler
	started chan<- struct{}
	release <-chan struct{}
	acted   chan<- struct{}
	deny    bool
}

func (f *lateFilter) DecodeHeaders(h api.RequestHeaderMap, _ bool) api.StatusType {
	go func() {
		<-f.release
		if f.deny {
			f.cb.DecoderFilterCallbacks().SendLocalReply(403, "denied", nil, 7, "late_filter_denied")
		} else {
			h.Set("x-late", "1")
			h.Del("authorization")
			f.cb.DecoderFilterCallbacks().Continue(api.Continue)
		}
		f.acted <- struct{}{}
	}()
	f.started <- struct{}{}
	return api.Running
}

type lateParser struct{}

func (lateParser) Parse(*anypb.Any, api.ConfigCallbackHandler) (any, error) { return nil, nil }
func (lateParser) Merge(p, _ any) any                                       { return p }

// TestLateAnswerAfterStreamEnded: a filter answering after its request timed out (a slow
// ext_authz provider) must touch neither the next request on the same Request object (the
// server pools them) nor the stream object the host may hand to that request. Each round: a
// first request times out (504) while its filter waits; the Request is reset for a second
// one, whose filter also waits; the first filter then sets a header, deletes one and
// continues; the second denies. The second must end denied, its headers untouched. The
// peer is a fake filter (the only way to control when the late answer comes); run under -race.
func TestLateAnswerAfterStreamEnded(t *testing.T) {
	for round := range 20 {
		started, acted := make(chan struct{}, 2), make(chan struct{}, 2)
		release1, release2 := make(chan struct{}), make(chan struct{})
		n := 0
		h, err := New(Plugin{Name: "late", Parser: lateParser{}, Factory: func(_ any, cb api.FilterCallbackHandler) api.StreamFilter {
			n++
			if n == 1 {
				return &lateFilter{cb: cb, started: started, release: release1, acted: acted}
			}
			return &lateFilter{cb: cb, started: started, release: release2, acted: acted, deny: true}
		}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		r := request("GET", "/", nil)
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-started; cancel() }() // the request's timeout, once the filter waits
		if res := h.Decode(ctx, nil, r, conn("")); res.Reply == nil || res.Reply.Status != 504 {
			t.Fatalf("round %d: first request: %+v, want the 504 of a filter that never resumed", round, res)
		}

		r.Reset("GET", "/second", "handson:8080", "http", "HTTP/1.1", http.Header{"Authorization": {"Bearer second"}})
		second := make(chan Result, 1)
		go func() { second <- h.Decode(context.Background(), nil, r, conn("")) }()
		<-started
		close(release1) // the first filter answers late, while the second request waits
		<-acted
		close(release2)
		res := <-second
		<-acted
		if res.Reply == nil || res.Reply.Status != 403 {
			t.Fatalf("round %d: second request: %+v, want its own filter's 403", round, res)
		}
		if v, ok := r.Header("x-late"); ok {
			t.Fatalf("round %d: the first filter's late answer set x-late=%q on the second request", round, v)
		}
		if v, _ := r.Header("authorization"); v != "Bearer second" {
			t.Fatalf("round %d: second request's authorization = %q: the first filter's late answer changed it", round, v)
		}
	}
}
