package gateway

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"istio.io/istio/pkg/workloadapi"

	"github.com/goambient/goambient/filters/embedded/config"
	"github.com/goambient/goambient/filters/embedded/router"
	"github.com/goambient/goambient/filters/embedded/upstream"
	"github.com/goambient/goambient/ztunnel/state"
)

// Type URLs the gateway subscribes to: the waypoint's (filters/embedded/config), and SDS.
const (
	AddressType  = config.AddressType
	ListenerType = config.ListenerType
	RouteType    = config.RouteType
	ClusterType  = config.ClusterType
	EndpointType = config.EndpointType
	SecretType   = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
)

// Types are the gateway's subscriptions, in order.
var Types = []string{AddressType, SecretType, ClusterType, EndpointType, ListenerType, RouteType}

// Snapshot is one consistent configuration: immutable once published.
type Snapshot struct {
	Ports    map[uint32]*Port             // by listener port
	Routes   map[string]*router.Hosts     // by RDS name
	Clusters map[string]*upstream.Cluster // by name
	State    *state.State                 // the workload API (peer identities)
}

// Port is one listener: plain HTTP (one chain) or TLS chains chosen by SNI.
type Port struct {
	Name   string
	Port   uint32
	Chains []*Chain
}

// Chain is a filter chain: the server names it serves (none: any), its certificate (nil:
// plain HTTP) and the route configuration its HTTP connection manager uses.
type Chain struct {
	ServerNames []string
	Cert        *tls.Certificate
	RDS         string
}

// Store turns xDS responses into Snapshots; a response that cannot be used is refused and the
// previous snapshot kept, as Envoy keeps its last good configuration.
type Store struct {
	log *slog.Logger
	mgr *upstream.Manager
	td  string

	mu       sync.Mutex
	raw      map[string]map[string]*anypb.Any
	cur      atomic.Pointer[Snapshot]
	ready    atomic.Bool
	onChange func(*Snapshot)
}

// NewStore returns an empty store; onChange is called (with the store's lock held: keep it
// short) with each new snapshot.
func NewStore(log *slog.Logger, trustDomain string, onChange func(*Snapshot)) *Store {
	s := &Store{log: log, mgr: upstream.NewManager(), td: trustDomain, raw: map[string]map[string]*anypb.Any{}, onChange: onChange}
	empty, _ := state.New(state.Resources{}, state.WithTrustDomain(trustDomain))
	s.cur.Store(&Snapshot{Ports: map[uint32]*Port{}, Routes: map[string]*router.Hosts{}, Clusters: map[string]*upstream.Cluster{}, State: empty})
	return s
}

// Load returns the current snapshot.
func (s *Store) Load() *Snapshot { return s.cur.Load() }

// Ready reports whether listeners and their routes have arrived.
func (s *Store) Ready() bool { return s.ready.Load() }

