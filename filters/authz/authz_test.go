package authz_test

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/goambient/goambient/filters/authz"
	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/envoytest"
)

var plugin = envoytest.Plugin{Name: authzconfig.PluginName, Factory: authz.Factory, Parser: authz.Parser{}}

// policyFiles reads YAML files (relative to this package) into one document stream.
func policyFiles(t testing.TB, files ...string) string {
	t.Helper()
	var b strings.Builder
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(data)
		b.WriteString("\n---\n")
	}
	return b.String()
}

// waypoint parses the plugin_config of the waypoint ns/gw with the policies of files and, when
// route is set, merges that per-route config into it, as Envoy does.
func waypoint(t testing.TB, h *envoytest.Host, ns, gw string, route *authzconfig.Route, files ...string) any {
	t.Helper()
	a, err := authzconfig.EncodeConfig(&authzconfig.Config{
		Namespace: ns, Gateway: gw, GatewayClass: "istio-waypoint", Policies: policyFiles(t, files...),
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := h.Parse(plugin, a)
	if err != nil {
		t.Fatal(err)
	}
	if route == nil {
		return cfg
	}
	ra, err := authzconfig.EncodeRoute(route)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := h.ParseRoute(plugin, ra)
	if err != nil {
		t.Fatal(err)
	}
	return h.Merge(plugin, cfg, rc)
}

const (
	handsonL7  = "../../manifests/examples/handson/L7-authorization-policy.yaml"
	curl       = "spiffe://cluster.local/ns/handson/sa/curl"
	web        = "spiffe://cluster.local/ns/shop/sa/web"
	handsonVIP = "10.96.0.10:8080"
)

func fromPeer(p string) envoytest.Stream {
	return envoytest.Stream{
		FilterState:             map[string]string{authzconfig.PeerPrincipalKey: p},
		DownstreamRemoteAddress: "10.244.1.5:43210",
		DownstreamLocalAddress:  handsonVIP,
	}
}

type step struct {
	name    string
	method  string
	url     string
	headers map[string]string
	stream  envoytest.Stream
	allowed bool
	details string // for denials
}

func run(t *testing.T, h *envoytest.Host, cfg any, steps []step) {
	t.Helper()
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			var body *strings.Reader
			if s.method == http.MethodPost || s.method == http.MethodPut {
				body = strings.NewReader("{}")
			}
			var req *http.Request
			if body != nil {
				req = httptest.NewRequest(s.method, s.url, body)
			} else {
				req = httptest.NewRequest(s.method, s.url, nil)
			}
			for k, v := range s.headers {
				req.Header.Add(k, v)
			}
			resp := h.Do(plugin, cfg, req, s.stream)
			if resp.Continued != s.allowed {
				t.Fatalf("Continued = %v, want %v (local reply %+v, logs %q)", resp.Continued, s.allowed, resp.LocalReply, resp.Logs)
			}
			if s.allowed {
				if resp.LocalReply != nil {
					t.Fatalf("allowed request got a local reply %+v", resp.LocalReply)
				}
				return
			}
			lr := resp.LocalReply
			if lr == nil {
				t.Fatal("denied request without a local reply")
			}
			if lr.Status != 403 || lr.Body != "RBAC: access denied" || lr.GRPCStatus != 7 || lr.Details != s.details {
				t.Errorf("local reply = %d %q grpc %d details %q, want 403 %q grpc 7 details %q",
					lr.Status, lr.Body, lr.GRPCStatus, lr.Details, "RBAC: access denied", s.details)
			}
		})
	}
}

// TestHandsonStep3 is manifests/examples/handson step 3 through the filter: the L7 policy
// attached to the handson waypoint, requests from curl to the handson Service.
func TestHandsonStep3(t *testing.T) {
	h := envoytest.NewHost(nil)
	cfg := waypoint(t, h, "handson", "handson", &authzconfig.Route{Service: "handson", ServiceNamespace: "handson"}, handsonL7)
	const denied = "rbac_access_denied_matched_policy[ns[handson]-policy[layer7-authz]-rule[0]]"
	run(t, h, cfg, []step{
		{name: "GET 200", method: "GET", url: "http://handson:8080/", stream: fromPeer(curl), allowed: true},
		{name: "POST 403", method: "POST", url: "http://handson:8080/", stream: fromPeer(curl), details: denied},
		{name: "DELETE 403", method: "DELETE", url: "http://handson:8080/id/123", stream: fromPeer(curl), details: denied},
		{name: "POST from another identity", method: "POST", url: "http://handson:8080/", stream: fromPeer("spiffe://cluster.local/ns/handson/sa/curl-allow"), allowed: true},
	})
	if got := h.Counter(authz.MetricAllowed); got != 2 {
		t.Errorf("%s = %d, want 2", authz.MetricAllowed, got)
	}
	if got := h.Counter(authz.MetricDenied); got != 2 {
		t.Errorf("%s = %d, want 2", authz.MetricDenied, got)
	}
}

