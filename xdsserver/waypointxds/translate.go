package waypointxds

import (
	"cmp"
	"fmt"
	"slices"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/xdsserver/model"
)

// Options tune the translation.
type Options struct {
	// SVID returns the PEM certificate chain and key of a waypoint's identity; when nil or
	// when it returns ok=false, the secret "default" is referenced by SDS name only (provided
	// by an agent next to Envoy, as istio-agent does).
	SVID func(w *model.Waypoint) (certPEM, keyPEM []byte, ok bool)
	// RootCertPEM is the trust bundle served as the secret "ROOTCA"; empty: referenced only.
	RootCertPEM []byte
}

// Resources are the xDS resources of every waypoint of a mesh.
type Resources struct {
	Waypoints map[string]*WaypointResources // by the waypoint's namespace/name
	// Pods maps the namespace/name of each waypoint pod to its waypoint's namespace/name.
	Pods     map[string]string
	Warnings []error // problems found; the resources concerned are left out, never fatal
}

// WaypointResources are what one waypoint's Envoy receives. Every list is sorted by name.
type WaypointResources struct {
	Namespace, Name  string
	ServiceAccount   string // the service account its pods run as (their Kubernetes tokens name it)
	Listeners        []*listener.Listener
	Routes           []*route.RouteConfiguration
	Clusters         []*cluster.Cluster
	Endpoints        []*endpoint.ClusterLoadAssignment
	ExtensionConfigs []*core.TypedExtensionConfig
	Secrets          []*tlsv3.Secret
	// Credentials are an ingress gateway's TLS certificates from Secrets (ingress.go): never
	// in ByType (the plaintext ADS), served only on the authenticated secure listener.
	Credentials []*tlsv3.Secret
}

// Types are the xDS type URLs a waypoint receives, in the order Envoy needs them.
var Types = []string{
	resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType,
	resource.ExtensionConfigType, resource.SecretType,
}

// ByType indexes the resources by type URL and name.
func (w *WaypointResources) ByType() map[string]map[string]proto.Message {
	out := map[string]map[string]proto.Message{}
	add := func(t, name string, m proto.Message) {
		if out[t] == nil {
			out[t] = map[string]proto.Message{}
		}
		out[t][name] = m
	}
	for _, t := range Types {
		out[t] = map[string]proto.Message{}
	}
	for _, r := range w.Listeners {
		add(resource.ListenerType, r.GetName(), r)
	}
	for _, r := range w.Routes {
		add(resource.RouteType, r.GetName(), r)
	}
	for _, r := range w.Clusters {
		add(resource.ClusterType, r.GetName(), r)
	}
	for _, r := range w.Endpoints {
		add(resource.EndpointType, r.GetClusterName(), r)
	}
	for _, r := range w.ExtensionConfigs {
		add(resource.ExtensionConfigType, r.GetName(), r)
	}
	for _, r := range w.Secrets {
		add(resource.SecretType, r.GetName(), r)
	}
	return out
}

// WaypointForNode returns the namespace/name of the waypoint an Envoy node id belongs to: the
// waypoint one of whose pods is <pod>.<namespace>, or else the waypoint Gateway named <pod>
// in <namespace>. An unknown node is an error (it gets no resources: fail closed).
func (r *Resources) WaypointForNode(id string) (string, error) {
	pod, ns, err := ParseNodeID(id)
	if err != nil {
		return "", err
	}
	if key, ok := r.Pods[ns+"/"+pod]; ok {
		return key, nil
	}
	if _, ok := r.Waypoints[ns+"/"+pod]; ok {
		return ns + "/" + pod, nil
	}
	return "", fmt.Errorf("node id %q: no waypoint runs pod %s/%s and no waypoint Gateway is named so", id, ns, pod)
}

// servicePort is one HTTP service port bound to a waypoint.
type servicePort struct {
	svc  *model.Service
	port model.ServicePort
	name string // inbound-vip|<port>|http|<hostname>
	// pre are the HTTP filters before the authz filter (jwt_authn), as istiod's per-service
	// waypoint chain has them.
	pre []*hcm.HttpFilter
}

// Translate builds every waypoint's resources. It never fails: problems are in Warnings and
// the resource concerned is left out.
func Translate(mesh *model.Mesh, opts Options) *Resources {
	r := &Resources{Waypoints: map[string]*WaypointResources{}, Pods: map[string]string{}}
	for _, w := range mesh.Waypoints {
		for _, p := range w.Instances {
			r.Pods[p.Key()] = w.Key()
		}
		r.Waypoints[w.Key()] = translateWaypoint(mesh, w, opts, r)
	}
	if mesh.Ingress != nil {
		for _, g := range mesh.Ingress.Gateways {
			for _, p := range mesh.Workloads {
				if p.Namespace == g.Namespace && p.Labels[model.LabelGatewayName] == g.Name {
					r.Pods[p.Key()] = g.Key()
				}
			}
			r.Waypoints[g.Key()] = translateIngress(mesh, g, r)
		}
	}
	return r
}

