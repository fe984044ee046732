package model

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/xdsserver/kubeobj"
)

// Labels and values the egress model reads, as Istio spells them.
const (
	// LabelEnableAutoallocateIP opts a ServiceEntry out of IP auto-allocation ("false").
	LabelEnableAutoallocateIP = "networking.istio.io/enable-autoallocate-ip"

	LocationExternal = "MESH_EXTERNAL"
	LocationInternal = "MESH_INTERNAL"

	ResolutionNone          = "NONE"
	ResolutionStatic        = "STATIC"
	ResolutionDNS           = "DNS"
	ResolutionDNSRoundRobin = "DNS_ROUND_ROBIN"

	// Kinds of Workload besides pods.
	KindWorkloadEntry = "WorkloadEntry"
	KindServiceEntry  = "ServiceEntry"
)

// The ranges istiod's IP auto-allocation takes ServiceEntry VIPs from (PILOT_IP_AUTOALLOCATE_
// IPV4_PREFIX and _IPV6_PREFIX, pilot/pkg/features/pilot.go): reserved ranges no pod reaches
// except through the ztunnel that knows them.
var (
	AutoallocateIPv4 = netip.MustParsePrefix("240.240.0.0/16")
	AutoallocateIPv6 = netip.MustParsePrefix("2001:2::/48")
)

// ServiceEntry is an Istio ServiceEntry: hosts the mesh may reach (outside it, or inside it
// without Kubernetes Services), with their addresses, ports and endpoints. Ztunnels see one
// Service per host (Services) and its endpoints as workloads (Endpoints), as istiod sends them.
type ServiceEntry struct {
	Namespace       string
	Name            string
	Labels          map[string]string
	Annotations     map[string]string
	Hosts           []string
	Addresses       []netip.Prefix // spec.addresses; a single IP is a /32 or /128
	Ports           []ServicePort  // Transport TCP (UDP for protocol UDP), AppProtocol the spec's protocol
	Location        string         // MESH_EXTERNAL or MESH_INTERNAL
	Resolution      string         // NONE, STATIC, DNS or DNS_ROUND_ROBIN
	Selector        map[string]string
	ExportTo        []string
	SubjectAltNames []string
	Waypoint        *Waypoint   // istio.io/use-waypoint (service traffic)
	Services        []*Service  // one per host, Entry pointing back here
	Endpoints       []*Workload // spec.endpoints, or each host as a hostname workload (DNS without endpoints)
	Origin          policies.Origin
	endpoints       []*networking.WorkloadEntry
}

// Key is "namespace/name".
func (s *ServiceEntry) Key() string { return s.Namespace + "/" + s.Name }

// External reports whether the hosts are outside the mesh (location MESH_EXTERNAL, the default).
func (s *ServiceEntry) External() bool { return s.Location != LocationInternal }

