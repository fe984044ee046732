package waypointxds

import (
	"fmt"
	"strconv"
	"strings"
)

// Names of the resources, as Istio's waypoint names them.
const (
	ConnectTerminate = "connect_terminate" // listener on 0.0.0.0:15008: HBONE in
	MainInternal     = "main_internal"     // internal listener (and the cluster that reaches it)
	ConnectOriginate = "connect_originate" // internal listener (and the cluster): HBONE out
	BlackHole        = "BlackHoleCluster"  // a cluster without endpoints, for unknown destinations
	SecretDefault    = "default"           // SDS: the waypoint's SVID (certificate and key)
	SecretRootCA     = "ROOTCA"            // SDS: the trust bundle
	InternalListener = "envoy.bootstrap.internal_listener"
	HBONEPort        = 15008

	// Filter-state keys connect_terminate sets for main_internal (Istio's names).
	OriginalDstLocal  = "envoy.filters.listener.original_dst.local_ip"
	OriginalDstRemote = "envoy.filters.listener.original_dst.remote_ip"
	ConnectAuthority  = "io.istio.connect_authority"
	// OriginalDstMetadata is the endpoint metadata namespace connect_originate's original_dst
	// listener filter reads the pod's ip:port from (key "local").
	OriginalDstMetadata = "envoy.filters.listener.original_dst"
)

// ServiceName is the name of the RDS route configuration and of the EDS cluster of one HTTP
// service port: inbound-vip|<port>|http|<hostname>.
func ServiceName(port uint32, hostname string) string {
	return "inbound-vip|" + strconv.FormatUint(uint64(port), 10) + "|http|" + hostname
}

// ExtensionConfigName is the ECDS resource carrying a waypoint's authz filter config
// (goambient.authz/<namespace>/<gateway>). It is also the name of the HTTP filter in each
// main_internal chain: Envoy requests an ECDS resource by the filter's name.
func ExtensionConfigName(namespace, gateway string) string {
	return "goambient.authz/" + namespace + "/" + gateway
}

// NodeID is the node id Istio gives a waypoint's Envoy:
// waypoint~<podIP>~<pod>.<namespace>~<namespace>.svc.<cluster domain>.
func NodeID(podIP, pod, namespace, clusterDomain string) string {
	return "waypoint~" + podIP + "~" + pod + "." + namespace + "~" + namespace + ".svc." + clusterDomain
}

// ParseNodeID returns the pod name and namespace of an Istio node id
// (<type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>).
func ParseNodeID(id string) (pod, namespace string, err error) {
	parts := strings.Split(id, "~")
	if len(parts) != 4 {
		return "", "", fmt.Errorf("node id %q: want <type>~<ip>~<pod>.<namespace>~<domain>", id)
	}
	pod, namespace, ok := strings.Cut(parts[2], ".")
	if !ok || pod == "" || namespace == "" {
		return "", "", fmt.Errorf("node id %q: %q is not <pod>.<namespace>", id, parts[2])
	}
	return pod, namespace, nil
}
