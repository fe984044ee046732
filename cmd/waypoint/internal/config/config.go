// Package config turns what the embedded waypoint receives over xDS (workload API addresses, RDS route configurations, the ECDS filter config) into immutable snapshots, parsed once through the filter host and swapped atomically.
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
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"istio.io/istio/pkg/workloadapi"

	"github.com/goambient/goambient/cmd/waypoint/internal/authzhost"
	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/ztunnel/state"
	"github.com/goambient/goambient/ztunnel/xds"
)

// Type URLs the waypoint subscribes to.
const (
	AddressType   = xds.AddressType
	RouteType     = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	ExtensionType = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
	ListenerType  = "type.googleapis.com/envoy.config.listener.v3.Listener"
)

// Types are the subscriptions of a waypoint, in order.
var Types = []string{AddressType, ExtensionType, RouteType}

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

// Route is one service port's route configuration with its filter config merged.
type Route struct {
	Name    string
	Cluster string // upstream_cluster in the access log
	Config  any    // nil while there is no filter config: requests are denied
	route   any
}

// Snapshot is everything a request needs, never modified once stored.
type Snapshot struct {
	State      *state.State
	Self       *workloadapi.Workload // the waypoint's own workload (by node IP), nil if unknown
	FilterName string                // the ECDS resource in use; "" before one arrived
	Routes     map[string]*Route
}

// Route returns the route of a service port, nil when there is none.
func (s *Snapshot) Route(port uint16, hostname string) *Route {
	return s.Routes[RouteName(port, hostname)]
}

// Store holds the current Snapshot and applies xDS updates (it is the xds.Applier).
type Store struct {
	host  *authzhost.Host
	node  Node
	log   *slog.Logger
	sopts []state.Option

	mu         sync.Mutex // serialises Apply
	st         *state.State
	filter     any
	filterName string
	routes     map[string]*Route // parsed route configs, without merge
	synced     map[string]bool

	cur   atomic.Pointer[Snapshot]
	ready atomic.Bool
}

// NewStore returns a Store with an empty snapshot (every request denied).
func NewStore(host *authzhost.Host, node Node, log *slog.Logger, sopts ...state.Option) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{host: host, node: node, log: log, sopts: sopts, st: state.Empty(sopts...), routes: map[string]*Route{}, synced: map[string]bool{}}
	s.cur.Store(&Snapshot{State: s.st, Routes: map[string]*Route{}})
	return s
}

// Load returns the current snapshot.
func (s *Store) Load() *Snapshot { return s.cur.Load() }

// Ready reports whether the waypoint has addresses, its filter config and at least one route.
func (s *Store) Ready() bool { return s.ready.Load() }

// Apply takes the full set of one type; an error leaves everything as it was.
func (s *Store) Apply(typeURL string, res map[string]*anypb.Any) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch typeURL {
	case AddressType:
		st, err := s.addresses(res)
		if err != nil {
			return err
		}
		s.st = st
	case ExtensionType:
		name, cfg, err := s.extension(res)
		if err != nil {
			return err
		}
		if name != s.filterName {
			s.log.Info("filter config selected", "ecds", name)
		}
		s.filterName, s.filter = name, cfg
	case RouteType:
		routes, err := s.parseRoutes(res)
		if err != nil {
			return err
		}
		s.routes = routes
	case ListenerType:
		// Listeners are Envoy's business; the embedded waypoint's shape is fixed.
	default:
		return fmt.Errorf("unexpected type %q", typeURL)
	}
	s.synced[typeURL] = true
	s.publish()
	return nil
}

// publish builds and stores the snapshot; s.mu is held.
func (s *Store) publish() {
	snap := &Snapshot{State: s.st, Self: s.st.WorkloadByIP(s.node.IP), FilterName: s.filterName, Routes: make(map[string]*Route, len(s.routes))}
	for n, r := range s.routes {
		m := *r
		if s.filter != nil {
			m.Config = s.host.Merge(s.filter, r.route)
		}
		snap.Routes[n] = &m
	}
	s.cur.Store(snap)
	ready := s.filter != nil && len(snap.Routes) > 0 && s.synced[AddressType]
	if ready != s.ready.Load() {
		s.log.Info("readiness changed", "ready", ready, "routes", len(snap.Routes), "ecds", s.filterName)
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
func (s *Store) extension(res map[string]*anypb.Any) (string, any, error) {
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
			return "", nil, nil
		}
		best = mine[0]
	}
	var tec core.TypedExtensionConfig
	if err := res[best].UnmarshalTo(&tec); err != nil {
		return "", nil, fmt.Errorf("%s: %w", best, err)
	}
	var gc golang.Config
	if err := tec.GetTypedConfig().UnmarshalTo(&gc); err != nil {
		return "", nil, fmt.Errorf("%s: typed_config: %w", best, err)
	}
	if gc.GetPluginName() != authzconfig.PluginName {
		return "", nil, fmt.Errorf("%s: plugin_name %q, want %q (Envoy would pass every request through)", best, gc.GetPluginName(), authzconfig.PluginName)
	}
	cfg, err := s.host.Parse(gc.GetPluginConfig())
	if err != nil {
		return "", nil, fmt.Errorf("%s: golang filter failed to parse plugin config: %w", best, err)
	}
	return best, cfg, nil
}

func (s *Store) parseRoutes(res map[string]*anypb.Any) (map[string]*Route, error) {
	out := make(map[string]*Route, len(res))
	var errs []error
	for _, name := range sortedKeys(res) {
		var rc route.RouteConfiguration
		if err := res[name].UnmarshalTo(&rc); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		r := &Route{Name: rc.GetName(), Cluster: rc.GetName()}
		var perRoute *anypb.Any
		for _, vh := range rc.GetVirtualHosts() {
			if a, err := pluginConfig(vh.GetTypedPerFilterConfig()); err != nil {
				errs = append(errs, fmt.Errorf("%s: virtual host %s: %w", name, vh.GetName(), err))
			} else if a != nil {
				perRoute = a
			}
			for _, rt := range vh.GetRoutes() {
				if c := rt.GetRoute().GetCluster(); c != "" {
					r.Cluster = c
				}
				if a, err := pluginConfig(rt.GetTypedPerFilterConfig()); err != nil {
					errs = append(errs, fmt.Errorf("%s: route %s: %w", name, rt.GetName(), err))
				} else if a != nil {
					perRoute = a // the most specific wins
				}
				break
			}
			break
		}
		if perRoute != nil {
			pr, err := s.host.ParseRoute(perRoute)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: golang filter failed to parse per-route config: %w", name, err))
				continue
			}
			r.route = pr
		}
		out[r.Name] = r
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// pluginConfig returns goambient.authz's config in a typed_per_filter_config map, nil if none.
func pluginConfig(m map[string]*anypb.Any) (*anypb.Any, error) {
	a, ok := m[authzconfig.FilterName]
	if !ok {
		return nil, nil
	}
	var cpr golang.ConfigsPerRoute
	if err := a.UnmarshalTo(&cpr); err != nil {
		return nil, fmt.Errorf("typed_per_filter_config[%s]: %w", authzconfig.FilterName, err)
	}
	p, ok := cpr.GetPluginsConfig()[authzconfig.PluginName]
	if !ok {
		return nil, nil
	}
	if p.GetDisabled() {
		return nil, errors.New("disabled is not implemented by Envoy's golang filter")
	}
	return p.GetConfig(), nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
