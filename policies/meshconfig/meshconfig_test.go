package meshconfig

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	data, err := os.ReadFile("testdata/mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, errs := Parse(data, "testdata/mesh.yaml")
	var got []string
	for _, e := range errs {
		got = append(got, e.Error())
	}
	want := []string{
		"testdata/mesh.yaml: MeshConfig: extensionProviders[3].name: must not be empty",
		`testdata/mesh.yaml: MeshConfig: extensionProviders[4] (opa).name: duplicate provider name "opa"`,
		"testdata/mesh.yaml: MeshConfig: extensionProviders[5] (bad-http).envoyExtAuthzHttp.port: must be 1-65535, got 70000",
		"testdata/mesh.yaml: MeshConfig: extensionProviders[5] (bad-http).envoyExtAuthzHttp.timeout: must be positive, got -1s",
		`testdata/mesh.yaml: MeshConfig: extensionProviders[5] (bad-http).envoyExtAuthzHttp.statusOnError: must be an HTTP status code (200-599), got "teapot"`,
		`testdata/mesh.yaml: MeshConfig: extensionProviders[5] (bad-http).envoyExtAuthzHttp.pathPrefix: must begin with "/", got "oauth"`,
		`testdata/mesh.yaml: MeshConfig: extensionProviders[5] (bad-http).envoyExtAuthzHttp.service: "has space" is not a host name`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if c.RootNamespace != "istio-system" || len(c.Providers) != 2 {
		t.Fatalf("config %+v", c)
	}
	opa := c.Providers["opa"]
	if opa.Kind != GRPC || opa.Address() != "opa.auth.svc.cluster.local:9191" || opa.Timeout != time.Second || opa.StatusOnError != 503 || opa.MaxRequestBytes != 4096 || !opa.AllowPartialMessage {
		t.Fatalf("opa %+v", opa)
	}
	o2 := c.Providers["oauth2-proxy"]
	if o2.Kind != HTTP || o2.Host() != "oauth2-proxy.auth.svc.cluster.local" || o2.Timeout != DefaultTimeout || o2.StatusOnError != 403 ||
		o2.PathPrefix != "/oauth2/auth" || len(o2.HeadersToUpstreamOnAllow) != 2 || len(o2.HeadersToDownstreamOnDeny) != 3 {
		t.Fatalf("oauth2-proxy %+v", o2)
	}
}

func TestParseBad(t *testing.T) {
	for _, in := range []string{"extensionProviders: 3", "a: [", "extensionProviders: [{name: x, envoyExtAuthzGrpc: {port: \"x\"}}]"} {
		if _, errs := Parse([]byte(in), "m"); len(errs) == 0 {
			t.Errorf("%q parsed", in)
		}
	}
	if c, errs := Parse(nil, "empty"); len(errs) != 0 || c == nil {
		t.Fatalf("empty mesh config: %v", errs)
	}
}
