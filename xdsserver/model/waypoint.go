package model

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/xdsserver/kubeobj"
)

// pendingWaypoint is a waypoint Gateway read before addresses are placed.
type pendingWaypoint struct {
	wp       *Waypoint
	statusIP netip.Addr
	service  *Service    // its own Service, read or synthesized
	pods     []*Workload // its pods, read or synthesized
	saName   string      // the service account of synthesized pods
}

// isWaypointClass reports whether Gateways of a class are waypoints: istio-waypoint, a class
// named in the Config, or a GatewayClass whose controller is Istio's mesh controller.
func (b *builder) isWaypointClass(name string) bool {
	if name == WaypointClassName || slices.Contains(b.cfg.WaypointClasses, name) {
		return true
	}
	gc := b.classes[name]
	return gc != nil && gc.Spec.ControllerName == MeshController
}

// buildWaypoints reads the waypoint Gateways and, with DeployWaypoints, gives each one without
// pods or Service a synthesized pod and Service, as istiod's deployment controller would.
func (b *builder) buildWaypoints(in []*kubeobj.Gateway) []*pendingWaypoint {
	in = inNamespace(in, func(o *kubeobj.Gateway) *kubeobj.ObjectMeta { return &o.Metadata })
	gws := dedupe(b, "Gateway", in, func(o *kubeobj.Gateway) (string, policies.Origin) { return o.Metadata.Key(), o.Origin })
	slices.SortFunc(gws, func(a, b *kubeobj.Gateway) int { return cmp.Compare(a.Metadata.Key(), b.Metadata.Key()) })
	var out []*pendingWaypoint
	for _, gw := range gws {
		if pw := b.convertWaypoint(gw); pw != nil {
			out = append(out, pw)
		}
	}
	return out
}

func (b *builder) convertWaypoint(gw *kubeobj.Gateway) *pendingWaypoint {
	meta := gw.Metadata
	class := gw.Spec.GatewayClassName
	if !b.isWaypointClass(class) && b.isIngressClass(class) {
		return nil // an ingress gateway (ingress.go)
	}
	if !b.isWaypointClass(class) {
		b.warn(gw.Origin, "Gateway", meta.Key(), "spec.gatewayClassName", "class %q is not a waypoint class (%s); the Gateway is ignored", class, strings.Join(append([]string{WaypointClassName}, b.cfg.WaypointClasses...), ", "))
		return nil
	}
	wp := &Waypoint{Namespace: meta.Namespace, Name: meta.Name, Class: class, Labels: meta.Labels, TrafficType: TrafficService, AllowedFrom: "Same", Origin: gw.Origin}
	if gc := b.classes[class]; gc != nil {
		if tt, ok := gc.Metadata.Labels[LabelWaypointFor]; ok {
			wp.TrafficType = tt
		}
	}
	if tt, ok := meta.Labels[LabelWaypointFor]; ok {
		wp.TrafficType = tt
	}
	p := &problems{origin: gw.Origin, kind: "Gateway", object: meta.Key()}
	for i, l := range gw.Spec.Listeners {
		if l.Port < 1 || l.Port > 65535 {
			p.add(fmt.Sprintf("spec.listeners[%d].port", i), "%d is not a port number (1-65535)", l.Port)
			continue
		}
		wp.Listeners = append(wp.Listeners, Listener{Name: l.Name, Port: uint32(l.Port), Protocol: l.Protocol})
		if l.Protocol != "HBONE" || l.Port != HBONEPort || l.AllowedRoutes == nil || l.AllowedRoutes.Namespaces == nil {
			continue
		}
		ns := l.AllowedRoutes.Namespaces
		wp.AllowedFrom = cmp.Or(ns.From, "Same")
		if ns.Selector != nil {
			if len(ns.Selector.MatchExpressions) > 0 {
				p.add(fmt.Sprintf("spec.listeners[%d].allowedRoutes.namespaces.selector.matchExpressions", i), "not supported; use matchLabels")
			}
			wp.AllowedLabels = ns.Selector.MatchLabels
		}
	}
	for _, a := range gw.Status.Addresses {
		if a.Type != "" && a.Type != "IPAddress" {
			continue
		}
		if ip, err := netip.ParseAddr(a.Value); err == nil {
			wp.Address = ip.Unmap()
			break
		}
		p.add("status.addresses", "%q is not an IP address", a.Value)
	}
	if len(p.errs) == 0 {
		p.errs = unjoin(wp.Validate())
	}
	if len(p.errs) > 0 {
		b.m.Errors = append(b.m.Errors, p.errs...)
		return nil
	}
	pw := &pendingWaypoint{wp: wp, statusIP: wp.Address}
	for _, w := range b.workloads {
		if w.Namespace == wp.Namespace && w.Labels[LabelGatewayName] == wp.Name {
			pw.pods = append(pw.pods, w)
		}
	}
	for _, s := range b.services {
		if s.Namespace == wp.Namespace && s.Labels[LabelGatewayName] == wp.Name {
			pw.service = s
			break
		}
	}
	if !b.cfg.DeployWaypoints || len(pw.pods) > 0 && pw.service != nil {
		return pw
	}
	name, sa := b.deploymentName(gw, pw)
	pw.saName = sa
	if len(pw.pods) == 0 {
		b.synthesizePod(gw, name, pw)
	}
	if pw.service == nil {
		b.synthesizeService(gw, name, pw)
	}
	return pw
}