func TestL7Rules(t *testing.T) {
	shopRoute := &authzconfig.Route{Service: "productpage", ServiceNamespace: "shop"}
	none := "rbac_access_denied_matched_policy[none]"
	jwt := func(payload map[string]any) envoytest.Stream {
		s := fromPeer(web)
		s.DynamicMetadata = map[string]map[string]any{authz.JWTFilter: {authz.JWTPayloadKey: payload}}
		return s
	}
	for _, tc := range []struct {
		file  string
		route *authzconfig.Route
		steps []step
	}{
		{"testdata/paths-hosts-headers.yaml", shopRoute, []step{
			{name: "template {*} and {**}", method: "GET", url: "http://x/api/v1/shoes/items/42/reviews", stream: fromPeer(web), allowed: true},
			{name: "template {**} matches an empty rest", method: "GET", url: "http://x/api/v1/shoes/items/", stream: fromPeer(web), allowed: true},
			{name: "template {*} needs a segment", method: "GET", url: "http://x/api/v1//items/42", stream: fromPeer(web), details: none},
			{name: "template wrong method", method: "DELETE", url: "http://x/api/v1/shoes/items/42", stream: fromPeer(web), details: none},
			{name: "path normalised before matching", method: "GET", url: "http://x/api/v2/../v1/shoes/items/1", stream: fromPeer(web), allowed: true},
			{name: "host suffix", method: "GET", url: "http://productpage.shop.svc.cluster.local/public/logo.png", stream: fromPeer(web), allowed: true},
			{name: "host case-insensitive", method: "GET", url: "http://ProductPage.Shop.svc.cluster.local/public/logo.png", stream: fromPeer(web), allowed: true},
			{name: "other host", method: "GET", url: "http://evil.example/public/logo.png", stream: fromPeer(web), details: none},
			{name: "header present", method: "GET", url: "http://x/health", headers: map[string]string{"X-Probe": "kubelet"}, stream: fromPeer(web), allowed: true},
			{name: "header other value", method: "GET", url: "http://x/health", headers: map[string]string{"X-Probe": "curl"}, stream: fromPeer(web), details: none},
			{name: "header absent", method: "GET", url: "http://x/health", stream: fromPeer(web), details: none},
			{name: "notMethods allows GET", method: "GET", url: "http://x/readonly/a", stream: fromPeer(web), allowed: true},
			{name: "notMethods excludes POST", method: "POST", url: "http://x/readonly/a", stream: fromPeer(web), details: none},
		}},
		{"testdata/deny-before-allow.yaml", shopRoute, []step{
			{name: "allowed", method: "GET", url: "http://x/catalog", stream: fromPeer(web), allowed: true},
			{name: "DENY wins over ALLOW", method: "GET", url: "http://x/admin/users", stream: fromPeer(web),
				details: "rbac_access_denied_matched_policy[ns[shop]-policy[no-admin]-rule[0]]"},
			{name: "encoded dot segments cannot dodge the DENY", method: "GET", url: "http://x/public/%2e%2e/admin", stream: fromPeer(web),
				details: "rbac_access_denied_matched_policy[ns[shop]-policy[no-admin]-rule[0]]"},
		}},
		{"testdata/principals.yaml", shopRoute, []step{
			{name: "principal from filter state", method: "GET", url: "http://x/", stream: fromPeer(web), allowed: true},
			{name: "other principal", method: "GET", url: "http://x/", stream: fromPeer("spiffe://cluster.local/ns/shop/sa/db"), details: none},
			{name: "TLS fallback", method: "GET", url: "http://x/", stream: envoytest.Stream{PeerURISANs: []string{web}}, allowed: true},
			{name: "filter state wins over TLS", method: "GET", url: "http://x/", stream: envoytest.Stream{
				FilterState: map[string]string{authzconfig.PeerPrincipalKey: "spiffe://cluster.local/ns/shop/sa/db"}, PeerURISANs: []string{web}}, details: none},
			{name: "no principal is unauthenticated", method: "GET", url: "http://x/", stream: envoytest.Stream{DownstreamRemoteAddress: "10.0.0.1:1"}, details: none},
			{name: "several SANs joined are no principal", method: "GET", url: "http://x/", stream: fromPeer(web + ",spiffe://cluster.local/ns/shop/sa/db"), details: none},
			{name: "not a SPIFFE ID", method: "GET", url: "http://x/", stream: fromPeer("cluster.local/ns/shop/sa/web"), details: none},
		}},
		{"testdata/jwt.yaml", shopRoute, []step{
			{name: "request principal", method: "GET", url: "http://x/profile", stream: jwt(map[string]any{"iss": "https://issuer.example", "sub": "alice"}), allowed: true},
			{name: "other issuer", method: "GET", url: "http://x/profile", stream: jwt(map[string]any{"iss": "https://other.example", "sub": "alice"}), details: none},
			{name: "no JWT", method: "GET", url: "http://x/profile", stream: fromPeer(web), details: none},
			{name: "claim and audience", method: "GET", url: "http://x/admin", stream: jwt(map[string]any{
				"iss": "https://issuer.example", "sub": "bob", "aud": []any{"shop", "other"}, "groups": []any{"users", "admins"}}), allowed: true},
			{name: "claim missing", method: "GET", url: "http://x/admin", stream: jwt(map[string]any{
				"iss": "https://issuer.example", "sub": "bob", "aud": "shop", "groups": []any{"users"}}), details: none},
			{name: "audience missing", method: "GET", url: "http://x/admin", stream: jwt(map[string]any{
				"iss": "https://issuer.example", "sub": "bob", "aud": "other", "groups": "admins"}), details: none},
		}},
		{"testdata/service-target.yaml", &authzconfig.Route{Service: "reviews", ServiceNamespace: "shop"}, []step{
			{name: "DELETE on reviews", method: "DELETE", url: "http://reviews/1", stream: fromPeer(web),
				details: "rbac_access_denied_matched_policy[ns[shop]-policy[reviews-no-delete]-rule[0]]"},
			{name: "GET on reviews", method: "GET", url: "http://reviews/1", stream: fromPeer(web), allowed: true},
		}},
		{"testdata/service-target.yaml", shopRoute, []step{
			{name: "DELETE on another service", method: "DELETE", url: "http://productpage/1", stream: fromPeer(web), allowed: true},
		}},
		{"testdata/istio-parity.yaml", shopRoute, []step{
			{name: "header * matches an empty header", method: "GET", url: "http://x/team", headers: map[string]string{"X-Team": ""}, stream: fromPeer(web), allowed: true},
			{name: "header * needs the header", method: "GET", url: "http://x/team", stream: fromPeer(web), details: none},
			{name: "namespaces s*a matches shop/sa", method: "GET", url: "http://x/glob", stream: fromPeer("spiffe://cluster.local/ns/shop/sa/client"), allowed: true},
			{name: "namespaces s*a needs a / after the a", method: "GET", url: "http://x/glob", stream: fromPeer("spiffe://cluster.local/ns/shop/sa2/client"), details: none},
			{name: "serviceAccounts with a segment before sa/", method: "GET", url: "http://x/sa", stream: fromPeer("spiffe://cluster.local/ns/prod-eu/extra/sa/x"), allowed: true},
			{name: "serviceAccounts with a segment after the account", method: "GET", url: "http://x/sa", stream: fromPeer("spiffe://cluster.local/ns/prod-eu/sa/x/extra"), allowed: true},
			{name: "host folds ASCII", method: "GET", url: "http://KELVIN.example/kelvin", stream: fromPeer(web), allowed: true},
			{name: "host does not fold the Kelvin sign", method: "GET", url: "http://\u212Aelvin.example/kelvin", stream: fromPeer(web), details: none},
			{name: "azp as a list", method: "GET", url: "http://x/cli", stream: jwt(map[string]any{"iss": "idp", "sub": "bob", "azp": []any{"web", "cli"}}), allowed: true},
			{name: "azp as a string", method: "GET", url: "http://x/cli", stream: jwt(map[string]any{"iss": "idp", "sub": "bob", "azp": "cli"}), allowed: true},
			{name: "azp absent", method: "GET", url: "http://x/cli", stream: jwt(map[string]any{"iss": "idp", "sub": "bob"}), details: none},
		}},
		{"testdata/istio-parity.yaml", &authzconfig.Route{Service: "reviews", ServiceNamespace: "shop", Kind: "ServiceEntry"}, []step{
			{name: "ServiceEntry targetRef on the ServiceEntry", method: "DELETE", url: "http://reviews/1", stream: fromPeer(web),
				details: "rbac_access_denied_matched_policy[ns[shop]-policy[se-no-delete]-rule[0]]"},
		}},
		{"testdata/istio-parity.yaml", &authzconfig.Route{Service: "reviews", ServiceNamespace: "shop"}, []step{
			{name: "ServiceEntry targetRef not on the Service of that name", method: "DELETE", url: "http://reviews/1", stream: fromPeer(web), details: none},
		}},
	} {
		t.Run(filepath.Base(tc.file)+"/"+tc.route.Service+tc.route.Kind, func(t *testing.T) {
			h := envoytest.NewHost(nil)
			run(t, h, waypoint(t, h, "shop", "waypoint", tc.route, tc.file), tc.steps)
		})
	}
}

