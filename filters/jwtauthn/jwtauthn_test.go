package jwtauthn

import (
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/goambient/goambient/filters/jwtauthn/jwttest"
)

// req is a request for the filter: headers by lower-case name.
type req struct {
	method, path, host string
	h                  map[string]string
}

func (r *req) Method() string    { return r.method }
func (r *req) Path() string      { return r.path }
func (r *req) Authority() string { return r.host }
func (r *req) Header(n string) (string, bool) {
	v, ok := r.h[n]
	return v, ok
}
func (r *req) Set(n, v string) { r.h[n] = v }
func (r *req) Del(n string)    { delete(r.h, n) }

func get(path string, h map[string]string) *req {
	if h == nil {
		h = map[string]string{}
	}
	return &req{method: "GET", path: path, host: "app.default", h: h}
}

func bearer(t string) map[string]string { return map[string]string{"authorization": "Bearer " + t} }

// istioConfig is istiod's convertToEnvoyJwtConfig for one jwtRule: origins-0, OR{provider,
// allow_missing} on prefix "/", payload_in_metadata "payload".
func istioConfig(p *jwtv3.JwtProvider) *jwtv3.JwtAuthentication {
	p.PayloadInMetadata = "payload"
	p.NormalizePayloadInMetadata = &jwtv3.JwtProvider_NormalizePayload{SpaceDelimitedClaims: []string{"scope", "permission"}}
	return &jwtv3.JwtAuthentication{
		Providers: map[string]*jwtv3.JwtProvider{"origins-0": p},
		Rules: []*jwtv3.RequirementRule{{
			Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			RequirementType: &jwtv3.RequirementRule_Requires{Requires: &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAny{
				RequiresAny: &jwtv3.JwtRequirementOrList{Requirements: []*jwtv3.JwtRequirement{
					{RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: "origins-0"}},
					{RequiresType: &jwtv3.JwtRequirement_AllowMissing{AllowMissing: &emptypb.Empty{}}},
				}},
			}}},
		}},
		BypassCorsPreflight: true,
	}
}

func local(iss *jwttest.Issuer) *jwtv3.JwtProvider {
	return &jwtv3.JwtProvider{Issuer: iss.Iss, JwksSourceSpecifier: &jwtv3.JwtProvider_LocalJwks{
		LocalJwks: &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: iss.JWKS()}}}}
}

func remote(uri string, timeout time.Duration) *jwtv3.JwtProvider {
	return &jwtv3.JwtProvider{Issuer: "https://issuer.test", JwksSourceSpecifier: &jwtv3.JwtProvider_RemoteJwks{RemoteJwks: &jwtv3.RemoteJwks{
		HttpUri:       &core.HttpUri{Uri: uri, HttpUpstreamType: &core.HttpUri_Cluster{Cluster: "outbound|80||issuer.test"}, Timeout: durationpb.New(timeout)},
		CacheDuration: durationpb.New(300 * time.Second),
	}}}
}

