package kube

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	networkingclient "istio.io/client-go/pkg/apis/networking/v1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"
	"sigs.k8s.io/yaml"

	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/source/files"
	"github.com/goambient/goambient/xdsserver/waypointxds"
	"github.com/goambient/goambient/xdsserver/wds"
)

const examples = "../../../manifests/examples"

// TestMain turns off client-go's watch-list (streaming initial list) for these tests: Istio's
// fake clientset does not say it lacks it (the Kubernetes and Gateway API fakes do), and its
// tracker never sends the bookmark that ends the initial events, so its informers would never
// sync. Real API servers support it.
func TestMain(m *testing.M) {
	if err := os.Setenv("KUBE_FEATURE_WatchListClient", "false"); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}

// objects decodes the scenario files into client-go typed objects, per clientset. A Namespace
// declared again has its labels merged, as the files source does (handson's k8s-gateway.yaml
// labels the namespace the way a user would with kubectl label).
func objects(t *testing.T, paths ...string) (kube, istio, gw []runtime.Object) {
	t.Helper()
	namespaces := map[string]*corev1.Namespace{}
	for _, p := range paths {
		data, err := os.ReadFile(filepath.Join(examples, p))
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range bytes.Split(data, []byte("\n---")) {
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			var obj runtime.Object
			switch tm.Kind {
			case "Namespace":
				obj = &corev1.Namespace{}
			case "ServiceAccount":
				obj = &corev1.ServiceAccount{}
			case "Service":
				obj = &corev1.Service{}
			case "Pod":
				obj = &corev1.Pod{}
			case "EndpointSlice":
				obj = &discoveryv1.EndpointSlice{}
			case "AuthorizationPolicy":
				obj = &securityclient.AuthorizationPolicy{}
			case "PeerAuthentication":
				obj = &securityclient.PeerAuthentication{}
			case "RequestAuthentication":
				obj = &securityclient.RequestAuthentication{}
			case "ConfigMap":
				obj = &corev1.ConfigMap{}
			case "Gateway":
				obj = &gwv1.Gateway{}
			case "GatewayClass":
				obj = &gwv1.GatewayClass{}
			case "HTTPRoute":
				obj = &gwv1.HTTPRoute{}
			case "VirtualService":
				obj = &networkingclient.VirtualService{}
			case "DestinationRule":
				obj = &networkingclient.DestinationRule{}
			case "ServiceEntry":
				obj = &networkingclient.ServiceEntry{}
			case "WorkloadEntry":
				obj = &networkingclient.WorkloadEntry{}
			case "":
				continue
			default:
				t.Fatalf("%s: kind %s not handled by the test", p, tm.Kind)
			}
			if err := yaml.UnmarshalStrict(doc, obj); err != nil {
				t.Fatalf("%s: %s: %v", p, tm.Kind, err)
			}
			switch o := obj.(type) {
			case *corev1.Namespace:
				if prev := namespaces[o.Name]; prev != nil {
					maps.Copy(prev.Labels, o.Labels)
					continue
				}
				namespaces[o.Name] = o
				kube = append(kube, o)
			case *securityclient.AuthorizationPolicy, *securityclient.PeerAuthentication, *securityclient.RequestAuthentication, *networkingclient.VirtualService, *networkingclient.DestinationRule,
				*networkingclient.ServiceEntry, *networkingclient.WorkloadEntry:
				if m, ok := obj.(metav1.Object); ok && m.GetNamespace() == "" {
					m.SetNamespace("default") // kubectl's default namespace
				}
				istio = append(istio, obj)
			case *gwv1.Gateway, *gwv1.GatewayClass, *gwv1.HTTPRoute:
				gw = append(gw, obj)
			default:
				kube = append(kube, obj)
			}
		}
	}
	return kube, istio, gw
}

// cluster is the three fake clientsets; started counts the watches the informers opened, so a
// test changes objects only once every informer watches (the fakes do not replay missed events).
type cluster struct {
	kube    *kubefake.Clientset
	istio   *istiofake.Clientset
	gw      *gwfake.Clientset
	started chan string
	written chan struct{} // a status write was stored
}

