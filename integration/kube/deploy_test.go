package kube_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"istio.io/istio/pkg/workloadapi"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/goambient/goambient/integration/kubeapi"
	"github.com/goambient/goambient/xdsserver/gatewaydeploy"
	"github.com/goambient/goambient/ztunnel/xds"
)

// deployEnv is an API server of its own with kube-controller-manager (the garbage collector,
// Deployments' ReplicaSets and pods), the bundle and handson applied, and xdsserver running
// with the bundle's ServiceAccount.
type deployEnv struct {
	s    *kubeapi.Server
	gw   gwclient.Interface
	x    *xdsserver
	net  string // 127.a.b: this test's pod addresses
	ctx  context.Context
	pods int
}

func newDeployEnv(t *testing.T) *deployEnv {
	t.Helper()
	bin := kubeapi.SkipIfMissing(t)
	if err := kubeapi.HasControllerManager(bin); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	t.Cleanup(cancel)
	built := make(chan error, 1)
	go func() { _, err := buildBinaries(); built <- err }()
	s := kubeapi.Start(t)
	d := &deployEnv{s: s, ctx: ctx, net: fmt.Sprintf("127.%d.%d", 10+rand.IntN(90), 1+rand.IntN(250))}
	var err error
	if d.gw, err = gwclient.NewForConfig(s.Config); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(ctx, "-k", "../../manifests/install"); err != nil {
		t.Fatal(err)
	}
	// The user's own ingress class, made before xdsserver starts: kept as it is.
	desc := "the user's own class"
	if _, err := d.gw.GatewayV1().GatewayClasses().Create(ctx, &gatewayv1.GatewayClass{ObjectMeta: metav1.ObjectMeta{Name: "istio"},
		Spec: gatewayv1.GatewayClassSpec{ControllerName: gatewaydeploy.GatewayController, Description: &desc}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateNamespace(ctx, "handson", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(ctx, "-f", filepath.Join(examples, "handson/mesh.yaml")); err != nil {
		t.Fatal(err)
	}
	t.Logf("API server and handson up in %v", time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()
	s.StartControllerManager(t)
	t.Logf("kube-controller-manager up in %v", time.Since(t0).Round(time.Millisecond))
	if err := <-built; err != nil {
		t.Fatal(err)
	}
	bins, _ := buildBinaries()
	d.x = runXdsserver(t, s, bins["xdsserver"], d.net+".240")
	t.Cleanup(func() { d.x.noForbidden(t) })
	return d
}

// deployment, service and serviceAccount return handson's objects (nil when absent).
func (d *deployEnv) deployment(ns, name string) *appsv1.Deployment {
	o, err := d.s.Kube.AppsV1().Deployments(ns).Get(d.ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	return o
}

func (d *deployEnv) service(ns, name string) *corev1.Service {
	o, err := d.s.Kube.CoreV1().Services(ns).Get(d.ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	return o
}

func (d *deployEnv) serviceAccount(ns, name string) *corev1.ServiceAccount {
	o, err := d.s.Kube.CoreV1().ServiceAccounts(ns).Get(d.ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	return o
}

func (d *deployEnv) gateway(t *testing.T, ns, name string) *gatewayv1.Gateway {
	t.Helper()
	gw, err := d.gw.GatewayV1().Gateways(ns).Get(d.ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return gw
}

func gwCondition(gw *gatewayv1.Gateway, typ string) metav1.Condition {
	for _, c := range gw.Status.Conditions {
		if c.Type == typ {
			return c
		}
	}
	return metav1.Condition{}
}

// runPods writes a kubelet's status on the pods the ReplicaSet controller made for the Gateway
// (no kubelet runs them) and returns how many.
func (d *deployEnv) runPods(t *testing.T, ns, gateway string) int {
	t.Helper()
	var n int
	eventually(t, 2*time.Minute, "the ReplicaSet controller's pod of "+gateway, func() bool {
		pods, err := d.s.Kube.CoreV1().Pods(ns).List(d.ctx, metav1.ListOptions{LabelSelector: "gateway.networking.k8s.io/gateway-name=" + gateway})
		if err != nil {
			t.Fatal(err)
		}
		n = 0
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.DeletionTimestamp != nil {
				continue
			}
			if p.Status.PodIP == "" {
				d.pods++
				if _, err := d.s.SetPodRunning(d.ctx, p, fmt.Sprintf("%s.%d", d.net, d.pods)); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
					t.Fatal(err)
				}
			}
			n++
		}
		return n > 0
	})
	return n
}

// managedBy lists the field managers of an object.
func managedBy(o metav1.Object) []string {
	var m []string
	for _, f := range o.GetManagedFields() {
		m = append(m, f.Manager)
	}
	return m
}

func ownedByGateway(o metav1.Object, gw *gatewayv1.Gateway) bool {
	return slices.ContainsFunc(o.GetOwnerReferences(), func(r metav1.OwnerReference) bool {
		return r.Kind == "Gateway" && r.Name == gw.Name && r.UID == gw.UID && r.APIVersion == "gateway.networking.k8s.io/v1"
	})
}

// TestGatewayDeployment: xdsserver (the bundle's ServiceAccount: only the bundle's RBAC) with
// a real API server and kube-controller-manager (garbage collector, Deployment and ReplicaSet
// controllers; no kubelet: the test writes the pods' status). Checked in order:
//   - the GatewayClasses: istio-waypoint created (istio.io/mesh-controller), the user's istio
//     kept as it was; both Accepted;
//   - handson's Gateway: the namespace has a Service and a ServiceAccount "handson" of its own,
//     so its ServiceAccount, Deployment and Service are "handson-istio-waypoint" (istiod's
//     labels, owner, ports, pod template), the status says why, and the user's objects are
//     untouched (no field of istiod's manager, same resourceVersion);
//   - not Programmed while no pod runs; Programmed with the Service's IP and hostname once
//     the ReplicaSet's pod is Ready; the workload API sends the waypoint Service and binds
//     handson's Service to it;
//   - manual edits of managed fields are put back; a field the controller does not set
//     (replicas) is left to the user;
//   - the name-override annotation wins, and the objects of the old name go;
//   - an ingress Gateway (class istio) gets a LoadBalancer Service with its listener ports, a
//     new listener adds a port; Programmed stays False while the address is pending;
//   - a Gateway whose parametersRef asks for the Go waypoint gets cmd/waypoint's image; a
//     parameters ConfigMap with an unknown key makes it not Accepted;
//   - deleting a Gateway deletes its objects (the garbage collector), not the user's.
func TestGatewayDeployment(t *testing.T) {
	d := newDeployEnv(t)
	t0 := time.Now()
	defer func() { t.Logf("the checks took %v", time.Since(t0).Round(time.Millisecond)) }()
	ctx := d.ctx

	// GatewayClasses.
	eventually(t, time.Minute, "both GatewayClasses Accepted", func() bool {
		for _, name := range []string{"istio", "istio-waypoint"} {
			gc, err := d.gw.GatewayV1().GatewayClasses().Get(ctx, name, metav1.GetOptions{})
			if err != nil || !slices.ContainsFunc(gc.Status.Conditions, func(c metav1.Condition) bool {
				return c.Type == "Accepted" && c.Status == metav1.ConditionTrue && c.ObservedGeneration == gc.Generation
			}) {
				return false
			}
		}
		return true
	})
	wc, _ := d.gw.GatewayV1().GatewayClasses().Get(ctx, "istio-waypoint", metav1.GetOptions{})
	ic, _ := d.gw.GatewayV1().GatewayClasses().Get(ctx, "istio", metav1.GetOptions{})
	if wc.Spec.ControllerName != gatewaydeploy.MeshController || ic.Spec.Description == nil || *ic.Spec.Description != "the user's own class" {
		t.Errorf("classes: istio-waypoint %q, istio's description %v (the user's must stay)", wc.Spec.ControllerName, ic.Spec.Description)
	}

	// handson's waypoint, next to the user's Service and ServiceAccount "handson".
	userSvc, userSA := d.service("handson", "handson"), d.serviceAccount("handson", "handson")
	if _, err := d.s.Apply(ctx, "-f", filepath.Join(examples, "handson/k8s-gateway.yaml")); err != nil {
		t.Fatal(err)
	}
	gw := d.gateway(t, "handson", "handson")
	const name = "handson-istio-waypoint"
	eventually(t, time.Minute, "handson's ServiceAccount, Deployment and Service", func() bool {
		return d.deployment("handson", name) != nil && d.service("handson", name) != nil && d.serviceAccount("handson", name) != nil
	})
	dep, svc, sa := d.deployment("handson", name), d.service("handson", name), d.serviceAccount("handson", name)
	for _, o := range []metav1.Object{dep, svc, sa} {
		l := o.GetLabels()
		if !ownedByGateway(o, gw) || l["gateway.networking.k8s.io/gateway-name"] != "handson" || l["gateway.networking.k8s.io/gateway-class-name"] != "istio-waypoint" ||
			l["gateway.istio.io/managed"] != "istio.io-mesh-controller" || l["istio.io/waypoint-for"] != "service" || !slices.Contains(managedBy(o), gatewaydeploy.FieldManager) {
			t.Errorf("%s: labels %v, owners %v, managers %v", o.GetName(), l, o.GetOwnerReferences(), managedBy(o))
		}
	}
	tmpl := dep.Spec.Template
	c := tmpl.Spec.Containers[0]
	if tmpl.Labels["istio.io/dataplane-mode"] != "none" || tmpl.Labels["service.istio.io/canonical-name"] != name || tmpl.Spec.ServiceAccountName != name ||
		c.Name != "istio-proxy" || c.Image != gatewaydeploy.DefaultEnvoyImage || dep.Spec.Selector.MatchLabels["gateway.networking.k8s.io/gateway-name"] != "handson" {
		t.Errorf("pod template: labels %v, service account %q, container %s image %s", tmpl.Labels, tmpl.Spec.ServiceAccountName, c.Name, c.Image)
	}
	if !slices.ContainsFunc(tmpl.Spec.Volumes, func(v corev1.Volume) bool {
		return v.Projected != nil && v.Projected.Sources[0].ServiceAccountToken != nil && v.Projected.Sources[0].ServiceAccountToken.Audience == "istio-ca"
	}) {
		t.Error("no projected istio-ca token in the pod template")
	}
	var ports []string
	for _, p := range svc.Spec.Ports {
		ports = append(ports, fmt.Sprintf("%s/%d/%s/%s", p.Name, p.Port, *p.AppProtocol, p.TargetPort.String()))
	}
	if strings.Join(ports, " ") != "status-port/15021/tcp/15021 mesh/15008/hbone/15008" || svc.Spec.Type != corev1.ServiceTypeClusterIP || svc.Spec.ClusterIP == "" {
		t.Errorf("Service: ports %v, type %s, cluster IP %q", ports, svc.Spec.Type, svc.Spec.ClusterIP)
	}
	eventually(t, time.Minute, "handson's status: accepted under the fallback name, not programmed without pods", func() bool {
		gw = d.gateway(t, "handson", "handson")
		a, p := gwCondition(gw, "Accepted"), gwCondition(gw, "Programmed")
		return a.Status == metav1.ConditionTrue && strings.Contains(a.Message, `already has Service "handson" and ServiceAccount "handson"`) &&
			p.Status == metav1.ConditionFalse && p.Reason == "AddressNotAssigned"
	})
	if !strings.Contains(d.x.log.String(), "Gateway not deployed under its first name") {
		t.Error("no warning in xdsserver's log about the fallback name")
	}
	if n := d.runPods(t, "handson", "handson"); n != 1 {
		t.Errorf("%d waypoint pods", n)
	}
	hostname := name + ".handson.svc.cluster.local"
	eventually(t, time.Minute, "handson Programmed with its Service's addresses", func() bool {
		gw = d.gateway(t, "handson", "handson")
		p := gwCondition(gw, "Programmed")
		return p.Status == metav1.ConditionTrue && p.Message == "Resource programmed, assigned to service(s) "+hostname+":15008" &&
			len(gw.Status.Addresses) == 2 && gw.Status.Addresses[0].Value == svc.Spec.ClusterIP && gw.Status.Addresses[1].Value == hostname
	})
	// The model finds the deployed waypoint by its label: handson's Service goes through it,
	// named by its Service's hostname (Kubernetes mode refers to waypoints as istiod does).
	w := watch(t, d.x.host+":15010")
	eventually(t, time.Minute, "handson's Service bound to the deployed waypoint in the workload API", func() bool {
		a, _ := w.get(t)[xds.AddressType]["handson/handson.handson.svc.cluster.local"].(*workloadapi.Address)
		wp := a.GetService().GetWaypoint()
		_, own := w.get(t)[xds.AddressType]["handson/"+hostname]
		return own && wp != nil && wp.GetHostname().GetHostname() == hostname && wp.GetHostname().GetNamespace() == "handson" && wp.GetHboneMtlsPort() == 15008
	})
	if s := d.service("handson", "handson"); s.ResourceVersion != userSvc.ResourceVersion || slices.Contains(managedBy(s), gatewaydeploy.FieldManager) {
		t.Errorf("the user's Service handson changed: managers %v", managedBy(s))
	}
	if a := d.serviceAccount("handson", "handson"); a.ResourceVersion != userSA.ResourceVersion || slices.Contains(managedBy(a), gatewaydeploy.FieldManager) {
		t.Errorf("the user's ServiceAccount handson changed: managers %v", managedBy(a))
	}

	// Manual edits of managed fields are put back; replicas is the user's.
	for _, args := range [][]string{
		{"set", "image", "-n", "handson", "deployment/" + name, "istio-proxy=example.com/other:1"},
		{"label", "-n", "handson", "--overwrite", "service/" + name, "gateway.networking.k8s.io/gateway-name=other"},
		{"scale", "-n", "handson", "deployment/" + name, "--replicas=2"},
	} {
		if out, err := d.s.Kubectl(ctx, args...); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	eventually(t, time.Minute, "the managed fields put back", func() bool {
		dep, svc := d.deployment("handson", name), d.service("handson", name)
		return dep.Spec.Template.Spec.Containers[0].Image == gatewaydeploy.DefaultEnvoyImage && svc.Labels["gateway.networking.k8s.io/gateway-name"] == "handson"
	})
	if r := d.deployment("handson", name).Spec.Replicas; r == nil || *r != 2 {
		t.Errorf("replicas %v: the user's scale was undone", r)
	}

	// The name override wins; the old objects go.
	if _, err := d.s.Kubectl(ctx, "annotate", "-n", "handson", "gateway/handson", "gateway.istio.io/name-override=handson-wp"); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the objects renamed handson-wp, the old ones deleted", func() bool {
		return d.deployment("handson", "handson-wp") != nil && d.service("handson", "handson-wp") != nil && d.serviceAccount("handson", "handson-wp") != nil &&
			d.deployment("handson", name) == nil && d.service("handson", name) == nil && d.serviceAccount("handson", name) == nil
	})
	eventually(t, time.Minute, "the status without the fallback", func() bool {
		a := gwCondition(d.gateway(t, "handson", "handson"), "Accepted")
		return a.Status == metav1.ConditionTrue && a.Message == "Resource accepted"
	})

	// An ingress Gateway: a LoadBalancer Service with the listeners' ports.
	writeGateway := func(name, class, listeners string, extra ...string) {
		t.Helper()
		f := filepath.Join(t.TempDir(), "gw.yaml")
		os.WriteFile(f, []byte(`apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: `+name+`, namespace: handson}
spec:
  gatewayClassName: `+class+`
  listeners: `+listeners+`
`+strings.Join(extra, "\n")), 0o644)
		if out, err := d.s.Kubectl(ctx, "apply", "--server-side", "-f", f); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	writeGateway("ingress", "istio", `[{name: http, port: 80, protocol: HTTP}]`)
	svcPorts := func(name string) string {
		s := d.service("handson", name)
		if s == nil {
			return ""
		}
		var p []string
		for _, sp := range s.Spec.Ports {
			p = append(p, fmt.Sprintf("%s/%d", sp.Name, sp.Port))
		}
		return string(s.Spec.Type) + " " + strings.Join(p, " ")
	}
	eventually(t, time.Minute, "the ingress Service", func() bool { return svcPorts("ingress-istio") == "LoadBalancer status-port/15021 http/80" })
	writeGateway("ingress", "istio", `[{name: http, port: 80, protocol: HTTP}, {name: http.alt, port: 8080, protocol: HTTP}]`)
	eventually(t, time.Minute, "the new listener's port", func() bool {
		return svcPorts("ingress-istio") == "LoadBalancer status-port/15021 http/80 http-alt/8080"
	})
	d.runPods(t, "handson", "ingress")
	eventually(t, time.Minute, "the ingress Gateway's address pending (no load balancer here)", func() bool {
		p := gwCondition(d.gateway(t, "handson", "ingress"), "Programmed")
		return p.Status == metav1.ConditionFalse && p.Reason == "AddressNotAssigned" && strings.Contains(p.Message, `address pending for hostname "ingress-istio.handson.svc.cluster.local"`)
	})

	// The embedded Go waypoint, by the Gateway's parameters; a bad parameter is refused.
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "wp-params", Namespace: "handson"}, Data: map[string]string{gatewaydeploy.ProxyKey: "go"}}
	if _, err := d.s.Kube.CoreV1().ConfigMaps("handson").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	writeGateway("gowp", "istio-waypoint", `[{name: mesh, port: 15008, protocol: HBONE}]`, "  infrastructure: {parametersRef: {group: \"\", kind: ConfigMap, name: wp-params}}")
	eventually(t, time.Minute, "the Go waypoint's Deployment", func() bool {
		dep := d.deployment("handson", "gowp")
		return dep != nil && dep.Spec.Template.Spec.Containers[0].Image == gatewaydeploy.DefaultGoImage &&
			slices.Contains(dep.Spec.Template.Spec.Containers[0].Args, "--ca-address="+gatewaydeploy.DefaultSecureAddress)
	})
	cm.Data["horizontalPodAutoscaler"] = "spec: {maxReplicas: 3}"
	if _, err := d.s.Kube.CoreV1().ConfigMaps("handson").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "gowp not Accepted: InvalidParameters", func() bool {
		a := gwCondition(d.gateway(t, "handson", "gowp"), "Accepted")
		return a.Status == metav1.ConditionFalse && a.Reason == "InvalidParameters" && strings.Contains(a.Message, `unsupported key "horizontalPodAutoscaler"`)
	})

	// Deleting the Gateway deletes its objects (the garbage collector), not the user's.
	if err := d.gw.GatewayV1().Gateways("handson").Delete(ctx, "handson", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	tDel := time.Now()
	eventually(t, 2*time.Minute, "handson-wp's Deployment, Service and ServiceAccount garbage-collected", func() bool {
		return d.deployment("handson", "handson-wp") == nil && d.service("handson", "handson-wp") == nil && d.serviceAccount("handson", "handson-wp") == nil
	})
	t.Logf("garbage collected %v after the Gateway's deletion", time.Since(tDel).Round(time.Millisecond))
	if d.service("handson", "handson") == nil || d.serviceAccount("handson", "handson") == nil {
		t.Error("the user's Service or ServiceAccount handson is gone")
	}
}

func ipBytes(s string) []byte {
	var b [4]byte
	fmt.Sscanf(s, "%d.%d.%d.%d", &b[0], &b[1], &b[2], &b[3])
	return b[:]
}
