package policies

import (
	"bytes"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

// MarshalAuthorizationPolicies writes aps as a multi-document YAML stream that Load reads back
// to equal policies (apiVersion, metadata and spec; not the Origin). The output is
// deterministic: the same policies always give the same bytes, so it can be versioned by hash.
func MarshalAuthorizationPolicies(aps []*AuthorizationPolicy) ([]byte, error) {
	var buf bytes.Buffer
	for i, ap := range aps {
		if ap == nil {
			return nil, fmt.Errorf("authorization policy %d: nil", i)
		}
		var spec json.RawMessage = []byte("{}")
		if ap.Spec != nil {
			js, err := protojson.Marshal(ap.Spec)
			if err != nil {
				return nil, fmt.Errorf("AuthorizationPolicy %s: spec: %w", ap.Key(), err)
			}
			spec = js
		}
		apiVersion := ap.APIVersion
		if apiVersion == "" {
			apiVersion = securityVersions[0]
		}
		doc := struct {
			APIVersion string          `json:"apiVersion"`
			Kind       string          `json:"kind"`
			Metadata   Meta            `json:"metadata"`
			Spec       json.RawMessage `json:"spec"`
		}{apiVersion, "AuthorizationPolicy", ap.Meta, spec}
		js, err := json.Marshal(doc) // compacts protojson's unstable spacing
		if err != nil {
			return nil, fmt.Errorf("AuthorizationPolicy %s: %w", ap.Key(), err)
		}
		y, err := yaml.JSONToYAML(js)
		if err != nil {
			return nil, fmt.Errorf("AuthorizationPolicy %s: %w", ap.Key(), err)
		}
		if i > 0 {
			buf.WriteString("---\n")
		}
		buf.Write(y)
	}
	return buf.Bytes(), nil
}
