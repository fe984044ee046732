// Package meshgen generates big meshes (namespaces, service accounts, services with selectors, pods spread over nodes, and a mix of authorization policies) as model input, for benchmarks.
package meshgen

import (
	"fmt"
	"strings"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/xdsserver/kubeobj"
)

// Options size a generated mesh.
type Options struct {
	Namespaces int // ambient namespaces
	Services   int // each with its own service account and selector app=<service>
	Pods       int // spread round-robin over the services and over the nodes
	Nodes      int
	Policies   int // AuthorizationPolicies, a mix of kinds (see Generate)
	// Variant changes the first policy's allowed principal: two meshes that differ only in
	// Variant differ in exactly one AuthorizationPolicy (a one-policy change).
	Variant int
}

// Default is the mesh of the control plane's performance targets: 10,000 pods, 1,000
// services and 1,000 policies, on 100 nodes, in 20 namespaces.
var Default = Options{Namespaces: 20, Services: 1000, Pods: 10000, Nodes: 100, Policies: 1000}

// Scaled is o with the services, pods, nodes and policies divided by div (at least one each).
func (o Options) Scaled(div int) Options {
	o.Services = max(1, o.Services/div)
	o.Pods = max(1, o.Pods/div)
	o.Nodes = max(1, o.Nodes/div)
	o.Policies = max(1, o.Policies/div)
	return o
}

// ServiceName is the name of service i, and the app label of its pods and its service account.
func ServiceName(i int) string { return fmt.Sprintf("svc-%04d", i) }

// NamespaceOf is the namespace of service i.
func (o Options) NamespaceOf(i int) string { return fmt.Sprintf("ns-%02d", i%o.Namespaces) }

// PolicyName is the name of policy i (it lives in the namespace of service i % Services).
func PolicyName(i int) string { return fmt.Sprintf("policy-%04d", i) }

// Generate builds the mesh: namespaces labelled ambient, plus istio-system with one mesh-wide
// STRICT PeerAuthentication; one service account and one Service (ports http 80 → 8080 and
// grpc 9090) per service; pods with status.podIP in 10.244.0.0/16 and named container ports,
// on nodes node-000...; Services with clusterIPs in 10.96.0.0/16. Policy i, in the namespace of
// service i % Services and selecting it unless i % 50 == 49 (namespace-wide), cycles through
// ALLOW from the principals of the next service, DENY from another namespace on port 9090,
// ALLOW from its own namespace to port 8080, and DENY from an IP block except a principal.
func Generate(o Options) (*kubeobj.Set, error) {
	if o.Namespaces < 1 || o.Services < 1 || o.Pods < 0 || o.Nodes < 1 || o.Policies < 0 {
		return nil, fmt.Errorf("meshgen: bad options %+v", o)
	}
	if o.Pods > 65000 || o.Services > 65000 {
		return nil, fmt.Errorf("meshgen: at most 65000 pods and services")
	}
	s := &kubeobj.Set{}
	origin := func(kind string, i int) policies.Origin {
		return policies.Origin{File: "meshgen/" + kind + ".yaml", Doc: i + 1, Line: 1}
	}
	s.Namespaces = append(s.Namespaces, &kubeobj.Namespace{Metadata: kubeobj.ObjectMeta{Name: "istio-system"}, Origin: origin("namespaces", 0)})
	for i := range o.Namespaces {
		s.Namespaces = append(s.Namespaces, &kubeobj.Namespace{
			Metadata: kubeobj.ObjectMeta{Name: fmt.Sprintf("ns-%02d", i), Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}},
			Origin:   origin("namespaces", i+1),
		})
	}
	for i := range o.Services {
		ns, name := o.NamespaceOf(i), ServiceName(i)
		s.ServiceAccounts = append(s.ServiceAccounts, &kubeobj.ServiceAccount{Metadata: kubeobj.ObjectMeta{Name: name, Namespace: ns}, Origin: origin("serviceaccounts", i)})
		s.Services = append(s.Services, &kubeobj.Service{
			Metadata: kubeobj.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": name}},
			Spec: kubeobj.ServiceSpec{
				Selector:  map[string]string{"app": name},
				ClusterIP: fmt.Sprintf("10.96.%d.%d", (i+1)/256, (i+1)%256),
				Ports: []kubeobj.ServicePort{
					{Name: "http", Port: 80, TargetPort: kubeobj.IntOrString{IsString: true, StrVal: "http"}},
					{Name: "grpc", Port: 9090, TargetPort: kubeobj.IntOrString{IntVal: 9090}},
				},
			},
			Origin: origin("services", i),
		})
	}
	for i := range o.Pods {
		svc := i % o.Services
		ns, app := o.NamespaceOf(svc), ServiceName(svc)
		name := fmt.Sprintf("%s-%05d", app, i)
		s.Pods = append(s.Pods, &kubeobj.Pod{
			Metadata: kubeobj.ObjectMeta{
				Name: name, Namespace: ns, UID: fmt.Sprintf("uid-%05d", i),
				Labels: map[string]string{"app": app, "version": fmt.Sprintf("v%d", i%3+1)},
			},
			Spec: kubeobj.PodSpec{
				ServiceAccountName: app,
				NodeName:           fmt.Sprintf("node-%03d", i%o.Nodes),
				Containers: []kubeobj.Container{{Name: "app", Ports: []kubeobj.ContainerPort{
					{Name: "http", ContainerPort: 8080}, {Name: "grpc", ContainerPort: 9090},
				}}},
			},
			Status: kubeobj.PodStatus{
				Phase: "Running", PodIP: fmt.Sprintf("10.244.%d.%d", (i+1)/256, (i+1)%256),
				Conditions: []kubeobj.PodCondition{{Type: "Ready", Status: "True"}},
			},
			Origin: origin("pods", i),
		})
	}
	objs, errs := policies.Load([]byte(PoliciesYAML(o)), "meshgen/policies.yaml")
	if len(errs) > 0 {
		return nil, fmt.Errorf("meshgen: generated policies: %v", errs[0])
	}
	s.Policies = objs
	return s, nil
}

