package model

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/xdsserver/kubeobj"
)

// Build turns Kubernetes-shaped objects into a Mesh. It fails only on an invalid Config. Each
// object that is invalid, or conflicts with another, is reported in Mesh.Errors and left out;
// the valid rest is kept. Remarks that do not drop an object (an object defined twice, a
// waypoint that cannot be used, a Gateway that is not a waypoint) are in Mesh.Warnings.
// Build does not modify its input, and may run concurrently on the same input; the mesh shares
// label maps with it.
func Build(in *kubeobj.Set, cfg Config) (*Mesh, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if in == nil {
		in = &kubeobj.Set{}
	}
	b := &builder{
		cfg: cfg,
		m: &Mesh{
			ClusterID: cfg.ClusterID, ClusterDomain: cfg.ClusterDomain,
			TrustDomain: cfg.TrustDomain, RootNamespace: cfg.RootNamespace,
			OutboundTrafficPolicy: cfg.OutboundTrafficPolicy,
		},
		namespaces: map[string]*Namespace{},
		classes:    map[string]*kubeobj.GatewayClass{},
		addrs:      map[netip.Addr]string{},
	}
	b.buildNamespaces(in.Namespaces)
	b.namespaceTraffic()
	b.buildNodes(in.Nodes)
	b.buildServiceAccounts(in.ServiceAccounts)
	for _, gc := range dedupe(b, "GatewayClass", in.GatewayClasses, func(o *kubeobj.GatewayClass) (string, policies.Origin) {
		return o.Metadata.Name, o.Origin
	}) {
		b.classes[gc.Metadata.Name] = gc
	}
	b.buildServices(in.Services)
	b.buildPods(in.Pods)
	gateways := b.buildWaypoints(in.Gateways)
	b.place()
	b.validate()
	b.finishWaypoints(gateways)
	b.placeLocalities()
	b.bindWaypoints()
	b.selectServices(in.EndpointSlices)
	b.buildPolicies(in.Policies)
	b.buildMeshConfig(in.ConfigMaps)
	b.buildEgress(in)
	b.buildRouting(in)
	b.buildIngress(in)
	b.implicitNamespaces()
	return b.finish(), nil
}

type builder struct {
	cfg        Config
	m          *Mesh
	namespaces map[string]*Namespace
	classes    map[string]*kubeobj.GatewayClass
	services   []*Service
	workloads  []*Workload
	waypoints  []*Waypoint
	addrs      map[netip.Addr]string // address → "Kind ns/name" that holds it
}

func (b *builder) fail(origin policies.Origin, kind, object, field, format string, args ...any) {
	b.m.Errors = append(b.m.Errors, &policies.Error{Origin: origin, Kind: kind, Object: object, Field: field, Reason: fmt.Sprintf(format, args...)})
}

func (b *builder) warn(origin policies.Origin, kind, object, field, format string, args ...any) {
	b.m.Warnings = append(b.m.Warnings, &policies.Error{Origin: origin, Kind: kind, Object: object, Field: field, Reason: fmt.Sprintf(format, args...)})
}

// dedupe keeps the last definition of each object (files are read in order, so a later file
// overrides an earlier one, as a later kubectl apply would) and warns about the others.
func dedupe[T any](b *builder, kind string, objs []T, key func(T) (string, policies.Origin)) []T {
	last := map[string]int{}
	for i, o := range objs {
		k, _ := key(o)
		last[k] = i
	}
	var out []T
	for i, o := range objs {
		k, origin := key(o)
		if j := last[k]; j != i {
			_, used := key(objs[j])
			b.warn(origin, kind, k, "", "defined again at %s; that definition is used", used)
			continue
		}
		out = append(out, o)
	}
	return out
}

func orDefault(ns string) string { return cmp.Or(ns, "default") }

// inNamespace returns copies of namespaced objects with the namespace defaulted to "default",
// leaving the input unmodified (a source may build from the same objects again, concurrently).
func inNamespace[T any](objs []*T, meta func(*T) *kubeobj.ObjectMeta) []*T {
	out := make([]*T, 0, len(objs))
	for _, o := range objs {
		c := *o
		m := meta(&c)
		m.Namespace = orDefault(m.Namespace)
		out = append(out, &c)
	}
	return out
}

