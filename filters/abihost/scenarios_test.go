package abihost_test

import (
	"bufio"
	"debug/elf"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/goambient/goambient/filters/authz"
	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/envoytest"
)

const (
	handsonL7  = "../../manifests/examples/handson/L7-authorization-policy.yaml"
	testdata   = "../authz/testdata/"
	curl       = "spiffe://cluster.local/ns/handson/sa/curl"
	web        = "spiffe://cluster.local/ns/shop/sa/web"
	handsonVIP = "10.96.0.10:8080"
	denied     = "rbac_access_denied_matched_policy[ns[handson]-policy[layer7-authz]-rule[0]]"
	none       = "rbac_access_denied_matched_policy[none]"
)

func fromPeer(p string) envoytest.Stream {
	return envoytest.Stream{
		FilterState:             map[string]string{authzconfig.PeerPrincipalKey: p},
		DownstreamRemoteAddress: "10.244.1.5:43210",
		DownstreamLocalAddress:  handsonVIP,
	}
}

func policyFiles(tb testing.TB, files ...string) string {
	tb.Helper()
	var b strings.Builder
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		b.Write(data)
		b.WriteString("\n---\n")
	}
	return b.String()
}

// waypoint is a plugin_config and per-route config as xdsserver's translator emits them.
type waypoint struct {
	ns, gw string
	route  *authzconfig.Route
	files  []string
}

