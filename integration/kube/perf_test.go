package kube_test

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/goambient/goambient/integration/kubeapi"
	"github.com/goambient/goambient/xdsserver/meshgen"
	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/wds"
	"github.com/goambient/goambient/ztunnel/xds"
)

var (
	perf      = flag.Bool("kube-perf", false, "run TestPerfClusterMesh (xdsserver with a big mesh in a real API server, beside the folder source; minutes)")
	perfScale = flag.Int("kube-perf-div", 1, "with -kube-perf: divide meshgen.Default's pods, services and policies by this")
)

// counts is how many resources of each workload API type a watcher holds.
func (w *watcher) counts() (addresses, authorizations int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.res[xds.AddressType]), len(w.res[xds.AuthorizationType])
}

// heapBytes reads go_memstats_heap_alloc_bytes from an xdsserver's /metrics.
func heapBytes(t *testing.T, httpAddr string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_memstats_heap_alloc_bytes "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	t.Fatal("no go_memstats_heap_alloc_bytes in /metrics")
	return 0
}

// createParallel runs n creations on 16 workers and returns the first error.
func createParallel(n int, create func(i int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := create(i); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// TestPerfClusterMesh (opt-in: -kube-perf) measures xdsserver with meshgen.Default's mesh —
// 10,000 pods (with a kubelet's status), 1,000 Services and ServiceAccounts, 1,000
// AuthorizationPolicies and a STRICT PeerAuthentication, in 20 namespaces — written into a real
// API server by 16 concurrent clients while xdsserver (the bundle's ServiceAccount) watches:
// the time from the last write until a workload API client holds the whole mesh, and
// xdsserver's heap then. Beside it, in the same run, the same objects (dumped from the API
// server) written as one file into the folder an xdsserver --config-dir polls: the same two
// figures. Both clients must end with the same resources.
func TestPerfClusterMesh(t *testing.T) {
	if !*perf {
		t.Skip("opt-in: go test ./integration/kube -run TestPerfClusterMesh -kube-perf -timeout 30m")
	}
	kubeapi.SkipIfMissing(t)
	o := meshgen.Default.Scaled(*perfScale)
	set, err := meshgen.Generate(o)
	if err != nil {
		t.Fatal(err)
	}
	// What a watcher must end with: the mesh's addresses and authorizations, plus the
	// cluster's own Services (default/kubernetes, istio-system/istiod).
	m, err := model.Build(set, clusterConfig())
	if err != nil {
		t.Fatal(err)
	}
	want := wds.Translate(m, wds.Options{}).ByType()
	wantAddr, wantAuth := len(want[xds.AddressType])+2, len(want[xds.AuthorizationType])

	built := make(chan error, 1)
	go func() { _, err := buildBinaries(); built <- err }()
	s := kubeapi.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	if _, err := s.Apply(ctx, "-k", "../../manifests/install"); err != nil {
		t.Fatal(err)
	}
	if err := <-built; err != nil {
		t.Fatal(err)
	}
	bins, _ := buildBinaries()
	net := fmt.Sprintf("127.%d.%d", 10+time.Now().Nanosecond()%90, 1+time.Now().Nanosecond()%250)
	x := runXdsserver(t, s, bins["xdsserver"], net+".240", "--log-level", "info", "--no-gateway-deploy")
	w := watch(t, x.host+":15010")

	fast := *s.Config
	fast.QPS, fast.Burst = 2000, 4000
	kc, err := kubernetes.NewForConfig(&fast)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	for _, ns := range set.Namespaces[1:] { // istio-system exists
		if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns.Metadata.Name, Labels: ns.Metadata.Labels}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := createParallel(len(set.ServiceAccounts), func(i int) error {
		sa := set.ServiceAccounts[i]
		_, err := kc.CoreV1().ServiceAccounts(sa.Metadata.Namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa.Metadata.Name, Namespace: sa.Metadata.Namespace}}, metav1.CreateOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := createParallel(len(set.Services), func(i int) error {
		sv := set.Services[i]
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: sv.Metadata.Name, Namespace: sv.Metadata.Namespace, Labels: sv.Metadata.Labels},
			Spec: corev1.ServiceSpec{Selector: sv.Spec.Selector}}
		for _, p := range sv.Spec.Ports {
			tp := intstr.FromInt32(int32(p.TargetPort.IntVal))
			if p.TargetPort.IsString {
				tp = intstr.FromString(p.TargetPort.StrVal)
			}
			svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: p.Name, Port: int32(p.Port), TargetPort: tp})
		}
		_, err := kc.CoreV1().Services(sv.Metadata.Namespace).Create(ctx, svc, metav1.CreateOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := createParallel(len(set.Pods), func(i int) error {
		p := set.Pods[i]
		// Every namespace of meshgen's is ambient: the pods are written as istio-cni's node agent
		// leaves them once redirected (annotated; in one write, there being no kubelet here).
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: p.Metadata.Name, Namespace: p.Metadata.Namespace, Labels: p.Metadata.Labels,
			Annotations: map[string]string{kubeapi.RedirectionAnnotation: "enabled"}},
			Spec: corev1.PodSpec{ServiceAccountName: p.Spec.ServiceAccountName, NodeName: p.Spec.NodeName, AutomountServiceAccountToken: new(false)}}
		for _, c := range p.Spec.Containers {
			cc := corev1.Container{Name: c.Name, Image: "app"}
			for _, cp := range c.Ports {
				cc.Ports = append(cc.Ports, corev1.ContainerPort{Name: cp.Name, ContainerPort: int32(cp.ContainerPort)})
			}
			pod.Spec.Containers = append(pod.Spec.Containers, cc)
		}
		created, err := kc.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		created.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.Status.PodIP, PodIPs: []corev1.PodIP{{IP: p.Status.PodIP}}, StartTime: &now,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}}
		_, err = kc.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	pf := filepath.Join(t.TempDir(), "policies.yaml")
	os.WriteFile(pf, []byte(meshgen.PoliciesYAML(o)), 0o644)
	if _, err := s.Kubectl(ctx, "apply", "--server-side", "-f", pf); err != nil {
		t.Fatal(err)
	}
	lastWrite := time.Now()
	t.Logf("wrote %d namespaces, %d service accounts, %d services, %d pods (+status), %d policies in %v",
		len(set.Namespaces)-1, len(set.ServiceAccounts), len(set.Services), len(set.Pods), o.Policies+1, lastWrite.Sub(t0).Round(time.Millisecond))
	full := func(w *watcher) bool {
		a, z := w.counts()
		return a >= wantAddr && z >= wantAuth
	}
	eventually(t, 10*time.Minute, "the whole mesh at the workload API client (cluster)", func() bool { return full(w) })
	kubeLatency := time.Since(lastWrite)
	kubeHeap := heapBytes(t, x.host+":15014")

	// The folder source, same objects.
	dump := filepath.Join(t.TempDir(), "cluster.yaml")
	objectsYAML(t, s, dump)
	dir := t.TempDir()
	fhost := net + ".241"
	start(t, "xdsserver-files", bins["xdsserver"], "--config-dir", dir, "--xds-listen", fhost+":15010", "--http-listen", fhost+":15014")
	eventually(t, time.Minute, "the files xdsserver ready", func() bool { return httpOK("http://" + fhost + ":15014/healthz/ready") })
	fw := watch(t, fhost+":15010")
	data, err := os.ReadFile(dump)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(t.TempDir(), "cluster.yaml")
	os.WriteFile(tmp, data, 0o644)
	os.Rename(tmp, filepath.Join(dir, "cluster.yaml")) // the last write
	fileWrite := time.Now()
	eventually(t, 10*time.Minute, "the whole mesh at the workload API client (files)", func() bool { return full(fw) })
	filesLatency := time.Since(fileWrite)
	filesHeap := heapBytes(t, fhost+":15014")

	// Cold starts: a new xdsserver of each kind over the whole mesh, from its process start to
	// the client's full state (the cluster's: listing every object through the API server).
	cold := func(name string, host string, args ...string) time.Duration {
		t.Helper()
		t0 := time.Now()
		start(t, name, bins["xdsserver"], append(args, "--xds-listen", host+":15010", "--http-listen", host+":15014", "--no-gateway-deploy")...)
		eventually(t, 5*time.Minute, name+" ready", func() bool { return httpOK("http://" + host + ":15014/healthz/ready") })
		cw := watch(t, host+":15010")
		eventually(t, 5*time.Minute, "the whole mesh from "+name, func() bool { return full(cw) })
		return time.Since(t0)
	}
	kubeCold := cold("xdsserver-cold-cluster", net+".242", "--kubeconfig", s.Kubeconfig, "--no-status", "--ca-dir", filepath.Join(t.TempDir(), "ca"))
	filesCold := cold("xdsserver-cold-files", net+".243", "--config-dir", dir)
	t.Logf("PERF cold start → full state at the client: cluster %v, folder %v (ratio %.2f)", kubeCold.Round(time.Millisecond), filesCold.Round(time.Millisecond),
		float64(kubeCold)/float64(filesCold))

	a1, z1 := w.counts()
	a2, z2 := fw.counts()
	t.Logf("PERF mesh: %d pods, %d services, %d policies; workload API: %d addresses, %d authorizations (files: %d, %d)",
		len(set.Pods), len(set.Services), o.Policies, a1, z1, a2, z2)
	t.Logf("PERF last write → full state at the client: cluster %v, folder %v (ratio %.2f)", kubeLatency.Round(time.Millisecond), filesLatency.Round(time.Millisecond),
		float64(kubeLatency)/float64(filesLatency))
	t.Logf("PERF xdsserver heap (go_memstats_heap_alloc_bytes) then: cluster %.0f MiB, folder %.0f MiB (ratio %.2f)", kubeHeap/(1<<20), filesHeap/(1<<20), kubeHeap/filesHeap)
	if d := diff(w.get(t), fw.get(t)); d != "" {
		t.Errorf("the cluster's and the folder's xdsserver serve different resources:\n%.3000s", d)
	}
	x.noForbidden(t)
}
