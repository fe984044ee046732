package state

import (
	"fmt"

	"istio.io/istio/pkg/workloadapi"
)

// lbPolicy is a service's endpoint selection (Service.load_balancing), checked once when the
// State is built.
type lbPolicy struct {
	scopes []workloadapi.LoadBalancing_Scope // routing preferences, in order
	mode   workloadapi.LoadBalancing_Mode
}

// ranked says whether the policy prefers (FAILOVER) or requires (STRICT) endpoints near the
// client; with no mode (Istio's ztunnel: Standard) preferences are ignored.
func (p *lbPolicy) ranked() bool {
	return len(p.scopes) > 0 && (p.mode == workloadapi.LoadBalancing_STRICT || p.mode == workloadapi.LoadBalancing_FAILOVER)
}

// parseLB checks a LoadBalancing as Istio's ztunnel converts it: every scope, the mode and the
// health policy must be values it knows (an unspecified scope is refused).
func parseLB(lb *workloadapi.LoadBalancing) (lbPolicy, string, error) {
	var p lbPolicy
	if lb == nil {
		return p, "", nil
	}
	for i, sc := range lb.GetRoutingPreference() {
		if _, known := workloadapi.LoadBalancing_Scope_name[int32(sc)]; !known || sc == workloadapi.LoadBalancing_UNSPECIFIED_SCOPE {
			return p, fmt.Sprintf(".load_balancing.routing_preference[%d]", i), fmt.Errorf("%v is not a scope", sc)
		}
		p.scopes = append(p.scopes, sc)
	}
	if _, known := workloadapi.LoadBalancing_Mode_name[int32(lb.GetMode())]; !known {
		return p, ".load_balancing.mode", fmt.Errorf("%d is not a mode", lb.GetMode())
	}
	if _, known := workloadapi.LoadBalancing_HealthPolicy_name[int32(lb.GetHealthPolicy())]; !known {
		return p, ".load_balancing.health_policy", fmt.Errorf("%d is not a health policy", lb.GetHealthPolicy())
	}
	p.mode = lb.GetMode()
	return p, "", nil
}

// rank is how many of the policy's scopes, taken in order, the client src and the endpoint ep
// share (Istio's ztunnel stops at the first one they do not). An unknown client (nil) has an
// empty locality, node, cluster and network.
func (p *lbPolicy) rank(src, ep *workloadapi.Workload) int {
	n := 0
	for _, sc := range p.scopes {
		var same bool
		switch sc {
		case workloadapi.LoadBalancing_REGION:
			same = src.GetLocality().GetRegion() == ep.GetLocality().GetRegion()
		case workloadapi.LoadBalancing_ZONE:
			same = src.GetLocality().GetZone() == ep.GetLocality().GetZone()
		case workloadapi.LoadBalancing_SUBZONE:
			same = src.GetLocality().GetSubzone() == ep.GetLocality().GetSubzone()
		case workloadapi.LoadBalancing_NODE:
			same = src.GetNode() == ep.GetNode()
		case workloadapi.LoadBalancing_CLUSTER:
			same = src.GetClusterId() == ep.GetClusterId()
		case workloadapi.LoadBalancing_NETWORK:
			same = src.GetNetwork() == ep.GetNetwork()
		}
		if !same {
			break
		}
		n++
	}
	return n
}

// pickEndpoint chooses the endpoint of sv for a connection from src, as Istio's ztunnel
// load-balances: without ranked preferences any endpoint; with them only the endpoints that
// share the most leading scopes with the client (FAILOVER: the nearest group there is; STRICT:
// those sharing every scope, or none). Among those, the picker chooses (round robin by
// default). It does not allocate.
func (s *State) pickEndpoint(sv *svcEntry, src *workloadapi.Workload) (*wlEntry, bool) {
	if !sv.lb.ranked() {
		if len(sv.eps) == 0 {
			return nil, false
		}
		return sv.eps[s.pick(sv, len(sv.eps))], true
	}
	best, count := -1, 0
	for _, ep := range sv.eps {
		r := sv.lb.rank(src, ep.w)
		if sv.lb.mode == workloadapi.LoadBalancing_STRICT && r < len(sv.lb.scopes) {
			continue
		}
		switch {
		case r > best:
			best, count = r, 1
		case r == best:
			count++
		}
	}
	if count == 0 {
		return nil, false
	}
	k := s.pick(sv, count)
	for _, ep := range sv.eps {
		if sv.lb.rank(src, ep.w) != best {
			continue
		}
		if k == 0 {
			return ep, true
		}
		k--
	}
	return nil, false // unreachable: count endpoints have rank best
}