// buildEgress reads the ServiceEntries and WorkloadEntries after the Services, pods and
// waypoints: each valid ServiceEntry becomes one Service per host (with its addresses, or
// auto-allocated VIPs) and its endpoints workloads; each WorkloadEntry a workload. Pods and
// WorkloadEntries a ServiceEntry's workloadSelector matches are its endpoints.
func (b *builder) buildEgress(in *kubeobj.Set) {
	ses := inNamespace(in.ServiceEntries, func(o *kubeobj.ServiceEntry) *kubeobj.ObjectMeta { return &o.Metadata })
	ses = dedupe(b, "ServiceEntry", ses, func(o *kubeobj.ServiceEntry) (string, policies.Origin) { return o.Metadata.Key(), o.Origin })
	slices.SortStableFunc(ses, func(x, y *kubeobj.ServiceEntry) int {
		return compareKey(x.Metadata.Namespace, x.Metadata.Name, y.Metadata.Namespace, y.Metadata.Name)
	})
	for _, o := range ses {
		if se := b.convertServiceEntry(o); se != nil {
			b.m.ServiceEntries = append(b.m.ServiceEntries, se)
		}
	}
	b.dedupeHosts()
	b.allocateVIPs(ses)
	b.claimVIPs()
	wes := inNamespace(in.WorkloadEntries, func(o *kubeobj.WorkloadEntry) *kubeobj.ObjectMeta { return &o.Metadata })
	wes = dedupe(b, "WorkloadEntry", wes, func(o *kubeobj.WorkloadEntry) (string, policies.Origin) { return o.Metadata.Key(), o.Origin })
	for _, o := range wes {
		if w := b.convertWorkloadEntry(o); w != nil {
			b.m.EntryWorkloads = append(b.m.EntryWorkloads, w)
		}
	}
	for _, se := range b.m.ServiceEntries {
		se.Endpoints = b.entryEndpoints(se)
		b.m.EntryWorkloads = append(b.m.EntryWorkloads, se.Endpoints...)
	}
	b.selectEntries()
	b.m.EntryWorkloads = slices.DeleteFunc(b.m.EntryWorkloads, func(w *Workload) bool {
		for _, ip := range w.IPs {
			if owner, taken := b.addrs[ip]; taken {
				b.warn(w.Origin, w.Kind, w.Key(), "", "%s is already the address of %s; workload %s is left out (a ztunnel finds one workload per address)", ip, owner, w.UID)
				return true
			}
		}
		for _, ip := range w.IPs {
			b.addrs[ip] = w.Kind + " " + w.UID
		}
		return false
	})
	slices.SortFunc(b.m.EntryWorkloads, func(x, y *Workload) int { return cmp.Compare(x.UID, y.UID) })
}

