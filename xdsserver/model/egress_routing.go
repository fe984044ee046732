package model

// bindEntries gives each ServiceEntry host bound to a waypoint the DestinationRule that applies
// to it, chosen as for a Service (destinationRuleFor): its traffic policy (TLS origination to
// the host included) is what the egress waypoint applies. VirtualServices and HTTPRoutes are
// not bound to ServiceEntry hosts.
func (bd *binder) bindEntries() {
	for _, se := range bd.b.m.ServiceEntries {
		for _, s := range se.Services {
			if s.Waypoint == nil {
				continue
			}
			if dr := bd.destinationRuleFor(s, s.Waypoint); dr != nil {
				bd.r.Services[RoutingKey(s)] = &ServiceRouting{DestinationRule: dr}
			}
		}
	}
}
