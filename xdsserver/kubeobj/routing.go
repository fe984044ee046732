package kubeobj

import (
	"bytes"
	"encoding/json"
	"errors"
	"regexp"
	"strings"

	"github.com/golang/protobuf/jsonpb" //nolint:staticcheck // what istio.io/api's types decode with
	networking "istio.io/api/networking/v1alpha3"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/goambient/goambient/policies"
)

// HTTPRoute is a gateway.networking.k8s.io HTTPRoute, its spec in the Gateway API's own Go
// type. Waypoints use the ones whose parentRefs name a Service (the GAMMA binding).
type HTTPRoute struct {
	Metadata ObjectMeta
	Spec     gatewayv1.HTTPRouteSpec
	Origin   policies.Origin
}

// VirtualService is a networking.istio.io VirtualService, its spec in istio.io/api's type (the
// same message for v1, v1beta1 and v1alpha3).
type VirtualService struct {
	Metadata ObjectMeta
	Spec     *networking.VirtualService
	Origin   policies.Origin
}

// DestinationRule is a networking.istio.io DestinationRule.
type DestinationRule struct {
	Metadata ObjectMeta
	Spec     *networking.DestinationRule
	Origin   policies.Origin
}

// routingKinds are the routing kinds Load reads, by "group/Kind", with their versions.
var routingKinds = map[string][]string{
	"gateway.networking.k8s.io/HTTPRoute": {"v1", "v1beta1"},
	"networking.istio.io/VirtualService":  {"v1", "v1beta1", "v1alpha3"},
	"networking.istio.io/DestinationRule": {"v1", "v1beta1", "v1alpha3"},
}

func init() {
	for k, v := range routingKinds {
		kinds[k] = v
	}
}

// addRouting decodes a routing object's spec: strictly, since a misspelt field of a route
// silently changes where traffic goes (kubectl's server-side field validation refuses it too).
func (s *Set) addRouting(d policies.Document, tm typeMeta, fail func(field, reason string) error) error {
	var raw struct {
		Spec json.RawMessage `json:"spec"`
	}
	if err := json.Unmarshal(d.JSON, &raw); err != nil {
		return fail("", jsonReason(err))
	}
	spec := []byte(raw.Spec)
	if len(spec) == 0 || string(spec) == "null" {
		spec = []byte("{}")
	}
	switch tm.Kind {
	case "HTTPRoute":
		o := &HTTPRoute{Metadata: tm.Metadata, Origin: d.Origin}
		dec := json.NewDecoder(bytes.NewReader(spec))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&o.Spec); err != nil {
			return fail(specField(err), jsonReason(err))
		}
		s.HTTPRoutes = append(s.HTTPRoutes, o)
	case "VirtualService":
		o := &VirtualService{Metadata: tm.Metadata, Spec: &networking.VirtualService{}, Origin: d.Origin}
		if err := istioJSON.Unmarshal(bytes.NewReader(spec), o.Spec); err != nil {
			return fail("spec", protoReason(err))
		}
		s.VirtualServices = append(s.VirtualServices, o)
	case "DestinationRule":
		o := &DestinationRule{Metadata: tm.Metadata, Spec: &networking.DestinationRule{}, Origin: d.Origin}
		if err := istioJSON.Unmarshal(bytes.NewReader(spec), o.Spec); err != nil {
			return fail("spec", protoReason(err))
		}
		s.DestinationRules = append(s.DestinationRules, o)
	default:
		return s.addEgress(d, tm.Kind, tm.Metadata, spec, fail)
	}
	return nil
}

// istioJSON decodes Istio specs as istio.io/api's own UnmarshalJSON does (durations such as
// "100ms" are accepted, as the CRDs do; protojson wants "0.100s"), but refuses unknown fields.
var istioJSON = &jsonpb.Unmarshaler{AllowUnknownFields: false}

// specField is the field path encoding/json names in an error, under spec.
func specField(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return "spec." + te.Field
	}
	return "spec"
}

var protoPosition = regexp.MustCompile(`\(line \d+:\d+\):\s*`)

// protoReason makes protojson's message readable.
func protoReason(err error) string {
	s := strings.TrimPrefix(err.Error(), "proto:")
	s = protoPosition.ReplaceAllString(s, "")
	return strings.Join(strings.Fields(s), " ")
}