const informerCount = 17

func newCluster(kube, istio, gw []runtime.Object) *cluster {
	c := &cluster{
		kube: kubefake.NewClientset(kube...), istio: istiofake.NewSimpleClientset(istio...), gw: gwfake.NewSimpleClientset(),
		started: make(chan string, 64), written: make(chan struct{}, 1),
	}
	// Gateway API objects are created through the typed v1 client: given to the constructor,
	// the tracker files a Gateway under v1beta1 (an alias of the v1 type in the same scheme),
	// where a v1 informer does not look; NewClientset's field-managed tracker cannot type these
	// CRDs at all (kubernetes/kubernetes#126850), hence NewSimpleClientset.
	for _, o := range gw {
		var err error
		switch o := o.(type) {
		case *gwv1.Gateway:
			_, err = c.gw.GatewayV1().Gateways(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{})
		case *gwv1.GatewayClass:
			_, err = c.gw.GatewayV1().GatewayClasses().Create(context.Background(), o, metav1.CreateOptions{})
		case *gwv1.HTTPRoute:
			_, err = c.gw.GatewayV1().HTTPRoutes(cmp.Or(o.Namespace, "default")).Create(context.Background(), o, metav1.CreateOptions{})
		}
		if err != nil {
			panic(err)
		}
	}
	watchStarted := func(tracker k8stesting.ObjectTracker) k8stesting.WatchReactionFunc {
		return func(a k8stesting.Action) (bool, watch.Interface, error) {
			w, err := tracker.Watch(a.GetResource(), a.GetNamespace())
			if err != nil {
				return false, nil, err
			}
			select {
			case c.started <- a.GetResource().Resource:
			default:
			}
			return true, w, nil
		}
	}
	c.kube.PrependWatchReactor("*", watchStarted(c.kube.Tracker()))
	c.istio.PrependWatchReactor("*", watchStarted(c.istio.Tracker()))
	c.gw.PrependWatchReactor("*", watchStarted(c.gw.Tracker()))
	store := k8stesting.ObjectReaction(c.istio.Tracker())
	c.istio.PrependReactor("update", "authorizationpolicies", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "status" {
			return false, nil, nil
		}
		handled, obj, err := store(a)
		select {
		case c.written <- struct{}{}:
		default:
		}
		return handled, obj, err
	})
	return c
}

func (c *cluster) clients() Clients { return Clients{Kube: c.kube, Istio: c.istio, Gateway: c.gw} }

// run is a running source and the meshes it pushed.
type run struct {
	t      *testing.T
	pushes chan *model.Mesh
	cancel func()
	done   chan error
}

func start(t *testing.T, c *cluster, opts Options) *run {
	t.Helper()
	opts.Debounce = time.Millisecond
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Model.ClusterID == "" {
		opts.Model = model.DefaultConfig()
	}
	r := &run{t: t, pushes: make(chan *model.Mesh, 64), done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	src := New(c.clients(), opts)
	go func() { r.done <- src.Run(ctx, func(m *model.Mesh) { r.pushes <- m }) }()
	t.Cleanup(r.stop)
	deadline := time.After(20 * time.Second)
	for range informerCount {
		select {
		case <-c.started:
		case <-deadline:
			t.Fatal("the informers did not all start watching")
		}
	}
	return r
}

// stop cancels the source; it must return nil (it never stopped on its own before).
func (r *run) stop() {
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			r.t.Errorf("Run: %v", err)
		}
		r.done <- nil
	case <-time.After(20 * time.Second):
		r.t.Error("Run did not return after its context was cancelled")
	}
}

