// Package upstream is the embedded waypoint's cluster manager: it compiles CDS clusters and their EDS endpoints (what xdsserver sends Envoy), and picks an endpoint for each attempt as Envoy's load balancers do — round robin, random, least request; health, outlier ejection and the panic threshold — with the clusters' circuit breakers.
package upstream

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// LB is a cluster's load balancing policy.
type LB uint8

// The policies supported.
const (
	LeastRequest LB = iota
	RoundRobin
	Random
)

// OriginalDstMetadata is the endpoint metadata namespace holding the pod's ip:port ("local").
const OriginalDstMetadata = "envoy.filters.listener.original_dst"

// Cluster is one compiled cluster and its endpoints. Its configuration is immutable; its
// runtime state (counters, endpoint statistics, ejections) lives in the Manager and outlives
// configuration updates.
type Cluster struct {
	Name           string
	LB             LB
	ConnectTimeout time.Duration
	MaxRequestsPer uint32 // max requests per upstream connection; 0: unlimited
	Limits         Limits
	Outlier        *Outlier // nil: no outlier detection
	PanicThreshold float64  // percent of healthy hosts under which every host is used
	HTTP2          bool     // the upstream speaks HTTP/2 (not served by the embedded waypoint)
	// Direct: the endpoints are outside the mesh (socket addresses: an egress waypoint's
	// ServiceEntry), reached in plain TCP, or TLS originated with TLS (direct.go).
	Direct bool
	TLS    *tls.Config
	Hosts  []*Host
	st     *clusterState
}

// Limits are the circuit breakers (Envoy's default thresholds when not configured).
type Limits struct{ MaxConnections, MaxPendingRequests, MaxRequests, MaxRetries int64 }

// Outlier is consecutive-error outlier detection.
type Outlier struct {
	Consecutive5xx, ConsecutiveGateway          uint32 // 0: off
	Enforce5xx, EnforceGateway                  bool
	Interval, BaseEjectionTime, MaxEjectionTime time.Duration
	MaxEjectionPercent                          float64
}

// Host is one endpoint of a cluster: the pod's address and its runtime statistics.
type Host struct {
	Addr    netip.AddrPort
	Healthy bool // from EDS
	// Authority, when valid, is the CONNECT's :authority and Addr is where the tunnel goes: a
	// Service's VIP:port sent to its waypoint at waypointIP:15008 (the endpoint metadata's
	// "waypoint", as istiod gives an ingress gateway). Otherwise the tunnel goes to Addr's
	// ztunnel with Addr as :authority.
	Authority netip.AddrPort
	*hostState
}

type hostState struct {
	active          atomic.Int64 // requests in flight (least request)
	mu              sync.Mutex
	idle            []*Conn // idle upstream connections, most recent last
	cons5xx, consGW uint32
	ejectedAt       time.Time // zero: not ejected
	ejectFor        time.Duration
	ejections       int
}

type clusterState struct {
	active, pending, retries, conns atomic.Int64
	rr                              atomic.Uint64
	released                        chan struct{} // a connection was released (pending requests wait on it)
	mu                              sync.Mutex
	hosts                           map[netip.AddrPort]*hostState
}

// Manager keeps the clusters' runtime state across configuration updates.
type Manager struct {
	mu       sync.Mutex
	clusters map[string]*clusterState
}

// NewManager returns an empty Manager.
func NewManager() *Manager { return &Manager{clusters: map[string]*clusterState{}} }

func (m *Manager) state(name string) *clusterState {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.clusters[name]
	if st == nil {
		st = &clusterState{released: make(chan struct{}, 1), hosts: map[netip.AddrPort]*hostState{}}
		m.clusters[name] = st
	}
	return st
}