// Apply takes the complete set of one type's resources (state of the world), compiles a new
// snapshot with the other types' last sets, and publishes it; on error nothing changes.
func (s *Store) Apply(typeURL string, res map[string]*anypb.Any) error {
	if !slices.Contains(Types, typeURL) {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	next := make(map[string]map[string]*anypb.Any, len(s.raw)+1)
	for k, v := range s.raw {
		next[k] = v
	}
	next[typeURL] = res
	snap, err := s.compile(next)
	if err != nil {
		return fmt.Errorf("%s refused, the previous configuration is kept: %w", typeURL, err)
	}
	s.raw = next
	s.cur.Store(snap)
	if len(snap.Ports) > 0 && next[RouteType] != nil {
		s.ready.Store(true)
	}
	if s.onChange != nil {
		s.onChange(snap)
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func (s *Store) compile(raw map[string]map[string]*anypb.Any) (*Snapshot, error) {
	snap := &Snapshot{Ports: map[uint32]*Port{}, Routes: map[string]*router.Hosts{}, Clusters: map[string]*upstream.Cluster{}}
	var errs []error
	// The workload API.
	var wr state.Resources
	for _, name := range sortedKeys(raw[AddressType]) {
		var a workloadapi.Address
		if err := raw[AddressType][name].UnmarshalTo(&a); err != nil {
			errs = append(errs, fmt.Errorf("address %s: %w", name, err))
			continue
		}
		switch t := a.GetType().(type) {
		case *workloadapi.Address_Workload:
			wr.Workloads = append(wr.Workloads, t.Workload)
		case *workloadapi.Address_Service:
			wr.Services = append(wr.Services, t.Service)
		}
	}
	st, err := state.New(wr, state.WithTrustDomain(s.td))
	if err != nil {
		errs = append(errs, err)
	}
	snap.State = st
	// Certificates.
	certs := map[string]*tls.Certificate{}
	for _, name := range sortedKeys(raw[SecretType]) {
		var sec tlsv3.Secret
		if err := raw[SecretType][name].UnmarshalTo(&sec); err != nil {
			errs = append(errs, fmt.Errorf("secret %s: %w", name, err))
			continue
		}
		tc := sec.GetTlsCertificate()
		if tc == nil {
			continue // a validation context (the trust bundle): the gateway's own comes from its identity
		}
		c, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
		if err != nil {
			errs = append(errs, fmt.Errorf("secret %s: %w", sec.GetName(), err))
			continue
		}
		certs[sec.GetName()] = &c
	}
	// Routes.
	for _, name := range sortedKeys(raw[RouteType]) {
		var rc route.RouteConfiguration
		if err := raw[RouteType][name].UnmarshalTo(&rc); err != nil {
			errs = append(errs, fmt.Errorf("route %s: %w", name, err))
			continue
		}
		h, err := router.CompileHosts(&rc)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		snap.Routes[rc.GetName()] = h
	}
	// Clusters and endpoints.
	eps := map[string]*endpoint.ClusterLoadAssignment{}
	for _, name := range sortedKeys(raw[EndpointType]) {
		var e endpoint.ClusterLoadAssignment
		if err := raw[EndpointType][name].UnmarshalTo(&e); err != nil {
			errs = append(errs, fmt.Errorf("endpoints %s: %w", name, err))
			continue
		}
		eps[e.GetClusterName()] = &e
	}
	for _, name := range sortedKeys(raw[ClusterType]) {
		var c cluster.Cluster
		if err := raw[ClusterType][name].UnmarshalTo(&c); err != nil {
			errs = append(errs, fmt.Errorf("cluster %s: %w", name, err))
			continue
		}
		if c.GetType() != cluster.Cluster_EDS {
			continue // connect_originate, BlackHoleCluster: the gateway's fixed shape
		}
		svc := c.GetEdsClusterConfig().GetServiceName()
		if svc == "" {
			svc = c.GetName()
		}
		uc, err := s.mgr.Compile(&c, eps[svc])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		snap.Clusters[c.GetName()] = uc
	}
	// Listeners.
	for _, name := range sortedKeys(raw[ListenerType]) {
		var l listener.Listener
		if err := raw[ListenerType][name].UnmarshalTo(&l); err != nil {
			errs = append(errs, fmt.Errorf("listener %s: %w", name, err))
			continue
		}
		if l.GetInternalListener() != nil {
			continue // connect_originate: the gateway dials HBONE itself
		}
		p, err := s.port(&l, certs)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if p != nil {
			snap.Ports[p.Port] = p
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	s.mgr.Retain(snap.Clusters)
	return snap, nil
}

// port reads a listener: its port and chains. A TLS chain whose certificate has not arrived
// (SDS is served on the secure listener only) is left out with a warning, as Envoy leaves a
// chain warming; the listener's other chains are served.
func (s *Store) port(l *listener.Listener, certs map[string]*tls.Certificate) (*Port, error) {
	sa := l.GetAddress().GetSocketAddress()
	if sa == nil || sa.GetPortValue() == 0 || sa.GetPortValue() > 65535 {
		return nil, fmt.Errorf("listener %s: no socket address with a port", l.GetName())
	}
	p := &Port{Name: l.GetName(), Port: sa.GetPortValue()}
	for i, fc := range l.GetFilterChains() {
		ch := &Chain{ServerNames: fc.GetFilterChainMatch().GetServerNames()}
		if len(fc.GetFilters()) != 1 {
			return nil, fmt.Errorf("listener %s: filter_chains[%d]: want one HTTP connection manager", l.GetName(), i)
		}
		var m hcm.HttpConnectionManager
		if err := fc.GetFilters()[0].GetTypedConfig().UnmarshalTo(&m); err != nil {
			return nil, fmt.Errorf("listener %s: filter_chains[%d]: %w", l.GetName(), i, err)
		}
		ch.RDS = m.GetRds().GetRouteConfigName()
		if ch.RDS == "" {
			return nil, fmt.Errorf("listener %s: filter_chains[%d]: no RDS route configuration", l.GetName(), i)
		}
		if ts := fc.GetTransportSocket(); ts != nil {
			var dt tlsv3.DownstreamTlsContext
			if err := ts.GetTypedConfig().UnmarshalTo(&dt); err != nil {
				return nil, fmt.Errorf("listener %s: filter_chains[%d]: %w", l.GetName(), i, err)
			}
			sds := dt.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()
			if len(sds) != 1 {
				return nil, fmt.Errorf("listener %s: filter_chains[%d]: want one SDS certificate", l.GetName(), i)
			}
			ch.Cert = certs[sds[0].GetName()]
			if ch.Cert == nil {
				s.log.Warn("TLS chain not served: its certificate has not arrived", "listener", l.GetName(), "chain", fc.GetName(), "secret", sds[0].GetName())
				continue
			}
		}
		p.Chains = append(p.Chains, ch)
	}
	if len(p.Chains) == 0 {
		return nil, nil
	}
	tlsChains := 0
	for _, c := range p.Chains {
		if c.Cert != nil {
			tlsChains++
		}
	}
	if tlsChains != 0 && tlsChains != len(p.Chains) {
		return nil, fmt.Errorf("listener %s: mixes TLS and plain chains", l.GetName())
	}
	return p, nil
}

// chain picks a TLS port's chain for a server name (SNI): an exact server name, else the
// longest *.suffix, else a chain without server names; a plain port's only chain.
func (p *Port) chain(serverName string) *Chain {
	var best *Chain
	bestLen := -1
	for _, c := range p.Chains {
		if len(c.ServerNames) == 0 && bestLen < 0 {
			best, bestLen = c, 0
		}
		for _, n := range c.ServerNames {
			switch {
			case n == serverName:
				return c
			case len(n) > 1 && n[0] == '*' && len(serverName) > len(n)-1 && serverName[len(serverName)-len(n)+1:] == n[1:] && len(n) > bestLen:
				best, bestLen = c, len(n)
			}
		}
	}
	return best
}
