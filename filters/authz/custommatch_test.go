package authz_test

import (
	"net/http/httptest"
	"testing"

	"github.com/goambient/goambient/filters/authz"
	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/envoytest"
)

var customPlugin = envoytest.Plugin{Name: authzconfig.CustomPluginName, Factory: authz.CustomFactory, Parser: authz.Parser{}}

// TestCustomInChain: the Envoy path of CUSTOM. The CUSTOM-match filter marks the requests a
// CUSTOM rule matches with the metadata istiod's shadow RBAC filter sets (what the provider's
// ext_authz filter_enabled_metadata matches), denies those whose provider the mesh config
// lacks, and leaves the others alone; the authz filter after it decides DENY and ALLOW only,
// never calling a provider. The providers' addresses are closed ports: a call would fail.
func TestCustomInChain(t *testing.T) {
	mesh := `extensionProviders:
- name: opa
  envoyExtAuthzGrpc: {service: opa.shop.svc.cluster.local, port: 9191, timeout: 10s}
- name: oauth2-proxy
  envoyExtAuthzHttp: {service: oauth2-proxy.shop.svc.cluster.local, port: 4180, timeout: 10s}
- name: down
  envoyExtAuthzGrpc: {service: 127.0.0.1, port: 1, timeout: 5s, statusOnError: "503"}
- name: down-open
  envoyExtAuthzHttp: {service: 127.0.0.1, port: 1, timeout: 5s, failOpen: true}
- name: slow
  envoyExtAuthzHttp: {service: 127.0.0.1, port: 1, timeout: 0.2s}
`
	h := envoytest.NewHost(nil)
	a, err := authzconfig.EncodeConfig(&authzconfig.Config{Namespace: "shop", Gateway: "waypoint", GatewayClass: "istio-waypoint",
		Policies: policyFiles(t, "testdata/custom/policies.yaml"), Providers: providersOf(t, mesh), CustomInChain: true})
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := h.Parse(customPlugin, a)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := h.Parse(plugin, a)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, method, path string
		id, result         string // the metadata the CUSTOM-match filter sets
		matchDeny          string // its deny details, if it denies
		status             int    // the authz filter's answer after it (0: continued)
	}{
		{name: "OPA's rule", method: "GET", path: "/admin/users", id: "istio-ext-authz-opa-ns[shop]-policy[ext-opa]-rule[0]", result: "allowed"},
		{name: "OPA's rule, then DENY", method: "GET", path: "/admin/secret", id: "istio-ext-authz-opa-ns[shop]-policy[ext-opa]-rule[0]", result: "allowed", status: 403},
		{name: "OPA's rule, no ALLOW", method: "POST", path: "/admin/users", id: "istio-ext-authz-opa-ns[shop]-policy[ext-opa]-rule[0]", result: "allowed", status: 403},
		{name: "the HTTP provider's rule", method: "GET", path: "/account/me", id: "istio-ext-authz-oauth2-proxy-ns[shop]-policy[ext-oauth]-rule[0]", result: "allowed"},
		{name: "a provider that is down is not called here", method: "GET", path: "/broken/x", id: "istio-ext-authz-down-ns[shop]-policy[ext-down]-rule[0]", result: "allowed"},
		{name: "no CUSTOM rule", method: "GET", path: "/catalog", result: "denied"},
		{name: "provider not in the mesh config", method: "GET", path: "/missing/x",
			matchDeny: "rbac_access_denied_matched_policy[ns[shop]-policy[ext-missing]-rule[0]]"},
	} {
		t.Run(c.name, func(t *testing.T) {
			req := httptest.NewRequest(c.method, "http://shop:8080"+c.path, nil)
			resp := h.Do(customPlugin, ccfg, req, fromPeer(web))
			if c.matchDeny != "" {
				if lr := resp.LocalReply; lr == nil || lr.Status != 403 || lr.Details != c.matchDeny {
					t.Fatalf("CUSTOM-match filter: %+v, want 403 %s", resp.LocalReply, c.matchDeny)
				}
				return
			}
			if !resp.Continued {
				t.Fatalf("CUSTOM-match filter denied: %+v", resp.LocalReply)
			}
			md := resp.Metadata[authzconfig.CustomMetadataFilter]
			if got, _ := md[authzconfig.CustomPolicyIDKey].(string); got != c.id {
				t.Errorf("%s = %q, want %q", authzconfig.CustomPolicyIDKey, got, c.id)
			}
			if got, _ := md[authzconfig.CustomResultKey].(string); got != c.result {
				t.Errorf("%s = %q, want %q", authzconfig.CustomResultKey, got, c.result)
			}
			st := fromPeer(web)
			st.DynamicMetadata = resp.Metadata
			after := h.Do(plugin, cfg, httptest.NewRequest(c.method, "http://shop:8080"+c.path, nil), st)
			switch {
			case c.status == 0 && !after.Continued:
				t.Errorf("authz filter denied: %+v", after.LocalReply)
			case c.status != 0 && (after.LocalReply == nil || after.LocalReply.Status != c.status):
				t.Errorf("authz filter: %+v, want %d", after.LocalReply, c.status)
			}
		})
	}

	// The CUSTOM-match mode refuses a config whose authz filter would call the providers too.
	plain, err := authzconfig.EncodeConfig(&authzconfig.Config{Namespace: "shop", Gateway: "waypoint", Policies: policyFiles(t, "testdata/custom/policies.yaml")})
	if err != nil {
		t.Fatal(err)
	}
	pcfg, err := h.Parse(customPlugin, plain)
	if err != nil {
		t.Fatal(err)
	}
	if resp := h.Do(customPlugin, pcfg, httptest.NewRequest("GET", "http://shop:8080/catalog", nil), fromPeer(web)); resp.Continued {
		t.Error("CUSTOM-match filter without customInChain let a request through")
	}
}
