package app

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/goambient/goambient/filters/extauthz/opaserver"
	"github.com/goambient/goambient/filters/jwtauthn/jwttest"
)

const jwtDir = "../../../manifests/examples/jwt/"

func jwtFile(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(jwtDir + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// demoToken signs claims with the jwt scenario's issuer key (issuer-key.json).
func demoToken(t testing.TB, claims map[string]any) string {
	t.Helper()
	var k jose.JSONWebKey
	if err := json.Unmarshal([]byte(jwtFile(t, "issuer-key.json")), &k); err != nil {
		t.Fatal(err)
	}
	return jwttest.SignWith(&k, "https://issuer.goambient.local", claims)
}

// TestJWTScenario plays manifests/examples/jwt's RequestAuthentication and policy through the
// embedded waypoint (peers: xdsserver's translation over a go-control-plane ADS server, appb
// behind HBONE): no token 403, a forged token 401 with Envoy's body and details, a valid
// token without the groups claim 403, with it 200; the token is not forwarded upstream.
func TestJWTScenario(t *testing.T) {
	t.Parallel()
	f := setupTraffic(t, 1)
	f.apply(t, jwtFile(t, "request-authentication.yaml")+"\n---\n"+jwtFile(t, "require-jwt.yaml"))
	eventually(t, "the jwt_authn filter", func() bool {
		tb := f.wp.Store.Load().Tables[appbAll]
		return tb != nil && tb.JWT != nil
	})
	forged := jwttest.SignWith(jwttest.Forger("demo-1"), "https://issuer.goambient.local", map[string]any{"sub": "mallory", "aud": "appb", "groups": []string{"admins"}})
	for _, c := range []struct {
		name    string
		token   string
		status  int
		body    string
		details string
	}{
		{"no token", "", 403, "RBAC: access denied", "rbac_access_denied_matched_policy[none]"},
		{"forged", forged, 401, "Jwt verification fails", "jwt_authn_access_denied{Jwt_verification_fails}"},
		{"expired", demoToken(t, map[string]any{"sub": "alice", "aud": "appb", "exp": 1000}), 401, "Jwt is expired", "jwt_authn_access_denied{Jwt_is_expired}"},
		{"other audience", demoToken(t, map[string]any{"sub": "alice", "aud": "other", "groups": []string{"admins"}}), 403, "Audiences in Jwt are not allowed", "jwt_authn_access_denied{Audiences_in_Jwt_are_not_allowed}"},
		{"valid without the claim", demoToken(t, map[string]any{"sub": "bob", "aud": "appb", "groups": []string{"dev"}}), 403, "RBAC: access denied", "rbac_access_denied_matched_policy[none]"},
		{"valid with the claim", demoToken(t, map[string]any{"sub": "alice", "aud": "appb", "groups": []string{"dev", "admins"}}), 200, "", "via_upstream"},
	} {
		t.Run(c.name, func(t *testing.T) {
			hdr := map[string]string{}
			if c.token != "" {
				hdr["Authorization"] = "Bearer " + c.token
			}
			r := f.client(t, "").send(t, "GET", "/headers", "", hdr)
			if r.code != c.status || c.body != "" && r.body != c.body {
				t.Fatalf("%d %q, want %d %q", r.code, r.body, c.status, c.body)
			}
			if c.status == http.StatusUnauthorized && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), `Bearer realm="http://appb:8000/headers"`) {
				t.Errorf("www-authenticate %q", r.header.Get("WWW-Authenticate"))
			}
			if c.status == 200 {
				var s seen
				if err := json.Unmarshal([]byte(r.body), &s); err != nil {
					t.Fatal(err)
				}
				if _, fwd := s.Headers["Authorization"]; fwd {
					t.Error("the token was forwarded upstream (forwardOriginalToken is false)")
				}
			}
			es := f.log.entries(t)
			if got := logField(es[len(es)-1], "response_code_details"); got != c.details {
				t.Errorf("response_code_details %q, want %q", got, c.details)
			}
		})
	}
}

// TestJWTScenarioCustom is the scenario's CUSTOM step through the embedded waypoint: /admin/*
// goes to OPA (opaserver: Envoy's Authorization API on OPA's Go API, with the scenario's Rego
// policy, on loopback), which lets alice in and answers others with its own 403; other paths
// never reach OPA.
func TestJWTScenarioCustom(t *testing.T) {
	t.Parallel()
	rego := jwtFile(t, "opa-policy.rego")
	opa, err := opaserver.New(context.Background(), rego, "")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = opa.Serve(l) }()
	t.Cleanup(opa.Stop)
	mc := strings.NewReplacer("opa.default.svc.cluster.local", "127.0.0.1", "9191", strconv.Itoa(l.Addr().(*net.TCPAddr).Port)).
		Replace(jwtFile(t, "mesh-config.yaml"))

	f := setupTraffic(t, 2)
	f.apply(t, strings.Join([]string{jwtFile(t, "request-authentication.yaml"), jwtFile(t, "require-jwt.yaml"), mc, jwtFile(t, "custom-admin.yaml")}, "\n---\n"))
	alice := demoToken(t, map[string]any{"sub": "alice", "aud": "appb", "groups": []string{"admins"}})
	bob := demoToken(t, map[string]any{"sub": "bob", "aud": "appb", "groups": []string{"admins"}})
	for _, c := range []struct {
		name, token, path string
		status            int
		body, details     string
	}{
		{"alice on /admin", alice, "/admin/headers", 200, "", "via_upstream"},
		{"bob on /admin: OPA's 403", bob, "/admin/headers", 403, "opa: admin is for alice", "ext_authz_denied"},
		{"no token on /admin: OPA's 403", "", "/admin/headers", 403, "opa: admin is for alice", "ext_authz_denied"},
		{"bob elsewhere", bob, "/headers", 200, "", "via_upstream"},
	} {
		t.Run(c.name, func(t *testing.T) {
			hdr := map[string]string{}
			if c.token != "" {
				hdr["Authorization"] = "Bearer " + c.token
			}
			r := f.client(t, "").send(t, "GET", c.path, "", hdr)
			if r.code != c.status || c.body != "" && r.body != c.body {
				t.Fatalf("%d %q, want %d %q", r.code, r.body, c.status, c.body)
			}
			if c.status == 403 && r.header.Get("X-Opa-Decision") != "denied" {
				t.Errorf("OPA's header is missing: %v", r.header)
			}
			es := f.log.entries(t)
			if got := logField(es[len(es)-1], "response_code_details"); got != c.details {
				t.Errorf("response_code_details %q, want %q", got, c.details)
			}
		})
	}
}
