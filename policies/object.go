package policies

import (
	"strconv"

	securityv1beta1 "istio.io/api/security/v1beta1"
)

// Origin says where an object was read from.
type Origin struct {
	File string // path, or a name given by the caller
	Doc  int    // 1-based index of the YAML document in the file
	Line int    // 1-based line where the document starts
}

func (o Origin) String() string {
	if o.File == "" {
		return ""
	}
	if o.Line == 0 { // not read from a file (a Kubernetes object)
		return o.File
	}
	return o.File + ":" + strconv.Itoa(o.Line) + " (document " + strconv.Itoa(o.Doc) + ")"
}

// Meta is the Kubernetes metadata this package uses.
type Meta struct {
	Name              string            `json:"name"`
	Namespace         string            `json:"namespace,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	Annotations       map[string]string `json:"annotations,omitempty"`
	CreationTimestamp string            `json:"creationTimestamp,omitempty"`
}

// Key is "namespace/name".
func (m *Meta) Key() string { return m.Namespace + "/" + m.Name }

// AuthorizationPolicy is one security.istio.io AuthorizationPolicy as the user wrote it.
type AuthorizationPolicy struct {
	APIVersion string
	Meta
	Spec   *securityv1beta1.AuthorizationPolicy
	Origin Origin
}

// DryRun reports whether the policy carries istio.io/dry-run: "true".
func (p *AuthorizationPolicy) DryRun() bool {
	v, err := strconv.ParseBool(p.Annotations[annotationDryRun])
	return err == nil && v
}

// PeerAuthentication is one security.istio.io PeerAuthentication as the user wrote it.
type PeerAuthentication struct {
	APIVersion string
	Meta
	Spec   *securityv1beta1.PeerAuthentication
	Origin Origin
}

// Objects are the valid policy objects read from some input.
type Objects struct {
	AuthorizationPolicies []*AuthorizationPolicy
	PeerAuthentications   []*PeerAuthentication
	// RequestAuthentications are the valid RequestAuthentications (JWT rules).
	RequestAuthentications []*RequestAuthentication
}

// Append adds o's objects to os.
func (os *Objects) Append(o Objects) {
	os.AuthorizationPolicies = append(os.AuthorizationPolicies, o.AuthorizationPolicies...)
	os.PeerAuthentications = append(os.PeerAuthentications, o.PeerAuthentications...)
	os.RequestAuthentications = append(os.RequestAuthentications, o.RequestAuthentications...)
}

const annotationDryRun = "istio.io/dry-run"
