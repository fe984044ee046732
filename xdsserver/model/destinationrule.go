package model

import (
	"slices"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/goambient/goambient/xdsserver/kubeobj"
)

// checkDestinationRule validates a DestinationRule as istiod's webhook does, and warns about
// the traffic policy fields this mesh's waypoints (Envoy's configuration and the embedded
// waypoint alike) do not apply.
func checkDestinationRule(c *checker, dr *networking.DestinationRule) {
	if dr.GetHost() == "*" {
		c.fail("spec.host", "invalid destination host %s", dr.GetHost())
	} else if err := wildcardDomain(dr.GetHost()); err != nil {
		c.fail("spec.host", "%v", err)
	}
	checkTrafficPolicy(c, "spec.trafficPolicy", dr.GetTrafficPolicy())
	seen := map[string]bool{}
	for i, s := range dr.GetSubsets() {
		f := idx("spec.subsets", i)
		if s == nil {
			c.fail(f, "subset may not be null")
			continue
		}
		if seen[s.GetName()] {
			c.fail(f+".name", "duplicate subset names: %s", s.GetName())
		}
		seen[s.GetName()] = true
		switch {
		case s.GetName() == "":
			c.fail(f+".name", "subset name cannot be empty")
		case !isIstioLabel(s.GetName()):
			c.fail(f+".name", "subset name is invalid: %s", s.GetName())
		}
		c.labels(f+".labels", s.GetLabels())
		checkTrafficPolicy(c, f+".trafficPolicy", s.GetTrafficPolicy())
	}
	for i, e := range dr.GetExportTo() {
		if e != "*" && e != "." && e != "~" && !isIstioLabel(e) {
			c.fail(idx("spec.exportTo", i), "%q is not a namespace, \".\", \"*\" or \"~\"", e)
		}
	}
	if dr.GetWorkloadSelector() != nil {
		c.labels("spec.workloadSelector.matchLabels", dr.GetWorkloadSelector().GetMatchLabels())
		c.warn("spec.workloadSelector", "a DestinationRule with a workload selector applies to sidecars, not to waypoints")
	}
}

func checkTrafficPolicy(c *checker, f string, p *networking.TrafficPolicy) {
	if p == nil {
		return
	}
	if p.GetOutlierDetection() == nil && p.GetConnectionPool() == nil && p.GetLoadBalancer() == nil && p.GetTls() == nil &&
		len(p.GetPortLevelSettings()) == 0 && p.GetTunnel() == nil && p.GetProxyProtocol() == nil && p.GetRetryBudget() == nil {
		c.fail(f, "traffic policy must have at least one field")
		return
	}
	if p.GetTunnel() != nil && p.GetProxyProtocol() != nil {
		c.fail(f, "tunnel and proxyProtocol must not be set together")
		return
	}
	checkOutlier(c, f+".outlierDetection", p.GetOutlierDetection())
	checkConnectionPool(c, f+".connectionPool", p.GetConnectionPool())
	checkLoadBalancer(c, f+".loadBalancer", p.GetLoadBalancer())
	if p.GetTls() != nil {
		c.warn(f+".tls", "TLS origination is applied by waypoints toward ServiceEntry hosts only (egress), not to Services")
	}
	for i, pl := range p.GetPortLevelSettings() {
		pf := idx(f+".portLevelSettings", i)
		if pl == nil {
			c.fail(pf, "traffic policy may not be null")
			continue
		}
		if pl.GetPort() == nil {
			c.fail(pf+".port", "portTrafficPolicy must have valid port")
		}
		if pl.GetOutlierDetection() == nil && pl.GetConnectionPool() == nil && pl.GetLoadBalancer() == nil && pl.GetTls() == nil {
			c.fail(pf, "port traffic policy must have at least one field")
			continue
		}
		checkOutlier(c, pf+".outlierDetection", pl.GetOutlierDetection())
		checkConnectionPool(c, pf+".connectionPool", pl.GetConnectionPool())
		checkLoadBalancer(c, pf+".loadBalancer", pl.GetLoadBalancer())
		if pl.GetTls() != nil {
			c.warn(pf+".tls", "TLS origination is applied by waypoints toward ServiceEntry hosts only (egress), not to Services")
		}
	}
	if p.GetTunnel() != nil {
		c.warn(f+".tunnel", "not applied by this waypoint")
	}
	if pp := p.GetProxyProtocol(); pp != nil {
		if pp.GetVersion() != 0 && pp.GetVersion() != 1 {
			c.fail(f+".proxyProtocol.version", "proxy protocol version is invalid: %d", pp.GetVersion())
		}
		c.warn(f+".proxyProtocol", "not applied by this waypoint")
	}
	if p.GetRetryBudget() != nil {
		c.warn(f+".retryBudget", "not applied by this waypoint")
	}
}