func (r *Resources) warn(w *model.Waypoint, field, format string, args ...any) {
	r.Warnings = append(r.Warnings, &policies.Error{Origin: w.Origin, Kind: "Gateway", Object: w.Key(), Field: field,
		Reason: fmt.Sprintf(format, args...)})
}

func translateWaypoint(mesh *model.Mesh, w *model.Waypoint, opts Options, r *Resources) *WaypointResources {
	td := cmp.Or(mesh.TrustDomain, "cluster.local")
	out := &WaypointResources{Namespace: w.Namespace, Name: w.Name, ServiceAccount: w.ServiceAccount}
	var ports []servicePort
	for _, s := range mesh.Services {
		if s.Waypoint == nil || s.Waypoint.Key() != w.Key() {
			continue
		}
		if len(s.VIPs) == 0 {
			r.warn(w, "service "+s.Key(), "headless Service is bound to the waypoint: left out (no VIP to match)")
			continue
		}
		for _, p := range s.Ports {
			proto := p.Protocol()
			if !proto.IsHTTP() && proto != model.ProtocolUnsupported {
				r.warn(w, fmt.Sprintf("service %s: port %d", s.Key(), p.Port),
					"protocol %s is not served by the waypoint (L4 authorization at waypoints is not implemented): connections to it are closed", proto)
				continue
			}
			sp := servicePort{svc: s, port: p, name: ServiceName(p.Port, s.Hostname)}
			if err := authnFilters(mesh, w, &sp); err != nil {
				r.warn(w, "service "+s.Key(), "RequestAuthentication: %v: the service's chain is left out (fail closed)", err)
				continue
			}
			ports = append(ports, sp)
		}
	}
	ports = append(ports, entryPorts(mesh, w, r)...) // egress (egress.go)
	ecds := ExtensionConfigName(w.Namespace, w.Name)
	// CUSTOM (ext_authz) first in each chain, before jwt_authn, as istiod orders them.
	aps := Applicable(mesh, w)
	customECDS := CustomExtensionConfigName(w.Namespace, w.Name)
	custom := customFilters(mesh, aps, customECDS)
	for i := range ports {
		ports[i].pre = append(slices.Clone(custom), ports[i].pre...)
	}

	out.Listeners = []*listener.Listener{
		connectTerminateListener(td),
		mainInternalListener(ports, ecds),
		connectOriginateListener(),
	}
	out.Clusters = []*cluster.Cluster{mainInternalCluster(), connectOriginateCluster(td), blackHoleCluster()}
	out.Clusters = append(out.Clusters, authnClusters(mesh, w, ports)...)
	if custom != nil {
		cls, eps := extAuthzClusters(mesh, aps)
		out.Clusters = appendNewClusters(out.Clusters, cls)
		out.Endpoints = append(out.Endpoints, eps...)
	}
	for _, sp := range ports {
		rc, err := serviceRoute(routeCtx{mesh: mesh, w: w, sp: sp}, ecds)
		if err == nil && custom != nil {
			err = addCustomRoute(rc, ecds, customECDS)
		}
		if err != nil {
			r.warn(w, "service "+sp.svc.Key(), "route: %v", err)
			continue
		}
		out.Routes = append(out.Routes, rc)
		if sp.svc.Entry != nil {
			c, cla, err := entryCluster(mesh, sp)
			if err != nil {
				r.warn(w, "ServiceEntry "+sp.svc.Entry.Key()+" host "+sp.svc.Hostname, "port %d: %v: its cluster has no endpoint", sp.port.Port, err)
				c, cla = upstreamCluster(sp, upstream{name: sp.name}), &endpoint.ClusterLoadAssignment{ClusterName: sp.name}
			}
			out.Clusters = append(out.Clusters, c)
			if cla != nil {
				out.Endpoints = append(out.Endpoints, cla)
			}
			continue
		}
		for _, u := range upstreams(mesh, sp) {
			out.Clusters = append(out.Clusters, upstreamCluster(sp, u))
			out.Endpoints = append(out.Endpoints, upstreamEndpoints(mesh, sp, u))
		}
	}
	ext, err := extensionConfig(mesh, w, ecds, custom != nil)
	if err == nil && custom != nil {
		var cext *core.TypedExtensionConfig
		if cext, err = customExtensionConfigOf(ext, customECDS); err == nil {
			out.ExtensionConfigs = append(out.ExtensionConfigs, cext)
		}
	}
	if err != nil {
		r.warn(w, "policies", "authz config: %v", err)
	} else {
		out.ExtensionConfigs = append(out.ExtensionConfigs, ext)
	}
	out.Secrets = secrets(w, opts)

	sortByName(out.Listeners, (*listener.Listener).GetName)
	sortByName(out.Routes, (*route.RouteConfiguration).GetName)
	sortByName(out.Clusters, (*cluster.Cluster).GetName)
	sortByName(out.Endpoints, (*endpoint.ClusterLoadAssignment).GetClusterName)
	return out
}

func sortByName[T any](list []T, name func(T) string) {
	slices.SortFunc(list, func(a, b T) int { return cmp.Compare(name(a), name(b)) })
}