// buildNamespaces merges the labels and annotations of a Namespace defined several times (a
// scenario often re-declares a namespace to add a label, as handson's k8s-gateway.yaml does).
func (b *builder) buildNamespaces(in []*kubeobj.Namespace) {
	var order []string
	for _, o := range in {
		name := o.Metadata.Name
		n, seen := b.namespaces[name]
		if !seen {
			n = &Namespace{Name: name, Labels: map[string]string{}, Annotations: map[string]string{}, Origin: o.Origin}
			b.namespaces[name] = n
			order = append(order, name)
		}
		for _, m := range []struct {
			field    string
			dst, src map[string]string
		}{{"metadata.labels", n.Labels, o.Metadata.Labels}, {"metadata.annotations", n.Annotations, o.Metadata.Annotations}} {
			for _, k := range slices.Sorted(maps.Keys(m.src)) {
				if old, ok := m.dst[k]; ok && old != m.src[k] {
					b.warn(o.Origin, "Namespace", name, m.field+"["+k+"]", "was %q at %s; %q is used", old, n.Origin, m.src[k])
				}
				m.dst[k] = m.src[k]
			}
		}
	}
	for _, name := range order {
		n := b.namespaces[name]
		n.Ambient = n.Labels[LabelDataplaneMode] == DataplaneModeAmbient
		if err := n.Validate(); err != nil {
			b.m.Errors = append(b.m.Errors, unjoin(err)...)
			delete(b.namespaces, name)
		}
	}
}

// namespace returns a namespace, creating an implicit one (without labels) when the input does
// not define it.
func (b *builder) namespace(name string) *Namespace {
	n := b.namespaces[name]
	if n == nil {
		n = &Namespace{Name: name, Implicit: true}
		b.namespaces[name] = n
	}
	return n
}

func (b *builder) buildServiceAccounts(in []*kubeobj.ServiceAccount) {
	in = inNamespace(in, func(o *kubeobj.ServiceAccount) *kubeobj.ObjectMeta { return &o.Metadata })
	for _, o := range dedupe(b, "ServiceAccount", in, func(o *kubeobj.ServiceAccount) (string, policies.Origin) {
		return o.Metadata.Key(), o.Origin
	}) {
		sa := &ServiceAccount{Namespace: o.Metadata.Namespace, Name: o.Metadata.Name, Origin: o.Origin}
		if err := sa.Validate(); err != nil {
			b.m.Errors = append(b.m.Errors, unjoin(err)...)
			continue
		}
		b.m.ServiceAccounts = append(b.m.ServiceAccounts, sa)
	}
}

func (b *builder) buildServices(in []*kubeobj.Service) {
	in = inNamespace(in, func(o *kubeobj.Service) *kubeobj.ObjectMeta { return &o.Metadata })
	for _, o := range dedupe(b, "Service", in, func(o *kubeobj.Service) (string, policies.Origin) { return o.Metadata.Key(), o.Origin }) {
		if s := b.convertService(o); s != nil {
			b.services = append(b.services, s)
		}
	}
}

// convertService reads a Service; it reports problems and returns nil for a Service left out.
func (b *builder) convertService(o *kubeobj.Service) *Service {
	meta := o.Metadata
	p := &problems{origin: o.Origin, kind: "Service", object: meta.Key()}
	if o.Spec.Type == "ExternalName" {
		b.warn(o.Origin, "Service", meta.Key(), "spec.type", "ExternalName Services are not part of the ambient mesh (istiod does not send them)")
		return nil
	}
	s := &Service{
		Namespace: meta.Namespace, Name: meta.Name, Hostname: meta.Name + "." + meta.Namespace + ".svc." + b.cfg.ClusterDomain,
		Labels: meta.Labels, Annotations: meta.Annotations, Selector: o.Spec.Selector, IPFamilies: o.Spec.IPFamilies, Origin: o.Origin,
		LoadBalancing: b.loadBalancing(o),
	}
	ips := o.Spec.ClusterIPs
	if len(ips) == 0 && o.Spec.ClusterIP != "" {
		ips = []string{o.Spec.ClusterIP}
	}
	for i, v := range ips {
		if v == "None" {
			s.Headless = true
			continue
		}
		ip, err := netip.ParseAddr(v)
		if err != nil {
			field := "spec.clusterIP"
			if len(o.Spec.ClusterIPs) > 0 {
				field = fmt.Sprintf("spec.clusterIPs[%d]", i)
			}
			p.add(field, "%q is not an IP address", v)
			continue
		}
		s.VIPs = append(s.VIPs, ip.Unmap())
	}
	for i, sp := range o.Spec.Ports {
		f := fmt.Sprintf("spec.ports[%d]", i)
		port := ServicePort{Name: sp.Name, Transport: cmp.Or(sp.Protocol, "TCP")}
		if sp.AppProtocol != nil {
			port.AppProtocol = *sp.AppProtocol
		}
		if sp.Port < 1 || sp.Port > 65535 {
			p.add(f+".port", "%d is not a port number (1-65535)", sp.Port)
		} else {
			port.Port = uint32(sp.Port)
		}
		switch tp := sp.TargetPort; {
		case tp.IsZero():
			port.TargetPort = port.Port // Kubernetes defaults targetPort to port
		case tp.IsString:
			port.TargetPortName = tp.StrVal
		case tp.IntVal < 1 || tp.IntVal > 65535:
			p.add(f+".targetPort", "%d is not a port number (1-65535)", tp.IntVal)
		default:
			port.TargetPort = uint32(tp.IntVal)
		}
		s.Ports = append(s.Ports, port)
	}
	if len(p.errs) > 0 {
		b.m.Errors = append(b.m.Errors, p.errs...)
		return nil
	}
	return s
}