// wait returns the first pushed mesh that satisfies cond.
func (r *run) wait(what string, cond func(*model.Mesh) bool) *model.Mesh {
	r.t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case m := <-r.pushes:
			if cond(m) {
				return m
			}
		case err := <-r.done:
			r.done <- err
			r.t.Fatalf("the source stopped (%v) before a push with %s", err, what)
		case <-deadline:
			r.t.Fatalf("no push with %s", what)
		}
	}
}

func anyMesh(*model.Mesh) bool { return true }

// render is the workload API the mesh translates to, one resource per line.
func render(t *testing.T, m *model.Mesh) string {
	t.Helper()
	r := wds.Translate(m, wds.Options{})
	var b strings.Builder
	add := func(msg proto.Message) {
		js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := json.Unmarshal(js, &v); err != nil {
			t.Fatal(err)
		}
		canon, err := json.Marshal(v) // compact and stable, unlike protojson's output
		if err != nil {
			t.Fatal(err)
		}
		b.Write(canon)
		b.WriteByte('\n')
	}
	for _, a := range r.Addresses {
		add(a)
	}
	for _, a := range r.Authorizations {
		add(a)
	}
	return b.String()
}

func errorsOf(m *model.Mesh) string {
	var out []string
	for _, e := range m.Errors {
		out = append(out, e.Error())
	}
	return strings.Join(out, "\n")
}

// TestSameAsFiles: the scenarios, created in the fake clusters, give the mesh the files source
// builds from the same files (compared as the workload API ztunnels receive).
func TestSameAsFiles(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []string
	}{
		{"handson", []string{"handson/mesh.yaml"}},
		{"handson-l4", []string{"handson/mesh.yaml", "handson/L4-authorization-policy.yaml"}},
		{"handson-waypoint", []string{"handson/mesh.yaml", "handson/k8s-gateway.yaml", "handson/L7-authorization-policy.yaml"}},
		{"demo-strict", []string{"demo-strict/mesh.yaml", "demo-strict/authz-policy.yaml", "demo-strict/peer-authentication.yaml"}},
		{"bookinfo-lite", []string{"bookinfo-lite/mesh.yaml", "bookinfo-lite/rbac.yaml", "bookinfo-lite/allow-nothing.yaml"}},
		{"traffic-canary", []string{"traffic/mesh.yaml", "traffic/waypoint.yaml", "traffic/destination-rule.yaml", "traffic/virtual-service-canary.yaml"}},
		{"traffic-delay", []string{"traffic/mesh.yaml", "traffic/waypoint.yaml", "traffic/virtual-service-delay.yaml"}},
		{"jwt", []string{"jwt/mesh.yaml", "jwt/request-authentication.yaml", "jwt/require-jwt.yaml", "jwt/mesh-config.yaml", "jwt/custom-admin.yaml"}},
		{"egress", []string{"egress/mesh.yaml", "egress/service-entry.yaml"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var paths []string
			for _, f := range tc.files {
				paths = append(paths, filepath.Join(examples, f))
			}
			want, err := files.New(files.Options{Paths: paths, Model: model.DefaultConfig()}).Load()
			if err != nil {
				t.Fatal(err)
			}
			if len(want.Errors) != 0 {
				t.Fatalf("the files source reports errors:\n%s", errorsOf(want))
			}
			r := start(t, newCluster(objects(t, tc.files...)), Options{})
			got := r.wait("the first mesh", anyMesh)
			if len(got.Errors) != 0 {
				t.Errorf("errors:\n%s", errorsOf(got))
			}
			if g, w := render(t, got), render(t, want); g != w {
				t.Errorf("workload API differs from the files source's\n--- kube\n%s--- files\n%s", g, w)
			}
			if g, w := len(got.Policies.RequestAuthentications), len(want.Policies.RequestAuthentications); g != w {
				t.Errorf("%d RequestAuthentications, the files source has %d", g, w)
			}
			if g, w := providerNames(got), providerNames(want); g != w {
				t.Errorf("mesh config providers %q, the files source has %q", g, w)
			}
			if tc.name == "jwt" && (providerNames(got) != "opa" || len(got.Policies.RequestAuthentications) != 1) {
				t.Errorf("the jwt scenario's RequestAuthentication and mesh config are missing")
			}
			if strings.HasPrefix(tc.name, "traffic") && len(got.Routing.Services) == 0 {
				t.Error("no Service has routing")
			}
			if g, w := renderRouting(t, got), renderRouting(t, want); g != w {
				t.Errorf("routing differs from the files source's\n--- kube\n%s--- files\n%s", g, w)
			}
			if len(got.Workloads) != len(want.Workloads) || len(got.Services) != len(want.Services) || len(got.Waypoints) != len(want.Waypoints) ||
				len(got.Policies.AuthorizationPolicies) != len(want.Policies.AuthorizationPolicies) || len(got.Policies.PeerAuthentications) != len(want.Policies.PeerAuthentications) {
				t.Errorf("counts differ: kube %d/%d/%d/%d/%d, files %d/%d/%d/%d/%d (workloads/services/waypoints/authz/peerauthn)",
					len(got.Workloads), len(got.Services), len(got.Waypoints), len(got.Policies.AuthorizationPolicies), len(got.Policies.PeerAuthentications),
					len(want.Workloads), len(want.Services), len(want.Waypoints), len(want.Policies.AuthorizationPolicies), len(want.Policies.PeerAuthentications))
			}
		})
	}
}