// convertServiceEntry validates a ServiceEntry as Istio's ValidateServiceEntry does and reads
// it; it reports problems and returns nil for one left out.
func (b *builder) convertServiceEntry(o *kubeobj.ServiceEntry) *ServiceEntry {
	meta, spec := o.Metadata, o.Spec
	p := &problems{origin: o.Origin, kind: "ServiceEntry", object: meta.Key()}
	p.name(meta.Namespace, meta.Name, true)
	se := &ServiceEntry{
		Namespace: meta.Namespace, Name: meta.Name, Labels: meta.Labels, Annotations: meta.Annotations,
		Location: cmp.Or(spec.GetLocation().String(), LocationExternal), Resolution: spec.GetResolution().String(),
		Selector: spec.GetWorkloadSelector().GetLabels(), ExportTo: spec.GetExportTo(), SubjectAltNames: spec.GetSubjectAltNames(),
		Origin: o.Origin, endpoints: spec.GetEndpoints(),
	}
	if spec.GetWorkloadSelector() != nil && len(spec.GetEndpoints()) > 0 {
		p.add("spec.workloadSelector", "only one of workloadSelector and endpoints may be set")
	}
	if len(spec.GetHosts()) == 0 {
		p.add("spec.hosts", "at least one host is required")
	}
	seenHost := map[string]bool{}
	for i, h := range spec.GetHosts() {
		f := fmt.Sprintf("spec.hosts[%d]", i)
		switch {
		case h == "*":
			p.add(f, "%q: a ServiceEntry cannot match every host", h)
		case !isWildcardDomain(h):
			p.add(f, "%q is not a domain name (a wildcard may only be the first label, *.example.com)", h)
		case seenHost[h]:
			p.add(f, "%q is listed twice", h)
		case se.Resolution != ResolutionNone && strings.HasPrefix(h, "*") && len(spec.GetEndpoints()) == 0 && se.Resolution != ResolutionStatic:
			p.add(f, "%q: a wildcard host needs endpoints, or resolution NONE, with resolution %s", h, se.Resolution)
		}
		seenHost[h] = true
		se.Hosts = append(se.Hosts, strings.ToLower(h))
	}
	cidr := false
	for i, a := range spec.GetAddresses() {
		pfx, err := parseCIDROrIP(a)
		if err != nil {
			p.add(fmt.Sprintf("spec.addresses[%d]", i), "%q is not an IP address or CIDR", a)
			continue
		}
		cidr = cidr || !pfx.IsSingleIP()
		se.Addresses = append(se.Addresses, pfx)
	}
	if cidr && se.Resolution != ResolutionNone && se.Resolution != ResolutionStatic {
		p.add("spec.addresses", "CIDR addresses are allowed only with resolution NONE or STATIC (not %s)", se.Resolution)
	}
	names := map[string]bool{}
	numbers := map[uint32]bool{}
	for i, port := range spec.GetPorts() {
		f := fmt.Sprintf("spec.ports[%d]", i)
		if port == nil {
			p.add(f, "must not be null")
			continue
		}
		if !validPort(port.GetNumber()) {
			p.add(f+".number", "%d is not a port number (1-65535)", port.GetNumber())
		}
		if port.GetTargetPort() != 0 && !validPort(port.GetTargetPort()) {
			p.add(f+".targetPort", "%d is not a port number (1-65535)", port.GetTargetPort())
		}
		if port.GetName() == "" || !isDNSLabel(port.GetName()) {
			p.add(f+".name", "%q is not a port name (lowercase letters, digits and '-')", port.GetName())
		} else if names[port.GetName()] {
			p.add(f+".name", "%q is used twice", port.GetName())
		}
		names[port.GetName()] = true
		if numbers[port.GetNumber()] {
			p.add(f+".number", "port %d is used twice", port.GetNumber())
		}
		numbers[port.GetNumber()] = true
		proto := strings.ToUpper(port.GetProtocol())
		// istiod sends target_port = number when the port has none.
		sp := ServicePort{Name: port.GetName(), Port: port.GetNumber(), TargetPort: cmp.Or(port.GetTargetPort(), port.GetNumber()), Transport: "TCP", AppProtocol: strings.ToLower(proto)}
		switch {
		case proto == "UDP":
			sp.Transport, sp.AppProtocol = "UDP", ""
		case proto != "" && protocolNames[strings.ToLower(proto)] == "":
			p.add(f+".protocol", "%q is not a protocol Istio knows (HTTP, HTTPS, HTTP2, GRPC, TLS, TCP, MONGO, REDIS, MYSQL, UDP)", port.GetProtocol())
		}
		se.Ports = append(se.Ports, sp)
	}
	// As Istio: with several hosts, a proxy tells them apart by the HTTP authority or the TLS
	// SNI only; plain TCP cannot, unless resolution NONE ignores the hosts.
	if se.Resolution != ResolutionNone && len(se.Hosts) > 1 {
		for i, sp := range se.Ports {
			if proto := sp.Protocol(); !proto.IsHTTP() && proto != ProtocolHTTPProxy && proto != ProtocolHTTPS && proto != ProtocolTLS {
				p.add(fmt.Sprintf("spec.ports[%d].protocol", i), "%q: several hosts need HTTP or TLS ports (plain TCP cannot tell the hosts apart), unless resolution is NONE", spec.GetPorts()[i].GetProtocol())
			}
		}
	}
	switch se.Resolution {
	case ResolutionNone:
		if len(spec.GetEndpoints()) > 0 {
			p.add("spec.endpoints", "resolution NONE takes no endpoints (traffic goes to the address the client used)")
		}
	case ResolutionStatic, ResolutionDNS, ResolutionDNSRoundRobin:
		if se.Resolution == ResolutionDNSRoundRobin && len(spec.GetEndpoints()) > 1 {
			p.add("spec.endpoints", "resolution DNS_ROUND_ROBIN takes at most one endpoint")
		}
		for i, ep := range spec.GetEndpoints() {
			f := fmt.Sprintf("spec.endpoints[%d]", i)
			if ep == nil {
				p.add(f, "must not be null")
				continue
			}
			_, ipErr := netip.ParseAddr(ep.GetAddress())
			switch {
			case ep.GetAddress() == "":
				p.add(f+".address", "must not be empty")
			case se.Resolution == ResolutionStatic && ipErr != nil:
				p.add(f+".address", "%q is not an IP address (resolution STATIC)", ep.GetAddress())
			case ipErr != nil && !isDNSSubdomain(strings.ToLower(ep.GetAddress())):
				p.add(f+".address", "%q is not an IP address or a DNS name", ep.GetAddress())
			}
			for _, name := range slices.Sorted(maps.Keys(ep.GetPorts())) {
				if !names[name] {
					p.add(f+".ports["+name+"]", "no port of the ServiceEntry is named %q", name)
				}
				if !validPort(ep.GetPorts()[name]) {
					p.add(f+".ports["+name+"]", "%d is not a port number (1-65535)", ep.GetPorts()[name])
				}
			}
			if ep.GetServiceAccount() != "" && !isDNSSubdomain(ep.GetServiceAccount()) {
				p.add(f+".serviceAccount", "%q is not a valid name", ep.GetServiceAccount())
			}
		}
	case "DYNAMIC_DNS":
		p.add("spec.resolution", "DYNAMIC_DNS needs an egress waypoint with dynamic forward proxying, which goambient does not have")
	default:
		p.add("spec.resolution", "%q is not NONE, STATIC, DNS or DNS_ROUND_ROBIN", se.Resolution)
	}
	for i, ns := range se.ExportTo {
		if ns != "*" && ns != "." && ns != "~" && !isDNSLabel(ns) {
			p.add(fmt.Sprintf("spec.exportTo[%d]", i), "%q is not a namespace, '.', '~' or '*'", ns)
		}
	}
	if len(p.errs) > 0 {
		b.m.Errors = append(b.m.Errors, p.errs...)
		return nil
	}
	if len(se.Ports) == 0 {
		b.warn(o.Origin, "ServiceEntry", meta.Key(), "spec.ports", "no ports: ztunnels pass every connection to its addresses through unchanged")
	}
	if w, direct, problem := b.useWaypoint(se.Labels, se.Namespace); problem != "" {
		if direct {
			b.warn(o.Origin, "ServiceEntry", meta.Key(), "metadata.labels["+LabelUseWaypoint+"]", "%s; the ServiceEntry does not use a waypoint", problem)
		}
	} else if w != nil && !w.ForServices() {
		b.warn(o.Origin, "ServiceEntry", meta.Key(), "metadata.labels["+LabelUseWaypoint+"]", "waypoint %s does not accept service traffic (%s: %s)", w.Key(), LabelWaypointFor, w.TrafficType)
	} else {
		se.Waypoint = w
	}
	for _, h := range se.Hosts {
		s := &Service{
			Namespace: se.Namespace, Name: se.Name, Hostname: h, Labels: se.Labels, Annotations: se.Annotations,
			Selector: se.Selector, Ports: se.Ports, Waypoint: se.Waypoint, Entry: se, Origin: se.Origin,
		}
		for _, a := range se.Addresses {
			if a.IsSingleIP() {
				s.VIPs = append(s.VIPs, a.Addr())
			} else {
				s.CIDRs = append(s.CIDRs, a)
			}
		}
		if se.Resolution == ResolutionNone {
			s.LoadBalancing = LoadBalancing{Mode: LBPassthrough, AllowAll: true}
		}
		se.Services = append(se.Services, s)
	}
	return se
}

