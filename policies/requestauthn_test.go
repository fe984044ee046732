package policies

import (
	"strconv"
	"strings"
	"testing"
)

func TestRequestAuthentications(t *testing.T) {
	objs, errs := LoadPath("testdata/requestauthn.yaml")
	var b strings.Builder
	for _, e := range errs {
		b.WriteString(e.Error())
		b.WriteString("\n")
	}
	golden(t, "requestauthn.golden", b.String())
	if n := len(objs.RequestAuthentications); n != 2 {
		t.Fatalf("%d RequestAuthentications loaded, want jwt and inline", n)
	}
	r := objs.RequestAuthentications[0].Spec.GetJwtRules()[0]
	if r.GetTimeout().AsDuration().Seconds() != 2 || r.GetFromHeaders()[0].GetPrefix() != "Bearer " || !r.GetForwardOriginalToken() {
		t.Fatalf("fields lost: %v", r)
	}
}

func TestParseJwksURI(t *testing.T) {
	for uri, want := range map[string]string{
		"https://a.example/jwks":          "a.example:443 ssl",
		"http://a.example:8080/x":         "a.example:8080",
		"http://[::1]:9/x":                "::1:9",
		"https://issuer.test/.well-known": "issuer.test:443 ssl",
	} {
		u, err := ParseJwksURI(uri)
		if err != nil {
			t.Fatal(err)
		}
		got := u.Hostname + ":" + strconv.Itoa(int(u.Port))
		if u.UseSSL {
			got += " ssl"
		}
		if got != want {
			t.Errorf("%s: %s, want %s", uri, got, want)
		}
	}
	for _, bad := range []string{"ftp://a/x", "https://", "http://a:0/", "http://a:99999/", "::"} {
		if _, err := ParseJwksURI(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
