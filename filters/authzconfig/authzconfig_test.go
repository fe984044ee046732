package authzconfig

import (
	"reflect"
	"time"

	"github.com/goambient/goambient/policies/extprovider"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestRoundTrip(t *testing.T) {
	c := &Config{Namespace: "handson", Gateway: "handson", GatewayClass: "istio-waypoint", Policies: "kind: List\nitems: []\n",
		Providers: []extprovider.Provider{{Name: "opa", Kind: extprovider.GRPC, Service: "opa.auth.svc.cluster.local", Port: 9191,
			Timeout: 600 * time.Second, StatusOnError: 403, HeadersToUpstreamOnAllow: []string{"x-user"}}}}
	a, err := EncodeConfig(c)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeConfig(a)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, c) {
		t.Fatalf("got %+v, want %+v", got, c)
	}
	if IsRoute(a) {
		t.Error("a Config is not a Route")
	}
	r := &Route{Service: "handson", ServiceNamespace: "handson"}
	ra, err := EncodeRoute(r)
	if err != nil {
		t.Fatal(err)
	}
	if !IsRoute(ra) {
		t.Error("a Route is a Route")
	}
	if gotR, err := DecodeRoute(ra); err != nil || *gotR != *r {
		t.Fatalf("DecodeRoute = %+v, %v", gotR, err)
	}
}

func TestDecodeErrors(t *testing.T) {
	route, _ := EncodeRoute(&Route{Service: "s", ServiceNamespace: "ns"})
	noGateway, _ := EncodeConfig(&Config{Namespace: "ns"})
	wrong, _ := anypb.New(wrapperspb.String("x"))
	for name, tc := range map[string]struct {
		a    *anypb.Any
		want string
	}{
		"nil":          {nil, "no config"},
		"not typed":    {wrong, "want xds.type.v3.TypedStruct"},
		"route as cfg": {route, "type_url"},
		"missing":      {noGateway, "gateway: required"},
	} {
		_, err := DecodeConfig(tc.a)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", name, err, tc.want)
		}
	}
}
