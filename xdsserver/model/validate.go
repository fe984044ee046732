package model

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"github.com/goambient/goambient/policies"
)

var (
	dnsLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dns1035Label = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)
	portName     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	trustDomain  = regexp.MustCompile(`^[a-z0-9._-]+$`)
)

func isDNSLabel(s string) bool { return len(s) <= 63 && dnsLabel.MatchString(s) }

func isDNSSubdomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !isDNSLabel(l) {
			return false
		}
	}
	return true
}

func isTrustDomain(s string) bool { return s != "" && len(s) <= 255 && trustDomain.MatchString(s) }

// isPortName is Kubernetes' IANA_SVC_NAME: up to 15 characters, at least one letter.
func isPortName(s string) bool {
	return len(s) <= 15 && portName.MatchString(s) && strings.ContainsAny(s, "abcdefghijklmnopqrstuvwxyz") && !strings.Contains(s, "--")
}

func validPort(p uint32) bool { return p >= 1 && p <= 65535 }

// problems collects field errors for one object.
type problems struct {
	origin       policies.Origin
	kind, object string
	errs         []error
}

func (p *problems) add(field, format string, args ...any) {
	p.errs = append(p.errs, &policies.Error{Origin: p.origin, Kind: p.kind, Object: p.object, Field: field, Reason: fmt.Sprintf(format, args...)})
}

func (p *problems) err() error { return errors.Join(p.errs...) }

func (p *problems) name(ns, name string, subdomain bool) {
	if ns != "" && !isDNSLabel(ns) {
		p.add("metadata.namespace", "%q is not a valid namespace name", ns)
	}
	ok := isDNSLabel(name)
	if subdomain {
		ok = isDNSSubdomain(name)
	}
	if !ok {
		p.add("metadata.name", "%q is not a valid name (lowercase letters, digits and '-')", name)
	}
}

// Validate checks the namespace's name.
func (n *Namespace) Validate() error {
	p := &problems{origin: n.Origin, kind: "Namespace", object: n.Name}
	p.name("", n.Name, false)
	return p.err()
}

// Validate checks the service account's names.
func (s *ServiceAccount) Validate() error {
	p := &problems{origin: s.Origin, kind: "ServiceAccount", object: s.Key()}
	p.name(s.Namespace, s.Name, true)
	return p.err()
}

// Validate checks the Service's names, addresses and ports.
func (s *Service) Validate() error {
	p := &problems{origin: s.Origin, kind: "Service", object: s.Key()}
	if s.Namespace == "" {
		p.add("metadata.namespace", "must not be empty")
	}
	if !isDNSLabel(s.Namespace) || !dns1035Label.MatchString(s.Name) || len(s.Name) > 63 {
		p.name(s.Namespace, s.Name, false)
		if isDNSLabel(s.Name) {
			p.add("metadata.name", "%q must start with a letter", s.Name)
		}
	}
	for _, ip := range s.VIPs {
		if !ip.IsValid() || ip.IsUnspecified() {
			p.add("spec.clusterIP", "%q is not a usable address", ip)
		}
	}
	if s.Headless && len(s.VIPs) > 0 {
		p.add("spec.clusterIP", "a headless Service has no VIP")
	}
	names := map[string]bool{}
	seen := map[string]bool{}
	for i, port := range s.Ports {
		f := fmt.Sprintf("spec.ports[%d]", i)
		if !validPort(port.Port) {
			p.add(f+".port", "%d is not a port number (1-65535)", port.Port)
		}
		switch {
		case port.TargetPortName != "" && port.TargetPort != 0:
			p.add(f+".targetPort", "is both a number and a name")
		case port.TargetPortName != "" && !isPortName(port.TargetPortName):
			p.add(f+".targetPort", "%q is not a port name (up to 15 lowercase letters, digits and '-')", port.TargetPortName)
		case port.TargetPortName == "" && !validPort(port.TargetPort):
			p.add(f+".targetPort", "%d is not a port number (1-65535)", port.TargetPort)
		}
		switch port.Transport {
		case "TCP", "UDP", "SCTP":
		default:
			p.add(f+".protocol", "%q is not TCP, UDP or SCTP", port.Transport)
		}
		if port.Name == "" && len(s.Ports) > 1 {
			p.add(f+".name", "must be set when a Service has several ports")
		}
		if port.Name != "" && !isDNSLabel(port.Name) {
			p.add(f+".name", "%q is not a valid port name", port.Name)
		}
		if names[port.Name] && port.Name != "" {
			p.add(f+".name", "%q is used twice", port.Name)
		}
		names[port.Name] = true
		key := fmt.Sprint(port.Port, "/", port.Transport)
		if seen[key] {
			p.add(f, "port %s is used twice", key)
		}
		seen[key] = true
	}
	return p.err()
}