func compile(t *testing.T, c *jwtv3.JwtAuthentication, o Options) *Filter {
	t.Helper()
	f, err := Compile(c, o)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestIstioSemantics(t *testing.T) {
	iss := jwttest.New("https://issuer.test")
	p := local(iss)
	p.Audiences = []string{"app"}
	f := compile(t, istioConfig(p), Options{})
	other := jwttest.New("https://other.test")
	valid := iss.Sign(map[string]any{"sub": "alice", "aud": "app", "groups": []string{"admins"}, "scope": "read write", "org": map[string]any{"team": "a"}})

	for _, tc := range []struct {
		name    string
		r       *req
		status  int
		body    string
		payload bool
	}{
		{"no token passes, no payload", get("/", nil), 0, "", false},
		{"valid", get("/x?y=1", bearer(valid)), 0, "", true},
		{"valid in access_token", get("/x?access_token="+valid, nil), 0, "", true},
		{"forged signature", get("/", bearer(jwttest.SignWith(jwttest.Forger("key-1"), iss.Iss, map[string]any{"sub": "alice", "aud": "app"}))), 401, "Jwt verification fails", false},
		{"expired", get("/", bearer(iss.Sign(map[string]any{"sub": "a", "aud": "app", "exp": time.Now().Add(-2 * time.Minute).Unix()}))), 401, "Jwt is expired", false},
		{"expired within the clock skew", get("/", bearer(iss.Sign(map[string]any{"sub": "a", "aud": "app", "exp": time.Now().Add(-30 * time.Second).Unix()}))), 0, "", true},
		{"not yet valid", get("/", bearer(iss.Sign(map[string]any{"sub": "a", "aud": "app", "nbf": time.Now().Add(5 * time.Minute).Unix()}))), 401, "Jwt not yet valid", false},
		{"other issuer", get("/", bearer(other.Sign(map[string]any{"sub": "a", "aud": "app"}))), 401, "Jwt issuer is not configured", false},
		{"wrong audience", get("/", bearer(iss.Sign(map[string]any{"sub": "a", "aud": "other"}))), 403, "Audiences in Jwt are not allowed", false},
		{"not a JWT", get("/", bearer("abc")), 401, "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections", false},
		{"garbage with dots", get("/", bearer("a.b.c")), 401, "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections", false},
		{"CORS preflight bypasses", &req{method: "OPTIONS", path: "/", host: "h", h: map[string]string{"origin": "x", "access-control-request-method": "GET", "authorization": "Bearer abc"}}, 0, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := f.Decode(context.Background(), tc.r)
			if tc.status == 0 {
				if res.Reply != nil {
					t.Fatalf("denied: %+v", res.Reply)
				}
			} else {
				if res.Reply == nil {
					t.Fatal("passed")
				}
				if res.Reply.Status != tc.status || res.Reply.Body != tc.body || res.Reply.Details != "jwt_authn_access_denied{"+strings.ReplaceAll(tc.body, " ", "_")+"}" {
					t.Fatalf("reply %+v, want %d %q", res.Reply, tc.status, tc.body)
				}
				if tc.status == 401 && !strings.HasPrefix(res.Reply.Headers[0][1], `Bearer realm="http://app.default/"`) {
					t.Fatalf("www-authenticate %q", res.Reply.Headers)
				}
			}
			if got := res.Payloads["payload"] != nil; got != tc.payload {
				t.Fatalf("payload %v, want %v", res.Payloads, tc.payload)
			}
		})
	}

	r := get("/", bearer(valid))
	res := f.Decode(context.Background(), r)
	if _, kept := r.h["authorization"]; !kept {
		t.Fatal("Decode changed the request; Apply should")
	}
	res.Apply(r)
	pl := res.Payloads["payload"].(map[string]any)
	if pl["sub"] != "alice" || pl["iss"] != iss.Iss || pl["org"].(map[string]any)["team"] != "a" {
		t.Fatalf("payload %v", pl)
	}
	if s, _ := pl["scope"].([]any); len(s) != 2 || s[1] != "write" {
		t.Fatalf("scope not normalised: %v", pl["scope"])
	}
	if _, still := r.h["authorization"]; still {
		t.Fatal("the token was forwarded without forwardOriginalToken")
	}
}

func TestLocationsAndHeaders(t *testing.T) {
	iss := jwttest.New("https://issuer.test")
	p := local(iss)
	p.FromHeaders = []*jwtv3.JwtHeader{{Name: "x-jwt", ValuePrefix: "Token "}}
	p.FromCookies = []string{"session"}
	p.Forward = true
	p.ForwardPayloadHeader = "x-jwt-payload"
	p.ClaimToHeaders = []*jwtv3.JwtClaimToHeader{{HeaderName: "x-sub", ClaimName: "sub"}, {HeaderName: "x-team", ClaimName: "org.team"}}
	f := compile(t, istioConfig(p), Options{})
	tok := iss.Sign(map[string]any{"sub": "bob", "org": map[string]any{"team": "blue"}})

	r := get("/", map[string]string{"x-jwt": "Token " + tok})
	res := f.Decode(context.Background(), r)
	if res.Reply != nil || res.Payloads == nil {
		t.Fatalf("from header: %+v", res)
	}
	res.Apply(r)
	if r.h["x-jwt"] == "" || r.h["x-sub"] != "bob" || r.h["x-team"] != "blue" || r.h["x-jwt-payload"] == "" {
		t.Fatalf("headers %v", r.h)
	}
	if res := f.Decode(context.Background(), get("/", map[string]string{"cookie": "a=b; session=" + tok})); res.Payloads == nil {
		t.Fatalf("from cookie: %+v", res)
	}
	// The default locations are replaced: a bearer token is not looked at.
	if res := f.Decode(context.Background(), get("/", bearer("garbage"))); res.Reply != nil || res.Payloads != nil {
		t.Fatalf("authorization read though fromHeaders is set: %+v", res)
	}
}

