package kubeobj

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/goambient/goambient/policies"
)

// ObjectMeta is the part of metadata the control plane reads.
type ObjectMeta struct {
	Name            string            `json:"name"`
	Namespace       string            `json:"namespace,omitempty"`
	UID             string            `json:"uid,omitempty"`
	Labels          map[string]string `json:"labels,omitempty"`
	Annotations     map[string]string `json:"annotations,omitempty"`
	OwnerReferences []OwnerReference  `json:"ownerReferences,omitempty"`
	// CreationTimestamp (RFC 3339) orders routing objects for the same host, as istiod does;
	// empty in files.
	CreationTimestamp string `json:"creationTimestamp,omitempty"`
}

// Key is "namespace/name", or "name" for cluster-scoped objects.
func (m *ObjectMeta) Key() string {
	if m.Namespace == "" {
		return m.Name
	}
	return m.Namespace + "/" + m.Name
}

// OwnerReference names the controller of an object (a Pod's ReplicaSet, Job, ...).
type OwnerReference struct {
	APIVersion string `json:"apiVersion,omitempty"`
	Kind       string `json:"kind"`
	Name       string `json:"name"`
	Controller *bool  `json:"controller,omitempty"`
}

// Namespace is a core/v1 Namespace.
type Namespace struct {
	Metadata ObjectMeta      `json:"metadata"`
	Origin   policies.Origin `json:"-"`
}

// ServiceAccount is a core/v1 ServiceAccount.
type ServiceAccount struct {
	Metadata ObjectMeta      `json:"metadata"`
	Origin   policies.Origin `json:"-"`
}

// Service is a core/v1 Service.
type Service struct {
	Metadata ObjectMeta      `json:"metadata"`
	Spec     ServiceSpec     `json:"spec"`
	Origin   policies.Origin `json:"-"`
}

// ServiceSpec is the part of a Service's spec the control plane reads.
type ServiceSpec struct {
	Type       string            `json:"type,omitempty"`
	Selector   map[string]string `json:"selector,omitempty"`
	Ports      []ServicePort     `json:"ports,omitempty"`
	ClusterIP  string            `json:"clusterIP,omitempty"`
	ClusterIPs []string          `json:"clusterIPs,omitempty"`
	IPFamilies []string          `json:"ipFamilies,omitempty"`
	// TrafficDistribution is PreferSameZone (or its older name PreferClose) or PreferSameNode.
	TrafficDistribution      *string `json:"trafficDistribution,omitempty"`
	InternalTrafficPolicy    *string `json:"internalTrafficPolicy,omitempty"` // Cluster or Local
	PublishNotReadyAddresses bool    `json:"publishNotReadyAddresses,omitempty"`
}

// Node is a core/v1 Node: its name and labels (the topology ones give its locality).
type Node struct {
	Metadata ObjectMeta      `json:"metadata"`
	Origin   policies.Origin `json:"-"`
}

// ServicePort is one port of a Service.
type ServicePort struct {
	Name        string      `json:"name,omitempty"`
	Protocol    string      `json:"protocol,omitempty"`
	AppProtocol *string     `json:"appProtocol,omitempty"`
	Port        int64       `json:"port"`
	TargetPort  IntOrString `json:"targetPort,omitzero"`
}

// IntOrString is Kubernetes' int-or-string (a Service's targetPort).
type IntOrString struct {
	IsString bool
	IntVal   int64
	StrVal   string
}

// IsZero reports whether the value was not given.
func (v IntOrString) IsZero() bool { return !v.IsString && v.IntVal == 0 }

func (v IntOrString) String() string {
	if v.IsString {
		return v.StrVal
	}
	return strconv.FormatInt(v.IntVal, 10)
}

// UnmarshalJSON accepts a number or a string.
func (v *IntOrString) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		v.IsString = true
		return json.Unmarshal(b, &v.StrVal)
	}
	v.IsString = false
	if err := json.Unmarshal(b, &v.IntVal); err != nil {
		return fmt.Errorf("must be a number or a port name: %s", b)
	}
	return nil
}

// MarshalJSON writes a number or a string.
func (v IntOrString) MarshalJSON() ([]byte, error) {
	if v.IsString {
		return json.Marshal(v.StrVal)
	}
	return json.Marshal(v.IntVal)
}

// Pod is a core/v1 Pod.
type Pod struct {
	Metadata ObjectMeta      `json:"metadata"`
	Spec     PodSpec         `json:"spec"`
	Status   PodStatus       `json:"status"`
	Origin   policies.Origin `json:"-"`
}