// Validate checks the workload's identity, addresses and references.
func (w *Workload) Validate() error {
	p := &problems{origin: w.Origin, kind: "Pod", object: w.Key()}
	if w.Namespace == "" {
		p.add("metadata.namespace", "must not be empty")
	}
	p.name(w.Namespace, w.Name, true)
	if !isDNSSubdomain(w.ServiceAccount) {
		p.add("spec.serviceAccountName", "%q is not a valid name", w.ServiceAccount)
	}
	if !strings.HasSuffix(w.UID, "//Pod/"+w.Namespace+"/"+w.Name) || strings.HasPrefix(w.UID, "//") {
		p.add("metadata.uid", "%q is not <cluster>//Pod/%s/%s", w.UID, w.Namespace, w.Name)
	}
	if len(w.IPs) == 0 {
		p.add("status.podIP", "no address")
	}
	for _, ip := range w.IPs {
		if !ip.IsValid() || ip.IsUnspecified() {
			p.add("status.podIP", "%q is not a usable address", ip)
		}
	}
	if !isTrustDomain(w.TrustDomain) {
		p.add("trustDomain", "%q is not a valid trust domain", w.TrustDomain)
	}
	if w.Node != "" && !isDNSSubdomain(w.Node) {
		p.add("spec.nodeName", "%q is not a valid node name", w.Node)
	}
	for _, s := range w.Services {
		if s.Service == nil || s.Service.Namespace != w.Namespace {
			p.add("services", "a Service must be in the workload's namespace")
		}
	}
	if w.Waypoint != nil && !w.Waypoint.ForWorkloads() {
		p.add("metadata.labels["+LabelUseWaypoint+"]", "waypoint %s does not accept workload traffic", w.Waypoint.Key())
	}
	if w.Waypoint != nil && w.WaypointOf != "" {
		p.add("metadata.labels["+LabelUseWaypoint+"]", "a waypoint's own pod cannot use a waypoint")
	}
	return p.err()
}

// Validate checks the waypoint's traffic type, listeners and address.
func (w *Waypoint) Validate() error {
	p := &problems{origin: w.Origin, kind: "Gateway", object: w.Key()}
	p.name(w.Namespace, w.Name, true)
	if w.Class == "" {
		p.add("spec.gatewayClassName", "must not be empty")
	}
	switch w.TrafficType {
	case TrafficService, TrafficWorkload, TrafficAll, TrafficNone:
	default:
		p.add("metadata.labels["+LabelWaypointFor+"]", "%q is not service, workload, all or none", w.TrafficType)
	}
	if len(w.Listeners) == 0 {
		p.add("spec.listeners", "a Gateway needs at least one listener")
	}
	names := map[string]bool{}
	for i, l := range w.Listeners {
		if !validPort(l.Port) {
			p.add(fmt.Sprintf("spec.listeners[%d].port", i), "%d is not a port number (1-65535)", l.Port)
		}
		if l.Name == "" || names[l.Name] {
			p.add(fmt.Sprintf("spec.listeners[%d].name", i), "must be set and unique")
		}
		names[l.Name] = true
	}
	switch w.AllowedFrom {
	case "Same", "All", "Selector":
	default:
		p.add("spec.listeners.allowedRoutes.namespaces.from", "%q is not Same, All or Selector", w.AllowedFrom)
	}
	if w.Address.IsValid() && w.Address.IsUnspecified() {
		p.add("status.addresses", "%q is not a usable address", w.Address)
	}
	return p.err()
}

// Validate checks every object of the mesh and the references between them.
func (m *Mesh) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, n := range m.Namespaces {
		add(n.Validate())
	}
	for _, s := range m.ServiceAccounts {
		add(s.Validate())
	}
	ips := map[netip.Addr]string{}
	claim := func(ip netip.Addr, owner string) {
		if prev, ok := ips[ip]; ok {
			errs = append(errs, fmt.Errorf("%s and %s share the address %s", prev, owner, ip))
		}
		ips[ip] = owner
	}
	for _, s := range m.Services {
		add(s.Validate())
		if s.Waypoint != nil && m.Waypoint(s.Waypoint.Namespace, s.Waypoint.Name) != s.Waypoint {
			errs = append(errs, fmt.Errorf("Service %s: waypoint %s is not in the mesh", s.Key(), s.Waypoint.Key()))
		}
		for _, ip := range s.VIPs {
			claim(ip, "Service "+s.Key())
		}
	}
	for _, w := range m.Workloads {
		add(w.Validate())
		if w.Waypoint != nil && m.Waypoint(w.Waypoint.Namespace, w.Waypoint.Name) != w.Waypoint {
			errs = append(errs, fmt.Errorf("Pod %s: waypoint %s is not in the mesh", w.Key(), w.Waypoint.Key()))
		}
		for _, s := range w.Services {
			if s.Service != nil && s.Service.Entry == nil && m.Service(s.Service.Namespace, s.Service.Name) != s.Service {
				errs = append(errs, fmt.Errorf("Pod %s: Service %s is not in the mesh", w.Key(), s.Service.Key()))
			}
		}
		if !w.HostNetwork {
			for _, ip := range w.IPs {
				claim(ip, "Pod "+w.Key())
			}
		}
	}
	for _, w := range m.Waypoints {
		add(w.Validate())
		if w.Service != nil && m.Service(w.Service.Namespace, w.Service.Name) != w.Service {
			errs = append(errs, fmt.Errorf("Gateway %s: its Service %s is not in the mesh", w.Key(), w.Service.Key()))
		}
		if !w.Address.IsValid() {
			errs = append(errs, fmt.Errorf("Gateway %s: a waypoint needs an address", w.Key()))
		}
	}
	return errors.Join(errs...)
}
