package state

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	"sigs.k8s.io/yaml"
)

// The lists of a state file, in the order they are read.
var fileLists = []string{"workloads", "services", "authorizations"}

// dumpOnly is the admin /config_dump's list of certificates: a dump read back as a state file
// ignores it.
const dumpOnly = "certificates"

// LoadFile reads a state file (YAML or JSON; see Parse) and builds its State.
func LoadFile(path string, opts ...Option) (*State, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(data, path, opts...)
}

// Parse builds a State from the content of a state file: one YAML or JSON document
//
//	workloads:      [istio.workload.Workload, ...]
//	services:       [istio.workload.Service, ...]
//	authorizations: [istio.security.Authorization, ...]
//
// each item in protojson form (JSON or proto field names, enum names, bytes as base64), which is
// what ConfigDump writes. Unknown fields are errors. As a convenience, an IP address may be
// written as text where protojson wants base64 bytes: a string item of a list named `addresses`
// (Workload.addresses) or a string field named `address` (Service.addresses[].address,
// GatewayAddress.address.address, the authorizations' sourceIps/destinationIps[].address) that
// contains '.' or ':' — characters base64 never has — must parse as an IP, and is converted;
// in an `address` field a CIDR ("10.0.0.0/8") also sets the sibling `length` when it is absent.
// An empty file is an error (a state with nothing is `{}`), so that a file caught while being
// rewritten in place does not wipe the state. Errors name the file, the list and index, and
// the field.
func Parse(data []byte, file string, opts ...Option) (*State, error) {
	res, err := parseResources(data, file)
	if err != nil {
		return nil, err
	}
	s, err := New(res, opts...)
	if err != nil {
		return nil, withFile(err, file)
	}
	return s, nil
}

