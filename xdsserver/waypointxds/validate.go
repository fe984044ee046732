package waypointxds

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	xdstype "github.com/cncf/xds/go/xds/type/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/policies"
)

// AgentSecrets are the SDS secrets an agent next to Envoy may provide when xdsserver does not
// serve them (istio-agent's names): a reference to them is not an error.
var AgentSecrets = []string{SecretDefault, SecretRootCA}

// Validate checks every resource of every waypoint: ValidateAll on each, and on every message
// packed in an Any inside it (recursively: filter and transport socket configs, per-route
// configs, ECDS configs, the golang filter's plugin configs, TypedStructs), which
// go-control-plane's validation does not look into; the authz filter's config must decode and
// its policies load without error. It also checks that references resolve: RDS names, route
// and tcp_proxy clusters, EDS assignments, ECDS names, internal listeners and SDS secrets.
func Validate(r *Resources) error {
	var errs []error
	keys := make([]string, 0, len(r.Waypoints))
	for k := range r.Waypoints {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if err := ValidateWaypoint(r.Waypoints[k]); err != nil {
			errs = append(errs, fmt.Errorf("waypoint %s: %w", k, err))
		}
	}
	return errors.Join(errs...)
}

// refs are the names a waypoint's resources refer to, by kind.
type refs struct {
	routes, clusters, eds, ecds, listeners, secrets map[string][]string // name → where
	// lenient is set while walking a route configuration whose clusters Envoy does not
	// check (validate_clusters false, the RDS default): a route to a missing cluster is then
	// answered 503 (cluster_not_found) at run time, as istiod's routes to unknown hosts are.
	lenient bool
}

func (r *refs) add(m map[string][]string, name, where string) { m[name] = append(m[name], where) }

// ValidateWaypoint is Validate for one waypoint.
func ValidateWaypoint(w *WaypointResources) error {
	var errs []error
	rf := &refs{routes: map[string][]string{}, clusters: map[string][]string{}, eds: map[string][]string{},
		ecds: map[string][]string{}, listeners: map[string][]string{}, secrets: map[string][]string{}}
	byType := w.ByType()
	for _, t := range Types {
		names := make([]string, 0, len(byType[t]))
		for n := range byType[t] {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			where := shortType(t) + " " + n
			if n == "" {
				errs = append(errs, fmt.Errorf("%s: no name", where))
			}
			errs = append(errs, walk(byType[t][n], where, rf)...)
		}
	}
	internal := map[string]proto.Message{}
	for _, l := range w.Listeners {
		if l.GetInternalListener() != nil {
			internal[l.GetName()] = l
		}
	}
	check := func(kind string, want map[string][]string, have map[string]proto.Message, ok func(string) bool) {
		names := make([]string, 0, len(want))
		for n := range want {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			if _, found := have[n]; !found && (ok == nil || !ok(n)) {
				errs = append(errs, fmt.Errorf("%s: refers to %s %q, which does not exist", strings.Join(want[n], ", "), kind, n))
			}
		}
	}
	check("route configuration", rf.routes, byType[resource.RouteType], nil)
	check("cluster", rf.clusters, byType[resource.ClusterType], nil)
	check("cluster load assignment", rf.eds, byType[resource.EndpointType], nil)
	check("extension config", rf.ecds, byType[resource.ExtensionConfigType], nil)
	check("internal listener", rf.listeners, internal, nil)
	check("secret", rf.secrets, byType[resource.SecretType], func(n string) bool {
		return slices.Contains(AgentSecrets, n) || slices.ContainsFunc(w.Credentials, func(c *tlsv3.Secret) bool { return c.GetName() == n })
	})
	for _, c := range w.Credentials {
		errs = append(errs, walk(c, "credential "+c.GetName(), rf)...)
	}
	for name, cla := range byType[resource.EndpointType] {
		if _, ok := rf.eds[name]; !ok {
			errs = append(errs, fmt.Errorf("cluster load assignment %s: no EDS cluster uses it", name))
		}
		_ = cla
	}
	return errors.Join(errs...)
}

func shortType(t string) string { return t[strings.LastIndexByte(t, '.')+1:] }

type validator interface{ ValidateAll() error }

// walk validates m and every message below it, unpacking Anys, and records references.
func walk(m proto.Message, where string, rf *refs) []error {
	var errs []error
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
		}
	}
	collect(m, where, rf)
	if rc, ok := m.(*route.RouteConfiguration); ok {
		saved := rf.lenient
		rf.lenient = rc.GetValidateClusters() != nil && !rc.GetValidateClusters().GetValue() ||
			rc.GetValidateClusters() == nil && strings.HasPrefix(where, shortType(resource.RouteType))
		defer func() { rf.lenient = saved }()
	}
	msg := m.ProtoReflect()
	msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		path := where + "." + string(fd.Name())
		switch {
		case fd.IsMap() && fd.MapValue().Kind() == protoreflect.MessageKind:
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				errs = append(errs, walkValue(mv.Message().Interface(), path+"["+k.String()+"]", rf)...)
				return true
			})
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			for i := 0; i < v.List().Len(); i++ {
				errs = append(errs, walkValue(v.List().Get(i).Message().Interface(), fmt.Sprintf("%s[%d]", path, i), rf)...)
			}
		case !fd.IsList() && !fd.IsMap() && fd.Kind() == protoreflect.MessageKind:
			errs = append(errs, walkValue(v.Message().Interface(), path, rf)...)
		}
		return true
	})
	return errs
}

