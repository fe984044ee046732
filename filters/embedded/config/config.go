// Package config turns what the embedded waypoint receives over xDS — the workload API, the authz filter's ECDS config, RDS route configurations, CDS clusters and their EDS endpoints, the same resources Envoy gets — into immutable snapshots (route tables with each route's filter configs merged and fault compiled, clusters with endpoints), built once per update and swapped atomically.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	golang "github.com/envoyproxy/go-control-plane/contrib/envoy/extensions/filters/http/golang/v3alpha"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"istio.io/istio/pkg/workloadapi"

	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/embedded/fault"
	"github.com/goambient/goambient/filters/embedded/host"
	"github.com/goambient/goambient/filters/embedded/router"
	"github.com/goambient/goambient/filters/embedded/upstream"
	"github.com/goambient/goambient/filters/jwtauthn"
	"github.com/goambient/goambient/ztunnel/state"
	"github.com/goambient/goambient/ztunnel/xds"
)

// Type URLs the waypoint subscribes to.
const (
	AddressType   = xds.AddressType
	RouteType     = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	ExtensionType = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
	ClusterType   = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType  = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	ListenerType  = "type.googleapis.com/envoy.config.listener.v3.Listener"
)

// Types are the subscriptions of a waypoint, in order.
var Types = []string{AddressType, ExtensionType, ClusterType, EndpointType, ListenerType, RouteType}

// Node is who the waypoint is, from its Envoy node id.
type Node struct {
	ID        string
	IP        netip.Addr
	Pod       string
	Namespace string
}

// ParseNodeID parses waypoint~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local.
func ParseNodeID(id string) (Node, error) {
	parts := strings.Split(id, "~")
	if len(parts) != 4 || parts[0] != "waypoint" {
		return Node{}, fmt.Errorf("node id %q: want waypoint~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local", id)
	}
	ip, err := netip.ParseAddr(parts[1])
	if err != nil {
		return Node{}, fmt.Errorf("node id %q: %w", id, err)
	}
	pod, ns, ok := strings.Cut(parts[2], ".")
	if !ok || pod == "" || ns == "" {
		return Node{}, fmt.Errorf("node id %q: %q is not <pod>.<namespace>", id, parts[2])
	}
	return Node{ID: id, IP: ip, Pod: pod, Namespace: ns}, nil
}

// ExtensionPrefix is the start of the name of this waypoint's ECDS resource:
// goambient.authz/<namespace>/<gateway>.
func (n Node) ExtensionPrefix() string { return authzconfig.PluginName + "/" + n.Namespace + "/" }

// RouteName is the RDS name of a service port: inbound-vip|<port>|http|<hostname>.
func RouteName(port uint16, hostname string) string {
	return fmt.Sprintf("inbound-vip|%d|http|%s", port, hostname)
}

// Table is one service port's compiled route configuration.
type Table struct {
	*router.Table
	// NoRoute is the authz config when no route matches: the filter-level config alone (Envoy
	// merges no per-route config without a route). Nil while there is no filter config.
	NoRoute any
	// NoRouteCustom is the CUSTOM phase's config when no route matches (nil: no CUSTOM phase).
	NoRouteCustom any
	// JWT is the chain's jwt_authn filter (from main_internal's chain of the same name), run
	// before the authz filter; nil when no RequestAuthentication applies.
	JWT    *jwtauthn.Filter
	extras map[*router.Route]*Extras
}

// Extras are what a route's filters need: the authz config merged with the virtual host's and
// the route's levels (nil while there is no filter config: every request is denied) and the
// compiled fault (nil: none).
type Extras struct {
	Authz any
	// Custom is the authz filter's CUSTOM-phase config, run before jwt_authn as Envoy's chain
	// runs ext_authz (nil: the chain has none; Authz then does CUSTOM too).
	Custom any
	Fault  *fault.Fault
}

// Extras returns a route's filter configs.
func (t *Table) Extras(rt *router.Route) *Extras { return t.extras[rt] }

// Snapshot is everything a request needs, never modified once stored.
type Snapshot struct {
	State      *state.State
	Self       *workloadapi.Workload // the waypoint's own workload (by node IP), nil if unknown
	FilterName string                // the ECDS resource in use; "" before one arrived
	Tables     map[string]*Table     // by RDS name
	Clusters   map[string]*upstream.Cluster
}

// Table returns the route configuration of a service port, nil when there is none.
func (s *Snapshot) Table(port uint16, hostname string) *Table {
	return s.Tables[RouteName(port, hostname)]
}

// parsedRoute is an RDS resource compiled, with its per-route authz configs parsed (not yet
// merged with the filter config).
type parsedRoute struct {
	table  *router.Table
	vhost  any                   // the virtual host's authz config (nil: none)
	routes map[*router.Route]any // each route's own authz config
	faults map[*router.Route]*fault.Fault
}

