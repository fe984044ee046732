package kubeobj

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/goambient/goambient/policies"
)

// Set is the objects read from some input, in the order they were read.
type Set struct {
	Namespaces      []*Namespace
	ServiceAccounts []*ServiceAccount
	Services        []*Service
	Pods            []*Pod
	EndpointSlices  []*EndpointSlice
	Gateways        []*Gateway
	GatewayClasses  []*GatewayClass
	Nodes           []*Node
	// ConfigMaps are the ConfigMaps holding a mesh config (the `istio` ConfigMap's `mesh`
	// key); others are not kept.
	ConfigMaps []*ConfigMap
	Policies   policies.Objects
	// Routing (routing.go).
	HTTPRoutes       []*HTTPRoute
	VirtualServices  []*VirtualService
	DestinationRules []*DestinationRule
	// Ingress Gateways' Secrets and ReferenceGrants (ingress.go).
	Secrets         []*Secret
	ReferenceGrants []*ReferenceGrant
	// Egress (egress.go).
	ServiceEntries  []*ServiceEntry
	WorkloadEntries []*WorkloadEntry
	// Rejected are the routing objects that could not be read (the model keeps their
	// previous version, as a validating webhook would have refused them).
	Rejected []ObjectKey
}

// ObjectKey names an object of a kind.
type ObjectKey struct {
	Kind, Namespace, Name string
	Origin                policies.Origin
}

// Append adds o's objects after s's.
func (s *Set) Append(o *Set) {
	if o == nil {
		return
	}
	s.Namespaces = append(s.Namespaces, o.Namespaces...)
	s.ServiceAccounts = append(s.ServiceAccounts, o.ServiceAccounts...)
	s.Services = append(s.Services, o.Services...)
	s.Pods = append(s.Pods, o.Pods...)
	s.EndpointSlices = append(s.EndpointSlices, o.EndpointSlices...)
	s.Gateways = append(s.Gateways, o.Gateways...)
	s.GatewayClasses = append(s.GatewayClasses, o.GatewayClasses...)
	s.Nodes = append(s.Nodes, o.Nodes...)
	s.ConfigMaps = append(s.ConfigMaps, o.ConfigMaps...)
	s.Policies.Append(o.Policies)
	s.HTTPRoutes = append(s.HTTPRoutes, o.HTTPRoutes...)
	s.VirtualServices = append(s.VirtualServices, o.VirtualServices...)
	s.DestinationRules = append(s.DestinationRules, o.DestinationRules...)
	s.Secrets = append(s.Secrets, o.Secrets...)
	s.ReferenceGrants = append(s.ReferenceGrants, o.ReferenceGrants...)
	s.ServiceEntries = append(s.ServiceEntries, o.ServiceEntries...)
	s.WorkloadEntries = append(s.WorkloadEntries, o.WorkloadEntries...)
	s.Rejected = append(s.Rejected, o.Rejected...)
}

// Len is the number of objects in the set.
func (s *Set) Len() int {
	return len(s.Namespaces) + len(s.ServiceAccounts) + len(s.Services) + len(s.Pods) + len(s.EndpointSlices) +
		len(s.Gateways) + len(s.GatewayClasses) + len(s.Nodes) + len(s.Policies.AuthorizationPolicies) + len(s.Policies.PeerAuthentications) +
		len(s.HTTPRoutes) + len(s.VirtualServices) + len(s.DestinationRules) + len(s.Secrets) + len(s.ReferenceGrants) +
		len(s.ServiceEntries) + len(s.WorkloadEntries)
}

