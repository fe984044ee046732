package policies

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	securityv1beta1 "istio.io/api/security/v1beta1"

	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

// Document is one YAML (or JSON) document of a multi-document file, converted to JSON.
type Document struct {
	Origin Origin
	JSON   []byte
}

// SplitDocuments splits multi-document YAML or JSON into documents converted to JSON, skipping
// empty ones. A `kind: List` document is expanded into its items. A document that is not valid
// YAML is reported as an error and the others are still returned.
func SplitDocuments(data []byte, file string) ([]Document, []error) {
	var docs []Document
	var errs []error
	for i, chunk := range splitYAML(data) {
		origin := Origin{File: file, Doc: i + 1, Line: chunk.line}
		js, err := yaml.YAMLToJSON(chunk.text)
		if err != nil {
			errs = append(errs, &Error{Origin: origin, Reason: "not valid YAML: " + err.Error()})
			continue
		}
		js = bytes.TrimSpace(js)
		if len(js) == 0 || string(js) == "null" {
			continue
		}
		var list struct {
			Kind  string            `json:"kind"`
			Items []json.RawMessage `json:"items"`
		}
		if json.Unmarshal(js, &list) == nil && list.Kind == "List" {
			for _, item := range list.Items {
				docs = append(docs, Document{Origin: origin, JSON: item})
			}
			continue
		}
		docs = append(docs, Document{Origin: origin, JSON: js})
	}
	return docs, errs
}

type chunk struct {
	text []byte
	line int
}

// splitYAML cuts data at document separators ("---" lines).
func splitYAML(data []byte) []chunk {
	var out []chunk
	start, startLine, line := 0, 1, 1
	for pos := 0; pos < len(data); {
		end := bytes.IndexByte(data[pos:], '\n')
		next := len(data)
		if end >= 0 {
			next = pos + end + 1
		}
		l := strings.TrimRight(string(data[pos:next]), "\r\n")
		if l == "---" || strings.HasPrefix(l, "--- ") || strings.HasPrefix(l, "---\t") {
			out = append(out, chunk{text: data[start:pos], line: startLine})
			start, startLine = next, line+1
		}
		pos = next
		line++
	}
	out = append(out, chunk{text: data[start:], line: startLine})
	return out
}

// header is what every Kubernetes object has.
type header struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Metadata   Meta            `json:"metadata"`
	Spec       json.RawMessage `json:"spec"`
}

var securityVersions = []string{"security.istio.io/v1", "security.istio.io/v1beta1"}

// Load reads AuthorizationPolicy, PeerAuthentication and RequestAuthentication objects from multi-document YAML or
// JSON. Other kinds are ignored. Each invalid object is reported as an *Error and left out;
// the valid ones are returned.
func Load(data []byte, file string) (Objects, []error) {
	docs, errs := SplitDocuments(data, file)
	var objs Objects
	for _, d := range docs {
		errs = append(errs, objs.add(d)...)
	}
	slices.SortStableFunc(errs, func(a, b error) int { return docIndex(a) - docIndex(b) })
	return objs, errs
}

// LoadPath loads a file, or every .yaml, .yml and .json file below a directory (in lexical order).
func LoadPath(path string) (Objects, []error) {
	files, err := ConfigFiles(path)
	if err != nil {
		return Objects{}, []error{err}
	}
	var objs Objects
	var errs []error
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		o, e := Load(data, f)
		objs.Append(o)
		errs = append(errs, e...)
	}
	return objs, errs
}

// ConfigFiles is path itself when it is a file, or else the .yaml, .yml and .json files below
// it, recursively and in lexical order, leaving out hidden files and folders (such as .git).
func ConfigFiles(path string) ([]string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return []string{path}, nil
	}
	var files []string
	err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		hidden := p != path && strings.HasPrefix(d.Name(), ".")
		if d.IsDir() {
			if hidden {
				return filepath.SkipDir
			}
			return nil
		}
		switch strings.ToLower(filepath.Ext(p)) {
		case ".yaml", ".yml", ".json":
			if !hidden {
				files = append(files, p)
			}
		}
		return nil
	})
	slices.Sort(files)
	return files, err
}

// add decodes one document; it returns the problems found, or adds the object when it has none.
func (os *Objects) add(d Document) []error {
	var h header
	if err := json.Unmarshal(d.JSON, &h); err != nil {
		return []error{&Error{Origin: d.Origin, Reason: "not a Kubernetes object: " + err.Error()}}
	}
	if h.Kind != "AuthorizationPolicy" && h.Kind != "PeerAuthentication" && h.Kind != "RequestAuthentication" {
		return nil
	}
	if h.Metadata.Namespace == "" {
		h.Metadata.Namespace = "default"
	}
	fail := func(field, reason string) []error {
		return []error{&Error{Origin: d.Origin, Kind: h.Kind, Object: h.Metadata.Key(), Field: field, Reason: reason}}
	}
	if !slices.Contains(securityVersions, h.APIVersion) {
		return fail("apiVersion", fmt.Sprintf("%q is not supported; use %s", h.APIVersion, strings.Join(securityVersions, " or ")))
	}
	if h.Metadata.Name == "" {
		return fail("metadata.name", "must not be empty")
	}
	spec := []byte(h.Spec)
	if len(spec) == 0 || string(spec) == "null" {
		spec = []byte("{}")
	}
	unmarshal := protojson.UnmarshalOptions{}
	switch h.Kind {
	case "AuthorizationPolicy":
		p := &AuthorizationPolicy{APIVersion: h.APIVersion, Meta: h.Metadata, Spec: &securityv1beta1.AuthorizationPolicy{}, Origin: d.Origin}
		if err := unmarshal.Unmarshal(spec, p.Spec); err != nil {
			return fail("spec", protoError(err))
		}
		if errs := ValidateAuthorizationPolicy(p); len(errs) > 0 {
			return errs
		}
		os.AuthorizationPolicies = append(os.AuthorizationPolicies, p)
	case "PeerAuthentication":
		p := &PeerAuthentication{APIVersion: h.APIVersion, Meta: h.Metadata, Spec: &securityv1beta1.PeerAuthentication{}, Origin: d.Origin}
		if err := unmarshal.Unmarshal(spec, p.Spec); err != nil {
			return fail("spec", protoError(err))
		}
		if errs := ValidatePeerAuthentication(p); len(errs) > 0 {
			return errs
		}
		os.PeerAuthentications = append(os.PeerAuthentications, p)
	case "RequestAuthentication":
		p := &RequestAuthentication{APIVersion: h.APIVersion, Meta: h.Metadata, Spec: &securityv1beta1.RequestAuthentication{}, Origin: d.Origin}
		if err := unmarshal.Unmarshal(spec, p.Spec); err != nil {
			return fail("spec", protoError(err))
		}
		if errs := ValidateRequestAuthentication(p); len(errs) > 0 {
			return errs
		}
		os.RequestAuthentications = append(os.RequestAuthentications, p)
	}
	return nil
}

var protoPosition = regexp.MustCompile(`\(line \d+:\d+\):\s*`)

// protoError makes protojson's message readable ("proto:" prefixes and odd spaces removed).
func protoError(err error) string {
	s := strings.TrimPrefix(err.Error(), "proto:")
	s = protoPosition.ReplaceAllString(s, "")
	return strings.Join(strings.Fields(s), " ")
}

func docIndex(err error) int {
	if e, ok := err.(*Error); ok {
		return e.Origin.Doc
	}
	return 0
}