// Store holds the current Snapshot and applies xDS updates (it is the xds.Applier).
type Store struct {
	host  *host.Host
	node  Node
	log   *slog.Logger
	sopts []state.Option
	mgr   *upstream.Manager

	mu         sync.Mutex // serialises Apply
	st         *state.State
	filter     any
	filterName string
	routes     map[string]*parsedRoute
	clusters   map[string]*cluster.Cluster
	endpoints  map[string]*endpoint.ClusterLoadAssignment
	synced     map[string]bool
	jwt        map[string]*jwtauthn.Filter // by chain (RDS) name
	custom     any                         // the authz filter's CUSTOM-phase config (nil: none)
	remotes    *jwtauthn.RemoteCache

	cur   atomic.Pointer[Snapshot]
	ready atomic.Bool
}

// NewStore returns a Store with an empty snapshot (every request denied).
func NewStore(h *host.Host, node Node, log *slog.Logger, sopts ...state.Option) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{host: h, node: node, log: log, sopts: sopts, st: state.Empty(sopts...), mgr: upstream.NewManager(),
		routes: map[string]*parsedRoute{}, clusters: map[string]*cluster.Cluster{}, endpoints: map[string]*endpoint.ClusterLoadAssignment{},
		synced: map[string]bool{}, jwt: map[string]*jwtauthn.Filter{}, remotes: &jwtauthn.RemoteCache{}}
	s.cur.Store(&Snapshot{State: s.st, Tables: map[string]*Table{}, Clusters: map[string]*upstream.Cluster{}})
	return s
}

// Load returns the current snapshot.
func (s *Store) Load() *Snapshot { return s.cur.Load() }

// Ready reports whether the waypoint has addresses, its filter config, clusters and a route.
func (s *Store) Ready() bool { return s.ready.Load() }

// Apply takes the full set of one type; an error (a NACK) leaves everything as it was.
func (s *Store) Apply(typeURL string, res map[string]*anypb.Any) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var clusters map[string]*upstream.Cluster
	switch typeURL {
	case AddressType:
		st, err := s.addresses(res)
		if err != nil {
			return err
		}
		s.st = st
	case ExtensionType:
		name, cfg, custom, err := s.extension(res)
		if err != nil {
			return err
		}
		if name != s.filterName {
			s.log.Info("filter config selected", "ecds", name)
		}
		s.filterName, s.filter, s.custom = name, cfg, custom
	case RouteType:
		routes, err := s.parseRoutes(res)
		if err != nil {
			return err
		}
		s.routes = routes
	case ClusterType, EndpointType:
		cs, eps, err := decodeClusters(typeURL, res, s.clusters, s.endpoints)
		if err != nil {
			return err
		}
		compiled, err := s.compileClusters(cs, eps)
		if err != nil {
			return err
		}
		s.clusters, s.endpoints, clusters = cs, eps, compiled
	case ListenerType:
		// The embedded waypoint's shape is fixed; what it reads of the listeners is the
		// filters each service chain runs before the authz filter.
		jwt, err := s.jwtFilters(res)
		if err != nil {
			return err
		}
		s.jwt = jwt
	default:
		return fmt.Errorf("unexpected type %q", typeURL)
	}
	if clusters == nil {
		clusters = s.cur.Load().Clusters
	}
	s.synced[typeURL] = true
	s.publish(clusters)
	return nil
}

// publish builds and stores the snapshot; s.mu is held.
func (s *Store) publish(clusters map[string]*upstream.Cluster) {
	snap := &Snapshot{State: s.st, Self: s.st.WorkloadByIP(s.node.IP), FilterName: s.filterName,
		Tables: make(map[string]*Table, len(s.routes)), Clusters: clusters}
	for n, pr := range s.routes {
		t := &Table{Table: pr.table, JWT: s.jwt[n], extras: make(map[*router.Route]*Extras, len(pr.table.Routes))}
		var vh, cvh any
		if s.filter != nil {
			t.NoRoute, t.NoRouteCustom = s.filter, s.custom
			vh, cvh = s.filter, s.custom
			if pr.vhost != nil {
				vh = s.host.Merge(s.filter, pr.vhost)
				if s.custom != nil {
					cvh = s.host.Merge(s.custom, pr.vhost)
				}
			}
		}
		for _, rt := range pr.table.Routes {
			e := &Extras{Fault: pr.faults[rt], Authz: vh, Custom: cvh}
			if vh != nil && pr.routes[rt] != nil {
				e.Authz = s.host.Merge(vh, pr.routes[rt])
				if cvh != nil {
					e.Custom = s.host.Merge(cvh, pr.routes[rt])
				}
			}
			t.extras[rt] = e
		}
		snap.Tables[n] = t
	}
	s.cur.Store(snap)
	ready := s.filter != nil && len(snap.Tables) > 0 && s.synced[AddressType] && s.synced[ClusterType] && s.synced[ListenerType]
	if ready != s.ready.Load() {
		s.log.Info("readiness changed", "ready", ready, "routes", len(snap.Tables), "clusters", len(snap.Clusters), "ecds", s.filterName)
	}
	s.ready.Store(ready)
}

