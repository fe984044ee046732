package envoytest_test

import (
	"fmt"
	"net/http/httptest"

	"github.com/goambient/goambient/filters/authz"
	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/envoytest"
)

// Example runs the goambient.authz filter as Envoy would in the handson waypoint: parse the
// waypoint's plugin_config, merge the handson Service's route config, send a POST from curl.
func Example() {
	h := envoytest.NewHost(nil)
	p := envoytest.Plugin{Name: authzconfig.PluginName, Factory: authz.Factory, Parser: authz.Parser{}}

	cfgAny, _ := authzconfig.EncodeConfig(&authzconfig.Config{
		Namespace: "handson", Gateway: "handson",
		Policies: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: layer7-authz, namespace: handson}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: handson}]
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/handson/sa/curl]}}]
    to: [{operation: {notMethods: [GET]}}]
`})
	routeAny, _ := authzconfig.EncodeRoute(&authzconfig.Route{Service: "handson", ServiceNamespace: "handson"})
	cfg, err := h.Parse(p, cfgAny)
	if err != nil {
		panic(err)
	}
	rc, err := h.ParseRoute(p, routeAny)
	if err != nil {
		panic(err)
	}
	merged := h.Merge(p, cfg, rc)

	stream := envoytest.Stream{
		FilterState:             map[string]string{authzconfig.PeerPrincipalKey: "spiffe://cluster.local/ns/handson/sa/curl"},
		DownstreamRemoteAddress: "10.244.1.5:43210",
		DownstreamLocalAddress:  "10.96.0.10:8080",
	}
	get := h.Do(p, merged, httptest.NewRequest("GET", "http://handson:8080/", nil), stream)
	post := h.Do(p, merged, httptest.NewRequest("POST", "http://handson:8080/", nil), stream)
	fmt.Println("GET continued:", get.Continued)
	fmt.Println("POST:", post.LocalReply.Status, post.LocalReply.Body, post.LocalReply.Details)
	// Output:
	// GET continued: true
	// POST: 403 RBAC: access denied rbac_access_denied_matched_policy[ns[handson]-policy[layer7-authz]-rule[0]]
}