func (w waypoint) config(tb testing.TB) *anypb.Any {
	a, err := authzconfig.EncodeConfig(&authzconfig.Config{Namespace: w.ns, Gateway: w.gw, GatewayClass: "istio-waypoint", Policies: policyFiles(tb, w.files...)})
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

func (w waypoint) routeConfig(tb testing.TB) *anypb.Any {
	a, err := authzconfig.EncodeRoute(w.route)
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

// oracle parses and merges w in envoytest, as Envoy would.
func (w waypoint) oracle(tb testing.TB, h *envoytest.Host) any {
	cfg, err := h.Parse(plugin, w.config(tb))
	if err != nil {
		tb.Fatal(err)
	}
	if w.route == nil {
		return cfg
	}
	rc, err := h.ParseRoute(plugin, w.routeConfig(tb))
	if err != nil {
		tb.Fatal(err)
	}
	return h.Merge(plugin, cfg, rc)
}

// load creates w's configs in the C host under name and returns the route config's name ("" without).
func (w waypoint) load(t *testing.T, h *host, name string) string {
	t.Helper()
	if !h.config(name, authzconfig.PluginName, w.config(t)) {
		t.Fatalf("host rejected the %s config; logs %q", name, h.takeLogs())
	}
	if w.route == nil {
		return ""
	}
	if !h.route(name+"-route", w.routeConfig(t)) {
		t.Fatalf("host rejected the %s route config; logs %q", name, h.takeLogs())
	}
	return name + "-route"
}

var handson = waypoint{ns: "handson", gw: "handson", route: &authzconfig.Route{Service: "handson", ServiceNamespace: "handson"}, files: []string{handsonL7}}

// TestHandsonL7 is manifests/examples/handson step 3 through filters.so under the C host, each
// request checked against envoytest, then the counters.
func TestHandsonL7(t *testing.T) {
	h := startHost(t)
	route := handson.load(t, h, "handson")
	oh := envoytest.NewHost(nil)
	ocfg := handson.oracle(t, oh)
	calls := []call{
		{name: "GET continues", method: "GET", url: "http://handson:8080/", stream: fromPeer(curl)},
		{name: "POST from curl 403", method: "POST", url: "http://handson:8080/", body: "{}", stream: fromPeer(curl)},
		{name: "DELETE from curl 403", method: "DELETE", url: "http://handson:8080/id/123", stream: fromPeer(curl)},
		{name: "POST from another identity", method: "POST", url: "http://handson:8080/", body: "{}", stream: fromPeer("spiffe://cluster.local/ns/handson/sa/curl-allow")},
		{name: "gRPC from curl", method: "POST", url: "http://handson:8080/pkg.Service/Method", body: "\x00\x00\x00\x00\x00", grpc: true, stream: fromPeer(curl)},
	}
	for _, c := range calls {
		got := h.do(c, "handson", route)
		same(t, c, oh.Do(plugin, ocfg, c.request(), c.stream), got)
	}
	// The scenario's exact outcomes, whatever envoytest says.
	got := h.do(calls[1], "handson", route)
	if got.kind != "local_reply" || got.status != 403 || got.body != "RBAC: access denied" || got.details != denied || got.grpc != 7 {
		t.Errorf("POST from curl: %s", got.line)
	}
	if ct := got.headers["content-type"]; len(ct) != 1 || ct[0] != "text/plain" {
		t.Errorf("POST from curl: content-type %q", ct)
	}
	// Go's DecodeHeaders returned LocalReply (1) after SendLocalReply; its EncodeHeaders saw the
	// reply's headers and continued (2), and EncodeData its body (2).
	if got.goStatus != "1,-1,-1,2,2" {
		t.Errorf("POST from curl: Go statuses (decode headers, data, trailers, encode headers, data) %s, want 1,-1,-1,2,2", got.goStatus)
	}
	got = h.do(calls[4], "handson", route)
	if got.kind != "local_reply" || got.status != 200 || got.filterCode != 403 || got.grpc != 7 || got.details != denied ||
		strings.Join(got.headers["grpc-status"], ",") != "7" || got.body != "" {
		t.Errorf("gRPC from curl: %s", got.line)
	}
	got = h.do(calls[0], "handson", route)
	if got.kind != "continued" || got.goStatus != "2,-1,-1,-1,-1" {
		t.Errorf("GET: %s", got.line)
	}
	got = h.do(calls[3], "handson", route)
	if got.kind != "continued" || got.goStatus != "2,2,-1,-1,-1" { // the body went through DecodeData
		t.Errorf("POST from curl-allow: %s", got.line)
	}
	st := h.stats()
	// 5 compared + 4 repeated: allowed GET, POST curl-allow (x2 each); denied POST, DELETE, gRPC + POST, gRPC.
	for name, want := range map[string]uint64{
		"counter " + authz.MetricAllowed: oh.Counter(authz.MetricAllowed) + 2,
		"counter " + authz.MetricDenied:  oh.Counter(authz.MetricDenied) + 2,
		"counter golang.panic_error":     0,
	} {
		if st[name] != want {
			t.Errorf("%s = %d, want %d (stats %v)", name, st[name], want, st)
		}
	}
	if oh.Counter(authz.MetricAllowed) != 2 || oh.Counter(authz.MetricDenied) != 3 {
		t.Errorf("envoytest counters allowed %d denied %d, want 2 and 3", oh.Counter(authz.MetricAllowed), oh.Counter(authz.MetricDenied))
	}
}

// TestL7Table runs filters/authz's L7 table through the C host and envoytest side by side.
func TestL7Table(t *testing.T) {
	shopRoute := &authzconfig.Route{Service: "productpage", ServiceNamespace: "shop"}
	jwt := func(payload map[string]any) envoytest.Stream {
		s := fromPeer(web)
		s.DynamicMetadata = map[string]map[string]any{authz.JWTFilter: {authz.JWTPayloadKey: payload}}
		return s
	}
	get := func(name, url string, s envoytest.Stream) call {
		return call{name: name, method: "GET", url: url, stream: s}
	}
	for _, tc := range []struct {
		file  string
		route *authzconfig.Route
		calls []call
	}{
		{"paths-hosts-headers.yaml", shopRoute, []call{
			get("template {*} and {**}", "http://x/api/v1/shoes/items/42/reviews", fromPeer(web)),
			get("template {**} matches an empty rest", "http://x/api/v1/shoes/items/", fromPeer(web)),
			get("template {*} needs a segment", "http://x/api/v1//items/42", fromPeer(web)),
			{name: "template wrong method", method: "DELETE", url: "http://x/api/v1/shoes/items/42", stream: fromPeer(web)},
			get("path normalised before matching", "http://x/api/v2/../v1/shoes/items/1", fromPeer(web)),
			get("host suffix", "http://productpage.shop.svc.cluster.local/public/logo.png", fromPeer(web)),
			get("host case-insensitive", "http://ProductPage.Shop.svc.cluster.local/public/logo.png", fromPeer(web)),
			get("other host", "http://evil.example/public/logo.png", fromPeer(web)),
			{name: "header present", method: "GET", url: "http://x/health", headers: map[string]string{"X-Probe": "kubelet"}, stream: fromPeer(web)},
			{name: "header other value", method: "GET", url: "http://x/health", headers: map[string]string{"X-Probe": "curl"}, stream: fromPeer(web)},
			get("header absent", "http://x/health", fromPeer(web)),
			get("notMethods allows GET", "http://x/readonly/a", fromPeer(web)),
			{name: "notMethods excludes POST", method: "POST", url: "http://x/readonly/a", body: "{}", stream: fromPeer(web)},
			get("a %00 in the path is a 400", "http://x/a%00b", fromPeer(web)),
		}},
		{"deny-before-allow.yaml", shopRoute, []call{
			get("allowed", "http://x/catalog", fromPeer(web)),
			get("DENY wins over ALLOW", "http://x/admin/users", fromPeer(web)),
			get("encoded dot segments cannot dodge the DENY", "http://x/public/%2e%2e/admin", fromPeer(web)),
		}},
		{"principals.yaml", shopRoute, []call{
			get("principal from filter state", "http://x/", fromPeer(web)),
			get("other principal", "http://x/", fromPeer("spiffe://cluster.local/ns/shop/sa/db")),
			get("TLS fallback", "http://x/", envoytest.Stream{PeerURISANs: []string{web}}),
			get("TLS with several SANs", "http://x/", envoytest.Stream{PeerURISANs: []string{"spiffe://cluster.local/ns/shop/sa/db", web}}),
			get("filter state wins over TLS", "http://x/", envoytest.Stream{
				FilterState: map[string]string{authzconfig.PeerPrincipalKey: "spiffe://cluster.local/ns/shop/sa/db"}, PeerURISANs: []string{web}}),
			get("no principal is unauthenticated", "http://x/", envoytest.Stream{DownstreamRemoteAddress: "10.0.0.1:1"}),
			get("several SANs joined are no principal", "http://x/", fromPeer(web+",spiffe://cluster.local/ns/shop/sa/db")),
			get("not a SPIFFE ID", "http://x/", fromPeer("cluster.local/ns/shop/sa/web")),
		}},
		{"jwt.yaml", shopRoute, []call{
			get("request principal", "http://x/profile", jwt(map[string]any{"iss": "https://issuer.example", "sub": "alice"})),
			get("other issuer", "http://x/profile", jwt(map[string]any{"iss": "https://other.example", "sub": "alice"})),
			get("no JWT", "http://x/profile", fromPeer(web)),
			get("claim and audience", "http://x/admin", jwt(map[string]any{
				"iss": "https://issuer.example", "sub": "bob", "aud": []any{"shop", "other"}, "groups": []any{"users", "admins"}})),
			get("claim missing", "http://x/admin", jwt(map[string]any{
				"iss": "https://issuer.example", "sub": "bob", "aud": "shop", "groups": []any{"users"}})),
			get("audience missing", "http://x/admin", jwt(map[string]any{
				"iss": "https://issuer.example", "sub": "bob", "aud": "other", "groups": "admins"})),
		}},
		{"service-target.yaml", &authzconfig.Route{Service: "reviews", ServiceNamespace: "shop"}, []call{
			{name: "DELETE on reviews", method: "DELETE", url: "http://reviews/1", stream: fromPeer(web)},
			get("GET on reviews", "http://reviews/1", fromPeer(web)),
		}},
		{"service-target.yaml", shopRoute, []call{
			{name: "DELETE on another service", method: "DELETE", url: "http://productpage/1", stream: fromPeer(web)},
		}},
		{"service-target.yaml", nil, []call{
			{name: "DELETE without a route config", method: "DELETE", url: "http://reviews/1", stream: fromPeer(web)},
		}},
		{"dry-run-audit.yaml", &authzconfig.Route{Service: "orders", ServiceNamespace: "shop"}, []call{
			{name: "dry-run DENY and AUDIT only log", method: "POST", url: "http://orders/orders/1", body: "{}", stream: fromPeer(web)},
			get("dry-run allows", "http://orders/", fromPeer(web)),
		}},
	} {
		name := strings.TrimSuffix(tc.file, ".yaml")
		if tc.route != nil {
			name += "/" + tc.route.Service
		}
		t.Run(name, func(t *testing.T) {
			h := startHost(t)
			w := waypoint{ns: "shop", gw: "waypoint", route: tc.route, files: []string{testdata + tc.file}}
			route := w.load(t, h, "w")
			oh := envoytest.NewHost(nil)
			ocfg := w.oracle(t, oh)
			for _, c := range tc.calls {
				same(t, c, oh.Do(plugin, ocfg, c.request(), c.stream), h.do(c, "w", route))
			}
			st := h.stats()
			for _, m := range []string{authz.MetricAllowed, authz.MetricDenied, authz.MetricShadowAllowed, authz.MetricShadowDenied} {
				if st["counter "+m] != oh.Counter(m) {
					t.Errorf("%s: host %d, envoytest %d", m, st["counter "+m], oh.Counter(m))
				}
			}
		})
	}
}

// TestGRPCWebIsNotGRPC: Envoy treats only application/grpc and application/grpc+… as gRPC
// (source/common/grpc/common.cc hasGrpcContentType); a grpc-web request gets the plain 403.
func TestGRPCWebIsNotGRPC(t *testing.T) {
	h := startHost(t)
	route := handson.load(t, h, "handson")
	c := call{name: "grpc-web", method: "POST", url: "http://handson:8080/pkg.Service/Method", body: "x",
		headers: map[string]string{"Content-Type": "application/grpc-web"}, stream: fromPeer(curl)}
	got := h.do(c, "handson", route)
	if got.kind != "local_reply" || got.status != 403 || got.body != "RBAC: access denied" || len(got.headers["grpc-status"]) != 0 {
		t.Errorf("grpc-web: %s", got.line)
	}
	oh := envoytest.NewHost(nil)
	if lr := oh.Do(plugin, handson.oracle(t, oh), c.request(), c.stream).LocalReply; lr == nil || lr.Status != got.status {
		t.Errorf("envoytest differs from Envoy on a grpc-web request: %+v", lr)
	}
}

// TestRejectedConfig: a config the parser rejects makes config creation return 0, as Envoy then
// rejects the update and keeps serving the previous config.
func TestRejectedConfig(t *testing.T) {
	h := startHost(t)
	route := handson.load(t, h, "w")
	bad := waypoint{ns: "shop", gw: "waypoint", files: []string{testdata + "invalid.yaml"}}
	oh := envoytest.NewHost(nil)
	_, perr := oh.Parse(plugin, bad.config(t))
	if perr == nil {
		t.Fatal("envoytest accepted invalid.yaml")
	}
	if h.config("w", authzconfig.PluginName, bad.config(t)) {
		t.Fatal("the host accepted a config the parser rejects")
	}
	logs := strings.Join(h.takeLogs(), "\n")
	if !strings.Contains(logs, "failed to parse golang plugin config: "+perr.Error()) {
		t.Errorf("logs lack the parse error %q:\n%s", perr, logs)
	}
	// The previous config still serves.
	got := h.do(call{name: "POST", method: "POST", url: "http://handson:8080/", stream: fromPeer(curl)}, "w", route)
	if got.kind != "local_reply" || got.details != denied {
		t.Errorf("after a rejected update: %s", got.line)
	}
	missing, _ := authzconfig.EncodeConfig(&authzconfig.Config{Namespace: "shop"})
	if h.config("w2", authzconfig.PluginName, missing) {
		t.Error("a config without gateway was accepted")
	}
	if h.route("r2", handson.config(t)) {
		t.Error("a filter config given as a route config was accepted")
	}
	if logs := strings.Join(h.takeLogs(), "\n"); !strings.Contains(logs, "gateway: required") || !strings.Contains(logs, "per-route config") {
		t.Errorf("logs lack the parse errors:\n%s", logs)
	}
}

// TestUnregisteredPlugin: a plugin_name the library does not know is accepted (the SDK's
// NullParser) and every request passes through; the only sign is the SDK's log line, which the
// host detects as Envoy's operators would have to.
func TestUnregisteredPlugin(t *testing.T) {
	const typo = "goambient.authz-typo"
	h := startHost(t)
	if !h.config("typo", typo, handson.config(t)) {
		t.Fatal("Envoy accepts a config for an unknown plugin_name (NullParser); the host rejected it")
	}
	c := call{name: "POST from curl", method: "POST", url: "http://handson:8080/", stream: fromPeer(curl)}
	got := h.do(c, "typo", "")
	if got.kind != "continued" {
		t.Errorf("unregistered plugin: %s (the SDK passes through)", got.line)
	}
	if !got.unregistered {
		t.Errorf("the host did not detect the unregistered plugin: %s; logs %q", got.line, got.logs)
	}
	line := "plugin " + typo + " not found, pass through by default"
	if !strings.Contains(strings.Join(got.logs, "\n"), "error\t"+line) {
		t.Errorf("logs lack %q at error: %q", line, got.logs)
	}
	oh := envoytest.NewHost(nil)
	resp := oh.Do(envoytest.Plugin{Name: typo}, nil, c.request(), c.stream)
	if !resp.Continued || !strings.Contains(strings.Join(resp.Logs, "\n"), line) {
		t.Errorf("envoytest: continued %v logs %q", resp.Continued, resp.Logs)
	}
	// The registered name on the same host still denies.
	route := handson.load(t, h, "ok")
	if got := h.do(c, "ok", route); got.kind != "local_reply" || got.unregistered {
		t.Errorf("registered plugin: %s", got.line)
	}
}

func rssKB(tb testing.TB, pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	tb.Fatal("no VmRSS")
	return 0
}

// TestStressConfigSwaps: 100,000 requests through one host process, the filter config replaced
// every 1,000 requests while 8 requests on the old config are still in flight (as Envoy does on
// an ECDS update: the new FilterConfig serves new streams, the old one is destroyed when its
// last stream ends, and each route re-merges with the new parent, the old merged id destroyed
// with a delay). No crash, the right answers and counters, and RSS reported (failing only on
// growth over 100 MB).
func TestStressConfigSwaps(t *testing.T) {
	total, every, inflight := 100_000, 1_000, 8
	if testing.Short() {
		total = 10_000
	}
	h := startHost(t)
	route := handson.load(t, h, "w")
	cfgFile := h.file(handson.config(t))
	getF := call{method: "GET", url: "http://handson:8080/", stream: fromPeer(curl)}.fields(t, "w", route)
	postF := call{method: "POST", url: "http://handson:8080/", body: "{}", stream: fromPeer(curl)}.fields(t, "w", route)
	line := func(kind, id string, f []string) string {
		return strings.Join(append([]string{kind, id}, f...), "\t") + "\n"
	}
	// The writer streams every command; this goroutine reads the answers.
	errc := make(chan error, 1)
	go func() {
		w := bufio.NewWriterSize(h.stdin, 1<<16)
		n := 0
		for n < total {
			var open []string
			for i := 0; i < inflight && n < total; i++ {
				id := "o" + strconv.Itoa(n)
				f := getF
				if n%2 == 1 {
					f = postF
				}
				w.WriteString(line("open", id, f))
				open = append(open, id)
				n++
			}
			w.WriteString("config\tw\t" + authzconfig.PluginName + "\t" + cfgFile + "\n") // the ECDS update
			for _, id := range open {
				w.WriteString("finish\t" + id + "\n") // in-flight streams end on the old config
			}
			for i := inflight; i < every && n < total; i++ {
				f := getF
				if n%2 == 1 {
					f = postF
				}
				w.WriteString(line("req", "r"+strconv.Itoa(n), f))
				n++
			}
		}
		errc <- w.Flush()
	}()
	var rss0, results, allowed, deniedN, configs int
	for results < total {
		l, ok := <-h.lines
		if !ok {
			h.cmd.Wait()
			t.Fatalf("host died after %d results (%v); stderr:\n%s", results, h.cmd.ProcessState, h.stderr.String())
		}
		f := strings.Split(l, "\t")
		switch f[0] {
		case "result":
			n, _ := strconv.Atoi(f[1][1:])
			r := parseResult(f, nil)
			if n%2 == 0 && r.kind != "continued" || n%2 == 1 && (r.kind != "local_reply" || r.details != denied) {
				t.Fatalf("request %d: %s", n, l)
			}
			if r.kind == "continued" {
				allowed++
			} else {
				deniedN++
			}
			results++
			if results == 5_000 {
				rss0 = rssKB(t, h.cmd.Process.Pid)
			}
		case "config":
			if f[2] != "ok" {
				t.Fatalf("config update rejected: %s", l)
			}
			configs++
		case "open", "log":
		default:
			t.Fatalf("unexpected line %q", l)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	rss1 := rssKB(t, h.cmd.Process.Pid)
	st := h.stats()
	if st["counter "+authz.MetricAllowed] != uint64(allowed) || st["counter "+authz.MetricDenied] != uint64(deniedN) {
		t.Errorf("counters allowed %d denied %d, want %d and %d", st["counter "+authz.MetricAllowed], st["counter "+authz.MetricDenied], allowed, deniedN)
	}
	t.Logf("%d requests, %d config updates with %d requests in flight each: RSS %d kB after 5,000, %d kB at the end (%+.1f%%); requests not yet finalized by Go's GC: %d, configs: %d",
		results, configs, inflight, rss0, rss1, 100*float64(rss1-rss0)/float64(rss0), st["live_requests"], st["live_http_configs"])
	if rss1-rss0 > 100*1024 {
		t.Errorf("RSS grew by %d kB over the run", rss1-rss0)
	}
}

// TestHostProvidesEveryUndefinedSymbol: every envoyGo* function filters.so leaves undefined
// (what Envoy must provide; nm -D --undefined-only) is exported by the host, and the library
// loads with every symbol bound at once (RTLD_NOW).
func TestHostProvidesEveryUndefinedSymbol(t *testing.T) {
	build(t)
	so, err := elf.Open(soPath)
	if err != nil {
		t.Fatal(err)
	}
	defer so.Close()
	syms, err := so.DynamicSymbols()
	if err != nil {
		t.Fatal(err)
	}
	exe, err := elf.Open(hostPath)
	if err != nil {
		t.Fatal(err)
	}
	defer exe.Close()
	hsyms, err := exe.DynamicSymbols()
	if err != nil {
		t.Fatal(err)
	}
	provided := map[string]bool{}
	for _, s := range hsyms {
		if s.Section != elf.SHN_UNDEF && elf.ST_TYPE(s.Info) == elf.STT_FUNC {
			provided[s.Name] = true
		}
	}
	var undefined []string
	for _, s := range syms {
		if s.Section == elf.SHN_UNDEF && strings.HasPrefix(s.Name, "envoyGo") {
			undefined = append(undefined, s.Name)
			if !provided[s.Name] {
				t.Errorf("filters.so needs %s; the host does not export it", s.Name)
			}
		}
	}
	if len(undefined) < 30 {
		t.Errorf("filters.so leaves only %d envoyGo* symbols undefined: %q", len(undefined), undefined)
	}
	t.Logf("filters.so leaves %d envoyGo* symbols undefined; the host exports all of them", len(undefined))
	h := startHost(t, "HOST_DLOPEN_NOW=1")
	h.close()
}
