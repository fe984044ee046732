// Package state is the ztunnel's view of the mesh: immutable snapshots built from Istio's workload API resources (workloads, services, authorizations), with the lookups, the outbound routing decision and the L4 authorization the proxy needs.
package state

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/goambient/goambient/policies/l4"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
)

// Defaults, as Istio's.
const (
	DefaultClusterDomain = "cluster.local"
	DefaultTrustDomain   = "cluster.local"
	DefaultPollInterval  = 500 * time.Millisecond
	HBONEPort            = 15008 // GatewayAddress.hbone_mtls_port when unset, and every pod's HBONE port
)

// Resources are the workload API resources a State is built from. The messages are shared with
// the State that is built from them: treat them as read-only.
type Resources struct {
	Workloads      []*workloadapi.Workload
	Services       []*workloadapi.Service
	Authorizations []*security.Authorization
}

// Option configures New, LoadFile and Watch.
type Option func(*options)

type options struct {
	clusterDomain string
	trustDomain   string
	pick          func(n int) int
	poll          time.Duration
}

func buildOptions(opts []Option) options {
	o := options{clusterDomain: DefaultClusterDomain, trustDomain: DefaultTrustDomain, poll: DefaultPollInterval}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// WithClusterDomain sets the cluster DNS domain used by Resolve (default cluster.local).
func WithClusterDomain(d string) Option {
	return func(o *options) { o.clusterDomain = cmp.Or(strings.Trim(d, "."), DefaultClusterDomain) }
}

// WithTrustDomain sets the trust domain of workloads whose trust_domain is empty (default cluster.local).
func WithTrustDomain(td string) Option {
	return func(o *options) { o.trustDomain = cmp.Or(td, DefaultTrustDomain) }
}

// WithPicker replaces the endpoint choice (round robin per service by default): pick gets the
// number of candidate endpoints, ordered by uid, and returns the index of the one to use.
func WithPicker(pick func(n int) int) Option { return func(o *options) { o.pick = pick } }

// WithPollInterval sets how often Watch reads the file (default 500 ms).
func WithPollInterval(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.poll = d
		}
	}
}

// State is an immutable snapshot of the mesh as one ztunnel sees it. Every lookup is a map
// lookup; build a new State for every change and swap it in (see Store).
type State struct {
	opts      options
	res       Resources // sorted by key
	workloads map[string]*wlEntry
	wlOf      map[*workloadapi.Workload]*wlEntry
	byIP      map[netip.Addr]*wlEntry
	services  map[string]*svcEntry // "ns/hostname"
	svcOf     map[*workloadapi.Service]*svcEntry
	byVIP     map[netip.Addr]*svcEntry
	byCIDR    []cidrEntry             // services whose address has a length (ServiceEntry CIDRs), longest first
	byShort   map[shortName]*svcEntry // {name, ns} of "name.ns.svc.<cluster domain>" hostnames
	byHost    map[string][]*svcEntry  // every hostname
	authz     map[string]*security.Authorization
	engine    *l4.Engine
	svcSuffix string // ".svc.<cluster domain>"
}

type shortName struct{ name, ns string }

type cidrEntry struct {
	prefix netip.Prefix
	svc    *svcEntry
}

type wlEntry struct {
	w        *workloadapi.Workload
	addrs    []netip.Addr
	ids      []string // {the workload's SPIFFE ID}
	policy   l4.Workload
	waypoint *target // resolved Workload.waypoint
}

type svcEntry struct {
	s        *workloadapi.Service
	key      string
	vips     []netip.Addr
	ports    map[uint16]uint16       // service port → target port (0: the same)
	eps      []*wlEntry              // routable endpoints (HEALTHY unless ALLOW_ALL), by uid, with an address
	hostEps  []*wlEntry              // routable endpoints with a hostname and no address (resolved when dialled)
	epWLs    []*workloadapi.Workload // the same workloads
	sans     []string
	waypoint *target       // resolved Service.waypoint
	lb       lbPolicy      // Service.load_balancing
	rr       atomic.Uint64 // round-robin position
}

// target is a waypoint (or any GatewayAddress) resolved in the snapshot.
type target struct {
	gw   *workloadapi.GatewayAddress
	port uint16
	addr netip.Addr // the VIP or the workload IP; invalid for an unresolved hostname
	svc  *svcEntry  // when the address is a Service
	wl   *wlEntry   // when the address is a workload
	err  error      // why it could not be resolved
}

// Empty is a State with nothing in it.
func Empty(opts ...Option) *State {
	s, _ := New(Resources{}, opts...)
	return s
}