// deploymentName is the name istiod's deployment controller would give a waypoint's
// Deployment, Service and service account, by GatewayDeployedNames (the rule the Kubernetes
// deployment controller applies): the name-override annotation, else the Gateway's name, else,
// when the namespace already has a Service, pod or service account by that name that is not
// the waypoint's (handson: Service and ServiceAccount handson), <gateway>-<class>, with a
// warning. When every name is taken the override (or the last name) is used all the same, and
// an error says so: the synthesized objects are the model's own, not a cluster's.
func (b *builder) deploymentName(gw *kubeobj.Gateway, pw *pendingWaypoint) (string, string) {
	ns := gw.Metadata.Namespace
	taken := func(name, sa string) string {
		var in []string
		if slices.ContainsFunc(b.services, func(s *Service) bool { return s.Namespace == ns && s.Name == name && s != pw.service }) {
			in = append(in, fmt.Sprintf("Service %q", name))
		}
		if slices.ContainsFunc(b.workloads, func(w *Workload) bool {
			return w.Namespace == ns && w.Name == name && !slices.Contains(pw.pods, w)
		}) {
			in = append(in, fmt.Sprintf("Pod %q", name))
		}
		ownSA := slices.ContainsFunc(pw.pods, func(w *Workload) bool { return w.ServiceAccount == sa }) // the waypoint's own pods run as it
		if sa != "" && !ownSA && slices.ContainsFunc(b.m.ServiceAccounts, func(s *ServiceAccount) bool { return s.Namespace == ns && s.Name == sa }) {
			in = append(in, fmt.Sprintf("ServiceAccount %q", sa))
		}
		return strings.Join(in, " and ")
	}
	names, err := GatewayDeployedNames(gw.Metadata.Name, gw.Spec.GatewayClassName, gw.Metadata.Annotations, true, "", taken)
	if err != nil {
		b.warn(gw.Origin, "Gateway", gw.Metadata.Key(), "metadata.name", "%v (here the waypoint is synthesized under its first name all the same)", err)
		name := cmp.Or(gw.Metadata.Annotations[AnnotationNameOverride], gw.Metadata.Name)
		return name, cmp.Or(gw.Metadata.Annotations[AnnotationServiceAccount], name)
	}
	if names.Fallback != "" {
		b.warn(gw.Origin, "Gateway", gw.Metadata.Key(), "metadata.name", "%s", names.Fallback)
	}
	return names.Name, names.ServiceAccount
}

func (b *builder) waypointNode() string {
	if b.cfg.WaypointNode != "" {
		return b.cfg.WaypointNode
	}
	var nodes []string
	for _, w := range b.workloads {
		if w.Node != "" && !w.Synthesized {
			nodes = append(nodes, w.Node)
		}
	}
	if len(nodes) == 0 {
		return ""
	}
	return slices.Min(nodes)
}

// synthesizePod adds the pod istiod's waypoint template would run (labels as in Istio's
// waypoint.yaml).
func (b *builder) synthesizePod(gw *kubeobj.Gateway, name string, pw *pendingWaypoint) {
	pod := &kubeobj.Pod{
		Metadata: kubeobj.ObjectMeta{
			Name: name, Namespace: gw.Metadata.Namespace,
			Labels: map[string]string{
				"sidecar.istio.io/inject":             "false",
				LabelDataplaneMode:                    DataplaneModeNone,
				"service.istio.io/canonical-name":     name,
				"service.istio.io/canonical-revision": "latest",
				LabelGatewayName:                      gw.Metadata.Name,
				LabelGatewayClassName:                 gw.Spec.GatewayClassName,
				LabelGatewayManaged:                   ManagedByMesh,
			},
		},
		Spec: kubeobj.PodSpec{
			ServiceAccountName: pw.saName, NodeName: b.waypointNode(),
			Containers: []kubeobj.Container{{Name: "istio-proxy", Ports: []kubeobj.ContainerPort{
				{Name: "metrics", ContainerPort: 15020}, {Name: "status-port", ContainerPort: 15021}, {Name: "http-envoy-prom", ContainerPort: 15090},
			}}},
		},
		Origin: gw.Origin,
	}
	if w := b.convertPod(pod); w != nil {
		w.Synthesized = true
		b.workloads = append(b.workloads, w)
		pw.pods = append(pw.pods, w)
		b.m.ServiceAccounts = append(b.m.ServiceAccounts, &ServiceAccount{Namespace: w.Namespace, Name: w.ServiceAccount, Origin: gw.Origin})
	}
}

