package authz_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/envoytest"
	"github.com/goambient/goambient/filters/extauthz/opaserver"
	"github.com/goambient/goambient/policies/extprovider"
	"github.com/goambient/goambient/policies/meshconfig"
)

// oauthStyle is an HTTP ext_authz server in oauth2-proxy's manner (its reverse-proxy mode with
// a static 200 upstream): a request with the session cookie gets 200 and the user in
// X-Auth-Request-User; any other a 302 to the sign-in page with a CSRF cookie.
type oauthStyle struct{ hits atomic.Int64 }

func (o *oauthStyle) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.hits.Add(1)
	if c, err := r.Cookie("_oauth2_proxy"); err == nil && c.Value == "carol-session" {
		w.Header().Set("X-Auth-Request-User", "carol")
		w.Header().Set("X-Internal", "not for the app")
		w.WriteHeader(http.StatusOK)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: "_oauth2_proxy_csrf", Value: "x"})
	w.Header().Set("X-Internal", "not for the client")
	w.Header().Set("Location", "/oauth2/start?rd="+r.URL.Path)
	w.WriteHeader(http.StatusFound)
}

// customFixture starts the providers (OPA's Authorization API with a Rego policy, the
// oauth2-proxy-style server, one that is down, one that stalls) and parses the waypoint's
// config with their mesh config.
func customFixture(t *testing.T) (*envoytest.Host, any, *oauthStyle) {
	t.Helper()
	rego, err := os.ReadFile("testdata/custom/admin.rego")
	if err != nil {
		t.Fatal(err)
	}
	opa, err := opaserver.New(context.Background(), string(rego), "")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = opa.Serve(l) }()
	t.Cleanup(opa.Stop)

	oauth := &oauthStyle{}
	hs := httptest.NewServer(oauth)
	t.Cleanup(hs.Close)

	stall := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-stall:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(stall) })

	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadPort := dead.Addr().(*net.TCPAddr).Port
	dead.Close()

	port := func(u string) string { return u[strings.LastIndexByte(u, ':')+1:] }
	mesh := fmt.Sprintf(`extensionProviders:
- name: opa
  envoyExtAuthzGrpc: {service: 127.0.0.1, port: %d, timeout: 10s}
- name: oauth2-proxy
  envoyExtAuthzHttp:
    service: 127.0.0.1
    port: %s
    timeout: 10s
    includeRequestHeadersInCheck: [cookie]
    headersToUpstreamOnAllow: [x-auth-request-*]
    headersToDownstreamOnDeny: [location, set-cookie]
- name: down
  envoyExtAuthzGrpc: {service: 127.0.0.1, port: %d, timeout: 5s, statusOnError: "503"}
- name: down-open
  envoyExtAuthzHttp: {service: 127.0.0.1, port: %d, timeout: 5s, failOpen: true}
- name: slow
  envoyExtAuthzHttp: {service: 127.0.0.1, port: %s, timeout: 0.2s}
`, l.Addr().(*net.TCPAddr).Port, port(hs.URL), deadPort, deadPort, port(slow.URL))

	h := envoytest.NewHost(nil)
	a, err := authzconfig.EncodeConfig(&authzconfig.Config{Namespace: "shop", Gateway: "waypoint", GatewayClass: "istio-waypoint",
		Policies: policyFiles(t, "testdata/custom/policies.yaml"), Providers: providersOf(t, mesh)})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := h.Parse(plugin, a)
	if err != nil {
		t.Fatal(err)
	}
	return h, cfg, oauth
}

