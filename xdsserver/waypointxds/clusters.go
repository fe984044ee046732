package waypointxds

import (
	"cmp"
	"math"
	"net/netip"
	"slices"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	xdstype "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/goambient/goambient/xdsserver/model"
)

// upstream is one cluster of a service port: the port's own ("http") or a subset's.
type upstream struct {
	name   string
	subset *networking.Subset // nil: every endpoint of the port
	policy *networking.TrafficPolicy
}

// upstreams are the clusters of a service port, as istiod's buildWaypointInboundVIP makes
// them: inbound-vip|<port>|http|<host>, then inbound-vip|<port>|http/<subset>|<host> for each
// subset of the DestinationRule that applies, each with its traffic policy (the rule's,
// port-level settings replacing it for this port, a subset's own replacing those).
func upstreams(mesh *model.Mesh, sp servicePort) []upstream {
	dr := mesh.Routing.For(sp.svc).GetDestinationRule()
	top := portPolicy(dr.GetSpec().GetTrafficPolicy(), sp.port.Port)
	out := []upstream{{name: sp.name, policy: top}}
	for _, s := range dr.GetSpec().GetSubsets() {
		out = append(out, upstream{
			name: SubsetName(sp.port.Port, "http/"+s.GetName(), sp.svc.Hostname), subset: s,
			policy: mergeSubsetPolicy(top, s.GetTrafficPolicy(), sp.port.Port),
		})
	}
	return out
}

// portPolicy is istiod's GetPortLevelTrafficPolicy: port-level settings for the port replace
// the rule's (their omitted fields are defaults, not inherited).
func portPolicy(p *networking.TrafficPolicy, port uint32) *networking.TrafficPolicy {
	if p == nil {
		return nil
	}
	for _, pl := range p.GetPortLevelSettings() {
		if pl.GetPort() != nil && pl.GetPort().GetNumber() == port {
			return &networking.TrafficPolicy{ConnectionPool: pl.GetConnectionPool(), LoadBalancer: pl.GetLoadBalancer(),
				OutlierDetection: pl.GetOutlierDetection(), Tls: pl.GetTls()}
		}
	}
	return p
}

// mergeSubsetPolicy is istiod's MergeSubsetTrafficPolicy: each group the subset sets (all of
// them when it has port-level settings for the port) replaces the rule's.
func mergeSubsetPolicy(top, sub *networking.TrafficPolicy, port uint32) *networking.TrafficPolicy {
	if sub == nil {
		return top
	}
	portLevel := slices.ContainsFunc(sub.GetPortLevelSettings(), func(pl *networking.TrafficPolicy_PortTrafficPolicy) bool {
		return pl.GetPort().GetNumber() == port
	})
	sub = portPolicy(sub, port)
	if top == nil {
		return sub
	}
	m := &networking.TrafficPolicy{ConnectionPool: top.GetConnectionPool(), LoadBalancer: top.GetLoadBalancer(),
		OutlierDetection: top.GetOutlierDetection(), Tls: top.GetTls()}
	if sub.GetConnectionPool() != nil || portLevel {
		m.ConnectionPool = sub.GetConnectionPool()
	}
	if sub.GetOutlierDetection() != nil || portLevel {
		m.OutlierDetection = sub.GetOutlierDetection()
	}
	if sub.GetLoadBalancer() != nil || portLevel {
		m.LoadBalancer = sub.GetLoadBalancer()
	}
	if sub.GetTls() != nil || portLevel {
		m.Tls = sub.GetTls()
	}
	return m
}

// upstreamCluster is the EDS cluster of a service port or subset: endpoints reached through
// connect_originate with the pod address passed in host metadata, and the traffic policy as
// istiod applies it (load balancer, circuit breakers, connect timeout, requests per connection,
// outlier detection).
func upstreamCluster(sp servicePort, u upstream) *cluster.Cluster {
	c := &cluster.Cluster{
		Name:                 u.name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: ads(), ServiceName: u.name},
		ConnectTimeout:       durationpb.New(connectTimeout),
		TransportSocket:      internalUpstream(OriginalDstMetadata),
		LbPolicy:             cluster.Cluster_LEAST_REQUEST, // istiod's default
		CircuitBreakers:      &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{circuitBreakers(u.policy.GetConnectionPool())}},
	}
	var opts *httpopts.HttpProtocolOptions
	switch sp.port.Protocol() {
	case model.ProtocolHTTP2, model.ProtocolGRPC:
		opts = http2ProtocolOptions(false)
	}
	p := u.policy
	switch p.GetLoadBalancer().GetSimple() {
	case networking.LoadBalancerSettings_ROUND_ROBIN:
		c.LbPolicy = cluster.Cluster_ROUND_ROBIN
	case networking.LoadBalancerSettings_RANDOM:
		c.LbPolicy = cluster.Cluster_RANDOM
	}
	if t := p.GetConnectionPool().GetTcp(); t.GetConnectTimeout() != nil {
		c.ConnectTimeout = durationpb.New(t.GetConnectTimeout().AsDuration())
	}
	if n := p.GetConnectionPool().GetHttp().GetMaxRequestsPerConnection(); n > 0 {
		if opts == nil {
			opts = &httpopts.HttpProtocolOptions{UpstreamProtocolOptions: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_{
				ExplicitHttpConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig{
					ProtocolConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &core.Http1ProtocolOptions{}},
				},
			}}
		}
		opts.CommonHttpProtocolOptions = &core.HttpProtocolOptions{MaxRequestsPerConnection: wrapperspb.UInt32(uint32(n))}
	}
	if opts != nil {
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptions: toAny(opts)}
	}
	// The panic threshold: minHealthPercent with outlier detection, else 0 (no panic mode:
	// istiod sends unhealthy endpoints, which must then never get traffic).
	c.CommonLbConfig = &cluster.Cluster_CommonLbConfig{HealthyPanicThreshold: &xdstype.Percent{Value: float64(p.GetOutlierDetection().GetMinHealthPercent())}}
	c.OutlierDetection = outlierDetection(p.GetOutlierDetection())
	return c
}

