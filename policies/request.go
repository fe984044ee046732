package policies

import (
	"net/netip"
	"strings"
)

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

// RequestAuth is the validated JWT of a request (Istio's request.auth.* attributes).
type RequestAuth struct {
	Issuer    string         `json:"issuer,omitempty"`
	Subject   string         `json:"subject,omitempty"`
	Audiences []string       `json:"audiences,omitempty"`
	Presenter string         `json:"presenter,omitempty"` // azp
	Claims    map[string]any `json:"claims,omitempty"`    // the decoded JWT payload: strings, lists of strings, nested objects
}

// Target says which proxy evaluates the request and for what: a workload (ztunnel or a
// sidecar-style evaluation, scoped by namespace and selector) or a waypoint (scoped by targetRefs).
type Target struct {
	Namespace string            `json:"namespace"`        // the workload's namespace, or the waypoint Gateway's namespace
	Labels    map[string]string `json:"labels,omitempty"` // workload labels, for selectors

	Waypoint         bool   `json:"waypoint,omitempty"`
	Gateway          string `json:"gateway,omitempty"`           // the waypoint's Gateway name, in Namespace
	GatewayClass     string `json:"gateway_class,omitempty"`     // the Gateway's class
	Service          string `json:"service,omitempty"`           // the Service the request was addressed to, if any
	ServiceNamespace string `json:"service_namespace,omitempty"` // its namespace (Namespace when empty)
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

// Peer is the parsed form of a SPIFFE principal "<td>/ns/<ns>/sa/<sa>".
type Peer struct {
	TrustDomain, Namespace, ServiceAccount string
}

// ParsePrincipal splits a principal (with or without "spiffe://") into its parts without
// allocating; ok is false when it is not of the form <td>/ns/<ns>/sa/<sa>.
func ParsePrincipal(p string) (peer Peer, ok bool) {
	p = strings.TrimPrefix(p, "spiffe://")
	td, rest, found := strings.Cut(p, "/ns/")
	if !found || td == "" || strings.Contains(td, "/") { // a SPIFFE trust domain has no '/'
		return Peer{}, false
	}
	ns, sa, found := strings.Cut(rest, "/sa/")
	if !found || ns == "" || sa == "" || strings.Contains(sa, "/") {
		return Peer{}, false
	}
	return Peer{TrustDomain: td, Namespace: ns, ServiceAccount: sa}, true
}