// Compile compiles a cluster and its endpoints (cla may be nil: no endpoints yet). What the
// embedded waypoint cannot honour is an error.
func (m *Manager) Compile(c *cluster.Cluster, cla *endpoint.ClusterLoadAssignment) (*Cluster, error) {
	out := &Cluster{Name: c.GetName(), ConnectTimeout: 5 * time.Second, PanicThreshold: 50, st: m.state(c.GetName()),
		Limits: Limits{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3}}
	if c.GetType() != cluster.Cluster_EDS && !isDNS(c) {
		return nil, fmt.Errorf("cluster %s: type %s, want EDS, STRICT_DNS or LOGICAL_DNS", c.GetName(), c.GetType())
	}
	if isDNS(c) {
		cla = c.GetLoadAssignment()
	}
	if cla != nil {
		direct, found, err := socketEndpoints(c.GetName(), cla, isDNS(c))
		if err != nil {
			return nil, err
		}
		if found {
			cla, out.Direct = direct, true
			if out.TLS, err = originTLS(c); err != nil {
				return nil, err
			}
		}
	}
	switch c.GetLbPolicy() {
	case cluster.Cluster_LEAST_REQUEST:
		out.LB = LeastRequest
	case cluster.Cluster_ROUND_ROBIN:
		out.LB = RoundRobin
	case cluster.Cluster_RANDOM:
		out.LB = Random
	default:
		return nil, fmt.Errorf("cluster %s: lb_policy %s is not supported", c.GetName(), c.GetLbPolicy())
	}
	if c.GetLbConfig() != nil || c.GetLoadBalancingPolicy() != nil || c.GetHealthChecks() != nil {
		return nil, fmt.Errorf("cluster %s: lb configs, load balancing policies and health checks are not supported", c.GetName())
	}
	if c.GetConnectTimeout() != nil {
		out.ConnectTimeout = c.GetConnectTimeout().AsDuration()
	}
	if th := c.GetCircuitBreakers().GetThresholds(); len(th) > 0 {
		for _, t := range th {
			if t.GetPriority() != core.RoutingPriority_DEFAULT {
				continue
			}
			set := func(dst *int64, v interface{ GetValue() uint32 }, isSet bool) {
				if isSet {
					*dst = int64(v.GetValue())
				}
			}
			set(&out.Limits.MaxConnections, t.GetMaxConnections(), t.GetMaxConnections() != nil)
			set(&out.Limits.MaxPendingRequests, t.GetMaxPendingRequests(), t.GetMaxPendingRequests() != nil)
			set(&out.Limits.MaxRequests, t.GetMaxRequests(), t.GetMaxRequests() != nil)
			set(&out.Limits.MaxRetries, t.GetMaxRetries(), t.GetMaxRetries() != nil)
			if t.GetRetryBudget() != nil {
				return nil, fmt.Errorf("cluster %s: retry budgets are not supported", c.GetName())
			}
		}
	}
	if p := c.GetCommonLbConfig().GetHealthyPanicThreshold(); p != nil {
		out.PanicThreshold = p.GetValue()
	}
	if a := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]; a != nil {
		var po httpopts.HttpProtocolOptions
		if err := a.UnmarshalTo(&po); err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.GetName(), err)
		}
		out.MaxRequestsPer = po.GetCommonHttpProtocolOptions().GetMaxRequestsPerConnection().GetValue()
		out.HTTP2 = po.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil
	}
	if od := c.GetOutlierDetection(); od != nil {
		o := &Outlier{Consecutive5xx: 5, ConsecutiveGateway: 5, Enforce5xx: true, Interval: 10 * time.Second,
			BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second, MaxEjectionPercent: 10}
		if v := od.GetConsecutive_5Xx(); v != nil {
			o.Consecutive5xx = v.GetValue()
		}
		if v := od.GetEnforcingConsecutive_5Xx(); v != nil {
			o.Enforce5xx = v.GetValue() >= 100
		}
		if v := od.GetConsecutiveGatewayFailure(); v != nil {
			o.ConsecutiveGateway = v.GetValue()
		}
		o.EnforceGateway = od.GetEnforcingConsecutiveGatewayFailure().GetValue() >= 100
		if v := od.GetInterval(); v != nil {
			o.Interval = v.AsDuration()
		}
		if v := od.GetBaseEjectionTime(); v != nil {
			o.BaseEjectionTime = v.AsDuration()
		}
		if v := od.GetMaxEjectionTime(); v != nil {
			o.MaxEjectionTime = v.AsDuration()
		}
		if v := od.GetMaxEjectionPercent(); v != nil {
			o.MaxEjectionPercent = float64(v.GetValue())
		}
		if od.GetSplitExternalLocalOriginErrors() || od.GetEnforcingSuccessRate().GetValue() > 0 || od.GetEnforcingFailurePercentage().GetValue() > 0 {
			return nil, fmt.Errorf("cluster %s: only consecutive-error outlier detection is supported", c.GetName())
		}
		out.Outlier = o
	}
	if cla != nil {
		hosts, err := out.endpoints(cla)
		if err != nil {
			return nil, err
		}
		out.Hosts = hosts
	}
	return out, nil
}

