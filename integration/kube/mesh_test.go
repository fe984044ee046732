package kube_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/rootcm"
	"github.com/goambient/goambient/xdsserver/source/files"
	"github.com/goambient/goambient/xdsserver/wds"
	"github.com/goambient/goambient/ztunnel/xds"
)

// watcher is a delta ADS client of the workload API (ztunnel/xds.Client) that keeps what it
// was last sent.
type watcher struct {
	mu  sync.Mutex
	res map[string]map[string]*anypb.Any
}

func watch(t *testing.T, addr string) *watcher {
	t.Helper()
	w := &watcher{res: map[string]map[string]*anypb.Any{}}
	c, err := xds.New(xds.Options{Address: addr, NodeID: "ztunnel~127.0.0.1~watcher.istio-system~istio-system.svc.cluster.local",
		Types: xds.Types, Apply: func(typeURL string, r map[string]*anypb.Any) error {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.res[typeURL] = maps.Clone(r)
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-c.Synced():
	case <-time.After(time.Minute):
		t.Fatal("the workload API did not sync in a minute")
	}
	return w
}

// get decodes what was last sent: type URL → name → message.
func (w *watcher) get(t *testing.T) map[string]map[string]proto.Message {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]map[string]proto.Message{}
	for typ, set := range w.res {
		out[typ] = map[string]proto.Message{}
		for name, a := range set {
			var m proto.Message = &workloadapi.Address{}
			if typ == xds.AuthorizationType {
				m = &security.Authorization{}
			}
			if err := a.UnmarshalTo(m); err != nil {
				t.Fatalf("%s %s: %v", typ, name, err)
			}
			out[typ][name] = m
		}
	}
	return out
}

func (w *watcher) workload(t *testing.T, uid string) *workloadapi.Workload {
	a, _ := w.get(t)[xds.AddressType][uid].(*workloadapi.Address)
	return a.GetWorkload()
}

// clusterConfig is the model configuration cmd/xdsserver uses for a cluster.
func clusterConfig() model.Config {
	cfg := model.DefaultConfig()
	cfg.DeployWaypoints, cfg.FromCluster, cfg.CaptureByNodeAgent = false, true, true
	return cfg
}

// diff lists the resources that differ between two workload API sets.
func diff(got, want map[string]map[string]proto.Message) string {
	var out []string
	for _, typ := range xds.Types {
		for _, name := range slices.Sorted(maps.Keys(want[typ])) {
			g, ok := got[typ][name]
			switch {
			case !ok:
				out = append(out, "missing "+name+":\n"+prototext.Format(want[typ][name]))
			case !proto.Equal(g, want[typ][name]):
				out = append(out, fmt.Sprintf("differs %s:\n--- xdsserver\n%s--- files\n%s", name, prototext.Format(g), prototext.Format(want[typ][name])))
			}
		}
		for name := range got[typ] {
			if _, ok := want[typ][name]; !ok {
				out = append(out, "extra "+name+":\n"+prototext.Format(got[typ][name]))
			}
		}
	}
	return strings.Join(out, "\n")
}

// TestXdsserverInCluster runs the real xdsserver binary against the real API server with the
// bundle's ServiceAccount token (only the bundle's RBAC: nothing it does may be forbidden),
// and checks, in order: the workload API it serves is the files source's for the same
// objects (dumped from the API server); ZtunnelAccepted on the policies; the root in every
// namespace's ConfigMap, put back when deleted; a bad policy the CRD accepts gets Invalid
// while the rest is still served; labelling a namespace ambient does not enroll its running
// pod until istio-cni's node agent (played by the test) annotates it as redirected, which then
// enrolls it (tunnel protocol HBONE) without a restart; a pod without an IP is not sent until
// it has one.
func TestXdsserverInCluster(t *testing.T) {
	e := cluster(t)
	x := e.startXdsserver(t, e.net+".240")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	w := watch(t, x.host+":15010")

	// The same mesh as the files source reads from the same objects, once xdsserver's
	// deployment controller made handson's waypoint Service (no pods: no controller manager
	// here).
	eventually(t, time.Minute, "handson's waypoint Service", func() bool {
		_, err := e.s.Kube.CoreV1().Services("handson").Get(ctx, "handson-istio-waypoint", metav1.GetOptions{})
		return err == nil
	})
	objs := filepath.Join(t.TempDir(), "cluster.yaml")
	e.objectsYAML(t, objs)
	m, err := files.New(files.Options{Paths: []string{objs}, Model: clusterConfig()}).Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range m.Errors {
		t.Errorf("files source: %v", err)
	}
	want := wds.Translate(m, wds.Options{WaypointHostname: true}).ByType() // xdsserver's default with a cluster, as istiod
	if len(want[xds.AddressType]) < 20 || len(want[xds.AuthorizationType]) < 5 {
		t.Fatalf("the files source's mesh is too small: %d addresses, %d authorizations", len(want[xds.AddressType]), len(want[xds.AuthorizationType]))
	}
	var d string
	deadline := time.Now().Add(time.Minute)
	for d = diff(w.get(t), want); d != "" && time.Now().Before(deadline); d = diff(w.get(t), want) {
		time.Sleep(100 * time.Millisecond) // a rebuild may still be on its way (debounce)
	}
	if d != "" {
		t.Fatalf("xdsserver's workload API differs from the files source's for the same objects:\n%s", d)
	}
	t.Logf("workload API as the files source's: %d addresses, %d authorizations", len(want[xds.AddressType]), len(want[xds.AuthorizationType]))

	istio, err := istioclient.NewForConfig(e.s.Config)
	if err != nil {
		t.Fatal(err)
	}
	condition := func(ns, name string) (status, reason, msg string) {
		ap, err := istio.SecurityV1().AuthorizationPolicies(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range ap.Status.GetConditions() {
			if c.GetType() == "ZtunnelAccepted" {
				return c.GetStatus(), c.GetReason(), c.GetMessage()
			}
		}
		return "", "", ""
	}
	eventually(t, time.Minute, "ZtunnelAccepted on handson/layer4-authz", func() bool {
		s, r, _ := condition("handson", "layer4-authz")
		return s == "True" && r == "Accepted"
	})

	// The root in every namespace, as istiod publishes it; deleted, it comes back.
	rootIn := func(ns string) bool {
		cm, err := e.s.Kube.CoreV1().ConfigMaps(ns).Get(ctx, rootcm.ConfigMapName, metav1.GetOptions{})
		return err == nil && cm.Data[rootcm.DataKey] == x.rootPEM && cm.Labels[rootcm.LabelKey] == "true"
	}
	for _, ns := range []string{"istio-system", "handson", "default", "kube-system"} {
		eventually(t, time.Minute, "the root in "+ns, func() bool { return rootIn(ns) })
	}
	if _, err := e.s.Kube.CoreV1().ConfigMaps("kube-public").Get(ctx, rootcm.ConfigMapName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("kube-public has the root ConfigMap (istiod skips it): %v", err)
	}
	if err := e.s.Kube.CoreV1().ConfigMaps("handson").Delete(ctx, rootcm.ConfigMapName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the root back in handson", func() bool { return rootIn("handson") })

	// A policy the CRD accepts and Istio's semantics refuse (a port must be a number).
	ns := "kube-" + strings.ReplaceAll(e.net, ".", "-")
	if err := e.s.CreateNamespace(ctx, ns, nil); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: `+ns+`}
spec: {action: ALLOW, rules: [{to: [{operation: {ports: [http]}}]}]}
`), 0o644)
	if _, err := e.s.Kubectl(ctx, "apply", "--server-side", "-f", bad); err != nil {
		t.Fatalf("the CRD refused a policy only Istio's semantics reject: %v", err)
	}
	eventually(t, time.Minute, "ZtunnelAccepted False/Invalid on the bad policy", func() bool {
		s, r, msg := condition(ns, "bad")
		return s == "False" && r == "Invalid" && strings.HasPrefix(msg, "spec.rules[0].to[0].operation.ports[0]: ")
	})
	if got := w.get(t); diff(got, want) != "" || got[xds.AuthorizationType][ns+"/bad"] != nil {
		t.Errorf("the bad policy changed what is served:\n%s", diff(got, want))
	}

	// A running pod in a namespace outside the mesh, then the namespace labelled ambient.
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: ns, Labels: map[string]string{"app": "app"}},
		Spec: corev1.PodSpec{NodeName: Node, Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
	if pod, err = e.s.Kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	uid := "Kubernetes//Pod/" + ns + "/app"
	if _, err := e.s.SetPodRunning(ctx, pod, e.net+".230"); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the running pod, outside the mesh", func() bool {
		return w.workload(t, uid).GetTunnelProtocol() == workloadapi.TunnelProtocol_NONE && w.workload(t, uid) != nil
	})
	if _, err := e.s.Kubectl(ctx, "label", "namespace", ns, "istio.io/dataplane-mode=ambient"); err != nil {
		t.Fatal(err)
	}
	// The label alone enrolls nothing in Kubernetes mode: istio-cni's node agent must first
	// redirect the pod and annotate it (istiod's rule). A pod created after the label is
	// waited for, so that a rebuild after the label has (almost surely: namespaces and pods
	// are two watches, not ordered) happened; the pod must still be NONE.
	labelled := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "labelled", Namespace: ns},
		Spec: corev1.PodSpec{NodeName: Node, Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
	if labelled, err = e.s.Kube.CoreV1().Pods(ns).Create(ctx, labelled, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.SetPodRunning(ctx, labelled, e.net+".233"); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the pod created after the label", func() bool { return w.workload(t, "Kubernetes//Pod/"+ns+"/labelled") != nil })
	if got := w.workload(t, uid).GetTunnelProtocol(); got != workloadapi.TunnelProtocol_NONE {
		t.Fatalf("the namespace's label alone made the pod %v: no node agent has redirected it", got)
	}
	// The node agent's part (none runs here).
	if _, err := e.s.SetRedirected(ctx, pod); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the pod enrolled (HBONE) once the node agent annotated it", func() bool {
		return w.workload(t, uid).GetTunnelProtocol() == workloadapi.TunnelProtocol_HBONE
	})
	if p, err := e.s.Kube.CoreV1().Pods(ns).Get(ctx, "app", metav1.GetOptions{}); err != nil || p.UID != pod.UID {
		t.Errorf("the pod was replaced: %v", err)
	}

	// A pod the kubelet has not started: no address, so not sent (istiod's rule), until it has one.
	pending := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "pending", Namespace: ns},
		Spec: corev1.PodSpec{NodeName: Node, Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
	if pending, err = e.s.Kube.CoreV1().Pods(ns).Create(ctx, pending, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	marker := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "marker", Namespace: ns},
		Spec: corev1.PodSpec{NodeName: Node, Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
	if marker, err = e.s.Kube.CoreV1().Pods(ns).Create(ctx, marker, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.SetPodRunning(ctx, marker, e.net+".231"); err != nil {
		t.Fatal(err)
	}
	// The marker pod was created after the pending one: once it is served, the pending one was
	// seen by the same or an earlier build.
	eventually(t, time.Minute, "the marker pod", func() bool { return w.workload(t, "Kubernetes//Pod/"+ns+"/marker") != nil })
	if wl := w.workload(t, "Kubernetes//Pod/"+ns+"/pending"); wl != nil {
		t.Fatalf("a pod without an IP was sent: %v", prototext.Format(wl))
	}
	if _, err := e.s.SetPodRunning(ctx, pending, e.net+".232"); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the pod, once it has its IP", func() bool {
		wl := w.workload(t, "Kubernetes//Pod/"+ns+"/pending")
		return wl != nil && len(wl.GetAddresses()) == 1
	})
	x.noForbidden(t)
}