func walkValue(m proto.Message, where string, rf *refs) []error {
	a, ok := m.(*anypb.Any)
	if !ok {
		return walk(m, where, rf)
	}
	if a == nil || a.GetTypeUrl() == "" {
		return []error{fmt.Errorf("%s: empty Any", where)}
	}
	inner, err := a.UnmarshalNew()
	if err != nil {
		return []error{fmt.Errorf("%s: %s: %w", where, a.GetTypeUrl(), err)}
	}
	where += "<" + string(inner.ProtoReflect().Descriptor().FullName()) + ">"
	if ts, ok := inner.(*xdstype.TypedStruct); ok {
		return append(walk(inner, where, rf), typedStruct(a, ts, where)...)
	}
	return walk(inner, where, rf)
}

// typedStruct checks what a TypedStruct carries: the authz filter's configs through their own
// decoders (and the policies through policies.Load), a registered proto through protojson.
func typedStruct(a *anypb.Any, ts *xdstype.TypedStruct, where string) []error {
	switch ts.GetTypeUrl() {
	case authzconfig.ConfigTypeURL:
		c, err := authzconfig.DecodeConfig(a)
		if err != nil {
			return []error{fmt.Errorf("%s: %w", where, err)}
		}
		_, perrs := policies.Load([]byte(c.Policies), where+".policies")
		return perrs
	case authzconfig.RouteTypeURL:
		if _, err := authzconfig.DecodeRoute(a); err != nil {
			return []error{fmt.Errorf("%s: %w", where, err)}
		}
		return nil
	}
	name := ts.GetTypeUrl()[strings.LastIndexByte(ts.GetTypeUrl(), '/')+1:]
	mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(name))
	if err != nil {
		return []error{fmt.Errorf("%s: type_url %q: %w", where, ts.GetTypeUrl(), err)}
	}
	js, err := ts.GetValue().MarshalJSON()
	if err != nil {
		return []error{fmt.Errorf("%s: %w", where, err)}
	}
	inner := mt.New().Interface()
	if err := protojson.Unmarshal(js, inner); err != nil {
		return []error{fmt.Errorf("%s: value: %w", where, err)}
	}
	return walk(inner, where+"<"+name+">", &refs{routes: map[string][]string{}, clusters: map[string][]string{}, eds: map[string][]string{},
		ecds: map[string][]string{}, listeners: map[string][]string{}, secrets: map[string][]string{}})
}

// collect records the names m refers to.
func collect(m proto.Message, where string, rf *refs) {
	switch x := m.(type) {
	case *hcm.Rds:
		rf.add(rf.routes, x.GetRouteConfigName(), where)
	case *route.RouteAction:
		if rf.lenient {
			return
		}
		if c := x.GetCluster(); c != "" {
			rf.add(rf.clusters, c, where)
		}
		for _, wc := range x.GetWeightedClusters().GetClusters() {
			rf.add(rf.clusters, wc.GetName(), where)
		}
		for _, mp := range x.GetRequestMirrorPolicies() {
			rf.add(rf.clusters, mp.GetCluster(), where)
		}
	case *tcpproxy.TcpProxy:
		if c := x.GetCluster(); c != "" {
			rf.add(rf.clusters, c, where)
		}
	case *hcm.HttpFilter:
		if x.GetConfigDiscovery() != nil {
			rf.add(rf.ecds, x.GetName(), where)
		}
	case *listener.Filter:
		if x.GetConfigDiscovery() != nil {
			rf.add(rf.ecds, x.GetName(), where)
		}
	case *core.HttpUri: // ext_authz's HTTP service, a remote JWKS
		if c := x.GetCluster(); c != "" {
			rf.add(rf.clusters, c, where)
		}
	case *core.GrpcService_EnvoyGrpc: // ext_authz's gRPC service
		rf.add(rf.clusters, x.GetClusterName(), where)
	case *tlsv3.SdsSecretConfig:
		rf.add(rf.secrets, x.GetName(), where)
	case *core.EnvoyInternalAddress:
		rf.add(rf.listeners, x.GetServerListenerName(), where)
	case *cluster.Cluster:
		if x.GetType() == cluster.Cluster_EDS {
			name := x.GetEdsClusterConfig().GetServiceName()
			if name == "" {
				name = x.GetName()
			}
			rf.add(rf.eds, name, where)
		}
	}
}