// autoallocates is istiod's ShouldV2AutoAllocateIP: not for resolution NONE, not when the
// label opts out, not when the ServiceEntry has addresses; wildcard hosts get none.
func (se *ServiceEntry) autoallocates() bool {
	return se.Resolution != ResolutionNone && !strings.EqualFold(se.Labels[LabelEnableAutoallocateIP], "false") && len(se.Addresses) == 0
}

// allocateVIPs gives each host of a ServiceEntry without addresses an IPv4 and an IPv6 VIP from
// Istio's auto-allocation ranges, as istiod's IP allocator does. Addresses the ServiceEntry's
// status already holds (written by istiod in a cluster) are kept; the others are allocated in
// order of namespace, name and host, skipping every address in use, so the same input gets
// the same VIPs. Unlike istiod, which remembers an allocation in the status, a VIP here can
// move when a ServiceEntry sorted before it is added.
func (b *builder) allocateVIPs(in []*kubeobj.ServiceEntry) {
	status := map[string]map[string][]netip.Addr{}
	used := map[netip.Addr]bool{}
	for _, o := range in {
		for _, a := range o.Status {
			ip, err := netip.ParseAddr(a.Value)
			if err != nil {
				continue // istiod skips an unreadable status address too
			}
			key := o.Metadata.Key()
			if status[key] == nil {
				status[key] = map[string][]netip.Addr{}
			}
			status[key][a.Host] = append(status[key][a.Host], ip.Unmap())
			used[ip.Unmap()] = true
		}
	}
	next := map[bool]netip.Addr{true: AutoallocateIPv4.Addr().Next(), false: AutoallocateIPv6.Addr().Next()}
	take := func(v4 bool) (netip.Addr, bool) {
		pfx := AutoallocateIPv6
		if v4 {
			pfx = AutoallocateIPv4
		}
		for a := next[v4]; pfx.Contains(a); a = a.Next() {
			if !used[a] {
				used[a], next[v4] = true, a.Next()
				return a, true
			}
		}
		return netip.Addr{}, false
	}
	for _, se := range b.m.ServiceEntries {
		if !se.autoallocates() {
			continue
		}
		for _, s := range se.Services {
			if strings.HasPrefix(s.Hostname, "*") {
				continue
			}
			if got := status[se.Key()][s.Hostname]; len(got) > 0 {
				s.VIPs = got
				continue
			}
			for _, v4 := range []bool{true, false} {
				if a, ok := take(v4); ok {
					s.VIPs = append(s.VIPs, a)
				} else {
					b.warn(se.Origin, "ServiceEntry", se.Key(), "status.addresses", "the auto-allocation range is exhausted; host %s has no VIP", s.Hostname)
				}
			}
		}
	}
}