func http2ProtocolOptions(allowConnect bool) *httpopts.HttpProtocolOptions {
	return &httpopts.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
				Http2ProtocolOptions: &core.Http2ProtocolOptions{AllowConnect: allowConnect},
			},
		}},
	}
}

// circuitBreakers are istiod's default thresholds (unlimited) with the connection pool's limits.
func circuitBreakers(cp *networking.ConnectionPoolSettings) *cluster.CircuitBreakers_Thresholds {
	t := &cluster.CircuitBreakers_Thresholds{
		MaxRetries: wrapperspb.UInt32(math.MaxUint32), MaxRequests: wrapperspb.UInt32(math.MaxUint32),
		MaxConnections: wrapperspb.UInt32(math.MaxUint32), MaxPendingRequests: wrapperspb.UInt32(math.MaxUint32),
	}
	if h := cp.GetHttp(); h != nil {
		if h.GetHttp2MaxRequests() > 0 {
			t.MaxRequests = wrapperspb.UInt32(uint32(h.GetHttp2MaxRequests()))
		}
		if h.GetHttp1MaxPendingRequests() > 0 {
			t.MaxPendingRequests = wrapperspb.UInt32(uint32(h.GetHttp1MaxPendingRequests()))
		}
		if h.GetMaxRetries() > 0 {
			t.MaxRetries = wrapperspb.UInt32(uint32(h.GetMaxRetries()))
		}
	}
	if n := cp.GetTcp().GetMaxConnections(); n > 0 {
		t.MaxConnections = wrapperspb.UInt32(uint32(n))
	}
	return t
}

// outlierDetection is istiod's applyOutlierDetection: consecutive 5xx and gateway errors
// enforced at 100%, success-rate detection off.
func outlierDetection(o *networking.OutlierDetection) *cluster.OutlierDetection {
	if o == nil {
		return nil
	}
	out := &cluster.OutlierDetection{EnforcingSuccessRate: wrapperspb.UInt32(0)}
	enforce := func(v uint32) *wrapperspb.UInt32Value {
		if v > 0 {
			v = 100
		}
		return wrapperspb.UInt32(v)
	}
	if e := o.GetConsecutive_5XxErrors(); e != nil {
		out.Consecutive_5Xx = wrapperspb.UInt32(e.GetValue())
		out.EnforcingConsecutive_5Xx = enforce(e.GetValue())
	}
	if e := o.GetConsecutiveGatewayErrors(); e != nil {
		out.ConsecutiveGatewayFailure = wrapperspb.UInt32(e.GetValue())
		out.EnforcingConsecutiveGatewayFailure = enforce(e.GetValue())
	}
	if o.GetInterval() != nil {
		out.Interval = durationpb.New(o.GetInterval().AsDuration())
	}
	if o.GetBaseEjectionTime() != nil {
		out.BaseEjectionTime = durationpb.New(o.GetBaseEjectionTime().AsDuration())
	}
	if o.GetMaxEjectionPercent() > 0 {
		out.MaxEjectionPercent = wrapperspb.UInt32(uint32(o.GetMaxEjectionPercent()))
	}
	return out
}

// upstreamEndpoints are the pods behind a service port (those a subset's labels select, for a
// subset; not-ready ones left out when outlierDetection.minHealthPercent is set, as istiod's
// endpoint builder does), each an internal address of connect_originate carrying podIP:targetPort in
// metadata, as Istio's endpoint builder does.
func upstreamEndpoints(mesh *model.Mesh, sp servicePort, u upstream) *endpoint.ClusterLoadAssignment {
	var lbs []*endpoint.LbEndpoint
	// Unhealthy endpoints are sent, except when a panic threshold would route to them.
	skipUnhealthy := u.policy.GetOutlierDetection().GetMinHealthPercent() > 0
	for _, wl := range mesh.Workloads {
		if len(wl.IPs) == 0 || !wl.Ambient {
			continue // only HBONE-capable pods are reached through connect_originate
		}
		if skipUnhealthy && !wl.Healthy {
			continue
		}
		if u.subset != nil && !labelsMatch(u.subset.GetLabels(), wl.Labels) {
			continue
		}
		for _, ws := range wl.Services {
			if ws.Service == nil || ws.Service.Key() != sp.svc.Key() {
				continue
			}
			for _, pm := range ws.Ports {
				if pm.ServicePort != sp.port.Port || pm.TargetPort == 0 {
					continue
				}
				lbs = append(lbs, internalEndpoint(netip.AddrPortFrom(wl.IPs[0], uint16(pm.TargetPort)), wl.Healthy))
			}
		}
	}
	slices.SortFunc(lbs, func(a, b *endpoint.LbEndpoint) int {
		return cmp.Compare(a.GetEndpoint().GetAddress().GetEnvoyInternalAddress().GetEndpointId(),
			b.GetEndpoint().GetAddress().GetEnvoyInternalAddress().GetEndpointId())
	})
	cla := &endpoint.ClusterLoadAssignment{ClusterName: u.name}
	if len(lbs) > 0 {
		cla.Endpoints = []*endpoint.LocalityLbEndpoints{{LbEndpoints: lbs}}
	}
	return cla
}

// labelsMatch: every selector label is on the pod (an empty selector selects all).
func labelsMatch(selector, labels map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