// TestRotation: the issuer publishes a new key and signs with it; the first token with the new
// kid makes the cached JWKS refetch (once), and once the old key is dropped and the cache
// refreshed, tokens signed with it fail.
func TestRotation(t *testing.T) {
	iss := jwttest.New("https://issuer.test")
	srv := httptest.NewServer(iss)
	defer srv.Close()
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	f := compile(t, istioConfig(remote(srv.URL+"/jwks", 2*time.Second)), Options{Now: clock, Remote: RemoteOptions{Now: clock, MinRefetch: time.Second}})

	old := iss.Sign(map[string]any{"sub": "a"})
	if res := f.Decode(context.Background(), get("/", bearer(old))); res.Reply != nil {
		t.Fatalf("first key: %+v", res.Reply)
	}
	iss.Rotate(false)
	fresh := iss.Sign(map[string]any{"sub": "a"})
	advance(2 * time.Second)
	if res := f.Decode(context.Background(), get("/", bearer(fresh))); res.Reply != nil {
		t.Fatalf("rotated key: %+v", res.Reply)
	}
	if h := iss.Hits(); h != 2 {
		t.Fatalf("%d JWKS fetches, want 2 (first use, unknown kid)", h)
	}
	iss.Rotate(true) // key-1 and key-2 withdrawn
	advance(301 * time.Second)
	if res := f.Decode(context.Background(), get("/", bearer(old))); res.Reply == nil || res.Reply.Body != "Jwks doesn't have key to match kid or alg from Jwt" {
		t.Fatalf("withdrawn key: %+v", res)
	}
}

// TestJWKSDownSlowGarbage: an issuer that is down, slow or answers garbage never lets a token
// through, a request waits at most the fetch timeout, requests without a token are never held
// up, concurrent requests cause one fetch, and the goroutines come back.
func TestJWKSDownSlowGarbage(t *testing.T) {
	base := runtime.NumGoroutine()
	iss := jwttest.New("https://issuer.test")
	release := make(chan struct{})
	srv := httptest.NewServer(iss)
	tok := iss.Sign(map[string]any{"sub": "a"})

	for _, tc := range []struct {
		name string
		f    func(w http.ResponseWriter, r *http.Request) bool
	}{
		{"garbage", func(w http.ResponseWriter, r *http.Request) bool { _, _ = w.Write([]byte("<html>nope")); return true }},
		{"error status", func(w http.ResponseWriter, r *http.Request) bool { w.WriteHeader(500); return true }},
		{"no usable key", func(w http.ResponseWriter, r *http.Request) bool {
			_, _ = w.Write([]byte(`{"keys":[{"kty":"XX"}]}`))
			return true
		}},
		{"too large", func(w http.ResponseWriter, r *http.Request) bool {
			_, _ = w.Write([]byte(`{"keys":[` + strings.Repeat(" ", MaxJWKSBytes) + `]}`))
			return true
		}},
		{"slow", func(w http.ResponseWriter, r *http.Request) bool {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return true
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			iss.Override(tc.f)
			before := iss.Hits()
			f := compile(t, istioConfig(remote(srv.URL+"/jwks", 300*time.Millisecond)), Options{})
			var wg sync.WaitGroup
			results := make(chan Result, 20)
			for range 20 {
				wg.Go(func() { results <- f.Decode(context.Background(), get("/", bearer(tok))) })
			}
			// While the fetch is running (or stuck), a request without a token passes at once.
			done := make(chan Result, 1)
			go func() { done <- f.Decode(context.Background(), get("/", nil)) }()
			select {
			case res := <-done:
				if res.Reply != nil {
					t.Fatalf("no token: %+v", res.Reply)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("a request without a token waited for the JWKS")
			}
			wg.Wait()
			close(results)
			for res := range results {
				if res.Reply == nil || res.Reply.Status != 401 || res.Reply.Body != "Jwks remote fetch is failed" {
					t.Fatalf("token passed or wrong reply: %+v", res)
				}
			}
			if n := iss.Hits() - before; n != 1 {
				t.Fatalf("%d fetches for 20 concurrent requests, want 1", n)
			}
		})
	}
	t.Run("down", func(t *testing.T) {
		srv.Close()
		f := compile(t, istioConfig(remote(srv.URL+"/jwks", 300*time.Millisecond)), Options{})
		if res := f.Decode(context.Background(), get("/", bearer(tok))); res.Reply == nil || res.Reply.Status != 401 {
			t.Fatalf("issuer down: %+v", res)
		}
	})
	t.Run("request deadline bounds the wait", func(t *testing.T) {
		iss2 := jwttest.New("https://issuer.test")
		stuck := make(chan struct{})
		iss2.Override(func(w http.ResponseWriter, r *http.Request) bool {
			select {
			case <-stuck:
			case <-r.Context().Done():
			}
			return true
		})
		s2 := httptest.NewServer(iss2)
		defer s2.Close()
		defer close(stuck)
		f := compile(t, istioConfig(remote(s2.URL, 30*time.Second)), Options{})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if res := f.Decode(ctx, get("/", bearer(iss2.Sign(map[string]any{"sub": "a"})))); res.Reply == nil || res.Reply.Status != 401 {
			t.Fatalf("passed: %+v", res)
		}
	})
	close(release)
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base+4 && time.Now().Before(deadline) {
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base+4 {
		t.Fatalf("%d goroutines, %d before", n, base)
	}
}

func TestCompileRefuses(t *testing.T) {
	iss := jwttest.New("https://issuer.test")
	bad := istioConfig(local(iss))
	bad.Rules[0].RequirementType = &jwtv3.RequirementRule_Requires{Requires: &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: "nope"}}}
	if _, err := Compile(bad, Options{}); err == nil || !strings.Contains(err.Error(), `provider_name "nope"`) {
		t.Fatalf("err %v", err)
	}
	noKeys := istioConfig(&jwtv3.JwtProvider{Issuer: "x"})
	if _, err := Compile(noKeys, Options{}); err == nil {
		t.Fatal("a provider without keys compiled")
	}
}