func (b *builder) buildPods(in []*kubeobj.Pod) {
	in = inNamespace(in, func(o *kubeobj.Pod) *kubeobj.ObjectMeta { return &o.Metadata })
	for _, o := range dedupe(b, "Pod", in, func(o *kubeobj.Pod) (string, policies.Origin) { return o.Metadata.Key(), o.Origin }) {
		if w := b.convertPod(o); w != nil {
			b.workloads = append(b.workloads, w)
		}
	}
}

// convertPod reads a Pod; it reports problems and returns nil for a pod left out.
func (b *builder) convertPod(o *kubeobj.Pod) *Workload {
	meta := o.Metadata
	p := &problems{origin: o.Origin, kind: "Pod", object: meta.Key()}
	switch o.Status.Phase {
	case "Succeeded", "Failed":
		b.warn(o.Origin, "Pod", meta.Key(), "status.phase", "a %s pod is not part of the mesh", o.Status.Phase)
		return nil
	}
	w := &Workload{
		UID: b.cfg.ClusterID + "//Pod/" + meta.Namespace + "/" + meta.Name, PodUID: meta.UID, Namespace: meta.Namespace, Name: meta.Name,
		ServiceAccount: cmp.Or(o.Spec.ServiceAccountName, o.Spec.ServiceAccount, "default"),
		Node:           o.Spec.NodeName, Labels: meta.Labels, Annotations: meta.Annotations,
		TrustDomain: b.cfg.TrustDomain, HostNetwork: o.Spec.HostNetwork, Healthy: podReady(o.Status),
		ContainerPorts: map[string]uint32{}, Origin: o.Origin,
	}
	ips := o.Status.PodIPs
	if len(ips) == 0 && o.Status.PodIP != "" {
		ips = []kubeobj.PodIP{{IP: o.Status.PodIP}}
	}
	for i, v := range ips {
		ip, err := netip.ParseAddr(v.IP)
		if err != nil {
			field := "status.podIP"
			if len(o.Status.PodIPs) > 0 {
				field = fmt.Sprintf("status.podIPs[%d].ip", i)
			}
			p.add(field, "%q is not an IP address", v.IP)
			continue
		}
		w.IPs = append(w.IPs, ip.Unmap())
	}
	for i, c := range o.Spec.Containers {
		for j, cp := range c.Ports {
			if cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
				p.add(fmt.Sprintf("spec.containers[%d].ports[%d].containerPort", i, j), "%d is not a port number (1-65535)", cp.ContainerPort)
				continue
			}
			if _, dup := w.ContainerPorts[cp.Name]; cp.Name != "" && !dup {
				w.ContainerPorts[cp.Name] = uint32(cp.ContainerPort)
			}
		}
	}
	w.WorkloadName = workloadName(o)
	w.CanonicalName, w.CanonicalRevision = canonicalService(meta.Labels, w.WorkloadName)
	w.Ambient = b.ambient(o)
	w.NativeTunnel = o.Metadata.Labels[LabelTunnel] == TunnelHTTP
	if len(p.errs) > 0 {
		b.m.Errors = append(b.m.Errors, p.errs...)
		return nil
	}
	return w
}

// ambient decides whether a pod's traffic is captured into the ambient mesh. With
// CaptureByNodeAgent, as istiod: the node agent's annotation, or the label of a pod that speaks
// HBONE itself (networking.istio.io/tunnel: http). Otherwise as istio-cni's node agent
// (PodRedirectionEnabled): the annotation, else the pod's own istio.io/dataplane-mode label
// (none opts out), else its namespace's; host-network pods are never captured.
func (b *builder) ambient(o *kubeobj.Pod) bool {
	if o.Metadata.Labels[LabelTunnel] == TunnelHTTP {
		return true
	}
	if b.cfg.CaptureByNodeAgent {
		return o.Metadata.Annotations[AnnotationRedirection] == RedirectionEnabled
	}
	if o.Spec.HostNetwork {
		return false
	}
	switch o.Metadata.Labels[LabelDataplaneMode] {
	case DataplaneModeNone:
		return false
	case DataplaneModeAmbient:
		return true
	}
	if o.Metadata.Annotations[AnnotationRedirection] == RedirectionEnabled {
		return true
	}
	return b.namespace(o.Metadata.Namespace).Ambient
}