// endpoints reads the pods of an assignment: their ip:port from the original_dst metadata
// (endpoint_id otherwise), health from health_status.
func (c *Cluster) endpoints(cla *endpoint.ClusterLoadAssignment) ([]*Host, error) {
	var out []*Host
	c.st.mu.Lock()
	defer c.st.mu.Unlock()
	seen := map[netip.AddrPort]bool{}
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			id := e.GetEndpoint().GetAddress().GetEnvoyInternalAddress().GetEndpointId()
			via := ""
			if md := e.GetMetadata().GetFilterMetadata()[OriginalDstMetadata]; md != nil {
				if v := md.GetFields()["local"].GetStringValue(); v != "" {
					id = v
				}
				via = md.GetFields()["waypoint"].GetStringValue()
			}
			ap, err := netip.ParseAddrPort(id)
			if err != nil {
				return nil, fmt.Errorf("cluster %s: endpoint %q is not ip:port", c.Name, id)
			}
			ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
			var authority netip.AddrPort
			if via != "" {
				w, err := netip.ParseAddrPort(via)
				if err != nil {
					return nil, fmt.Errorf("cluster %s: endpoint waypoint %q is not ip:port", c.Name, via)
				}
				authority, ap = ap, netip.AddrPortFrom(w.Addr().Unmap(), w.Port())
			}
			hs := c.st.hosts[ap]
			if hs == nil {
				hs = &hostState{}
				c.st.hosts[ap] = hs
			}
			seen[ap] = true
			hs2 := e.GetHealthStatus()
			out = append(out, &Host{Addr: ap, Authority: authority, Healthy: hs2 == core.HealthStatus_HEALTHY || hs2 == core.HealthStatus_UNKNOWN, hostState: hs})
		}
	}
	for ap, hs := range c.st.hosts {
		if !seen[ap] {
			delete(c.st.hosts, ap) // gone from EDS: its idle connections go too
			hs.mu.Lock()
			idle := hs.idle
			hs.idle = nil
			hs.mu.Unlock()
			for _, conn := range idle {
				conn.Conn.Close()
				c.st.closed()
			}
		}
	}
	return out, nil
}

// ErrNoHealthyUpstream: no host can take the request (Envoy's 503 no_healthy_upstream, UH).
var ErrNoHealthyUpstream = errors.New("no healthy upstream")

// Pick chooses a host for one attempt: among healthy, non-ejected hosts (every host when
// their share is below the panic threshold), excluding tried ones when possible (the
// previous_hosts predicate: up to attempts picks, as Envoy's host_selection_retry_max_attempts),
// by the cluster's policy. rand gives random numbers.
func (c *Cluster) Pick(now time.Time, tried []netip.AddrPort, attempts int, rand func() uint64) (*Host, error) {
	if len(c.Hosts) == 0 {
		return nil, ErrNoHealthyUpstream
	}
	var buf [16]*Host
	cands := buf[:0]
	for _, h := range c.Hosts {
		if h.Healthy && !h.ejected(now) {
			cands = append(cands, h)
		}
	}
	if float64(len(cands))*100 < c.PanicThreshold*float64(len(c.Hosts)) {
		cands = append(cands[:0], c.Hosts...) // panic: every host
	}
	if len(cands) == 0 {
		return nil, ErrNoHealthyUpstream
	}
	var h *Host
	for i := 0; i < max(attempts, 1); i++ {
		h = c.choose(cands, rand)
		if !contains(tried, h.Addr) {
			break
		}
	}
	return h, nil
}

func contains(l []netip.AddrPort, a netip.AddrPort) bool {
	for _, x := range l {
		if x == a {
			return true
		}
	}
	return false
}

