package policies

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzLoad: any input is loaded or reported, never a panic, and what loads compiles and evaluates.
func FuzzLoad(f *testing.F) {
	seeds, _ := filepath.Glob("../manifests/examples/*/*.yaml")
	seeds = append(seeds, "testdata/invalid.yaml")
	for _, s := range seeds {
		if data, err := os.ReadFile(s); err == nil {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, errs := Load(data, "fuzz")
		for _, e := range errs {
			if e.Error() == "" {
				t.Fatal("empty error message")
			}
		}
		e := Compile(objs.AuthorizationPolicies, Options{})
		r := Request{Principal: "cluster.local/ns/a/sa/b", Method: "GET", Path: "/x", Target: Target{Namespace: "default"}}
		e.Decide(&r)
		r.Target = Target{Namespace: "default", Waypoint: true, Gateway: "waypoint", Service: "svc"}
		e.Decide(&r)
		_ = ToZtunnel(objs, Options{})
	})
}

// FuzzEvaluate: any request against the examples' and the test policies decides without
// panicking, a deny always has details, and path normalisation is idempotent.
func FuzzEvaluate(f *testing.F) {
	objs, _ := LoadPath("../manifests/examples")
	more, _ := Load([]byte(fuzzPolicies), "fuzz")
	objs.Append(more)
	e := Compile(objs.AuthorizationPolicies, Options{})
	f.Add("cluster.local/ns/handson/sa/curl", "POST", "/a/../b?x", "handson", true, "handson", `{"groups":["a"]}`, "x-env=prod")
	f.Add("", "GET", "/%2e%2E/%00", "default", false, "", "", "")
	// Reproducers of non-idempotent normalisation (a stray '%' before escapes it later forms).
	f.Add("cluster.local/ns/shop/sa/client", "GET", "%7%41", "handson", true, "handson", "", "x-env=")
	f.Add("td/ns/a/extra/sa/b", "GET", "/a/%2%65%2%65/b", "default", false, "", `{"azp":["a","b"]}`, "")
	f.Fuzz(func(t *testing.T, principal, method, path, ns string, waypoint bool, gw, claims, header string) {
		p, err := NormalizePath(path)
		if err == nil {
			if again, err := NormalizePath(p); err != nil || again != p {
				t.Fatalf("NormalizePath(%q) = %q, then %q, %v", path, p, again, err)
			}
		}
		r := Request{Principal: principal, Method: method, Path: p, Target: Target{Namespace: ns, Waypoint: waypoint, Gateway: gw, Labels: map[string]string{"app": gw}}}
		var c map[string]any
		if json.Unmarshal([]byte(claims), &c) == nil {
			r.Auth = RequestAuth{Issuer: "iss", Subject: "sub", Claims: c}
		}
		if k, v, ok := strings.Cut(header, "="); ok {
			r.Headers = map[string]string{strings.ToLower(k): v}
		}
		d := e.Decide(&r)
		if !d.Allowed && d.Details == "" {
			t.Fatalf("a denial without details: %+v", d)
		}
		_ = e.Explain(&r)
	})
}

const fuzzPolicies = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mixed, namespace: handson}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["iss/*"], namespaces: ["hand*"]}}]
    to: [{operation: {paths: ["/{*}/{**}"], notMethods: [DELETE]}}]
    when: [{key: "request.auth.claims[groups]", values: [a]}, {key: "request.headers[x-env]", notValues: [prod]}]
`