// TestServiceEntryStatus: a ServiceEntry's VIPs are the ones istiod's allocator wrote to its
// status, and a WorkloadEntry becomes a workload, read through the informers.
func TestServiceEntryStatus(t *testing.T) {
	se := &networkingclient.ServiceEntry{}
	if err := yaml.UnmarshalStrict([]byte(`
metadata: {name: api, namespace: default}
spec: {hosts: [api.example.com], resolution: DNS, ports: [{name: http, number: 80, protocol: HTTP}]}
status: {addresses: [{host: api.example.com, value: 240.240.3.4}]}`), se); err != nil {
		t.Fatal(err)
	}
	we := &networkingclient.WorkloadEntry{}
	if err := yaml.UnmarshalStrict([]byte(`
metadata: {name: vm, namespace: default}
spec: {address: 10.200.0.9, serviceAccount: vm}`), we); err != nil {
		t.Fatal(err)
	}
	r := start(t, newCluster(nil, []runtime.Object{se, we}, nil), Options{})
	m := r.wait("the ServiceEntry and the WorkloadEntry", func(m *model.Mesh) bool { return len(m.ServiceEntries) == 1 && len(m.EntryWorkloads) == 2 })
	if vips := m.ServiceEntries[0].Services[0].VIPs; len(vips) != 1 || vips[0].String() != "240.240.3.4" {
		t.Errorf("VIPs %v, want the status's 240.240.3.4", vips)
	}
	if w := m.EntryWorkloads[1]; w.Kind != model.KindWorkloadEntry || w.ServiceAccount != "vm" || len(w.IPs) != 1 {
		t.Errorf("WorkloadEntry workload %+v", w)
	}
}

func policy(t *testing.T, y string) *securityclient.AuthorizationPolicy {
	t.Helper()
	ap := &securityclient.AuthorizationPolicy{}
	if err := yaml.UnmarshalStrict([]byte(y), ap); err != nil {
		t.Fatal(err)
	}
	return ap
}

func names(m *model.Mesh) string {
	var out []string
	for _, p := range m.Policies.AuthorizationPolicies {
		out = append(out, p.Key())
	}
	return strings.Join(out, ",")
}