// TestCustom: CUSTOM rules consult their provider before DENY and ALLOW, only for the requests
// they match. Peers: a gRPC Authorization server deciding with OPA's Go API and a Rego policy
// (opa-envoy-plugin's input and decision shapes; the plugin itself is refused by the module
// proxy), an HTTP ext_authz server in oauth2-proxy's style, a closed port, a stalled server.
func TestCustom(t *testing.T) {
	base := runtime.NumGoroutine()
	h, cfg, oauth := customFixture(t)
	for _, c := range []struct {
		name, method, path string
		hdr                map[string]string
		status             int // 0: continued
		body, details      string
		replyHeaders       map[string]string
		upstream           map[string]string
	}{
		{name: "OPA allows alice", method: "GET", path: "/admin/users", hdr: map[string]string{"x-user": "alice"},
			upstream: map[string]string{"x-opa-user": "alice"}},
		{name: "OPA's deny with its status, body and headers", method: "GET", path: "/admin/users", hdr: map[string]string{"x-user": "bob"},
			status: 403, body: "bob may not", details: "ext_authz_denied", replyHeaders: map[string]string{"x-opa": "denied"}},
		{name: "OPA's default deny", method: "GET", path: "/admin/users", hdr: map[string]string{"x-user": "eve"},
			status: 403, details: "ext_authz_denied"},
		{name: "CUSTOM allows, DENY still denies", method: "GET", path: "/admin/secret", hdr: map[string]string{"x-user": "alice"},
			status: 403, body: "RBAC: access denied", details: "rbac_access_denied_matched_policy[ns[shop]-policy[no-secret]-rule[0]]"},
		{name: "CUSTOM allows, no ALLOW matches", method: "POST", path: "/admin/users", hdr: map[string]string{"x-user": "alice"},
			status: 403, body: "RBAC: access denied", details: "rbac_access_denied_matched_policy[none]"},
		{name: "HTTP provider allows with a session", method: "GET", path: "/account/me", hdr: map[string]string{"cookie": "_oauth2_proxy=carol-session"},
			upstream: map[string]string{"x-auth-request-user": "carol", "x-internal": ""}},
		{name: "HTTP provider's redirect to sign in", method: "GET", path: "/account/me",
			status: 302, details: "ext_authz_denied", replyHeaders: map[string]string{"location": "/oauth2/start?rd=/account/me", "set-cookie": "_oauth2_proxy_csrf=x", "x-internal": ""}},
		{name: "provider down: statusOnError", method: "GET", path: "/broken/x", status: 503, details: "ext_authz_error"},
		{name: "provider down: failOpen", method: "GET", path: "/open/x"},
		{name: "provider stalls: timeout, 403", method: "GET", path: "/slow/x", status: 403, details: "ext_authz_error"},
		{name: "provider not in the mesh config", method: "GET", path: "/missing/x",
			status: 403, body: "RBAC: access denied", details: "rbac_access_denied_matched_policy[ns[shop]-policy[ext-missing]-rule[0]]"},
	} {
		t.Run(c.name, func(t *testing.T) {
			req := httptest.NewRequest(c.method, "http://shop:8080"+c.path, nil)
			for k, v := range c.hdr {
				req.Header.Set(k, v)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			resp := h.Do(plugin, cfg, req.WithContext(ctx), fromPeer(web))
			if c.status == 0 {
				if !resp.Continued {
					t.Fatalf("denied: %+v", resp.LocalReply)
				}
				for k, v := range c.upstream {
					if got := resp.RequestHeaders.Get(k); got != v {
						t.Errorf("upstream %s = %q, want %q", k, got, v)
					}
				}
				return
			}
			lr := resp.LocalReply
			if lr == nil {
				t.Fatal("continued")
			}
			if lr.Status != c.status || lr.Body != c.body || lr.Details != c.details {
				t.Fatalf("reply %d %q %q, want %d %q %q", lr.Status, lr.Body, lr.Details, c.status, c.body, c.details)
			}
			for k, v := range c.replyHeaders {
				got := strings.Join(lr.Headers[k], ",")
				if k == "set-cookie" && strings.HasPrefix(got, v) {
					continue
				}
				if got != v {
					t.Errorf("reply header %s = %q, want %q", k, got, v)
				}
			}
		})
	}
	before := oauth.hits.Load()
	resp := h.Do(plugin, cfg, httptest.NewRequest("GET", "http://shop:8080/account", nil), fromPeer(web))
	if !resp.Continued || oauth.hits.Load() != before {
		t.Errorf("a request no CUSTOM rule matches was sent to the provider, or denied: %+v", resp.LocalReply)
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base+30 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base+30 {
		t.Errorf("%d goroutines after the checks, %d before", n, base)
	}
}

// providersOf is what the translator passes the filter: the mesh config's providers.
func providersOf(t testing.TB, mesh string) []extprovider.Provider {
	t.Helper()
	mc, errs := meshconfig.Parse([]byte(mesh), "mesh")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	var out []extprovider.Provider
	for _, p := range mc.Providers {
		out = append(out, *p)
	}
	return out
}