// synthesizeService adds the Service istiod's waypoint template would create: the status port
// and one port per listener, selecting the waypoint's pods.
func (b *builder) synthesizeService(gw *kubeobj.Gateway, name string, pw *pendingWaypoint) {
	tcp := "tcp"
	svc := &kubeobj.Service{
		Metadata: kubeobj.ObjectMeta{Name: name, Namespace: gw.Metadata.Namespace, Labels: map[string]string{
			LabelGatewayName: gw.Metadata.Name, LabelGatewayClassName: gw.Spec.GatewayClassName,
		}},
		Spec: kubeobj.ServiceSpec{
			Selector: map[string]string{LabelGatewayName: gw.Metadata.Name},
			Ports:    []kubeobj.ServicePort{{Name: "status-port", Port: 15021, AppProtocol: &tcp}},
		},
		Origin: gw.Origin,
	}
	if pw.statusIP.IsValid() {
		svc.Spec.ClusterIP = pw.statusIP.String()
	}
	for i, l := range pw.wp.Listeners {
		proto := strings.ToLower(l.Protocol)
		svc.Spec.Ports = append(svc.Spec.Ports, kubeobj.ServicePort{Name: cmp.Or(l.Name, fmt.Sprintf("%s-%d", proto, i)), Port: int64(l.Port), AppProtocol: &proto})
	}
	if s := b.convertService(svc); s != nil {
		s.Synthesized = true
		b.services = append(b.services, s)
		pw.service = s
	}
}

// finishWaypoints gives each waypoint its address, Service and pods, once addresses are placed
// and invalid objects left out. A waypoint without an address (no status address, no Service
// with a VIP) is not ready, as in Istio, and is left out.
func (b *builder) finishWaypoints(pending []*pendingWaypoint) {
	for _, pw := range pending {
		wp := pw.wp
		if pw.service != nil && slices.Contains(b.services, pw.service) {
			wp.Service = pw.service
		}
		for _, w := range pw.pods {
			if slices.Contains(b.workloads, w) {
				wp.Instances = append(wp.Instances, w)
			}
		}
		slices.SortFunc(wp.Instances, func(a, b *Workload) int { return cmp.Compare(a.Name, b.Name) })
		if !wp.Address.IsValid() && wp.Service != nil && len(wp.Service.VIPs) > 0 {
			wp.Address = wp.Service.VIPs[0]
		}
		if !wp.Address.IsValid() {
			b.warn(wp.Origin, "Gateway", wp.Key(), "status.addresses", "the waypoint has no address yet (no Service with a VIP); it is not used")
			continue
		}
		wp.ServiceAccount = pw.saName
		if len(wp.Instances) > 0 {
			wp.ServiceAccount = wp.Instances[0].ServiceAccount
		}
		if wp.Service != nil {
			wp.Service.WaypointOf = wp.Key()
		}
		for _, w := range wp.Instances {
			w.WaypointOf = wp.Key()
		}
		b.waypoints = append(b.waypoints, wp)
	}
}

func (b *builder) waypoint(ns, name string) *Waypoint {
	for _, w := range b.waypoints {
		if w.Namespace == ns && w.Name == name {
			return w
		}
	}
	return nil
}

// useWaypoint resolves istio.io/use-waypoint as istiod's fetchWaypointForTarget does: the
// object's own label (none opts out; use-waypoint-namespace names another namespace) wins over
// its namespace's. It returns the waypoint, whether the label was the object's own, and why a
// named waypoint cannot be used.
func (b *builder) useWaypoint(labels map[string]string, ns string) (*Waypoint, bool, string) {
	resolve := func(labels map[string]string) (*Waypoint, string) {
		name := labels[LabelUseWaypoint]
		wns := cmp.Or(labels[LabelUseWaypointNamespace], ns)
		w := b.waypoint(wns, name)
		switch {
		case w == nil:
			return nil, fmt.Sprintf("waypoint %s/%s is not found or not ready", wns, name)
		case !w.AllowsFrom(b.namespace(ns)):
			return nil, fmt.Sprintf("waypoint %s does not allow use from namespace %s (allowedRoutes of its HBONE listener)", w.Key(), ns)
		}
		return w, ""
	}
	if v, ok := labels[LabelUseWaypoint]; ok {
		if v == DataplaneModeNone {
			return nil, true, ""
		}
		w, problem := resolve(labels)
		return w, true, problem
	}
	if n := b.namespace(ns); n.Labels[LabelUseWaypoint] != "" && n.Labels[LabelUseWaypoint] != DataplaneModeNone {
		w, problem := resolve(n.Labels)
		return w, false, problem
	}
	return nil, false, ""
}