// New builds a State. It fails, naming the resource and the field, when a resource lacks its
// key, repeats another's key or address, or carries an address that is not 4 or 16 bytes.
func New(r Resources, opts ...Option) (*State, error) {
	o := buildOptions(opts)
	s := &State{
		opts:      o,
		workloads: make(map[string]*wlEntry, len(r.Workloads)),
		wlOf:      make(map[*workloadapi.Workload]*wlEntry, len(r.Workloads)),
		byIP:      make(map[netip.Addr]*wlEntry, len(r.Workloads)),
		services:  make(map[string]*svcEntry, len(r.Services)),
		svcOf:     make(map[*workloadapi.Service]*svcEntry, len(r.Services)),
		byVIP:     make(map[netip.Addr]*svcEntry, len(r.Services)),
		byShort:   make(map[shortName]*svcEntry, len(r.Services)),
		byHost:    make(map[string][]*svcEntry, len(r.Services)),
		authz:     make(map[string]*security.Authorization, len(r.Authorizations)),
		svcSuffix: ".svc." + o.clusterDomain,
	}
	var errs []error
	fail := func(list string, i int, field, format string, args ...any) {
		errs = append(errs, &FieldError{Path: fmt.Sprintf("%s[%d]%s", list, i, field), Reason: fmt.Sprintf(format, args...)})
	}
	ipOwner := map[netip.Addr]string{}

	for i, w := range r.Workloads {
		if w == nil {
			fail("workloads", i, "", "empty")
			continue
		}
		if w.GetUid() == "" {
			fail("workloads", i, ".uid", "required (the workload's xDS name, e.g. Kubernetes//Pod/ns/name)")
			continue
		}
		if _, dup := s.workloads[w.GetUid()]; dup {
			fail("workloads", i, ".uid", "%q is used by another workload", w.GetUid())
			continue
		}
		e := &wlEntry{w: w, policy: l4.Workload{Namespace: w.GetNamespace(), Policies: w.GetAuthorizationPolicies()}}
		e.ids = []string{SPIFFEID(cmp.Or(w.GetTrustDomain(), o.trustDomain), w.GetNamespace(), w.GetServiceAccount())}
		for j, b := range w.GetAddresses() {
			ip, ok := netip.AddrFromSlice(b)
			if !ok {
				fail("workloads", i, fmt.Sprintf(".addresses[%d]", j), "%d bytes is not an IPv4 or IPv6 address", len(b))
				continue
			}
			ip = ip.Unmap()
			e.addrs = append(e.addrs, ip)
			if w.GetNetworkMode() == workloadapi.NetworkMode_HOST_NETWORK {
				continue // shared with the node: never looked up by IP, as Istio asks
			}
			if prev, dup := ipOwner[ip]; dup {
				fail("workloads", i, fmt.Sprintf(".addresses[%d]", j), "%s is already the address of %s", ip, prev)
				continue
			}
			ipOwner[ip] = "workload " + w.GetUid()
			s.byIP[ip] = e
		}
		s.workloads[w.GetUid()] = e
		s.wlOf[w] = e
		s.res.Workloads = append(s.res.Workloads, w)
	}

	for i, sv := range r.Services {
		if sv == nil {
			fail("services", i, "", "empty")
			continue
		}
		if sv.GetHostname() == "" || sv.GetNamespace() == "" {
			fail("services", i, "", "namespace and hostname are required")
			continue
		}
		key := sv.GetNamespace() + "/" + sv.GetHostname()
		if _, dup := s.services[key]; dup {
			fail("services", i, ".hostname", "service %s is defined twice", key)
			continue
		}
		e := &svcEntry{s: sv, key: key, ports: map[uint16]uint16{}, sans: sv.GetSubjectAltNames()}
		lb, field, err := parseLB(sv.GetLoadBalancing())
		if err != nil {
			fail("services", i, field, "%v", err)
			continue
		}
		e.lb = lb
		for j, a := range sv.GetAddresses() {
			ip, ok := netip.AddrFromSlice(a.GetAddress())
			if !ok {
				fail("services", i, fmt.Sprintf(".addresses[%d].address", j), "%d bytes is not an IPv4 or IPv6 address", len(a.GetAddress()))
				continue
			}
			ip = ip.Unmap()
			if a.Length != nil {
				pfx, err := ip.Prefix(int(a.GetLength()))
				if err != nil || a.GetLength() == 0 {
					fail("services", i, fmt.Sprintf(".addresses[%d].length", j), "%d is not a prefix length of %s", a.GetLength(), ip)
					continue
				}
				if pfx.IsSingleIP() {
					ip = pfx.Addr()
				} else {
					s.byCIDR = append(s.byCIDR, cidrEntry{prefix: pfx, svc: e})
					continue
				}
			}
			if prev, dup := ipOwner[ip]; dup {
				fail("services", i, fmt.Sprintf(".addresses[%d].address", j), "%s is already the address of %s", ip, prev)
				continue
			}
			ipOwner[ip] = "service " + key
			e.vips = append(e.vips, ip)
			s.byVIP[ip] = e
		}
		for j, p := range sv.GetPorts() {
			if p.GetServicePort() == 0 || p.GetServicePort() > 65535 || p.GetTargetPort() > 65535 {
				fail("services", i, fmt.Sprintf(".ports[%d]", j), "service port %d → target port %d is out of range", p.GetServicePort(), p.GetTargetPort())
				continue
			}
			e.ports[uint16(p.GetServicePort())] = uint16(p.GetTargetPort())
		}
		s.services[key] = e
		s.svcOf[sv] = e
		s.byHost[sv.GetHostname()] = append(s.byHost[sv.GetHostname()], e)
		if head, ok := strings.CutSuffix(sv.GetHostname(), s.svcSuffix); ok {
			if name, ns, ok := strings.Cut(head, "."); ok && !strings.Contains(ns, ".") {
				s.byShort[shortName{name, ns}] = e
			}
		}
		s.res.Services = append(s.res.Services, sv)
	}

	for i, a := range r.Authorizations {
		if a == nil {
			fail("authorizations", i, "", "empty")
			continue
		}
		if a.GetName() == "" {
			fail("authorizations", i, ".name", "required")
			continue
		}
		key := a.GetNamespace() + "/" + a.GetName()
		if _, dup := s.authz[key]; dup {
			fail("authorizations", i, ".name", "authorization %s is defined twice", key)
			continue
		}
		s.authz[key] = a
		s.res.Authorizations = append(s.res.Authorizations, a)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	// Endpoints: the workloads that list the service, routable ones only, in uid order.
	slices.SortFunc(s.res.Workloads, func(a, b *workloadapi.Workload) int { return strings.Compare(a.GetUid(), b.GetUid()) })
	for _, w := range s.res.Workloads {
		e := s.wlOf[w]
		for key := range w.GetServices() {
			sv := s.services[key]
			if sv == nil || (len(e.addrs) == 0 && w.GetHostname() == "") {
				continue
			}
			if w.GetStatus() != workloadapi.WorkloadStatus_HEALTHY && sv.s.GetLoadBalancing().GetHealthPolicy() != workloadapi.LoadBalancing_ALLOW_ALL {
				continue
			}
			if len(e.addrs) == 0 {
				sv.hostEps = append(sv.hostEps, e)
				continue
			}
			sv.eps = append(sv.eps, e)
			sv.epWLs = append(sv.epWLs, w)
		}
	}
	slices.SortFunc(s.res.Services, func(a, b *workloadapi.Service) int { return strings.Compare(s.svcOf[a].key, s.svcOf[b].key) })
	slices.SortFunc(s.res.Authorizations, func(a, b *security.Authorization) int {
		return cmp.Or(strings.Compare(a.GetNamespace(), b.GetNamespace()), strings.Compare(a.GetName(), b.GetName()))
	})
	for _, e := range s.services {
		if gw := e.s.GetWaypoint(); gw != nil {
			e.waypoint = s.resolve(gw)
		}
	}
	for _, e := range s.workloads {
		if gw := e.w.GetWaypoint(); gw != nil {
			e.waypoint = s.resolve(gw)
		}
	}
	slices.SortStableFunc(s.byCIDR, func(a, b cidrEntry) int { return b.prefix.Bits() - a.prefix.Bits() })
	s.engine = l4.Compile(s.res.Authorizations)
	return s, nil
}

// resolve finds what a GatewayAddress names: a Service (by hostname or VIP) or a workload (by IP).
func (s *State) resolve(gw *workloadapi.GatewayAddress) *target {
	t := &target{gw: gw, port: HBONEPort}
	if p := gw.GetHboneMtlsPort(); p != 0 && p <= 65535 {
		t.port = uint16(p)
	}
	switch {
	case gw.GetHostname() != nil:
		h := gw.GetHostname()
		t.svc = s.services[h.GetNamespace()+"/"+h.GetHostname()]
		if t.svc == nil {
			t.err = fmt.Errorf("waypoint %s/%s: no such service", h.GetNamespace(), h.GetHostname())
			return t
		}
		if len(t.svc.vips) > 0 {
			t.addr = t.svc.vips[0]
		}
	case gw.GetAddress() != nil:
		ip, ok := netip.AddrFromSlice(gw.GetAddress().GetAddress())
		if !ok {
			t.err = fmt.Errorf("waypoint address: %d bytes is not an IP address", len(gw.GetAddress().GetAddress()))
			return t
		}
		t.addr = ip.Unmap()
		t.svc = s.byVIP[t.addr]
		if t.svc == nil {
			t.wl = s.byIP[t.addr]
		}
		if t.svc == nil && t.wl == nil {
			t.err = fmt.Errorf("waypoint %s: no service or workload has this address", t.addr)
		}
	default:
		t.err = errors.New("waypoint has neither hostname nor address")
	}
	return t
}

// SPIFFEID is Istio's workload identity: spiffe://<td>/ns/<ns>/sa/<sa> (sa "default" when empty).
func SPIFFEID(trustDomain, ns, sa string) string {
	return "spiffe://" + trustDomain + "/ns/" + ns + "/sa/" + cmp.Or(sa, "default")
}

// Resources returns the resources of the snapshot, sorted by key, in new slices (the messages
// are shared: do not modify them).
func (s *State) Resources() Resources {
	return Resources{Workloads: slices.Clone(s.res.Workloads), Services: slices.Clone(s.res.Services), Authorizations: slices.Clone(s.res.Authorizations)}
}

// Workload returns the workload with this uid, or nil.
func (s *State) Workload(uid string) *workloadapi.Workload {
	if e := s.workloads[uid]; e != nil {
		return e.w
	}
	return nil
}

// WorkloadByIP returns the workload that has this address, or nil. Host-network workloads are
// never returned: their address is the node's.
func (s *State) WorkloadByIP(ip netip.Addr) *workloadapi.Workload {
	if e := s.byIP[ip.Unmap()]; e != nil {
		return e.w
	}
	return nil
}

// Addresses returns a workload's addresses, parsed. Do not modify the result.
func (s *State) Addresses(w *workloadapi.Workload) []netip.Addr {
	if e := s.entry(w); e != nil {
		return e.addrs
	}
	return nil
}

// Identity returns the SPIFFE ID of a workload (its trust domain, or the State's default).
func (s *State) Identity(w *workloadapi.Workload) string {
	if e := s.entry(w); e != nil {
		return e.ids[0]
	}
	return SPIFFEID(cmp.Or(w.GetTrustDomain(), s.opts.trustDomain), w.GetNamespace(), w.GetServiceAccount())
}

// entry finds a workload's entry, also for a message from an older snapshot (by uid).
func (s *State) entry(w *workloadapi.Workload) *wlEntry {
	if e := s.wlOf[w]; e != nil {
		return e
	}
	return s.workloads[w.GetUid()]
}

func (s *State) svcEntry(sv *workloadapi.Service) *svcEntry {
	if e := s.svcOf[sv]; e != nil {
		return e
	}
	return s.services[sv.GetNamespace()+"/"+sv.GetHostname()]
}

// Service returns the service with this key ("ns/hostname"), or nil.
func (s *State) Service(key string) *workloadapi.Service {
	if e := s.services[key]; e != nil {
		return e.s
	}
	return nil
}

// ServiceByVIP returns the service that has this virtual IP, or nil.
func (s *State) ServiceByVIP(ip netip.Addr) *workloadapi.Service {
	if e := s.serviceAt(ip.Unmap()); e != nil {
		return e.s
	}
	return nil
}

// serviceAt is the service whose VIP is ip, else the one whose CIDR (a ServiceEntry's address
// range) holds it, the longest prefix first.
func (s *State) serviceAt(ip netip.Addr) *svcEntry {
	if e := s.byVIP[ip]; e != nil {
		return e
	}
	for _, c := range s.byCIDR {
		if c.prefix.Contains(ip) {
			return c.svc
		}
	}
	return nil
}

// HostnameEndpoints returns the routable endpoints of a service that have a hostname for the
// ztunnel to resolve instead of an address (ServiceEntry resolution DNS). Do not modify.
func (s *State) HostnameEndpoints(sv *workloadapi.Service) []*workloadapi.Workload {
	e := s.svcEntry(sv)
	if e == nil {
		return nil
	}
	out := make([]*workloadapi.Workload, 0, len(e.hostEps))
	for _, h := range e.hostEps {
		out = append(out, h.w)
	}
	return out
}

// VIPs returns a service's virtual IPs, parsed. Do not modify the result.
func (s *State) VIPs(sv *workloadapi.Service) []netip.Addr {
	if e := s.svcEntry(sv); e != nil {
		return e.vips
	}
	return nil
}

// ServicePort says whether the service declares this port, and its target port (0: the same
// as the service port, or as each endpoint's mapping says).
func (s *State) ServicePort(sv *workloadapi.Service, port uint16) (target uint16, ok bool) {
	if e := s.svcEntry(sv); e != nil {
		target, ok = e.ports[port]
	}
	return target, ok
}

// Endpoints returns the workloads behind a service that traffic may go to: those whose
// `services` map has the service's key, HEALTHY ones only (all of them when the service's
// health policy is ALLOW_ALL), with an address, ordered by uid. Do not modify the result.
func (s *State) Endpoints(sv *workloadapi.Service) []*workloadapi.Workload {
	if e := s.svcEntry(sv); e != nil {
		return e.epWLs
	}
	return nil
}

// TargetPort is the port on endpoint ep that a connection to the service's port goes to: the
// endpoint's own mapping (Workload.services PortList), else the service's target_port, else
// the service port itself (target_port 0 means "the same"). ok is false when neither the
// service nor the endpoint declares the port.
func (s *State) TargetPort(sv *workloadapi.Service, ep *workloadapi.Workload, port uint16) (uint16, bool) {
	e := s.svcEntry(sv)
	if e == nil {
		return 0, false
	}
	return e.targetPort(ep, port)
}

func (e *svcEntry) targetPort(ep *workloadapi.Workload, port uint16) (uint16, bool) {
	svcTarget, declared := e.ports[port]
	for _, p := range ep.GetServices()[e.key].GetPorts() {
		if p.GetServicePort() == uint32(port) {
			declared = true
			if t := p.GetTargetPort(); t != 0 && t <= 65535 {
				return uint16(t), true
			}
			break
		}
	}
	if !declared {
		return 0, false
	}
	return cmp.Or(svcTarget, port), true
}

// Resolve finds the service a mesh DNS name means for a client in fromNamespace: "svc" (in
// fromNamespace), "svc.ns", "svc.ns.svc", "svc.ns.svc.<cluster domain>" (a trailing dot and
// letter case are ignored), then any service whose hostname is the name itself (a
// ServiceEntry host, preferring one in fromNamespace).
func (s *State) Resolve(name, fromNamespace string) (*workloadapi.Service, bool) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if name == "" {
		return nil, false
	}
	var key shortName
	ok := false
	if h, cut := strings.CutSuffix(name, s.svcSuffix); cut {
		key, ok = splitShort(h)
	} else if h, cut := strings.CutSuffix(name, ".svc"); cut {
		key, ok = splitShort(h)
	}
	if !ok {
		if strings.Contains(name, ".") {
			key, ok = splitShort(name) // "svc.ns"
		} else {
			key, ok = shortName{name: name, ns: fromNamespace}, true
		}
	}
	if ok {
		if e := s.byShort[key]; e != nil {
			return e.s, true
		}
	}
	hosts := s.byHost[name]
	for _, e := range hosts {
		if e.s.GetNamespace() == fromNamespace {
			return e.s, true
		}
	}
	if len(hosts) > 0 {
		return hosts[0].s, true
	}
	return nil, false
}