// podReady is Kubernetes' readiness: the Ready condition when given, else not Pending. A pod
// read from a file without status is ready.
func podReady(s kubeobj.PodStatus) bool {
	for _, c := range s.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True"
		}
	}
	return s.Phase != "Pending"
}

// validate checks every object now that all have addresses, and leaves out the invalid ones.
func (b *builder) validate() {
	b.services = slices.DeleteFunc(b.services, func(s *Service) bool {
		err := s.Validate()
		b.m.Errors = append(b.m.Errors, unjoin(err)...)
		return err != nil
	})
	b.workloads = slices.DeleteFunc(b.workloads, func(w *Workload) bool {
		err := w.Validate()
		b.m.Errors = append(b.m.Errors, unjoin(err)...)
		return err != nil
	})
}

func (b *builder) buildPolicies(in policies.Objects) {
	aps := dedupe(b, "AuthorizationPolicy", in.AuthorizationPolicies, func(p *policies.AuthorizationPolicy) (string, policies.Origin) {
		return p.Key(), p.Origin
	})
	pas := dedupe(b, "PeerAuthentication", in.PeerAuthentications, func(p *policies.PeerAuthentication) (string, policies.Origin) {
		return p.Key(), p.Origin
	})
	slices.SortFunc(aps, func(a, b *policies.AuthorizationPolicy) int {
		return compareKey(a.Namespace, a.Name, b.Namespace, b.Name)
	})
	slices.SortFunc(pas, func(a, b *policies.PeerAuthentication) int {
		return compareKey(a.Namespace, a.Name, b.Namespace, b.Name)
	})
	ras := dedupe(b, "RequestAuthentication", in.RequestAuthentications, func(p *policies.RequestAuthentication) (string, policies.Origin) {
		return p.Key(), p.Origin
	})
	slices.SortFunc(ras, func(a, b *policies.RequestAuthentication) int {
		return compareKey(a.Namespace, a.Name, b.Namespace, b.Name)
	})
	b.m.Policies = policies.Objects{AuthorizationPolicies: aps, PeerAuthentications: pas, RequestAuthentications: ras}
}

// implicitNamespaces warns about namespaces objects refer to but the input does not define
// (except default, which every cluster has).
func (b *builder) implicitNamespaces() {
	first := map[string]policies.Origin{}
	note := func(ns string, o policies.Origin) {
		if _, ok := first[ns]; !ok {
			first[ns] = o
		}
	}
	for _, s := range b.services {
		note(s.Namespace, s.Origin)
	}
	for _, w := range b.workloads {
		note(w.Namespace, w.Origin)
	}
	for _, ns := range slices.Sorted(maps.Keys(first)) {
		n := b.namespace(ns)
		if n.Implicit && ns != "default" {
			b.warn(first[ns], "Namespace", ns, "", "not defined; its objects are treated as in a namespace without labels (not in the ambient mesh)")
		}
	}
}

func (b *builder) finish() *Mesh {
	m := b.m
	for _, n := range b.namespaces {
		if n.Implicit && n.Validate() != nil {
			continue // named only by objects that were left out for it (found by FuzzTranslate)
		}
		m.Namespaces = append(m.Namespaces, n)
	}
	slices.SortFunc(m.Namespaces, func(a, b *Namespace) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(m.ServiceAccounts, func(a, b *ServiceAccount) int { return compareKey(a.Namespace, a.Name, b.Namespace, b.Name) })
	m.ServiceAccounts = slices.CompactFunc(m.ServiceAccounts, func(a, b *ServiceAccount) bool { return a.Key() == b.Key() })
	m.Services = b.services
	slices.SortFunc(m.Services, func(a, b *Service) int { return compareKey(a.Namespace, a.Name, b.Namespace, b.Name) })
	m.Workloads = b.workloads
	slices.SortFunc(m.Workloads, func(a, b *Workload) int { return compareKey(a.Namespace, a.Name, b.Namespace, b.Name) })
	m.Waypoints = b.waypoints
	slices.SortFunc(m.Waypoints, func(a, b *Waypoint) int { return compareKey(a.Namespace, a.Name, b.Namespace, b.Name) })
	byOrigin := func(x, y error) int {
		a, b := originOf(x), originOf(y)
		return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Doc, b.Doc))
	}
	slices.SortStableFunc(m.Errors, byOrigin)
	slices.SortStableFunc(m.Warnings, byOrigin)
	return m
}

// unjoin splits an errors.Join result back into its errors.
func unjoin(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func originOf(err error) policies.Origin {
	var pe *policies.Error
	if errors.As(err, &pe) {
		return pe.Origin
	}
	return policies.Origin{}
}