func (s *Store) addresses(res map[string]*anypb.Any) (*state.State, error) {
	var r state.Resources
	var errs []error
	for _, name := range sortedKeys(res) {
		var a workloadapi.Address
		if err := res[name].UnmarshalTo(&a); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		switch t := a.GetType().(type) {
		case *workloadapi.Address_Workload:
			r.Workloads = append(r.Workloads, t.Workload)
		case *workloadapi.Address_Service:
			r.Services = append(r.Services, t.Service)
		default:
			errs = append(errs, fmt.Errorf("%s: neither a workload nor a service", name))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return state.New(r, s.sopts...)
}

// extension picks this waypoint's ECDS resource (goambient.authz/<ns>/<gateway>, where the pod
// is the gateway or <gateway>-<something>) and parses its plugin config.
func (s *Store) extension(res map[string]*anypb.Any) (name string, cfg, custom any, err error) {
	prefix := s.node.ExtensionPrefix()
	best := ""
	for name := range res {
		gw, ok := strings.CutPrefix(name, prefix)
		if !ok || gw == "" {
			continue
		}
		if gw == s.node.Pod || strings.HasPrefix(s.node.Pod, gw+"-") {
			if len(name) > len(best) {
				best = name
			}
		}
	}
	if best == "" {
		var mine []string
		for name := range res {
			if strings.HasPrefix(name, prefix) {
				mine = append(mine, name)
			}
		}
		if len(mine) != 1 {
			if len(res) > 0 {
				s.log.Warn("no filter config for this waypoint: denying every request", "want", prefix+"<gateway>", "candidates", len(mine))
			}
			return "", nil, nil, nil
		}
		best = mine[0]
	}
	var tec core.TypedExtensionConfig
	if err := res[best].UnmarshalTo(&tec); err != nil {
		return "", nil, nil, fmt.Errorf("%s: %w", best, err)
	}
	var gc golang.Config
	if err := tec.GetTypedConfig().UnmarshalTo(&gc); err != nil {
		return "", nil, nil, fmt.Errorf("%s: typed_config: %w", best, err)
	}
	if gc.GetPluginName() != s.host.Name() {
		return "", nil, nil, fmt.Errorf("%s: plugin_name %q, want %q (Envoy would pass every request through)", best, gc.GetPluginName(), s.host.Name())
	}
	cfg, err = s.host.Parse(gc.GetPluginConfig())
	if err != nil {
		return "", nil, nil, fmt.Errorf("%s: golang filter failed to parse plugin config: %w", best, err)
	}
	pc, err := customPhase(gc.GetPluginConfig())
	if err != nil || pc == nil {
		return best, cfg, nil, err
	}
	if custom, err = s.host.Parse(pc); err != nil {
		return "", nil, nil, fmt.Errorf("%s: golang filter failed to parse plugin config (CUSTOM phase): %w", best, err)
	}
	return best, cfg, custom, nil
}

// parseRoutes compiles every route configuration and parses its filters' per-route configs.
func (s *Store) parseRoutes(res map[string]*anypb.Any) (map[string]*parsedRoute, error) {
	out := make(map[string]*parsedRoute, len(res))
	var errs []error
	for _, name := range sortedKeys(res) {
		var rc route.RouteConfiguration
		if err := res[name].UnmarshalTo(&rc); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		t, err := router.Compile(&rc)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		pr := &parsedRoute{table: t, routes: map[*router.Route]any{}, faults: map[*router.Route]*fault.Fault{}}
		if err := checkFilterConfigs(t.PerFilter, s.host.Name()); err != nil {
			errs = append(errs, fmt.Errorf("%s: virtual host %s: %w", name, t.VirtualHost, err))
			continue
		}
		if pr.vhost, err = s.authzConfig(t.PerFilter); err != nil {
			errs = append(errs, fmt.Errorf("%s: virtual host %s: %w", name, t.VirtualHost, err))
			continue
		}
		for i, rt := range t.Routes {
			if err := checkFilterConfigs(rt.PerFilter, s.host.Name()); err != nil {
				errs = append(errs, fmt.Errorf("%s: routes[%d]: %w", name, i, err))
				continue
			}
			if pr.routes[rt], err = s.authzConfig(rt.PerFilter); err != nil {
				errs = append(errs, fmt.Errorf("%s: routes[%d]: %w", name, i, err))
			}
			if pr.faults[rt], err = fault.Compile(rt.PerFilter[fault.Name]); err != nil {
				errs = append(errs, fmt.Errorf("%s: routes[%d]: %w", name, i, err))
			}
		}
		out[t.Name] = pr
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// checkFilterConfigs refuses per-filter configs for filters the embedded waypoint does not run:
// the golang filter (under its generic name or the waypoint's ECDS name) and the fault filter.
// The CUSTOM-match filter's (Envoy's chain) is accepted: the embedded authz filter does its
// work, for the same route target.
func checkFilterConfigs(m map[string]*anypb.Any, plugin string) error {
	for k := range m {
		if k != authzconfig.FilterName && k != fault.Name && !strings.HasPrefix(k, plugin+"/") && !strings.HasPrefix(k, authzconfig.CustomPluginName+"/") {
			return fmt.Errorf("typed_per_filter_config[%s]: the embedded waypoint runs no such filter", k)
		}
	}
	return nil
}

// authzConfig parses the authz plugin's per-route config in a typed_per_filter_config map
// (nil when there is none).
func (s *Store) authzConfig(m map[string]*anypb.Any) (any, error) {
	a, ok := m[authzconfig.FilterName]
	if !ok {
		return nil, nil
	}
	var cpr golang.ConfigsPerRoute
	if err := a.UnmarshalTo(&cpr); err != nil {
		return nil, fmt.Errorf("typed_per_filter_config[%s]: %w", authzconfig.FilterName, err)
	}
	p, ok := cpr.GetPluginsConfig()[s.host.Name()]
	if !ok {
		return nil, nil
	}
	if p.GetDisabled() {
		return nil, errors.New("disabled is not implemented by Envoy's golang filter")
	}
	cfg, err := s.host.ParseRoute(p.GetConfig())
	if err != nil {
		return nil, fmt.Errorf("golang filter failed to parse per-route config: %w", err)
	}
	return cfg, nil
}

// decodeClusters replaces the clusters or the endpoints with a new full set.
func decodeClusters(typeURL string, res map[string]*anypb.Any, cs map[string]*cluster.Cluster, eps map[string]*endpoint.ClusterLoadAssignment) (
	map[string]*cluster.Cluster, map[string]*endpoint.ClusterLoadAssignment, error) {
	var errs []error
	if typeURL == ClusterType {
		cs = make(map[string]*cluster.Cluster, len(res))
		for _, name := range sortedKeys(res) {
			c := &cluster.Cluster{}
			if err := res[name].UnmarshalTo(c); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				continue
			}
			cs[c.GetName()] = c
		}
	} else {
		eps = make(map[string]*endpoint.ClusterLoadAssignment, len(res))
		for _, name := range sortedKeys(res) {
			e := &endpoint.ClusterLoadAssignment{}
			if err := res[name].UnmarshalTo(e); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				continue
			}
			eps[e.GetClusterName()] = e
		}
	}
	return cs, eps, errors.Join(errs...)
}

// compileClusters compiles the service clusters (EDS): the internal ones (main_internal,
// connect_originate, BlackHoleCluster) are the embedded waypoint's fixed shape.
func (s *Store) compileClusters(cs map[string]*cluster.Cluster, eps map[string]*endpoint.ClusterLoadAssignment) (map[string]*upstream.Cluster, error) {
	out := map[string]*upstream.Cluster{}
	var errs []error
	for _, name := range sortedKeys(cs) {
		c := cs[name]
		if c.GetType() != cluster.Cluster_EDS && c.GetType() != cluster.Cluster_STRICT_DNS && c.GetType() != cluster.Cluster_LOGICAL_DNS {
			continue
		}
		svc := c.GetEdsClusterConfig().GetServiceName()
		if svc == "" {
			svc = name
		}
		uc, err := s.mgr.Compile(c, eps[svc])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out[name] = uc
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	s.mgr.Retain(out)
	return out, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// customPhase is the config of the authz filter's CUSTOM phase when a's chain enforces CUSTOM
// before jwt_authn (customInChain; nil otherwise): the embedded waypoint has no ext_authz
// filter, so it runs the authz filter twice in istiod's order — CUSTOM calling the providers
// itself (this config), jwt_authn, then DENY and ALLOW (a as is).
func customPhase(a *anypb.Any) (*anypb.Any, error) {
	c, err := authzconfig.DecodeConfig(a)
	if err != nil || !c.CustomInChain {
		return nil, err
	}
	c.CustomInChain, c.CustomPhase = false, true
	return authzconfig.EncodeConfig(c)
}