func TestGRPCDenialIsPermissionDenied(t *testing.T) {
	h := envoytest.NewHost(nil)
	cfg := waypoint(t, h, "handson", "handson", &authzconfig.Route{Service: "handson", ServiceNamespace: "handson"}, handsonL7)
	req := httptest.NewRequest("POST", "http://handson:8080/pkg.Service/Method", strings.NewReader("\x00\x00\x00\x00\x00"))
	req.Header.Set("Content-Type", "application/grpc")
	req.ProtoMajor, req.ProtoMinor = 2, 0
	resp := h.Do(plugin, cfg, req, fromPeer(curl))
	lr := resp.LocalReply
	if lr == nil {
		t.Fatal("gRPC POST from curl must be denied")
	}
	if lr.GRPCStatus != 7 || lr.Status != 200 || lr.Headers["grpc-status"][0] != "7" || lr.FilterCode != 403 {
		t.Errorf("gRPC denial = %+v, want HTTP 200 with grpc-status 7 (filter code 403)", lr)
	}
	if lr.Details != "rbac_access_denied_matched_policy[ns[handson]-policy[layer7-authz]-rule[0]]" {
		t.Errorf("details = %q", lr.Details)
	}
}

func TestDryRunAndAuditOnlyLog(t *testing.T) {
	h := envoytest.NewHost(nil)
	cfg := waypoint(t, h, "shop", "waypoint", &authzconfig.Route{Service: "orders", ServiceNamespace: "shop"}, "testdata/dry-run-audit.yaml")
	resp := h.Do(plugin, cfg, httptest.NewRequest("POST", "http://orders/orders/1", strings.NewReader("{}")), fromPeer(web))
	if !resp.Continued {
		t.Fatalf("dry-run DENY and AUDIT must not deny: %+v", resp.LocalReply)
	}
	logs := strings.Join(resp.Logs, "\n")
	for _, want := range []string{
		"audit: policy shop/audit-orders rule 0 matched POST orders/orders/1",
		"dry-run: shadow denied POST orders/orders/1",
		"shadow_effective_policy_id=shop/no-post",
		"details=rbac_access_denied_matched_policy[ns[shop]-policy[no-post]-rule[0]]",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
	resp = h.Do(plugin, cfg, httptest.NewRequest("GET", "http://orders/", nil), fromPeer(web))
	if !resp.Continued || !strings.Contains(strings.Join(resp.Logs, "\n"), "dry-run: shadow allowed GET") {
		t.Errorf("GET: continued %v, logs %q", resp.Continued, resp.Logs)
	}
	for name, want := range map[string]uint64{authz.MetricShadowDenied: 1, authz.MetricShadowAllowed: 1, authz.MetricAllowed: 2, authz.MetricDenied: 0} {
		if got := h.Counter(name); got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
}

// TestFailClosed: every way of reaching the filter without a usable config denies.
func TestFailClosed(t *testing.T) {
	h := envoytest.NewHost(nil)
	route, _ := authzconfig.EncodeRoute(&authzconfig.Route{Service: "s", ServiceNamespace: "ns"})
	rc, err := h.ParseRoute(plugin, route)
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]any{
		"nil config":                   nil,
		"route config alone":           rc,
		"route merged into nothing":    h.Merge(plugin, nil, rc),
		"route merged into route":      h.Merge(plugin, rc, rc),
		"an unparsed Any (NullParser)": route,
	} {
		resp := h.Do(plugin, cfg, httptest.NewRequest("GET", "http://x/", nil), fromPeer(web))
		if resp.Continued || resp.LocalReply == nil || resp.LocalReply.Status != 403 || resp.LocalReply.Details != "goambient_authz_no_config" {
			t.Errorf("%s: continued %v, reply %+v; want a 403 denial", name, resp.Continued, resp.LocalReply)
		}
	}
	// A config whose filter-level part is merged into something else is not ours either.
	cfg := waypoint(t, h, "shop", "waypoint", nil, "testdata/principals.yaml")
	if resp := h.Do(plugin, h.Merge(plugin, cfg, cfg), httptest.NewRequest("GET", "http://x/", nil), fromPeer(web)); resp.Continued {
		t.Error("a Config merged as a route config must deny")
	}
	// Without a route config the waypoint's Gateway policies still apply.
	for name, c := range map[string]any{"unmerged": cfg, "merged with nil": h.Merge(plugin, cfg, nil)} {
		if resp := h.Do(plugin, c, httptest.NewRequest("GET", "http://x/", nil), fromPeer("spiffe://cluster.local/ns/shop/sa/db")); resp.Continued {
			t.Errorf("%s: Gateway policy not enforced without a route config", name)
		}
		if resp := h.Do(plugin, c, httptest.NewRequest("GET", "http://x/", nil), fromPeer(web)); !resp.Continued {
			t.Errorf("%s: allowed principal denied: %+v", name, resp.LocalReply)
		}
	}
	// A %00 in the path is rejected before any policy.
	if resp := h.Do(plugin, cfg, httptest.NewRequest("GET", "http://x/a%00b", nil), fromPeer(web)); resp.Continued || resp.LocalReply.Status != 400 {
		t.Errorf("%%00 path: %+v", resp.LocalReply)
	}
}

func TestParseErrors(t *testing.T) {
	h := envoytest.NewHost(nil)
	enc := func(c *authzconfig.Config) *anypb.Any {
		a, err := authzconfig.EncodeConfig(c)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	route, _ := authzconfig.EncodeRoute(&authzconfig.Route{Service: "s", ServiceNamespace: "ns"})
	for name, tc := range map[string]struct {
		a     *anypb.Any
		route bool
		want  []string
	}{
		"invalid policy": {a: enc(&authzconfig.Config{Namespace: "shop", Gateway: "waypoint", Policies: policyFiles(t, "testdata/invalid.yaml")}),
			want: []string{"shop/bad-template", "spec.rules[0].to[0].operation.paths[1]", "{**} must be the last operator"}},
		"not YAML":         {a: enc(&authzconfig.Config{Namespace: "shop", Gateway: "waypoint", Policies: "spec: [\n"}), want: []string{"not valid YAML"}},
		"missing gateway":  {a: enc(&authzconfig.Config{Namespace: "shop"}), want: []string{"gateway: required"}},
		"no plugin_config": {a: nil, want: []string{"plugin_config"}},
		"route as filter":  {a: route, want: []string{"type_url"}},
		"config as route":  {a: enc(&authzconfig.Config{Namespace: "shop", Gateway: "w"}), route: true, want: []string{"per-route", "type_url"}},
	} {
		var err error
		if tc.route {
			_, err = h.ParseRoute(plugin, tc.a)
		} else {
			_, err = h.Parse(plugin, tc.a)
		}
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", name, err, w)
			}
		}
	}
}

// TestConcurrentRequests runs requests in parallel through one config (go test -race).
func TestConcurrentRequests(t *testing.T) {
	var logs bytes.Buffer
	h := envoytest.NewHost(slog.New(slog.NewTextHandler(&syncWriter{w: &logs}, nil)))
	cfg := waypoint(t, h, "handson", "handson", &authzconfig.Route{Service: "handson", ServiceNamespace: "handson"}, handsonL7)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 50 {
				method := "GET"
				if (i+j)%2 == 1 {
					method = "POST"
				}
				resp := h.Do(plugin, cfg, httptest.NewRequest(method, "http://handson:8080/", nil), fromPeer(curl))
				if resp.Continued != (method == "GET") {
					t.Errorf("%s: continued %v", method, resp.Continued)
				}
			}
		})
	}
	wg.Wait()
	if a, d := h.Counter(authz.MetricAllowed), h.Counter(authz.MetricDenied); a != 200 || d != 200 {
		t.Errorf("allowed %d denied %d, want 200 each", a, d)
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
