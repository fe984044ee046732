package state

import (
	"errors"
	"fmt"
	"net/netip"

	"istio.io/istio/pkg/workloadapi"
)

// Kind is how an outbound connection leaves the ztunnel.
type Kind uint8

const (
	// Passthrough: plain TCP to Route.Dial (a destination outside the mesh, or a workload whose
	// tunnel protocol is NONE).
	Passthrough Kind = iota
	// Direct: HBONE to the destination pod's 15008, :authority podIP:targetPort.
	Direct
	// ToServiceWaypoint: HBONE to the service's waypoint, :authority the original VIP:port.
	ToServiceWaypoint
	// ToWorkloadWaypoint: HBONE to the workload's waypoint, :authority the original podIP:port.
	ToWorkloadWaypoint
)

func (k Kind) String() string {
	switch k {
	case Passthrough:
		return "passthrough"
	case Direct:
		return "direct"
	case ToServiceWaypoint:
		return "service-waypoint"
	case ToWorkloadWaypoint:
		return "workload-waypoint"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// ErrNoHealthyUpstream is returned (wrapped) by Route for a service, or a waypoint, with no
// endpoint to send to; ztunnel's words.
var ErrNoHealthyUpstream = errors.New("no healthy upstream")

// Route is the outbound decision for one connection.
type Route struct {
	Kind Kind
	// Dial is the TCP address to connect to: podIP:15008 or waypointIP:15008 for HBONE, the
	// upstream itself for Passthrough.
	Dial netip.AddrPort
	// Authority is the HBONE CONNECT :authority; invalid for Passthrough.
	Authority netip.AddrPort
	// Identities are the SPIFFE IDs the HBONE peer may present (the pod's or the waypoint's,
	// plus the service's subject_alt_names); nil for Passthrough. Do not modify.
	Identities []string
	// Workload is the destination workload (the chosen endpoint for a service); nil when unknown
	// or when a service waypoint chooses it.
	Workload *workloadapi.Workload
	// Service is the destination service when the connection was addressed to its VIP.
	Service *workloadapi.Service
	// Waypoint is the waypoint workload the connection goes through, for the waypoint kinds.
	Waypoint *workloadapi.Workload
	// Hostname, for a Passthrough to an endpoint that has a DNS name instead of an address
	// (ServiceEntry resolution DNS), is the name to resolve; Dial then has only the port.
	Hostname string
}

// HBONE says whether the route tunnels the connection.
func (r Route) HBONE() bool { return r.Kind != Passthrough }

// Waypoint is where a GatewayAddress points, resolved through a State.
type Waypoint struct {
	// Addr is the waypoint's address (its Service VIP, or a workload IP) and its HBONE port
	// (hbone_mtls_port, 15008 when unset).
	Addr     netip.AddrPort
	Service  *workloadapi.Service  // when the address is a Service (the usual case)
	Workload *workloadapi.Workload // when the address is a workload's own
}

// ErrNoWaypoint is returned by Waypoint for a nil GatewayAddress.
var ErrNoWaypoint = errors.New("no waypoint")

// Waypoint resolves a GatewayAddress (Service.waypoint or Workload.waypoint): a hostname
// {namespace, hostname} names a Service, an address a Service VIP or a workload IP.
func (s *State) Waypoint(gw *workloadapi.GatewayAddress) (Waypoint, error) {
	if gw == nil {
		return Waypoint{}, ErrNoWaypoint
	}
	t := s.resolve(gw)
	if t.err != nil {
		return Waypoint{}, t.err
	}
	w := Waypoint{Addr: netip.AddrPortFrom(t.addr, t.port)}
	if t.svc != nil {
		w.Service = t.svc.s
	}
	if t.wl != nil {
		w.Workload = t.wl.w
	}
	return w, nil
}

// Route decides how a connection from src (nil when the source is unknown) to dst leaves the
// ztunnel, as ztunnel's outbound build_request does:
//
//   - dst is a Service VIP whose service has a waypoint (and src is not that waypoint): HBONE to
//     a waypoint pod's hbone_mtls_port, :authority VIP:port;
//   - dst is a Service VIP: an endpoint is picked among those the service's load_balancing
//     prefers for src (its routing preferences and mode, as Istio's ztunnel ranks them; see
//     pickEndpoint), then by WithPicker (round robin by default), and the
//     connection goes Direct over HBONE to podIP:15008 with :authority podIP:targetPort, or as
//     Passthrough to podIP:targetPort when the pod's tunnel protocol is not HBONE; the endpoint's
//     workload waypoint is not used for service-addressed traffic; no endpoint is
//     ErrNoHealthyUpstream; a port the service does not declare, or load-balancing mode
//     PASSTHROUGH, passes through to dst unchanged;
//   - dst is a pod IP: as above without the service, but a workload waypoint (when src is not
//     that waypoint) takes it, with :authority podIP:port;
//   - anything else passes through.
//
// Single network only: workloads on another network (double HBONE through an east-west
// gateway) are not handled.
func (s *State) Route(dst netip.AddrPort, src *workloadapi.Workload) (Route, error) {
	ip, port := dst.Addr().Unmap(), dst.Port()
	dst = netip.AddrPortFrom(ip, port)
	if sv := s.serviceAt(ip); sv != nil {
		r := Route{Service: sv.s}
		if sv.waypoint != nil && !fromWaypoint(src, sv.waypoint) {
			return s.viaWaypoint(r, ToServiceWaypoint, sv.waypoint, dst, src)
		}
		if sv.s.GetLoadBalancing().GetMode() == workloadapi.LoadBalancing_PASSTHROUGH {
			r.Dial = dst
			return r, nil
		}
		if len(sv.eps) == 0 && len(sv.hostEps) > 0 {
			return s.viaHostname(r, sv, port)
		}
		ep, ok := s.pickEndpoint(sv, src)
		if !ok {
			return Route{}, fmt.Errorf("service %s: %w", sv.key, ErrNoHealthyUpstream)
		}
		target, ok := sv.targetPort(ep.w, port)
		if !ok {
			r.Dial = dst // ztunnel: "found VIP, but port was unknown"
			return r, nil
		}
		return direct(r, ep, pickAddr(ep.addrs, ip), target, sv.sans), nil
	}
	if wl := s.byIP[ip]; wl != nil {
		r := Route{Workload: wl.w}
		if wl.waypoint != nil && !fromWaypoint(src, wl.waypoint) {
			return s.viaWaypoint(r, ToWorkloadWaypoint, wl.waypoint, dst, src)
		}
		return direct(r, wl, ip, port, nil), nil
	}
	return Route{Kind: Passthrough, Dial: dst}, nil
}

// viaHostname sends to one of a service's hostname endpoints (round robin), as ztunnel does
// for a DNS ServiceEntry: plain TCP to the name, resolved when dialled, at the target port.
func (s *State) viaHostname(r Route, sv *svcEntry, port uint16) (Route, error) {
	ep := sv.hostEps[s.pick(sv, len(sv.hostEps))]
	target, ok := sv.targetPort(ep.w, port)
	if !ok {
		target = port
	}
	r.Kind, r.Workload, r.Hostname = Passthrough, ep.w, ep.w.GetHostname()
	r.Dial = netip.AddrPortFrom(netip.Addr{}, target)
	return r, nil
}

// direct sends to a pod: HBONE when it speaks it, plain TCP otherwise.
func direct(r Route, ep *wlEntry, ip netip.Addr, port uint16, sans []string) Route {
	r.Workload = ep.w
	if ep.w.GetTunnelProtocol() != workloadapi.TunnelProtocol_HBONE {
		r.Kind, r.Dial = Passthrough, netip.AddrPortFrom(ip, port)
		return r
	}
	r.Kind = Direct
	r.Dial = netip.AddrPortFrom(ip, HBONEPort)
	r.Authority = netip.AddrPortFrom(ip, port)
	r.Identities = identities(ep.ids, sans)
	return r
}

func (s *State) viaWaypoint(r Route, kind Kind, t *target, authority netip.AddrPort, src *workloadapi.Workload) (Route, error) {
	if t.err != nil {
		return Route{}, t.err
	}
	wp := t.wl
	var sans []string
	if t.svc != nil {
		var ok bool
		if wp, ok = s.pickEndpoint(t.svc, src); !ok {
			return Route{}, fmt.Errorf("waypoint %s: %w", t.svc.key, ErrNoHealthyUpstream)
		}
		sans = t.svc.sans
	}
	r.Kind = kind
	r.Dial = netip.AddrPortFrom(pickAddr(wp.addrs, authority.Addr()), t.port)
	r.Authority = authority
	r.Identities = identities(wp.ids, sans)
	r.Waypoint = wp.w
	return r, nil
}

// fromWaypoint says whether src is the waypoint t points at (so it must not be sent back to
// it): one of the waypoint service's endpoints, or the waypoint workload itself.
func fromWaypoint(src *workloadapi.Workload, t *target) bool {
	if src == nil || t.err != nil {
		return false
	}
	if t.svc != nil {
		_, ok := src.GetServices()[t.svc.key]
		return ok
	}
	return t.wl != nil && t.wl.w.GetUid() == src.GetUid()
}

// pick chooses one of n candidate endpoints of sv.
func (s *State) pick(sv *svcEntry, n int) int {
	if s.opts.pick != nil {
		if i := s.opts.pick(n); i >= 0 && i < n {
			return i
		}
		return 0
	}
	return int((sv.rr.Add(1) - 1) % uint64(n))
}

// pickAddr prefers an address of the same family as the one the client used.
func pickAddr(addrs []netip.Addr, like netip.Addr) netip.Addr {
	for _, a := range addrs {
		if a.Is4() == like.Is4() {
			return a
		}
	}
	return addrs[0]
}

func identities(ids, sans []string) []string {
	if len(sans) == 0 {
		return ids
	}
	out := make([]string, 0, len(ids)+len(sans))
	out = append(out, ids...)
	for _, s := range sans {
		if s != ids[0] {
			out = append(out, s)
		}
	}
	return out
}
