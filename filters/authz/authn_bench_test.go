package authz_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	"sigs.k8s.io/yaml"

	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/envoytest"
	"github.com/goambient/goambient/filters/extauthz/opaserver"
	"github.com/goambient/goambient/filters/jwtauthn"
	"github.com/goambient/goambient/filters/jwtauthn/jwttest"
	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/policies/extprovider"
	"github.com/goambient/goambient/xdsserver/waypointxds"
)

const jwtScenario = "../../manifests/examples/jwt/"

// authnBench is the jwt scenario at the waypoint: its policies (require-jwt, and the CUSTOM
// policy for /admin/* when withOPA) on the fake host, OPA's Authorization server on loopback
// with the scenario's Rego, the RequestAuthentication's jwt_authn compiled, and a token of
// alice (groups admins).
type authnBench struct {
	h      *envoytest.Host
	cfg    any
	jwt    *jwtauthn.Filter
	token  string
	claims map[string]any
}

func newAuthnBench(b *testing.B, withOPA bool) *authnBench {
	b.Helper()
	files := []string{jwtScenario + "require-jwt.yaml"}
	var providers []extprovider.Provider
	if withOPA {
		rego, err := os.ReadFile(jwtScenario + "opa-policy.rego")
		if err != nil {
			b.Fatal(err)
		}
		opa, err := opaserver.New(context.Background(), string(rego), "")
		if err != nil {
			b.Fatal(err)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		go func() { _ = opa.Serve(l) }()
		b.Cleanup(opa.Stop)
		raw, err := os.ReadFile(jwtScenario + "mesh-config.yaml")
		if err != nil {
			b.Fatal(err)
		}
		var cm struct {
			Data map[string]string `json:"data"`
		}
		if err := yaml.Unmarshal(raw, &cm); err != nil {
			b.Fatal(err)
		}
		mc := strings.NewReplacer("opa.default.svc.cluster.local", "127.0.0.1", "9191", strconv.Itoa(l.Addr().(*net.TCPAddr).Port)).Replace(cm.Data["mesh"])
		providers = providersOf(b, mc)
		files = append(files, jwtScenario+"custom-admin.yaml")
	}
	ab := &authnBench{h: envoytest.NewHost(nil)}
	a, err := authzconfig.EncodeConfig(&authzconfig.Config{Namespace: "default", Gateway: "waypoint", GatewayClass: "istio-waypoint",
		Policies: policyFiles(b, files...), Providers: providers})
	if err != nil {
		b.Fatal(err)
	}
	if ab.cfg, err = ab.h.Parse(plugin, a); err != nil {
		b.Fatal(err)
	}
	objs, errs := policies.LoadPath(jwtScenario + "request-authentication.yaml")
	if len(errs) > 0 {
		b.Fatal(errs)
	}
	jc, err := waypointxds.JWTConfig(objs.RequestAuthentications)
	if err != nil {
		b.Fatal(err)
	}
	if ab.jwt, err = jwtauthn.Compile(jc, jwtauthn.Options{}); err != nil {
		b.Fatal(err)
	}
	var k jose.JSONWebKey
	data, err := os.ReadFile(jwtScenario + "issuer-key.json")
	if err != nil {
		b.Fatal(err)
	}
	if err := json.Unmarshal(data, &k); err != nil {
		b.Fatal(err)
	}
	ab.token = jwttest.SignWith(&k, "https://issuer.goambient.local", map[string]any{"sub": "alice", "aud": "appb", "groups": []string{"admins"}})
	res := ab.jwt.Decode(context.Background(), &jwtauthn.HeaderRequest{M: "GET", P: "/headers", A: "appb:8000", H: map[string]string{"authorization": "Bearer " + ab.token}})
	if res.Reply != nil {
		b.Fatalf("the benchmark token is refused: %+v", res.Reply)
	}
	ab.claims = res.Payloads["payload"].(map[string]any)
	return ab
}

// decide runs the authz filter on a request whose JWT jwt_authn validated (its payload in the
// metadata), to path.
func (ab *authnBench) decide(b *testing.B, path string) envoytest.Response {
	hr := httptest.NewRequest("GET", "http://appb:8000"+path, nil)
	hr.Header.Set("Authorization", "Bearer "+ab.token)
	return ab.h.Do(plugin, ab.cfg, hr, envoytest.Stream{
		FilterState:             map[string]string{authzconfig.PeerPrincipalKey: "spiffe://cluster.local/ns/default/sa/appa"},
		DownstreamRemoteAddress: "10.0.0.1:40000", DownstreamLocalAddress: "10.96.0.2:8000",
		DynamicMetadata: map[string]map[string]any{jwtMetadata: {"payload": ab.claims}},
	})
}

const jwtMetadata = "envoy.filters.http.jwt_authn"

// BenchmarkJWTValidation is jwt_authn's per-request cost with the keys cached (the jwt
// scenario's inline JWKS, an ES256 token): parse, issuer, time, audience and signature checks,
// the payload decoded. Beside it, in the same run, the plain authz decision of the same
// request (the filter on the fake host with the payload in the metadata); x_plain_authz is
// the ratio.
func BenchmarkJWTValidation(b *testing.B) {
	ab := newAuthnBench(b, false)
	if r := ab.decide(b, "/headers"); !r.Continued {
		b.Fatalf("the plain decision denies: %+v", r.LocalReply)
	}
	plainNs := nsPerOp(func() { ab.decide(b, "/headers") })
	req := &jwtauthn.HeaderRequest{M: "GET", P: "/headers", A: "appb:8000", H: map[string]string{}}
	b.ReportAllocs()
	for b.Loop() {
		req.H["authorization"] = "Bearer " + ab.token
		if res := ab.jwt.Decode(context.Background(), req); res.Reply != nil {
			b.Fatal(res.Reply)
		}
	}
	perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(plainNs, "plain_authz_ns")
	b.ReportMetric(perOp/plainNs, "x_plain_authz")
}

// BenchmarkExtAuthzOPA is a CUSTOM request: the authz filter's ext_authz round trip over
// loopback gRPC to OPA's Authorization server (the scenario's Rego, which verifies the token
// again) and back. Beside it, in the same run, the plain authz decision of a request no
// CUSTOM rule matches; x_plain_authz is the ratio.
func BenchmarkExtAuthzOPA(b *testing.B) {
	ab := newAuthnBench(b, true)
	if r := ab.decide(b, "/admin/headers"); !r.Continued {
		b.Fatalf("OPA denies the benchmark request: %+v", r.LocalReply)
	}
	plainNs := nsPerOp(func() { ab.decide(b, "/headers") })
	b.ReportAllocs()
	for b.Loop() {
		if r := ab.decide(b, "/admin/headers"); !r.Continued {
			b.Fatal(r.LocalReply)
		}
	}
	perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(plainNs, "plain_authz_ns")
	b.ReportMetric(perOp/plainNs, "x_plain_authz")
}