// TestIstioTwoProviders is istiod's config for two jwtRules (what waypointxds emits, see
// xdsserver/waypointxds/testdata/jwt.out.yaml): OR{P0, P1, AND{OR{P0, missing}, OR{P1,
// missing}}}, both providers reading the Authorization header. A token of either issuer is
// accepted (the outer OR), no token passes, a token of a third issuer or a forged one is 401.
func TestIstioTwoProviders(t *testing.T) {
	a, b, c := jwttest.New("https://a.test"), jwttest.New("https://b.test"), jwttest.New("https://c.test")
	pa, pb := local(a), local(b)
	for _, p := range []*jwtv3.JwtProvider{pa, pb} {
		p.PayloadInMetadata = "payload"
	}
	name := func(n string) *jwtv3.JwtRequirement {
		return &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: n}}
	}
	orMissing := func(n string) *jwtv3.JwtRequirement {
		return &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAny{RequiresAny: &jwtv3.JwtRequirementOrList{
			Requirements: []*jwtv3.JwtRequirement{name(n), {RequiresType: &jwtv3.JwtRequirement_AllowMissing{AllowMissing: &emptypb.Empty{}}}}}}}
	}
	cfg := &jwtv3.JwtAuthentication{
		Providers: map[string]*jwtv3.JwtProvider{"origins-0": pa, "origins-1": pb},
		Rules: []*jwtv3.RequirementRule{{
			Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			RequirementType: &jwtv3.RequirementRule_Requires{Requires: &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAny{
				RequiresAny: &jwtv3.JwtRequirementOrList{Requirements: []*jwtv3.JwtRequirement{
					name("origins-0"), name("origins-1"),
					{RequiresType: &jwtv3.JwtRequirement_RequiresAll{RequiresAll: &jwtv3.JwtRequirementAndList{
						Requirements: []*jwtv3.JwtRequirement{orMissing("origins-0"), orMissing("origins-1")}}}},
				}},
			}}},
		}},
	}
	f := compile(t, cfg, Options{})
	for _, tc := range []struct {
		name   string
		h      map[string]string
		status int
		iss    string
	}{
		{"issuer a", bearer(a.Sign(map[string]any{"sub": "x"})), 0, "https://a.test"},
		{"issuer b", bearer(b.Sign(map[string]any{"sub": "x"})), 0, "https://b.test"},
		{"no token", nil, 0, ""},
		{"issuer c", bearer(c.Sign(map[string]any{"sub": "x"})), 401, ""},
		{"forged a", bearer(jwttest.SignWith(jwttest.Forger("key-1"), "https://a.test", map[string]any{"sub": "x"})), 401, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := f.Decode(context.Background(), get("/", tc.h))
			if tc.status == 0 && res.Reply != nil || tc.status != 0 && (res.Reply == nil || res.Reply.Status != tc.status) {
				t.Fatalf("reply %+v, want status %d", res.Reply, tc.status)
			}
			if tc.iss != "" {
				if p, _ := res.Payloads["payload"].(map[string]any); p["iss"] != tc.iss {
					t.Fatalf("payload %v", res.Payloads)
				}
			}
		})
	}
}