// kinds maps "group/Kind" to the versions this package reads; other kinds are ignored.
var kinds = map[string][]string{
	"/Namespace":                              {"v1"},
	"/ServiceAccount":                         {"v1"},
	"/Service":                                {"v1"},
	"/Pod":                                    {"v1"},
	"/Node":                                   {"v1"},
	"/ConfigMap":                              {"v1"},
	"discovery.k8s.io/EndpointSlice":          {"v1"},
	"gateway.networking.k8s.io/Gateway":       {"v1", "v1beta1"},
	"gateway.networking.k8s.io/GatewayClass":  {"v1", "v1beta1"},
	"security.istio.io/AuthorizationPolicy":   nil, // read by the policies package
	"security.istio.io/PeerAuthentication":    nil,
	"security.istio.io/RequestAuthentication": nil,
}

// ErrSyntax marks a file that is not valid YAML as a whole (for example while it is being written).
var ErrSyntax = errors.New("not valid YAML")

// Load decodes the objects of one multi-document YAML or JSON file. Documents of other kinds
// are ignored. A document that is not valid YAML makes the whole file unusable: Load returns
// an error wrapping ErrSyntax and no objects. Otherwise each object that cannot be decoded or
// is invalid is reported as a *policies.Error (file, document, kind, object, field) and left
// out, and the others are returned.
func Load(data []byte, file string) (*Set, []error, error) {
	docs, errs := policies.SplitDocuments(data, file)
	if len(errs) > 0 {
		return nil, nil, fmt.Errorf("%w: %w", ErrSyntax, errors.Join(errs...))
	}
	set := &Set{}
	var problems []error
	var hasPolicies bool
	for _, d := range docs {
		isPolicy, err := set.add(d)
		hasPolicies = hasPolicies || isPolicy
		if err != nil {
			problems = append(problems, err)
		}
	}
	if hasPolicies {
		objs, errs := policies.Load(data, file)
		set.Policies = objs
		for _, e := range errs {
			// Documents that are not Kubernetes objects at all were reported above.
			if pe, ok := e.(*policies.Error); ok && pe.Kind == "" {
				continue
			}
			problems = append(problems, e)
		}
	}
	slices.SortStableFunc(problems, func(a, b error) int { return docOf(a) - docOf(b) })
	return set, problems, nil
}

func docOf(err error) int {
	var pe *policies.Error
	if errors.As(err, &pe) {
		return pe.Origin.Doc
	}
	return 0
}

type typeMeta struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   ObjectMeta `json:"metadata"`
}