// dedupeHosts keeps one Service per "namespace/hostname", the workload API's key: a
// Kubernetes Service's, else the first ServiceEntry's (by name) — istiod likewise prunes the
// duplicates, keeping the oldest. The others are warned about and left out.
func (b *builder) dedupeHosts() {
	owner := map[string]string{}
	for _, s := range b.services {
		owner[s.Namespace+"/"+s.Hostname] = "Service " + s.Key()
	}
	for _, se := range b.m.ServiceEntries {
		se.Services = slices.DeleteFunc(se.Services, func(s *Service) bool {
			key := s.Namespace + "/" + s.Hostname
			if prev, taken := owner[key]; taken {
				b.warn(se.Origin, "ServiceEntry", se.Key(), "spec.hosts", "host %s is already %s's in namespace %s: left out here", s.Hostname, prev, s.Namespace)
				return true
			}
			owner[key] = "ServiceEntry " + se.Key()
			return false
		})
	}
}

// claimVIPs keeps each VIP for one Service, as a ztunnel routes an address to one service:
// a ServiceEntry host whose address a pod, a Service or an earlier host (by namespace, name and
// host order) already has loses it, with a warning (Istio's validation warns against several
// hosts sharing an address on a TCP port).
func (b *builder) claimVIPs() {
	for _, se := range b.m.ServiceEntries {
		for _, s := range se.Services {
			s.VIPs = slices.DeleteFunc(slices.Clone(s.VIPs), func(ip netip.Addr) bool {
				if owner, taken := b.addrs[ip]; taken {
					b.warn(se.Origin, "ServiceEntry", se.Key(), "spec.addresses", "%s is already the address of %s; host %s does not get it", ip, owner, s.Hostname)
					return true
				}
				b.addrs[ip] = "ServiceEntry " + se.Key() + " host " + s.Hostname
				return false
			})
		}
	}
}

// entryEndpoints are a ServiceEntry's workloads, as istiod's serviceEntryWorkloadBuilder makes
// them: one per spec.endpoints item, or (resolution DNS or DNS_ROUND_ROBIN without endpoints
// and without workloadSelector) one hostname workload per host, for the ztunnel to resolve.
func (b *builder) entryEndpoints(se *ServiceEntry) []*Workload {
	var out []*Workload
	spec := se.endpointSpecs()
	for i, ep := range spec {
		services := se.Services
		if ep.implicit {
			services = se.Services[i : i+1]
		}
		w := &Workload{
			Kind: KindServiceEntry, UID: b.cfg.ClusterID + "/networking.istio.io/ServiceEntry/" + se.Namespace + "/" + se.Name + "/" + ep.Address,
			Namespace: se.Namespace, Name: se.Name, ServiceAccount: ep.ServiceAccount, Labels: se.Labels, Annotations: se.Annotations,
			TrustDomain: b.cfg.TrustDomain, Healthy: true, WorkloadName: se.Name, Network: ep.Network, Weight: ep.Weight,
			Locality: parseLocality(ep.Locality), Origin: se.Origin,
		}
		w.CanonicalName, w.CanonicalRevision = canonicalService(se.Labels, se.Name)
		if ip, err := netip.ParseAddr(ep.Address); err == nil {
			w.IPs = []netip.Addr{ip.Unmap()}
		} else {
			w.Hostname = strings.ToLower(ep.Address)
		}
		if !ep.implicit {
			w.Waypoint = b.entryWaypoint(ep.Labels, se.Namespace)
		}
		b.tunnel(w, se.Labels, se.Annotations)
		for _, s := range services {
			w.Services = append(w.Services, WorkloadService{Service: s, Ports: entryPorts(s, ep.Ports)})
		}
		out = append(out, w)
	}
	return out
}