func (c *Cluster) choose(cands []*Host, rand func() uint64) *Host {
	n := uint64(len(cands))
	switch c.LB {
	case RoundRobin:
		return cands[(c.st.rr.Add(1)-1)%n]
	case Random:
		return cands[rand()%n]
	}
	// Least request: the better of two random choices (Envoy's default choice_count).
	a, b := cands[rand()%n], cands[rand()%n]
	if b.active.Load() < a.active.Load() {
		return b
	}
	return a
}

func (h *hostState) ejected(now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ejectedAt.IsZero() {
		return false
	}
	if now.Sub(h.ejectedAt) >= h.ejectFor {
		h.ejectedAt = time.Time{} // uneject (Envoy does it at the next interval tick)
		return false
	}
	return true
}

// Result records an attempt's outcome for outlier detection: an HTTP status, or a local
// failure (connect failure, reset, timeout), which counts as both a 5xx and a gateway error.
func (c *Cluster) Result(h *Host, status int, localFailure bool, now time.Time) {
	o := c.Outlier
	if o == nil || h == nil {
		return
	}
	is5xx := localFailure || status >= 500
	isGW := localFailure || status == 502 || status == 503 || status == 504
	h.mu.Lock()
	if is5xx {
		h.cons5xx++
	} else {
		h.cons5xx = 0
	}
	if isGW {
		h.consGW++
	} else {
		h.consGW = 0
	}
	eject := o.Enforce5xx && o.Consecutive5xx > 0 && h.cons5xx >= o.Consecutive5xx ||
		o.EnforceGateway && o.ConsecutiveGateway > 0 && h.consGW >= o.ConsecutiveGateway
	already := !h.ejectedAt.IsZero()
	h.mu.Unlock()
	if !eject || already {
		return
	}
	ejected := 0
	for _, x := range c.Hosts {
		if x.ejected(now) {
			ejected++
		}
	}
	if 100*float64(ejected+1)/float64(len(c.Hosts)) > o.MaxEjectionPercent {
		return
	}
	h.mu.Lock()
	h.ejections++
	// Envoy: base_ejection_time × times ejected, at most max_ejection_time.
	h.ejectedAt, h.ejectFor, h.cons5xx, h.consGW = now, min(time.Duration(h.ejections)*o.BaseEjectionTime, o.MaxEjectionTime), 0, 0
	h.mu.Unlock()
}

// Ejected reports whether a host is ejected now (for tests and logs).
func (h *Host) Ejected(now time.Time) bool { return h.ejected(now) }

// Begin counts a request against the cluster's max_requests circuit breaker and the host's
// active requests; it fails when the breaker is open (Envoy's overflow, UO). End undoes it.
func (c *Cluster) Begin(h *Host) bool {
	if c.st.active.Add(1) > c.Limits.MaxRequests {
		c.st.active.Add(-1)
		return false
	}
	h.active.Add(1)
	return true
}

// End ends a request Begin counted.
func (c *Cluster) End(h *Host) {
	c.st.active.Add(-1)
	h.active.Add(-1)
}

// BeginRetry counts a retry against max_retries; false: the retry is refused (overflow).
func (c *Cluster) BeginRetry() bool {
	if c.st.retries.Add(1) > c.Limits.MaxRetries {
		c.st.retries.Add(-1)
		return false
	}
	return true
}

// EndRetry ends a retry BeginRetry counted.
func (c *Cluster) EndRetry() { c.st.retries.Add(-1) }

// Retain drops the runtime state of clusters no longer configured (closing their idle
// connections).
func (m *Manager) Retain(clusters map[string]*Cluster) {
	m.mu.Lock()
	var gone []*clusterState
	for name, st := range m.clusters {
		if _, ok := clusters[name]; !ok {
			gone = append(gone, st)
			delete(m.clusters, name)
		}
	}
	m.mu.Unlock()
	for _, st := range gone {
		st.mu.Lock()
		for _, hs := range st.hosts {
			hs.mu.Lock()
			idle := hs.idle
			hs.idle = nil
			hs.mu.Unlock()
			for _, c := range idle {
				c.Conn.Close()
				st.closed()
			}
		}
		st.mu.Unlock()
	}
}