func checkOutlier(c *checker, f string, o *networking.OutlierDetection) {
	if o == nil {
		return
	}
	c.duration(f+".baseEjectionTime", o.GetBaseEjectionTime())
	if o.GetConsecutiveErrors() != 0 { //nolint:staticcheck // deprecated, still accepted with a warning
		c.warn(f+".consecutiveErrors", "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead")
	}
	if !o.GetSplitExternalLocalOriginErrors() && o.GetConsecutiveLocalOriginFailures().GetValue() > 0 {
		c.fail(f+".consecutiveLocalOriginFailures", "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false")
	}
	c.duration(f+".interval", o.GetInterval())
	for _, p := range []struct {
		field string
		v     int32
	}{{f + ".maxEjectionPercent", o.GetMaxEjectionPercent()}, {f + ".minHealthPercent", o.GetMinHealthPercent()}} {
		if p.v < 0 || p.v > 100 {
			c.fail(p.field, "percentage %v is not in range 0..100", p.v)
		}
	}
	if o.GetSplitExternalLocalOriginErrors() || o.GetConsecutiveLocalOriginFailures() != nil {
		c.warn(f+".splitExternalLocalOriginErrors", "local-origin errors are not counted apart by this waypoint")
	}
}

func checkConnectionPool(c *checker, f string, p *networking.ConnectionPoolSettings) {
	if p == nil {
		return
	}
	if p.GetHttp() == nil && p.GetTcp() == nil {
		c.fail(f, "connection pool must have at least one field")
		return
	}
	if h := p.GetHttp(); h != nil {
		hf := f + ".http"
		for _, n := range []struct {
			field, what string
			v           int32
		}{
			{hf + ".http1MaxPendingRequests", "http1 max pending requests", h.GetHttp1MaxPendingRequests()},
			{hf + ".http2MaxRequests", "http2 max requests", h.GetHttp2MaxRequests()},
			{hf + ".maxRequestsPerConnection", "max requests per connection", h.GetMaxRequestsPerConnection()},
			{hf + ".maxRetries", "max retries", h.GetMaxRetries()},
			{hf + ".maxConcurrentStreams", "max concurrent streams", h.GetMaxConcurrentStreams()},
		} {
			if n.v < 0 {
				c.fail(n.field, "%s must be non-negative", n.what)
			}
		}
		c.duration(hf+".idleTimeout", h.GetIdleTimeout())
		if h.GetH2UpgradePolicy() == networking.ConnectionPoolSettings_HTTPSettings_UPGRADE && h.GetUseClientProtocol() {
			c.fail(hf+".useClientProtocol", "use client protocol must not be true when H2UpgradePolicy is UPGRADE")
		}
		if ka := h.GetHttp2KeepAlive(); ka != nil {
			if ka.GetInterval() == nil {
				c.fail(hf+".http2KeepAlive.interval", "http2 keepalive interval is required")
			}
			if ka.GetTimeout() == nil {
				c.fail(hf+".http2KeepAlive.timeout", "http2 keepalive timeout is required")
			}
			c.duration(hf+".http2KeepAlive.interval", ka.GetInterval())
			c.duration(hf+".http2KeepAlive.timeout", ka.GetTimeout())
		}
		for _, n := range []struct {
			field string
			set   bool
		}{
			{hf + ".idleTimeout", h.GetIdleTimeout() != nil}, {hf + ".h2UpgradePolicy", h.GetH2UpgradePolicy() != 0},
			{hf + ".useClientProtocol", h.GetUseClientProtocol()}, {hf + ".maxConcurrentStreams", h.GetMaxConcurrentStreams() != 0},
			{hf + ".http2KeepAlive", h.GetHttp2KeepAlive() != nil},
		} {
			if n.set {
				c.warn(n.field, "not applied by this waypoint")
			}
		}
	}
	if t := p.GetTcp(); t != nil {
		tf := f + ".tcp"
		if t.GetMaxConnections() < 0 {
			c.fail(tf+".maxConnections", "max connections must be non-negative")
		}
		c.duration(tf+".connectTimeout", t.GetConnectTimeout())
		c.duration(tf+".maxConnectionDuration", t.GetMaxConnectionDuration())
		if t.GetIdleTimeout() != nil && t.GetIdleTimeout().AsDuration() != 0 {
			c.duration(tf+".idleTimeout", t.GetIdleTimeout())
		}
		if ka := t.GetTcpKeepalive(); ka != nil {
			c.duration(tf+".tcpKeepalive.time", ka.GetTime())
			c.duration(tf+".tcpKeepalive.interval", ka.GetInterval())
		}
		for _, n := range []struct {
			field string
			set   bool
		}{
			{tf + ".maxConnectionDuration", t.GetMaxConnectionDuration() != nil}, {tf + ".idleTimeout", t.GetIdleTimeout() != nil},
			{tf + ".tcpKeepalive", t.GetTcpKeepalive() != nil},
		} {
			if n.set {
				c.warn(n.field, "not applied by this waypoint")
			}
		}
	}
}