type endpointSpec struct {
	*networking.WorkloadEntry
	implicit bool
}

// endpointSpecs are the spec.endpoints items, or the implicit hostname endpoints (one per
// host, in order) of resolution DNS and DNS_ROUND_ROBIN without endpoints or workloadSelector.
func (se *ServiceEntry) endpointSpecs() []endpointSpec {
	var out []endpointSpec
	for _, ep := range se.endpoints {
		out = append(out, endpointSpec{WorkloadEntry: ep})
	}
	if len(out) == 0 && len(se.Selector) == 0 && (se.Resolution == ResolutionDNS || se.Resolution == ResolutionDNSRoundRobin) {
		for _, s := range se.Services {
			out = append(out, endpointSpec{WorkloadEntry: &networking.WorkloadEntry{Address: s.Hostname}, implicit: true})
		}
	}
	return out
}

// convertWorkloadEntry reads a WorkloadEntry as istiod's workloadEntryWorkloadBuilder does (its
// spec.labels merged over metadata.labels); it reports problems and returns nil for one left out.
func (b *builder) convertWorkloadEntry(o *kubeobj.WorkloadEntry) *Workload {
	meta, spec := o.Metadata, o.Spec
	p := &problems{origin: o.Origin, kind: "WorkloadEntry", object: meta.Key()}
	p.name(meta.Namespace, meta.Name, true)
	labels := maps.Clone(meta.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	maps.Copy(labels, spec.GetLabels())
	w := &Workload{
		Kind: KindWorkloadEntry, UID: b.cfg.ClusterID + "/networking.istio.io/WorkloadEntry/" + meta.Namespace + "/" + meta.Name,
		Namespace: meta.Namespace, Name: meta.Name, ServiceAccount: spec.GetServiceAccount(), Labels: labels, Annotations: meta.Annotations,
		TrustDomain: b.cfg.TrustDomain, Healthy: true, Network: spec.GetNetwork(), Weight: spec.GetWeight(),
		Locality: parseLocality(spec.GetLocality()), ContainerPorts: spec.GetPorts(), Origin: o.Origin,
	}
	switch ip, err := netip.ParseAddr(spec.GetAddress()); {
	case spec.GetAddress() == "":
		p.add("spec.address", "must not be empty (an IP address or a DNS name)")
	case err == nil && (ip.IsUnspecified() || !ip.IsValid()):
		p.add("spec.address", "%q is not a usable address", spec.GetAddress())
	case err == nil:
		w.IPs = []netip.Addr{ip.Unmap()}
	case !isDNSSubdomain(strings.ToLower(spec.GetAddress())):
		p.add("spec.address", "%q is not an IP address or a DNS name", spec.GetAddress())
	default:
		w.Hostname = strings.ToLower(spec.GetAddress())
	}
	if w.ServiceAccount != "" && !isDNSSubdomain(w.ServiceAccount) {
		p.add("spec.serviceAccount", "%q is not a valid name", w.ServiceAccount)
	}
	for _, name := range slices.Sorted(maps.Keys(spec.GetPorts())) {
		if !validPort(spec.GetPorts()[name]) {
			p.add("spec.ports["+name+"]", "%d is not a port number (1-65535)", spec.GetPorts()[name])
		}
	}
	if len(p.errs) > 0 {
		b.m.Errors = append(b.m.Errors, p.errs...)
		return nil
	}
	w.WorkloadName = meta.Name
	w.CanonicalName, w.CanonicalRevision = canonicalService(labels, w.WorkloadName)
	w.Waypoint = b.entryWaypoint(labels, meta.Namespace)
	b.tunnel(w, labels, meta.Annotations)
	return w
}

// tunnel is istiod's setTunnelProtocol for workloads that are not pods: HBONE when the
// annotation says a ztunnel captures the workload, or natively when it speaks HBONE itself.
func (b *builder) tunnel(w *Workload, labels, annotations map[string]string) {
	if annotations[AnnotationRedirection] == RedirectionEnabled {
		w.Ambient = true
	}
	if labels[LabelTunnel] == TunnelHTTP {
		w.Ambient, w.NativeTunnel = true, true
	}
}

// entryWaypoint is the workload waypoint of a WorkloadEntry or endpoint (istiod's
// computeWaypoint); one that cannot be used is none.
func (b *builder) entryWaypoint(labels map[string]string, ns string) *Waypoint {
	w, _, problem := b.useWaypoint(labels, ns)
	if problem != "" || w == nil || !w.ForWorkloads() {
		return nil
	}
	return w
}

// selectEntries makes the pods and WorkloadEntries a ServiceEntry's workloadSelector matches
// (in its namespace) its endpoints, with the ports resolved as istiod's constructServices does
// for a ServiceEntry: a port whose name the workload declares goes to that port, else to the
// targetPort, else to the service port.
func (b *builder) selectEntries() {
	for _, se := range b.m.ServiceEntries {
		if len(se.Selector) == 0 {
			continue
		}
		for _, w := range b.workloads {
			if w.Namespace == se.Namespace && w.WaypointOf == "" && selects(se.Selector, w.Labels, false) {
				for _, s := range se.Services {
					w.Services = append(w.Services, WorkloadService{Service: s, Ports: entryPorts(s, w.ContainerPorts)})
				}
			}
		}
		for _, w := range b.m.EntryWorkloads {
			if w.Kind == KindWorkloadEntry && w.Namespace == se.Namespace && selects(se.Selector, w.Labels, false) {
				for _, s := range se.Services {
					w.Services = append(w.Services, WorkloadService{Service: s, Ports: entryPorts(s, w.ContainerPorts)})
				}
			}
		}
	}
}

// entryPorts maps a ServiceEntry Service's ports for one endpoint whose named ports are named.
func entryPorts(s *Service, named map[string]uint32) []PortMapping {
	out := make([]PortMapping, 0, len(s.Ports))
	for _, p := range s.Ports {
		target := cmp.Or(p.TargetPort, p.Port)
		if t, ok := named[p.Name]; ok {
			target = t
		}
		out = append(out, PortMapping{ServicePort: p.Port, TargetPort: target})
	}
	return out
}

// parseLocality reads Istio's "region/zone/subzone".
func parseLocality(s string) Locality {
	parts := strings.SplitN(s, "/", 3)
	var l Locality
	if len(parts) > 0 {
		l.Region = parts[0]
	}
	if len(parts) > 1 {
		l.Zone = parts[1]
	}
	if len(parts) > 2 {
		l.Subzone = parts[2]
	}
	return l
}

// parseCIDROrIP reads an IP (a /32 or /128) or a CIDR, masked.
func parseCIDROrIP(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	ip = ip.Unmap()
	return netip.PrefixFrom(ip, ip.BitLen()), nil
}

// isWildcardDomain is Istio's ValidateWildcardDomain: a DNS name whose first label may be "*"
// (or start with "*"), up to 255 characters.
func isWildcardDomain(h string) bool {
	h = strings.ToLower(h)
	if h == "" || len(h) > 255 {
		return false
	}
	first, rest, _ := strings.Cut(h, ".")
	if strings.HasPrefix(first, "*") {
		first = strings.TrimPrefix(first, "*")
		if first != "" && !isDNSLabel(first) {
			return false
		}
		return rest == "" || isDNSSubdomain(rest)
	}
	return isDNSSubdomain(h)
}