// PodSpec is the part of a Pod's spec the control plane reads.
type PodSpec struct {
	ServiceAccountName string      `json:"serviceAccountName,omitempty"`
	ServiceAccount     string      `json:"serviceAccount,omitempty"` // deprecated alias of serviceAccountName
	NodeName           string      `json:"nodeName,omitempty"`
	HostNetwork        bool        `json:"hostNetwork,omitempty"`
	Containers         []Container `json:"containers,omitempty"`
}

// Container is the part of a container the control plane reads (its named ports).
type Container struct {
	Name  string          `json:"name"`
	Ports []ContainerPort `json:"ports,omitempty"`
}

// ContainerPort is one port a container declares.
type ContainerPort struct {
	Name          string `json:"name,omitempty"`
	ContainerPort int64  `json:"containerPort"`
	Protocol      string `json:"protocol,omitempty"`
}

// PodStatus is the part of a Pod's status the control plane reads.
type PodStatus struct {
	Phase      string         `json:"phase,omitempty"`
	PodIP      string         `json:"podIP,omitempty"`
	PodIPs     []PodIP        `json:"podIPs,omitempty"`
	Conditions []PodCondition `json:"conditions,omitempty"`
}

// PodIP is one entry of status.podIPs.
type PodIP struct {
	IP string `json:"ip"`
}

// PodCondition is one entry of status.conditions.
type PodCondition struct {
	Type   string `json:"type"`
	Status string `json:"status"`
}

// EndpointSlice is a discovery.k8s.io/v1 EndpointSlice: how a Service without a selector
// names its pods.
type EndpointSlice struct {
	Metadata    ObjectMeta      `json:"metadata"`
	AddressType string          `json:"addressType,omitempty"`
	Endpoints   []Endpoint      `json:"endpoints,omitempty"`
	Origin      policies.Origin `json:"-"`
}

// Endpoint is one endpoint of an EndpointSlice.
type Endpoint struct {
	Addresses []string         `json:"addresses,omitempty"`
	TargetRef *ObjectReference `json:"targetRef,omitempty"`
}

// ObjectReference points at another object.
type ObjectReference struct {
	Kind      string `json:"kind,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	UID       string `json:"uid,omitempty"`
}

// Gateway is a gateway.networking.k8s.io Gateway.
type Gateway struct {
	Metadata ObjectMeta      `json:"metadata"`
	Spec     GatewaySpec     `json:"spec"`
	Status   GatewayStatus   `json:"status"`
	Origin   policies.Origin `json:"-"`
}

// GatewaySpec is the part of a Gateway's spec the control plane reads.
type GatewaySpec struct {
	GatewayClassName string     `json:"gatewayClassName"`
	Listeners        []Listener `json:"listeners,omitempty"`
}

// Listener is one listener of a Gateway.
type Listener struct {
	Name          string         `json:"name"`
	Port          int64          `json:"port"`
	Protocol      string         `json:"protocol"`
	AllowedRoutes *AllowedRoutes `json:"allowedRoutes,omitempty"`
	Hostname      string         `json:"hostname,omitempty"` // ingress listeners (ingress.go)
	TLS           *GatewayTLS    `json:"tls,omitempty"`
}

// AllowedRoutes says which namespaces may attach to a listener (for a waypoint: use it).
type AllowedRoutes struct {
	Namespaces *RouteNamespaces `json:"namespaces,omitempty"`
}

// RouteNamespaces is allowedRoutes.namespaces.
type RouteNamespaces struct {
	From     string         `json:"from,omitempty"` // Same (default), All, Selector
	Selector *LabelSelector `json:"selector,omitempty"`
}

// LabelSelector is a Kubernetes label selector.
type LabelSelector struct {
	MatchLabels      map[string]string `json:"matchLabels,omitempty"`
	MatchExpressions []json.RawMessage `json:"matchExpressions,omitempty"`
}

// GatewayStatus carries the addresses a controller assigned to the Gateway.
type GatewayStatus struct {
	Addresses []GatewayStatusAddress `json:"addresses,omitempty"`
}

// GatewayStatusAddress is one address of a Gateway (type IPAddress or Hostname).
type GatewayStatusAddress struct {
	Type  string `json:"type,omitempty"`
	Value string `json:"value"`
}

// GatewayClass is a gateway.networking.k8s.io GatewayClass.
type GatewayClass struct {
	Metadata ObjectMeta       `json:"metadata"`
	Spec     GatewayClassSpec `json:"spec"`
	Origin   policies.Origin  `json:"-"`
}

// GatewayClassSpec names the controller of a class.
type GatewayClassSpec struct {
	ControllerName string `json:"controllerName"`
}
