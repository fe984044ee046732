package integration

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestJWTScenario plays manifests/examples/jwt through the real binaries: the meshctl binary
// runs its demo, which builds and starts xdsserver (the files source, the istio ConfigMap's
// mesh config), two ztunnels and the embedded waypoint, with OPA's Authorization API on the
// pod opa; every call of the README is checked (tokens signed with the example's issuer key,
// one forged): no token 403, forged 401, valid without the claim 403, valid with it 200, then
// /admin/* decided by OPA through the mesh.
func TestJWTScenario(t *testing.T) {
	bins := buildBinaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins["meshctl"], "demo", "--scenario", "jwt", "--root", "..")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "jwt: all 8 checks passed") {
		t.Fatalf("meshctl demo --scenario jwt: %v\n%s", err, out)
	}
	for _, want := range []string{"401 Unauthorized  \"Jwt verification fails\"", "response_code_details=jwt_authn_access_denied{Jwt_verification_fails}",
		"403 Forbidden  \"opa: admin is for alice\"", "response_code_details=ext_authz_denied"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the demo's output lacks %q", want)
		}
	}
}
