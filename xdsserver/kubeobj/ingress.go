package kubeobj

import (
	"bytes"
	"encoding/json"

	"github.com/goambient/goambient/policies"
)

// Secret is a Kubernetes Secret; ingress Gateways read TLS certificates from them (type
// kubernetes.io/tls: tls.crt and tls.key). Data is base64 in YAML and JSON, decoded here.
type Secret struct {
	Metadata   ObjectMeta        `json:"metadata"`
	Type       string            `json:"type,omitempty"`
	Data       map[string][]byte `json:"data,omitempty"`
	StringData map[string]string `json:"stringData,omitempty"`
	Origin     policies.Origin   `json:"-"`
}

// Value returns a key of the Secret: stringData wins over data, as the API server merges them.
func (s *Secret) Value(key string) ([]byte, bool) {
	if v, ok := s.StringData[key]; ok {
		return []byte(v), true
	}
	v, ok := s.Data[key]
	return v, ok
}

// ReferenceGrant is a gateway.networking.k8s.io ReferenceGrant: objects of the from kinds in
// the from namespaces may refer to objects of the to kinds in the grant's namespace.
type ReferenceGrant struct {
	Metadata ObjectMeta         `json:"metadata"`
	Spec     ReferenceGrantSpec `json:"spec"`
	Origin   policies.Origin    `json:"-"`
}

// ReferenceGrantSpec is a ReferenceGrant's from and to lists.
type ReferenceGrantSpec struct {
	From []ReferenceGrantFrom `json:"from"`
	To   []ReferenceGrantTo   `json:"to"`
}

// ReferenceGrantFrom is a kind of object in a namespace that is granted references.
type ReferenceGrantFrom struct {
	Group     string `json:"group"`
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
}

// ReferenceGrantTo is a kind of object (optionally one name) that may be referred to.
type ReferenceGrantTo struct {
	Group string `json:"group"`
	Kind  string `json:"kind"`
	Name  string `json:"name,omitempty"`
}

// GatewayTLS is a Gateway listener's tls: the certificates it terminates with.
type GatewayTLS struct {
	Mode               string            `json:"mode,omitempty"` // Terminate (default) or Passthrough
	CertificateRefs    []SecretObjectRef `json:"certificateRefs,omitempty"`
	Options            map[string]string `json:"options,omitempty"`
	FrontendValidation json.RawMessage   `json:"frontendValidation,omitempty"`
}

// SecretObjectRef is a certificateRef (group "" and kind Secret by default).
type SecretObjectRef struct {
	Group     *string `json:"group,omitempty"`
	Kind      *string `json:"kind,omitempty"`
	Name      string  `json:"name"`
	Namespace *string `json:"namespace,omitempty"`
}

// ingressKinds are the kinds an ingress Gateway needs besides the Gateway itself.
var ingressKinds = map[string][]string{
	"/Secret": {"v1"},
	"gateway.networking.k8s.io/ReferenceGrant": {"v1", "v1beta1"},
}

func init() {
	for k, v := range ingressKinds {
		kinds[k] = v
	}
}

// addIngress decodes a Secret or a ReferenceGrant (strictly for the grant: a misspelt field
// would silently grant or refuse).
func (s *Set) addIngress(d policies.Document, tm typeMeta, fail func(field, reason string) error) error {
	switch tm.Kind {
	case "Secret":
		o := &Secret{Origin: d.Origin}
		if err := json.Unmarshal(d.JSON, o); err != nil {
			return fail(specField(err), jsonReason(err))
		}
		s.Secrets = append(s.Secrets, o)
	case "ReferenceGrant":
		var raw struct {
			Spec json.RawMessage `json:"spec"`
		}
		if err := json.Unmarshal(d.JSON, &raw); err != nil {
			return fail("", jsonReason(err))
		}
		o := &ReferenceGrant{Metadata: tm.Metadata, Origin: d.Origin}
		dec := json.NewDecoder(bytes.NewReader(raw.Spec))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&o.Spec); err != nil {
			return fail(specField(err), jsonReason(err))
		}
		s.ReferenceGrants = append(s.ReferenceGrants, o)
	}
	return nil
}