// waitCondition waits until the policy's ZtunnelAccepted condition satisfies cond (status writes
// follow the push), looking again after each status write, and returns it.
func waitCondition(t *testing.T, c *cluster, ns, name string, cond func(status, reason, message string) bool) string {
	t.Helper()
	deadline := time.After(20 * time.Second)
	last := "none"
	for {
		ap, err := c.istio.SecurityV1().AuthorizationPolicies(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err == nil {
			for _, x := range ap.Status.GetConditions() {
				if x.GetType() == ConditionZtunnelAccepted {
					last = x.GetStatus() + " " + x.GetReason() + ": " + x.GetMessage()
					if cond(x.GetStatus(), x.GetReason(), x.GetMessage()) {
						return last
					}
				}
			}
		}
		select {
		case <-c.written:
		case <-deadline:
			t.Fatalf("%s/%s: condition %s never as expected", ns, name, last)
		}
	}
}

// TestPolicyLifecycle adds, updates, breaks and deletes AuthorizationPolicies in the fake
// cluster: each change gives a new mesh, a bad policy is reported and left out without
// touching the rest, and the policies get istiod's ZtunnelAccepted condition.
func TestPolicyLifecycle(t *testing.T) {
	c := newCluster(objects(t, "handson/mesh.yaml"))
	r := start(t, c, Options{})
	ctx := context.Background()
	aps := c.istio.SecurityV1().AuthorizationPolicies("handson")

	first := r.wait("the first mesh", anyMesh)
	if len(first.Workloads) != 4 || len(first.Policies.AuthorizationPolicies) != 0 || len(first.Errors) != 0 {
		t.Fatalf("first mesh: %d workloads, %d policies, errors:\n%s", len(first.Workloads), len(first.Policies.AuthorizationPolicies), errorsOf(first))
	}
	base := render(t, first)

	// Add.
	_, istio, _ := objects(t, "handson/L4-authorization-policy.yaml")
	if _, err := aps.Create(ctx, istio[0].(*securityclient.AuthorizationPolicy), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	m := r.wait("the policy added", func(m *model.Mesh) bool { return names(m) == "handson/layer4-authz" })
	if len(m.Errors) != 0 || !strings.Contains(render(t, m), `"name":"layer4-authz"`) {
		t.Errorf("errors:\n%s", errorsOf(m))
	}
	withPolicy := render(t, m)
	waitCondition(t, c, "handson", "layer4-authz", func(s, reason, msg string) bool {
		return s == "True" && reason == ReasonAccepted && msg == "attached to ztunnel"
	})

	// Update: the DENY now also covers port 9090.
	cur, err := aps.Get(ctx, "layer4-authz", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	upd := cur.DeepCopy()
	upd.Spec.Rules[0].To[0].Operation.Ports = []string{"8080", "9090"}
	if _, err := aps.Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	m = r.wait("the policy updated", func(m *model.Mesh) bool {
		return len(m.Policies.AuthorizationPolicies) == 1 && len(m.Policies.AuthorizationPolicies[0].Spec.GetRules()[0].GetTo()[0].GetOperation().GetPorts()) == 2
	})
	if render(t, m) == withPolicy {
		t.Error("the update did not change the workload API")
	}

	// An invalid policy: reported, left out, the rest unchanged; status False/Invalid.
	bad := policy(t, `
metadata: {name: bad, namespace: handson}
spec: {action: ALLOW, rules: [{to: [{operation: {ports: [http]}}]}]}
`)
	if _, err := aps.Create(ctx, bad, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	m = r.wait("the bad policy reported", func(m *model.Mesh) bool { return strings.Contains(errorsOf(m), "handson/bad") })
	if names(m) != "handson/layer4-authz" || len(m.Errors) != 1 || !strings.Contains(errorsOf(m), "k8s: AuthorizationPolicy handson/bad: spec.rules[0].to[0].operation.ports[0]") {
		t.Errorf("policies %s, errors:\n%s", names(m), errorsOf(m))
	}
	waitCondition(t, c, "handson", "bad", func(s, reason, msg string) bool {
		return s == "False" && reason == ReasonInvalid && strings.HasPrefix(msg, "spec.rules[0].to[0].operation.ports[0]: ")
	})

	// An L7 rule ztunnel cannot enforce: kept, accepted with istiod's warning.
	l7 := policy(t, `
metadata: {name: paths, namespace: handson}
spec: {selector: {matchLabels: {app: handson}}, action: ALLOW, rules: [{to: [{operation: {paths: [/admin]}}]}]}
`)
	if _, err := aps.Create(ctx, l7, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r.wait("the L7 policy", func(m *model.Mesh) bool { return names(m) == "handson/layer4-authz,handson/paths" })
	waitCondition(t, c, "handson", "paths", func(s, reason, msg string) bool {
		return s == "True" && reason == ReasonUnsupportedValue && strings.HasPrefix(msg, "ztunnel does not support HTTP attributes (found: paths)")
	})

	// Fixing the bad policy makes it valid and accepted.
	cur, err = aps.Get(ctx, "bad", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	upd = cur.DeepCopy()
	upd.Spec.Rules[0].To[0].Operation.Ports = []string{"8080"}
	if _, err := aps.Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	r.wait("the fixed policy", func(m *model.Mesh) bool { return len(m.Errors) == 0 && len(m.Policies.AuthorizationPolicies) == 3 })
	waitCondition(t, c, "handson", "bad", func(s, reason, _ string) bool { return s == "True" && reason == ReasonAccepted })

	// Delete them all: back to the first mesh.
	for _, name := range []string{"bad", "paths", "layer4-authz"} {
		if err := aps.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	m = r.wait("the policies deleted", func(m *model.Mesh) bool { return len(m.Policies.AuthorizationPolicies) == 0 })
	if got := render(t, m); got != base || len(m.Errors) != 0 {
		t.Errorf("after deleting every policy the mesh differs from the first one; errors:\n%s", errorsOf(m))
	}
	r.stop()
	checkRBAC(t, c)
}

// checkRBAC: every call the source made is allowed by manifests/install/xdsserver-rbac.yaml (the
// test's own creates, updates and deletes left aside).
func checkRBAC(t *testing.T, c *cluster) {
	t.Helper()
	data, err := os.ReadFile("../../../manifests/install/xdsserver-rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var role rbacv1.ClusterRole
	for _, doc := range bytes.Split(data, []byte("\n---")) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err == nil && tm.Kind == "ClusterRole" {
			if err := yaml.UnmarshalStrict(doc, &role); err != nil {
				t.Fatal(err)
			}
		}
	}
	allowed := func(group, resource, verb string) bool {
		for _, r := range role.Rules {
			if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
				return true
			}
		}
		return false
	}
	seen := 0
	for _, a := range slices.Concat(c.kube.Actions(), c.istio.Actions(), c.gw.Actions()) {
		verb, res := a.GetVerb(), a.GetResource()
		resource := res.Resource
		switch {
		case verb == "list" || verb == "watch":
		case verb == "update" && a.GetSubresource() == "status":
			resource += "/status"
		default:
			continue // the test's own calls
		}
		seen++
		if !allowed(res.Group, resource, verb) {
			t.Errorf("the ClusterRole does not allow %s on %s (group %q)", verb, resource, res.Group)
		}
	}
	if seen < 2*informerCount {
		t.Errorf("only %d calls of the source recorded", seen)
	}
}

// TestStatusWriteFailure: the API server refusing status writes is logged; the source keeps
// pushing meshes.
func TestStatusWriteFailure(t *testing.T) {
	c := newCluster(objects(t, "handson/mesh.yaml"))
	var mu sync.Mutex
	refused := 0
	c.istio.PrependReactor("update", "authorizationpolicies", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "status" {
			return false, nil, nil
		}
		mu.Lock()
		refused++
		mu.Unlock()
		return true, nil, errors.New("the server is on fire")
	})
	r := start(t, c, Options{})
	r.wait("the first mesh", anyMesh)
	aps := c.istio.SecurityV1().AuthorizationPolicies("handson")
	_, istio, _ := objects(t, "handson/L4-authorization-policy.yaml")
	if _, err := aps.Create(context.Background(), istio[0].(*securityclient.AuthorizationPolicy), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r.wait("the policy", func(m *model.Mesh) bool { return len(m.Policies.AuthorizationPolicies) == 1 })
	ns := c.kube.CoreV1().Namespaces()
	if _, err := ns.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "later"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r.wait("a later change", func(m *model.Mesh) bool { return m.Namespace("later") != nil })
	mu.Lock()
	defer mu.Unlock()
	if refused == 0 {
		t.Error("no status write was attempted")
	}
}

// TestNoStatus: with NoStatus nothing is written.
func TestNoStatus(t *testing.T) {
	_, istio, _ := objects(t, "handson/L4-authorization-policy.yaml")
	kube, _, _ := objects(t, "handson/mesh.yaml")
	c := newCluster(kube, istio, nil)
	r := start(t, c, Options{NoStatus: true})
	r.wait("the first mesh", func(m *model.Mesh) bool { return len(m.Policies.AuthorizationPolicies) == 1 })
	r.stop()
	for _, a := range c.istio.Actions() {
		if a.GetVerb() == "update" {
			t.Errorf("unexpected write: %v", a)
		}
	}
}

func TestWithCondition(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	want := &condition{status: true, reason: ReasonAccepted, message: messageAccepted}
	conds, changed := withCondition(nil, want, 3, t0)
	if !changed || len(conds) != 1 || conds[0].GetObservedGeneration() != 3 || !conds[0].GetLastTransitionTime().AsTime().Equal(t0) {
		t.Fatalf("new condition: %v %v", changed, conds)
	}
	if _, changed := withCondition(conds, want, 3, t0.Add(time.Hour)); changed {
		t.Error("an unchanged condition must not be written again")
	}
	warn := &condition{status: true, reason: ReasonUnsupportedValue, message: "x"}
	next, changed := withCondition(conds, warn, 3, t0.Add(time.Hour))
	if !changed || !next[0].GetLastTransitionTime().AsTime().Equal(t0) {
		t.Errorf("same status: the transition time must stay: %v", next)
	}
	next, changed = withCondition(next, &condition{status: false, reason: ReasonInvalid}, 4, t0.Add(2*time.Hour))
	if !changed || !next[0].GetLastTransitionTime().AsTime().Equal(t0.Add(2*time.Hour)) || next[0].GetStatus() != "False" {
		t.Errorf("status changed: %v", next)
	}
	if conds[0].GetReason() != ReasonAccepted {
		t.Error("the input was modified")
	}
	if out, changed := withCondition(next, nil, 4, t0); !changed || len(out) != 0 {
		t.Errorf("removal: %v %v", changed, out)
	}
}

func TestMissingClient(t *testing.T) {
	err := New(Clients{}, Options{}).Run(context.Background(), func(*model.Mesh) {})
	if err == nil || !strings.Contains(err.Error(), "clientsets are all required") {
		t.Errorf("Run without clients: %v", err)
	}
}

// renderRouting is what the waypoints route with: each waypoint's RDS route configurations
// and CDS clusters, as protojson lines.
func renderRouting(t *testing.T, m *model.Mesh) string {
	t.Helper()
	r := waypointxds.Translate(m, waypointxds.Options{})
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(r.Waypoints)) {
		w := r.Waypoints[k]
		var msgs []proto.Message
		for _, x := range w.Routes {
			msgs = append(msgs, x)
		}
		for _, x := range w.Clusters {
			msgs = append(msgs, x)
		}
		for _, x := range w.Endpoints {
			msgs = append(msgs, x)
		}
		for _, msg := range msgs {
			js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(msg)
			if err != nil {
				t.Fatal(err)
			}
			var v any
			if err := json.Unmarshal(js, &v); err != nil {
				t.Fatal(err)
			}
			canon, _ := json.Marshal(v)
			b.Write(canon)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

func providerNames(m *model.Mesh) string {
	if m.MeshConfig == nil {
		return ""
	}
	names := slices.Sorted(maps.Keys(m.MeshConfig.Providers))
	return strings.Join(names, ",")
}
