package gatewaydeploy

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/goambient/goambient/xdsserver/model"
)

// Annotations istiod's templates never copy from the Gateway onto what they create.
var omittedAnnotations = []string{
	"kubectl.kubernetes.io/last-applied-configuration", model.AnnotationNameOverride, model.AnnotationServiceAccount,
	"gateway.istio.io/controller-version",
}

// input is what a Gateway's objects are rendered from (istiod's TemplateInput).
type input struct {
	gw    *gatewayv1.Gateway
	class classInfo
	names model.DeployedNames
	proxy Proxy
	// labels and annotations are the infrastructure metadata copied onto every object.
	labels, annotations map[string]string
	ports               []corev1.ServicePort
}

// newInput computes the infrastructure metadata and ports of gw as istiod does:
// spec.infrastructure's labels and annotations (without gateway.networking.k8s.io/ keys) when
// given, else the Gateway's own; an ingress gateway's objects are labelled
// istio.io/dataplane-mode=none unless that label is set.
func newInput(gw *gatewayv1.Gateway, class classInfo, names model.DeployedNames, proxy Proxy) *input {
	in := &input{gw: gw, class: class, names: names, proxy: proxy, ports: servicePorts(gw)}
	infra := gw.Spec.Infrastructure
	switch {
	case infra != nil && infra.Labels != nil:
		in.labels = infraMeta(infra.Labels)
	default:
		in.labels = maps.Clone(gw.Labels)
	}
	switch {
	case infra != nil && infra.Annotations != nil:
		in.annotations = infraMeta(infra.Annotations)
	default:
		in.annotations = maps.Clone(gw.Annotations)
	}
	if in.labels == nil {
		in.labels = map[string]string{}
	}
	for _, k := range omittedAnnotations {
		delete(in.annotations, k)
	}
	if _, ok := in.labels[model.LabelDataplaneMode]; !ok && !class.waypoint {
		in.labels[model.LabelDataplaneMode] = model.DataplaneModeNone
	}
	return in
}

func infraMeta[K, V ~string](m map[K]V) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		if !strings.HasPrefix(string(k), "gateway.networking.k8s.io/") {
			out[string(k)] = string(v)
		}
	}
	return out
}

// merged is maps later in the list overriding earlier ones (the templates' toJsonMap).
func merged(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		maps.Copy(out, m)
	}
	return out
}

func orNil(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return m
}

// gatewayLabels are the labels every object of a Gateway carries besides the infrastructure's.
func (in *input) gatewayLabels() map[string]string {
	return map[string]string{
		model.LabelGatewayName:      in.gw.Name,
		model.LabelGatewayClassName: string(in.gw.Spec.GatewayClassName),
		model.LabelGatewayManaged:   in.class.managedLabel, // istiod's apply() adds it to every object
	}
}

// meta is the metadata of one object: its name, the infrastructure labels and annotations
// with extra ones, and the Gateway as its owner (so that the garbage collector removes it with
// the Gateway).
func (in *input) meta(name string, annotations map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: name, Namespace: in.gw.Namespace,
		Labels:      merged(in.labels, in.gatewayLabels()),
		Annotations: orNil(merged(annotations, in.annotations)),
		OwnerReferences: []metav1.OwnerReference{{
			APIVersion: gatewayv1.GroupVersion.String(), Kind: "Gateway", Name: in.gw.Name, UID: in.gw.UID,
		}},
	}
}

func (in *input) serviceAccount() *corev1.ServiceAccount {
	return &corev1.ServiceAccount{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta: in.meta(in.names.ServiceAccount, nil),
	}
}

func (in *input) service() *corev1.Service {
	var ann map[string]string
	if in.class.waypoint {
		ann = map[string]string{"networking.istio.io/traffic-distribution": "PreferClose"}
	}
	svc := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: in.meta(in.names.Name, ann),
		Spec: corev1.ServiceSpec{
			IPFamilyPolicy: ptr.To(corev1.IPFamilyPolicyPreferDualStack),
			Ports:          in.ports,
			Selector:       map[string]string{model.LabelGatewayName: in.gw.Name},
			Type:           in.class.serviceType,
		},
	}
	if t, ok := in.gw.Annotations["networking.istio.io/service-type"]; ok {
		svc.Spec.Type = corev1.ServiceType(t)
	}
	if len(in.gw.Spec.Addresses) > 0 && svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		svc.Spec.LoadBalancerIP = in.gw.Spec.Addresses[0].Value
	}
	return svc
}

func (in *input) deployment(o *Options) *appsv1.Deployment {
	podLabels := merged(
		map[string]string{
			"sidecar.istio.io/inject":             "false",
			"service.istio.io/canonical-name":     in.names.Name,
			"service.istio.io/canonical-revision": "latest",
		},
		in.labels, in.gatewayLabels())
	if in.class.waypoint {
		podLabels = merged(map[string]string{model.LabelDataplaneMode: model.DataplaneModeNone}, podLabels)
	}
	podAnnotations := merged(in.annotations, map[string]string{"istio.io/rev": "default"}, map[string]string{
		"prometheus.io/path": "/stats/prometheus", "prometheus.io/port": "15020", "prometheus.io/scrape": "true",
	})
	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: in.meta(in.names.Name, nil),
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{model.LabelGatewayName: in.gw.Name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels, Annotations: podAnnotations},
				Spec:       in.podSpec(o),
			},
		},
	}
}

// servicePorts are istiod's extractServicePorts: the status port, then one port per distinct
// listener port, named after the listener (dots as dashes, 63 characters, made unique),
// protocol TCP, appProtocol the listener's protocol in lower case.
func servicePorts(gw *gatewayv1.Gateway) []corev1.ServicePort {
	ports := []corev1.ServicePort{{Name: "status-port", Port: 15021, Protocol: corev1.ProtocolTCP, AppProtocol: ptr.To("tcp")}}
	used := map[string]bool{"status-port": true}
	seen := map[int32]bool{}
	for i, l := range gw.Spec.Listeners {
		if seen[l.Port] {
			continue
		}
		seen[l.Port] = true
		name := strings.ReplaceAll(string(l.Name), ".", "-")
		if name == "" {
			name = fmt.Sprintf("%s-%d", strings.ToLower(string(l.Protocol)), i)
		}
		ports = append(ports, corev1.ServicePort{
			Name: uniquePortName(name, l.Port, used), Port: l.Port, Protocol: corev1.ProtocolTCP,
			AppProtocol: ptr.To(strings.ToLower(string(l.Protocol))),
		})
	}
	return ports
}

func uniquePortName(name string, port int32, used map[string]bool) string {
	name = name[:min(len(name), 63)]
	candidate := name
	for suffix := fmt.Sprintf("-%d", port); used[candidate]; suffix += "x" {
		candidate = name[:min(len(name), 63-len(suffix))] + suffix
	}
	used[candidate] = true
	return candidate
}

// listenerPorts are the Gateway's distinct listener ports, sorted.
func listenerPorts(gw *gatewayv1.Gateway) []int32 {
	var ports []int32
	for _, l := range gw.Spec.Listeners {
		if !slices.Contains(ports, l.Port) {
			ports = append(ports, l.Port)
		}
	}
	slices.Sort(ports)
	return ports
}