func parseResources(data []byte, file string) (Resources, error) {
	var res Resources
	fileErr := func(format string, args ...any) error {
		return &FieldError{File: file, Reason: fmt.Sprintf(format, args...)}
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return res, fileErr("empty file (an empty state is `{}`)")
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return res, fileErr("not valid YAML or JSON: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var tree any
	if err := dec.Decode(&tree); err != nil {
		return res, fileErr("not valid YAML or JSON: %v", err)
	}
	doc, ok := tree.(map[string]any)
	if !ok {
		if tree == nil {
			return res, fileErr("empty document (an empty state is `{}`)")
		}
		return res, fileErr("the document must be a map with the lists %s", strings.Join(fileLists, ", "))
	}
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(doc)) {
		if !slices.Contains(fileLists, k) && k != dumpOnly {
			errs = append(errs, fileErr("unknown field %q (the lists are %s)", k, strings.Join(fileLists, ", ")))
		}
	}
	for _, list := range fileLists {
		v, present := doc[list]
		if !present || v == nil {
			continue
		}
		items, ok := v.([]any)
		if !ok {
			errs = append(errs, &FieldError{File: file, Path: list, Reason: "must be a list"})
			continue
		}
		for i, item := range items {
			path := fmt.Sprintf("%s[%d]", list, i)
			var m proto.Message
			switch list {
			case "workloads":
				w := &workloadapi.Workload{}
				res.Workloads = append(res.Workloads, w)
				m = w
			case "services":
				sv := &workloadapi.Service{}
				res.Services = append(res.Services, sv)
				m = sv
			default:
				a := &security.Authorization{}
				res.Authorizations = append(res.Authorizations, a)
				m = a
			}
			if err := decodeItem(item, m, path); err != nil {
				errs = append(errs, withFile(err, file))
			}
		}
	}
	return res, errors.Join(errs...)
}

// decodeItem converts textual IPs, reports unknown fields with their path, then unmarshals.
func decodeItem(item any, m proto.Message, path string) error {
	if _, ok := item.(map[string]any); !ok {
		return &FieldError{Path: path, Reason: "must be a map (a resource in protojson form)"}
	}
	var errs []error
	convertIPs(item, "", path, &errs)
	checkFields(item, m.ProtoReflect().Descriptor(), path, &errs)
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	js, err := json.Marshal(item)
	if err != nil {
		return &FieldError{Path: path, Reason: err.Error()}
	}
	if err := protojson.Unmarshal(js, m); err != nil {
		return &FieldError{Path: path, Reason: cleanProtoErr(err)}
	}
	return nil
}

// protojson errors start with "proto: (line 1:23): ", positions in the re-encoded item that
// would only mislead; the rest names the field ("invalid value for enum field tunnelProtocol: ...").
var protoErrPrefix = regexp.MustCompile(`^proto:[\s\x{00a0}]*(\(line \d+:\d+\):[\s\x{00a0}]*)?`)

func cleanProtoErr(err error) string {
	return protoErrPrefix.ReplaceAllString(err.Error(), "")
}

// convertIPs rewrites textual IPs to base64 in place (see Parse).
func convertIPs(v any, key, path string, errs *[]error) {
	switch t := v.(type) {
	case map[string]any:
		for _, k := range slices.Sorted(maps.Keys(t)) {
			p := path + "." + k
			s, isStr := t[k].(string)
			if !isStr || k != "address" || !looksLikeIP(s) {
				convertIPs(t[k], k, p, errs)
				continue
			}
			if pfx, err := netip.ParsePrefix(s); err == nil && strings.Contains(s, "/") {
				t[k] = base64.StdEncoding.EncodeToString(pfx.Addr().AsSlice())
				if _, has := t["length"]; !has {
					t["length"] = json.Number(strconv.Itoa(pfx.Bits()))
				}
				continue
			}
			ip, err := netip.ParseAddr(s)
			if err != nil {
				*errs = append(*errs, &FieldError{Path: p, Reason: fmt.Sprintf("%q is not an IP address", s)})
				continue
			}
			t[k] = base64.StdEncoding.EncodeToString(ip.AsSlice())
		}
	case []any:
		for i, x := range t {
			p := fmt.Sprintf("%s[%d]", path, i)
			s, isStr := x.(string)
			if !isStr || key != "addresses" || !looksLikeIP(s) {
				convertIPs(x, "", p, errs)
				continue
			}
			ip, err := netip.ParseAddr(s)
			if err != nil {
				*errs = append(*errs, &FieldError{Path: p, Reason: fmt.Sprintf("%q is not an IP address", s)})
				continue
			}
			t[i] = base64.StdEncoding.EncodeToString(ip.AsSlice())
		}
	}
}

// looksLikeIP: base64 has neither '.' nor ':'.
func looksLikeIP(s string) bool { return strings.ContainsAny(s, ".:") }

// checkFields reports every key that is not a field of the message, with its path.
func checkFields(v any, md protoreflect.MessageDescriptor, path string, errs *[]error) {
	if strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		return // well-known types have their own JSON forms
	}
	m, ok := v.(map[string]any)
	if !ok {
		return // protojson reports the type
	}
	fields := md.Fields()
	for _, k := range slices.Sorted(maps.Keys(m)) {
		p := path + "." + k
		fd := fields.ByJSONName(k)
		if fd == nil {
			fd = fields.ByName(protoreflect.Name(k))
		}
		if fd == nil {
			*errs = append(*errs, &FieldError{Path: p, Reason: fmt.Sprintf("unknown field %q of %s", k, md.FullName())})
			continue
		}
		switch {
		case fd.IsMap():
			if vd := fd.MapValue().Message(); vd != nil {
				if mm, ok := m[k].(map[string]any); ok {
					for _, mk := range slices.Sorted(maps.Keys(mm)) {
						checkFields(mm[mk], vd, fmt.Sprintf("%s[%q]", p, mk), errs)
					}
				}
			}
		case fd.IsList():
			if fd.Message() != nil {
				if l, ok := m[k].([]any); ok {
					for i, x := range l {
						checkFields(x, fd.Message(), fmt.Sprintf("%s[%d]", p, i), errs)
					}
				}
			}
		case fd.Message() != nil:
			checkFields(m[k], fd.Message(), p, errs)
		}
	}
}

// withFile sets the file on FieldErrors (also inside joined errors).
func withFile(err error, file string) error {
	var out []error
	for _, e := range flatten(err) {
		var fe *FieldError
		if errors.As(e, &fe) && fe.File == "" {
			c := *fe
			c.File = file
			e = &c
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}

func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}
