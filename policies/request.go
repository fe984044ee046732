package policies

import "net/netip"

// Request is everything an authorization decision may look at. The waypoint filter fills the
// HTTP fields; ztunnel fills only the connection fields. Its JSON form is the `request` of the
// Rego reference's input (see rego/README.md).
type Request struct {
	// Source.
	Principal string     `json:"principal,omitempty"` // peer SPIFFE ID without "spiffe://", e.g. "cluster.local/ns/foo/sa/bar"; empty for plaintext
	SourceIP  netip.Addr `json:"source_ip,omitzero"`  // the connection's peer address
	RemoteIP  netip.Addr `json:"remote_ip,omitzero"`  // the original client (XFF / PROXY protocol); SourceIP when unset

	// Request authentication (a validated JWT); empty when there is none.
	Auth RequestAuth `json:"auth,omitzero"`

	// Where the request goes.
	Target   Target     `json:"target"`
	DestIP   netip.Addr `json:"destination_ip,omitzero"`
	DestPort uint16     `json:"destination_port,omitempty"`

	// HTTP; all empty for a TCP connection.
	Host    string            `json:"host,omitempty"`
	Method  string            `json:"method,omitempty"`
	Path    string            `json:"path,omitempty"`    // normalised with NormalizePath; Evaluate does it if the caller has not. The query is ignored
	Headers map[string]string `json:"headers,omitempty"` // lower-case names; repeated headers joined with ","

	SNI string `json:"sni,omitempty"` // TLS server name of the downstream connection

	// Metadata answers `experimental.envoy.filters.*` conditions, keyed by the condition key.
	Metadata map[string]string `json:"metadata,omitempty"`
}

// RequestAuth is the validated JWT of a request (Istio's request.auth.* attributes). As istiod
// does, request.auth.audiences and request.auth.presenter read the claims aud and azp, each a
// string or a list of strings.
type RequestAuth struct {
	Issuer  string         `json:"issuer,omitempty"`  // the claim iss
	Subject string         `json:"subject,omitempty"` // the claim sub
	Claims  map[string]any `json:"claims,omitempty"`  // the decoded JWT payload: strings, lists of strings, nested objects
}

// AuthFromClaims is the RequestAuth of a validated JWT's decoded payload.
func AuthFromClaims(payload map[string]any) RequestAuth {
	a := RequestAuth{Claims: payload}
	a.Issuer, _ = payload["iss"].(string)
	a.Subject, _ = payload["sub"].(string)
	return a
}

// Target says which proxy evaluates the request and for what: a workload (ztunnel or a
// sidecar-style evaluation, scoped by namespace and selector) or a waypoint (scoped by targetRefs).
type Target struct {
	Namespace string            `json:"namespace"`        // the workload's namespace, or the waypoint Gateway's namespace
	Labels    map[string]string `json:"labels,omitempty"` // workload labels, for selectors

	Waypoint         bool   `json:"waypoint,omitempty"`
	Gateway          string `json:"gateway,omitempty"`           // the waypoint's Gateway name, in Namespace
	GatewayClass     string `json:"gateway_class,omitempty"`     // the Gateway's class
	Service          string `json:"service,omitempty"`           // the Service (or ServiceEntry) the request was addressed to, if any
	ServiceNamespace string `json:"service_namespace,omitempty"` // its namespace (Namespace when empty)
	ServiceKind      string `json:"service_kind,omitempty"`      // KindService (when empty) or KindServiceEntry
}

// The kinds of service a waypoint serves: a policy's Service targetRef attaches only to a
// Kubernetes Service, a ServiceEntry targetRef only to a ServiceEntry, even of the same name
// (istiod's WorkloadPolicyMatcher checks the service's registry).
const (
	KindService      = "Service"
	KindServiceEntry = "ServiceEntry"
)

// ServiceKindOrDefault is ServiceKind, KindService when empty.
func (t *Target) ServiceKindOrDefault() string {
	if t.ServiceKind == "" {
		return KindService
	}
	return t.ServiceKind
}

// ServiceNS is the namespace of the addressed Service.
func (t *Target) ServiceNS() string {
	if t.ServiceNamespace != "" {
		return t.ServiceNamespace
	}
	return t.Namespace
}

// remoteIP is the address remoteIpBlocks and remote.ip match against.
func (r *Request) remoteIP() netip.Addr {
	if r.RemoteIP.IsValid() {
		return r.RemoteIP
	}
	return r.SourceIP
}

// present reports whether the request carries a validated JWT.
func (a *RequestAuth) present() bool { return a.Issuer != "" || a.Subject != "" }
