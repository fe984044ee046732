package kube

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kubeinformers "k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/goambient/goambient/xdsserver/model"
)

func node(name string, labels map[string]string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Status: corev1.NodeStatus{Images: []corev1.ContainerImage{{Names: []string{"big-image"}}}}}
}

// TestNodeLocality: a pod's locality is its Node's topology labels (worker2 has none, a node
// the cluster does not have gives none); changing a Node's zone gives a new mesh with it.
func TestNodeLocality(t *testing.T) {
	kube, istio, gw := objects(t, "handson/mesh.yaml")
	kube = append(kube, node("worker", map[string]string{
		"topology.kubernetes.io/region": "eu", "topology.kubernetes.io/zone": "eu-1a", "topology.istio.io/subzone": "rack-1", "kubernetes.io/os": "linux",
	}), node("worker2", map[string]string{"kubernetes.io/os": "linux"}))
	c := newCluster(kube, istio, gw)
	r := start(t, c, Options{})
	m := r.wait("the first mesh", anyMesh)
	if got, want := m.Workload("handson", "curl-allow").Locality, (model.Locality{Region: "eu", Zone: "eu-1a", Subzone: "rack-1"}); got != want {
		t.Errorf("curl-allow on worker: locality %+v, want %+v", got, want)
	}
	if got := m.Workload("handson", "handson-blue").Locality; !got.IsZero() {
		t.Errorf("handson-blue on worker2 (no topology labels): locality %+v", got)
	}
	if got := m.Localities["worker"].Zone; got != "eu-1a" {
		t.Errorf("worker's zone %q", got)
	}

	ctx := context.Background()
	w2, err := c.kube.CoreV1().Nodes().Get(ctx, "worker2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w2 = w2.DeepCopy()
	w2.Labels["topology.kubernetes.io/zone"] = "eu-1b"
	if _, err := c.kube.CoreV1().Nodes().Update(ctx, w2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	r.wait("handson-blue in worker2's new zone", func(m *model.Mesh) bool {
		return m.Workload("handson", "handson-blue").Locality == model.Locality{Zone: "eu-1b"}
	})
	r.stop()
	checkRBAC(t, c)
}

// TestNodeUpdates: the informer keeps a Node's name and topology labels only, and an update
// of a Node rebuilds the mesh only when those labels changed (a kubelet updates its Node's
// status all the time).
func TestNodeUpdates(t *testing.T) {
	c := newCluster([]runtime.Object{node("worker", map[string]string{"topology.kubernetes.io/zone": "a", "kubernetes.io/os": "linux"})}, nil, nil)
	kf := kubeinformers.NewSharedInformerFactory(c.kube, 0)
	inf := nodeInformer(kf)
	stop := make(chan struct{})
	defer close(stop)
	kf.Start(stop)
	if !cache.WaitForCacheSync(stop, inf.HasSynced) {
		t.Fatal("not synced")
	}
	cached := inf.GetStore().List()
	if len(cached) != 1 {
		t.Fatalf("%d nodes cached", len(cached))
	}
	if n := cached[0].(*corev1.Node); n.Name != "worker" || len(n.Labels) != 1 || n.Labels["topology.kubernetes.io/zone"] != "a" || len(n.Status.Images) != 0 {
		t.Errorf("cached node %+v: want its name and zone only", n)
	}

	a := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", ResourceVersion: "1", Labels: map[string]string{"topology.kubernetes.io/zone": "a"}}}
	statusOnly := a.DeepCopy()
	statusOnly.ResourceVersion = "2"
	moved := a.DeepCopy()
	moved.ResourceVersion = "3"
	moved.Labels["topology.kubernetes.io/zone"] = "b"
	for _, tc := range []struct {
		name     string
		old, new any
		want     bool
	}{
		{"status only", a, statusOnly, false},
		{"zone changed", statusOnly, moved, true},
		{"resync", a, a.DeepCopy(), false},
	} {
		if got := relevantUpdate(tc.old, tc.new); got != tc.want {
			t.Errorf("%s: relevant %v, want %v", tc.name, got, tc.want)
		}
	}
}