// splitShort splits "name.ns".
func splitShort(h string) (shortName, bool) {
	n, ns, found := strings.Cut(h, ".")
	return shortName{name: n, ns: ns}, found && n != "" && ns != "" && !strings.Contains(ns, ".")
}

// Authorize decides, with the snapshot's compiled authorizations, whether a connection may
// reach dst, as the destination ztunnel does (namespace, global and the workload's own policies).
func (s *State) Authorize(dst *workloadapi.Workload, conn l4.Conn) l4.Result {
	if dst == nil {
		return l4.Result{Reason: "destination workload not found"}
	}
	if e := s.entry(dst); e != nil {
		return s.engine.Check(&e.policy, &conn)
	}
	w := l4.Workload{Namespace: dst.GetNamespace(), Policies: dst.GetAuthorizationPolicies()}
	return s.engine.Check(&w, &conn)
}

// FieldError is a problem with one field of one resource.
type FieldError struct {
	File   string // empty when not from a file
	Path   string // "workloads[2].addresses[0]"
	Reason string
}

func (e *FieldError) Error() string {
	if e.File == "" {
		return e.Path + ": " + e.Reason
	}
	if e.Path == "" {
		return e.File + ": " + e.Reason
	}
	return e.File + ": " + e.Path + ": " + e.Reason
}
