package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/goambient/goambient/filters/jwtauthn/jwttest"
)

// TestAuthzJWT: meshctl authz check --jwt validates a token offline with the jwt scenario's
// RequestAuthentication and decides with its claims; the tokens are signed with the
// scenario's issuer key, or forged.
func TestAuthzJWT(t *testing.T) {
	dir := examples + "jwt/"
	var k jose.JSONWebKey
	data, err := os.ReadFile(dir + "issuer-key.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &k); err != nil {
		t.Fatal(err)
	}
	const iss = "https://issuer.goambient.local"
	admin := jwttest.SignWith(&k, iss, map[string]any{"sub": "alice", "aud": "appb", "groups": []string{"admins"}})
	dev := jwttest.SignWith(&k, iss, map[string]any{"sub": "bob", "aud": "appb", "groups": []string{"dev"}})
	forged := jwttest.SignWith(jwttest.Forger("demo-1"), iss, map[string]any{"sub": "alice", "aud": "appb", "groups": []string{"admins"}})

	// A jwksUri RequestAuthentication, checked offline with --jwks.
	remote := filepath.Join(t.TempDir(), "remote.yaml")
	pol, _ := os.ReadFile(dir + "require-jwt.yaml")
	if err := os.WriteFile(remote, append([]byte(strings.ReplaceAll(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: remote}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  jwtRules: [{issuer: ISS, jwksUri: "https://issuer.goambient.local/jwks"}]
---
`, "ISS", iss)), pol...), 0o644); err != nil {
		t.Fatal(err)
	}
	pub := filepath.Join(t.TempDir(), "jwks.json")
	set, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{k.Public()}})
	if err := os.WriteFile(pub, set, 0o644); err != nil {
		t.Fatal(err)
	}

	at := []string{"authz", "check", "-f", dir, "--waypoint", "default/waypoint", "--service", "appb", "--method", "GET", "--path", "/headers", "--host", "appb:8000"}
	for _, c := range []struct {
		name string
		args []string
		code int
		out  []string
	}{
		{"valid with the claim", append(at, "--jwt", admin), 0,
			[]string{"RequestAuthentications [default/jwt]", "JWT: valid, verified by [origins-0 (https://issuer.goambient.local)]: request.auth.principal=https://issuer.goambient.local/alice", "ALLOW  reason=allow-matched policy=default/require-jwt"}},
		{"valid without the claim", append(at, "--jwt", dev), 1, []string{"JWT: valid", "DENY  reason=no-allow-matched"}},
		{"forged", append(at, "--jwt", forged), 1, []string{"JWT: DENY 401 Jwt verification fails", "jwt_authn_access_denied{Jwt_verification_fails}"}},
		{"no RequestAuthentication at another waypoint", []string{"authz", "check", "-f", dir, "--waypoint", "other/waypoint", "--jwt", admin}, 0,
			[]string{"no RequestAuthentication applies here"}},
		{"remote JWKS needs --jwks", []string{"authz", "check", "-f", remote, "--waypoint", "default/waypoint", "--jwt", admin}, 2, []string{"give them with --jwks FILE"}},
		{"remote JWKS with --jwks", []string{"authz", "check", "-f", remote, "--waypoint", "default/waypoint", "--jwt", admin, "--jwks", pub}, 0,
			[]string{"JWT: valid", "ALLOW"}},
		{"--jwt with --claim", append(at, "--jwt", admin, "--claim", "a=b"), 2, []string{"give one"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(c.args, &out, &errOut)
			all := out.String() + errOut.String()
			if code != c.code {
				t.Errorf("exit %d, want %d\n%s", code, c.code, all)
			}
			for _, want := range c.out {
				if !strings.Contains(all, want) {
					t.Errorf("output lacks %q:\n%s", want, all)
				}
			}
		})
	}
}