// SimpleLoadBalancers are the load balancers both waypoints apply.
var SimpleLoadBalancers = []networking.LoadBalancerSettings_SimpleLB{
	networking.LoadBalancerSettings_UNSPECIFIED, networking.LoadBalancerSettings_LEAST_REQUEST,
	networking.LoadBalancerSettings_LEAST_CONN, networking.LoadBalancerSettings_ROUND_ROBIN,
	networking.LoadBalancerSettings_RANDOM,
}

func checkLoadBalancer(c *checker, f string, lb *networking.LoadBalancerSettings) {
	if lb == nil {
		return
	}
	if ch := lb.GetConsistentHash(); ch != nil {
		if hc := ch.GetHttpCookie(); hc != nil && hc.GetName() == "" {
			c.fail(f+".consistentHash.httpCookie.name", "name required for HttpCookie")
		}
		if ml := ch.GetMaglev(); ml != nil {
			switch ts := ml.GetTableSize(); {
			case ts == 0:
				c.fail(f+".consistentHash.maglev.tableSize", "tableSize must be set for maglev")
			case ts >= 5000011:
				c.fail(f+".consistentHash.maglev.tableSize", "tableSize must be less than 5000011 for maglev")
			case !isPrime(ts):
				c.fail(f+".consistentHash.maglev.tableSize", "tableSize must be a prime number for maglev")
			}
		}
		c.warn(f+".consistentHash", "consistent hashing is not applied by this waypoint")
	}
	if lb.GetLocalityLbSetting() != nil && lb.GetZoneAwareLbSetting() != nil {
		c.fail(f, "only one of localityLbSetting and zoneAwareLbSetting can be set")
	}
	if lb.GetLocalityLbSetting() != nil || lb.GetZoneAwareLbSetting() != nil {
		c.warn(f, "locality and zone-aware load balancing are not applied by this waypoint")
	}
	if w := lb.GetWarmup(); w != nil {
		if w.GetDuration() == nil {
			c.fail(f+".warmup.duration", "duration is required")
		} else {
			c.duration(f+".warmup.duration", w.GetDuration())
		}
		if w.GetMinimumPercent().GetValue() > 100 {
			c.fail(f+".warmup.minimumPercent", "minimumPercent value should be less than or equal to 100")
		}
		if w.GetAggression() != nil && w.GetAggression().GetValue() <= 0 {
			c.fail(f+".warmup.aggression", "aggression should be greater than 0")
		}
		c.warn(f+".warmup", "slow start is not applied by this waypoint")
	}
	if s := lb.GetSimple(); !slices.Contains(SimpleLoadBalancers, s) {
		c.warn(f+".simple", "%s is not applied by this waypoint (it uses LEAST_REQUEST)", s)
	}
}

func isPrime(x uint64) bool {
	if x != 0 && x < 4 {
		return true
	}
	if x&1 == 0 {
		return false
	}
	for f := uint64(3); f*f <= x; f += 2 {
		if x%f == 0 {
			return false
		}
	}
	return true
}

// convertDestinationRule validates a DestinationRule; its host is resolved against its
// namespace. The spec is shared with the input (never modified).
func convertDestinationRule(o *kubeobj.DestinationRule, domain string) (*DestinationRule, []error, []error) {
	ns := orDefault(o.Metadata.Namespace)
	c := &checker{origin: o.Origin, kind: "DestinationRule", object: ns + "/" + o.Metadata.Name}
	checkDestinationRule(c, o.Spec)
	if len(c.errs) > 0 {
		return nil, c.errs, nil // the object is refused: remarks on it would be noise
	}
	return &DestinationRule{Namespace: ns, Name: o.Metadata.Name, Host: resolveHost(o.Spec.GetHost(), ns, domain),
		Spec: o.Spec, Created: created(o.Metadata), Origin: o.Origin}, nil, c.warns
}