// PoliciesYAML is the policies of the mesh as the YAML a user would write.
func PoliciesYAML(o Options) string {
	var b strings.Builder
	b.WriteString(`apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
`)
	for i := range o.Policies {
		svc := i % o.Services
		ns := o.NamespaceOf(svc)
		next := (svc + 1) % o.Services
		fmt.Fprintf(&b, "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: %s, namespace: %s}\nspec:\n", PolicyName(i), ns)
		if i%50 != 49 {
			fmt.Fprintf(&b, "  selector: {matchLabels: {app: %s}}\n", ServiceName(svc))
		}
		switch i % 4 {
		case 0:
			principal := fmt.Sprintf("cluster.local/ns/%s/sa/%s", o.NamespaceOf(next), ServiceName(next))
			if i == 0 && o.Variant != 0 {
				principal = fmt.Sprintf("cluster.local/ns/%s/sa/variant-%d", o.NamespaceOf(next), o.Variant)
			}
			fmt.Fprintf(&b, "  action: ALLOW\n  rules:\n  - from: [{source: {principals: [%q, \"cluster.local/ns/istio-system/sa/ingress\"]}}]\n", principal)
		case 1:
			fmt.Fprintf(&b, "  action: DENY\n  rules:\n  - from: [{source: {namespaces: [%q]}}]\n    to: [{operation: {ports: [\"9090\"]}}]\n", o.NamespaceOf(svc+1))
		case 2:
			fmt.Fprintf(&b, "  action: ALLOW\n  rules:\n  - from: [{source: {namespaces: [%q]}}]\n    to: [{operation: {ports: [\"8080\"]}}]\n", ns)
		case 3:
			fmt.Fprintf(&b, "  action: DENY\n  rules:\n  - from: [{source: {ipBlocks: [\"10.%d.0.0/16\"], notPrincipals: [\"cluster.local/ns/%s/sa/%s\"]}}]\n", 1+i%200, ns, ServiceName(svc))
		}
	}
	return b.String()
}