// bindWaypoints binds Services (service traffic) and pods (workload traffic) to their
// waypoints, honouring istio.io/waypoint-for. A waypoint's own Service and pods have none. A
// label naming a waypoint that cannot be used is reported on the object that carries it (once
// for a namespace).
func (b *builder) bindWaypoints() {
	reported := map[string]bool{}
	report := func(kind, key string, origin policies.Origin, direct bool, ns, problem, what string) {
		if !direct {
			if !reported[ns] {
				reported[ns] = true
				b.warn(b.namespace(ns).Origin, "Namespace", ns, "metadata.labels["+LabelUseWaypoint+"]", "%s; its Services and pods do not use a waypoint", problem)
			}
			return
		}
		b.warn(origin, kind, key, "metadata.labels["+LabelUseWaypoint+"]", "%s; the %s does not use a waypoint", problem, what)
	}
	for _, s := range b.services {
		if s.WaypointOf != "" {
			continue
		}
		w, direct, problem := b.useWaypoint(s.Labels, s.Namespace)
		switch {
		case problem != "":
			report("Service", s.Key(), s.Origin, direct, s.Namespace, problem, "Service")
		case w != nil && !w.ForServices():
			field, prefix := "metadata.labels["+LabelUseWaypoint+"]", ""
			if !direct {
				field, prefix = "", "from Namespace "+s.Namespace+": "
			}
			b.warn(s.Origin, "Service", s.Key(), field, "%swaypoint %s does not accept service traffic (%s: %s)", prefix, w.Key(), LabelWaypointFor, w.TrafficType)
		case w != nil:
			s.Waypoint = w
		}
	}
	for _, wl := range b.workloads {
		if wl.WaypointOf != "" {
			continue
		}
		w, direct, problem := b.useWaypoint(wl.Labels, wl.Namespace)
		switch {
		case problem != "":
			report("Pod", wl.Key(), wl.Origin, direct, wl.Namespace, problem, "pod")
		case w != nil && !w.ForWorkloads():
			// Inherited from the namespace, a service waypoint silently does not apply to pods.
			if direct {
				b.warn(wl.Origin, "Pod", wl.Key(), "metadata.labels["+LabelUseWaypoint+"]", "waypoint %s does not accept workload traffic (%s: %s)", w.Key(), LabelWaypointFor, w.TrafficType)
			}
		case w != nil:
			wl.Waypoint = w
		}
	}
}

// selectServices gives each workload the Services in front of it: those whose selector matches
// its labels, and those whose EndpointSlices name the pod (targetRef). A named targetPort is
// resolved through the pod's container ports; a port the pod does not declare is left out for
// that pod, as istiod does.
func (b *builder) selectServices(slices_ []*kubeobj.EndpointSlice) {
	byKey := map[string]*Service{}
	for _, s := range b.services {
		byKey[s.Key()] = s
	}
	viaSlices := b.endpointSliceServices(slices_, byKey)
	for _, w := range b.workloads {
		found := map[*Service]bool{}
		for _, s := range b.services {
			if s.Namespace == w.Namespace && selects(s.Selector, w.Labels, false) {
				found[s] = true
			}
		}
		for _, s := range viaSlices[podRef{w.Namespace, w.Name, w.PodUID}] {
			found[s] = true
		}
		for _, s := range slices.SortedFunc(maps.Keys(found), func(a, b *Service) int { return compareKey(a.Namespace, a.Name, b.Namespace, b.Name) }) {
			ws := WorkloadService{Service: s}
			for _, p := range s.Ports {
				target := p.TargetPort
				if p.TargetPortName != "" {
					var ok bool
					if target, ok = w.ContainerPorts[p.TargetPortName]; !ok {
						continue
					}
				}
				ws.Ports = append(ws.Ports, PortMapping{ServicePort: p.Port, TargetPort: target})
			}
			w.Services = append(w.Services, ws)
		}
	}
}