// add decodes one document into s. It reports whether the document is a policy (decoded by
// the policies package) and the problem found, if any.
func (s *Set) add(d policies.Document) (bool, error) {
	var tm typeMeta
	if err := json.Unmarshal(d.JSON, &tm); err != nil {
		var probe struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if json.Unmarshal(d.JSON, &probe) == nil && probe.Kind != "" {
			if _, known := kinds[group(probe.APIVersion)+"/"+probe.Kind]; known {
				return false, &policies.Error{Origin: d.Origin, Kind: probe.Kind, Field: "metadata", Reason: jsonReason(err)}
			}
			return false, nil
		}
		return false, &policies.Error{Origin: d.Origin, Reason: "not a Kubernetes object (a mapping with apiVersion, kind and metadata)"}
	}
	versions, known := kinds[group(tm.APIVersion)+"/"+tm.Kind]
	if !known {
		return false, nil
	}
	if versions == nil {
		return true, nil
	}
	fail := func(field, reason string) error {
		return &policies.Error{Origin: d.Origin, Kind: tm.Kind, Object: tm.Metadata.Key(), Field: field, Reason: reason}
	}
	if v := version(tm.APIVersion); !slices.Contains(versions, v) {
		return false, fail("apiVersion", fmt.Sprintf("%q is not supported; use %s", tm.APIVersion, joinVersions(group(tm.APIVersion), versions)))
	}
	if tm.Metadata.Name == "" {
		return false, fail("metadata.name", "must not be empty")
	}
	if _, ok := routingKinds[group(tm.APIVersion)+"/"+tm.Kind]; ok {
		err := s.addRouting(d, tm, fail)
		if err != nil {
			s.Rejected = append(s.Rejected, ObjectKey{Kind: tm.Kind, Namespace: tm.Metadata.Namespace, Name: tm.Metadata.Name, Origin: d.Origin})
		}
		return false, err
	}
	if _, ok := ingressKinds[group(tm.APIVersion)+"/"+tm.Kind]; ok {
		return false, s.addIngress(d, tm, fail)
	}
	var obj any
	switch tm.Kind {
	case "Namespace":
		o := &Namespace{Origin: d.Origin}
		obj, s.Namespaces = o, append(s.Namespaces, o)
	case "ServiceAccount":
		o := &ServiceAccount{Origin: d.Origin}
		obj, s.ServiceAccounts = o, append(s.ServiceAccounts, o)
	case "Service":
		o := &Service{Origin: d.Origin}
		obj, s.Services = o, append(s.Services, o)
	case "Pod":
		o := &Pod{Origin: d.Origin}
		obj, s.Pods = o, append(s.Pods, o)
	case "EndpointSlice":
		o := &EndpointSlice{Origin: d.Origin}
		obj, s.EndpointSlices = o, append(s.EndpointSlices, o)
	case "Gateway":
		o := &Gateway{Origin: d.Origin}
		obj, s.Gateways = o, append(s.Gateways, o)
	case "GatewayClass":
		o := &GatewayClass{Origin: d.Origin}
		obj, s.GatewayClasses = o, append(s.GatewayClasses, o)
	case "Node":
		o := &Node{Origin: d.Origin}
		obj, s.Nodes = o, append(s.Nodes, o)
	case "ConfigMap":
		if tm.Metadata.Name != MeshConfigMapName {
			return false, nil
		}
		o := &ConfigMap{Origin: d.Origin}
		obj, s.ConfigMaps = o, append(s.ConfigMaps, o)
	}
	if err := json.Unmarshal(d.JSON, obj); err != nil {
		s.drop(tm.Kind)
		field := ""
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			field = te.Field
		}
		return false, fail(field, jsonReason(err))
	}
	return false, nil
}

// drop removes the object add just appended (it could not be decoded).
func (s *Set) drop(kind string) {
	switch kind {
	case "Namespace":
		s.Namespaces = s.Namespaces[:len(s.Namespaces)-1]
	case "ServiceAccount":
		s.ServiceAccounts = s.ServiceAccounts[:len(s.ServiceAccounts)-1]
	case "Service":
		s.Services = s.Services[:len(s.Services)-1]
	case "Pod":
		s.Pods = s.Pods[:len(s.Pods)-1]
	case "EndpointSlice":
		s.EndpointSlices = s.EndpointSlices[:len(s.EndpointSlices)-1]
	case "Gateway":
		s.Gateways = s.Gateways[:len(s.Gateways)-1]
	case "GatewayClass":
		s.GatewayClasses = s.GatewayClasses[:len(s.GatewayClasses)-1]
	case "Node":
		s.Nodes = s.Nodes[:len(s.Nodes)-1]
	case "ConfigMap":
		s.ConfigMaps = s.ConfigMaps[:len(s.ConfigMaps)-1]
	}
}

func group(apiVersion string) string {
	g, _, found := strings.Cut(apiVersion, "/")
	if !found {
		return ""
	}
	return g
}

func version(apiVersion string) string {
	_, v, found := strings.Cut(apiVersion, "/")
	if !found {
		return apiVersion
	}
	return v
}

func joinVersions(group string, versions []string) string {
	var out []string
	for _, v := range versions {
		if group != "" {
			v = group + "/" + v
		}
		out = append(out, v)
	}
	return strings.Join(out, " or ")
}

// jsonReason makes encoding/json's message say what was expected.
func jsonReason(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("expected %s, found %s", typeName(te.Type), te.Value)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

func typeName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int32, reflect.Int64, reflect.Uint32:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Slice:
		return "a list"
	}
	return t.String()
}
