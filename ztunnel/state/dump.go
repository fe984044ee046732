package state

import (
	"bytes"
	"encoding/json"
	"fmt"

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
	js, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	return yamlSafe(js), nil
}

// yamlSafe escapes the characters that JSON allows raw in a string but YAML, which LoadFile
// reads, refuses (DEL, the C1 controls, U+FFFE, U+FFFF) or reads as a line break (NEL, U+2028,
// U+2029), so that any accepted State's dump loads back with the same strings. They can only
// be inside strings: protojson's own syntax is ASCII.
func yamlSafe(js []byte) []byte {
	if !bytes.ContainsFunc(js, yamlEscapes) {
		return js
	}
	var b bytes.Buffer
	b.Grow(len(js) + 32)
	for _, r := range string(js) {
		if yamlEscapes(r) {
			fmt.Fprintf(&b, `\u%04x`, r)
		} else {
			b.WriteRune(r)
		}
	}
	return b.Bytes()
}

func yamlEscapes(r rune) bool {
	return r == 0x7f || (r >= 0x80 && r <= 0x9f) || r == 0x2028 || r == 0x2029 || r == 0xfffe || r == 0xffff
}
