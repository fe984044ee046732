package state

import (
	"encoding/json"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// ConfigDump renders the State as JSON in the state file's format (lists of protojson
// resources, sorted by key, addresses as base64), for the admin /config_dump; LoadFile reads
// it back.
func (s *State) ConfigDump() ([]byte, error) {
	var doc struct {
		Workloads      []json.RawMessage `json:"workloads"`
		Services       []json.RawMessage `json:"services"`
		Authorizations []json.RawMessage `json:"authorizations"`
	}
	doc.Workloads = make([]json.RawMessage, 0, len(s.res.Workloads))
	doc.Services = make([]json.RawMessage, 0, len(s.res.Services))
	doc.Authorizations = make([]json.RawMessage, 0, len(s.res.Authorizations))
	add := func(list *[]json.RawMessage, m proto.Message) error {
		js, err := protojson.Marshal(m)
		if err == nil {
			*list = append(*list, js)
		}
		return err
	}
	for _, w := range s.res.Workloads {
		if err := add(&doc.Workloads, w); err != nil {
			return nil, err
		}
	}
	for _, sv := range s.res.Services {
		if err := add(&doc.Services, sv); err != nil {
			return nil, err
		}
	}
	for _, a := range s.res.Authorizations {
		if err := add(&doc.Authorizations, a); err != nil {
			return nil, err
		}
	}
	return json.MarshalIndent(doc, "", "  ")
}
