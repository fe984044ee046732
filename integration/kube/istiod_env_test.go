package kube_test

// The istiod peer tests' cluster: an API server of their own (istiod writes into the cluster
// it reads: its CA's secret, the root's ConfigMaps, leader leases, status), set up as the
// shared one (the bundle, the three scenarios, pods running and redirected as the node agent
// would) plus what those tests compare that the scenarios lack: Nodes with topology labels, a
// second ztunnel pod (on worker2, for the destination ztunnel), and a waypoint istiod uses — a
// Gateway with the Deployment's pod, its Service and the status addresses istiod's own
// controllers would have written (they are off here).

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/anypb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/goambient/goambient/integration/istiod"
	"github.com/goambient/goambient/integration/kubeapi"
	"github.com/goambient/goambient/ztunnel/xds"
)

// Node2 is handson-blue's node.
const Node2 = "worker2"

// peerNS is the namespace of the waypoint the peer tests add.
const peerNS = "peer-wp"

type peerEnv struct {
	*env
	istiod      *istiod.Istiod
	ztunnelPods map[string]*corev1.Pod // node → its ztunnel's pod
}

// newPeerEnv starts an API server for t, sets up the cluster and starts istiod on it.
func newPeerEnv(t *testing.T) *peerEnv {
	t.Helper()
	istiod.SkipIfMissing(t)
	t0 := time.Now()
	s := kubeapi.Start(t)
	e, err := newEnv(s, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("API server and cluster set up in %v (%s)", time.Since(t0).Round(time.Millisecond), e.timings)
	p := &peerEnv{env: e, ztunnelPods: map[string]*corev1.Pod{Node: e.ztunnelPod}}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := p.addPeerObjects(ctx); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	p.istiod = istiod.Start(t, s, e.net+".239")
	t.Logf("istiod ready in %v", time.Since(t0).Round(time.Millisecond))
	return p
}

func (p *peerEnv) addPeerObjects(ctx context.Context) error {
	s := p.s
	for name, labels := range map[string]map[string]string{
		Node:  {"topology.kubernetes.io/region": "eu-west", "topology.kubernetes.io/zone": "eu-west-1a", "topology.istio.io/subzone": "rack-1"},
		Node2: {"topology.kubernetes.io/region": "eu-west", "topology.kubernetes.io/zone": "eu-west-1b"},
	} {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
		if _, err := s.Kube.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("node %s: %w", name, err)
		}
	}
	// The waypoint's GatewayClass, as istiod's class controller creates it (off here).
	if _, err := s.Apply(ctx, "-f", writeTemp(`apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio-waypoint}
spec: {controllerName: istio.io/mesh-controller}
`)); err != nil {
		return err
	}
	// A namespace whose Service goes through a waypoint: the Gateway, the Service and pod
	// istiod's deployment controller would make for it, and an application behind it.
	if err := s.CreateNamespace(ctx, peerNS, map[string]string{"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "waypoint"}); err != nil {
		return err
	}
	// Its Services' default traffic distribution (Istio's annotation).
	if _, err := s.Kubectl(ctx, "annotate", "namespace", peerNS, "networking.istio.io/traffic-distribution=PreferSameNode"); err != nil {
		return err
	}
	for _, sa := range []string{"waypoint", "echo"} {
		if err := s.EnsureServiceAccount(ctx, peerNS, sa); err != nil {
			return err
		}
	}
	if _, err := s.Apply(ctx, "-f", writeTemp(`apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: `+peerNS+`, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
`)); err != nil {
		return err
	}
	gwLabels := map[string]string{"gateway.networking.k8s.io/gateway-name": "waypoint", "istio.io/dataplane-mode": "none",
		"gateway.istio.io/managed": "istio.io-mesh-controller", "service.istio.io/canonical-name": "waypoint", "service.istio.io/canonical-revision": "latest"}
	svcs := []*corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Name: "waypoint", Namespace: peerNS, Labels: maps.Clone(gwLabels)},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"gateway.networking.k8s.io/gateway-name": "waypoint"}, Ports: []corev1.ServicePort{
				{Name: "status-port", Port: 15021, TargetPort: intstr.FromInt32(15021)}, {Name: "mesh", Port: 15008, TargetPort: intstr.FromInt32(15008)}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: peerNS},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "echo"}, TrafficDistribution: new("PreferSameZone"),
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "echo-local", Namespace: peerNS, Labels: map[string]string{"istio.io/use-waypoint": "none"}},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "echo"}, InternalTrafficPolicy: new(corev1.ServiceInternalTrafficPolicyLocal),
				PublishNotReadyAddresses: true, Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}},
		// Without a selector: its pods are the ones its EndpointSlice names (below).
		{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: peerNS, Annotations: map[string]string{"networking.istio.io/traffic-distribution": "PreferClose"}},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "tcp-db", Port: 5432, TargetPort: intstr.FromInt32(5432)}}}},
	}
	var wpVIP string
	for _, svc := range svcs {
		out, err := s.Kube.CoreV1().Services(peerNS).Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("service %s: %w", svc.Name, err)
		}
		if svc.Name == "waypoint" {
			wpVIP = out.Spec.ClusterIP
		}
	}
	uids := map[string]string{}
	pods := []*corev1.Pod{
		{ObjectMeta: metav1.ObjectMeta{Name: "waypoint-0", Namespace: peerNS, Labels: gwLabels},
			Spec: corev1.PodSpec{ServiceAccountName: "waypoint", NodeName: Node2, Containers: []corev1.Container{{Name: "istio-proxy", Image: "envoy"}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "echo-0", Namespace: peerNS, Labels: map[string]string{"app": "echo"}},
			Spec: corev1.PodSpec{ServiceAccountName: "echo", NodeName: Node2, Containers: []corev1.Container{{Name: "echo", Image: "echo", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-" + Node2, Namespace: "istio-system", Labels: map[string]string{"app": "ztunnel", "istio.io/dataplane-mode": "none"}},
			Spec: corev1.PodSpec{ServiceAccountName: "ztunnel", NodeName: Node2, Containers: []corev1.Container{{Name: "istio-proxy", Image: "goambient/ztunnel:dev"}}}},
		// In the ambient namespace, but not (yet) redirected by a node agent: not in the mesh.
		{ObjectMeta: metav1.ObjectMeta{Name: "not-captured", Namespace: peerNS, Labels: map[string]string{"app": "echo"}},
			Spec: corev1.PodSpec{ServiceAccountName: "echo", NodeName: Node, Containers: []corev1.Container{{Name: "echo", Image: "echo"}}}},
		// Speaks HBONE itself.
		{ObjectMeta: metav1.ObjectMeta{Name: "native", Namespace: peerNS, Labels: map[string]string{"networking.istio.io/tunnel": "http", "istio.io/dataplane-mode": "none"}},
			Spec: corev1.PodSpec{ServiceAccountName: "echo", NodeName: Node, Containers: []corev1.Container{{Name: "echo", Image: "echo"}}}},
		// Named by db's EndpointSlice, one with its uid, the other with a stale one.
		{ObjectMeta: metav1.ObjectMeta{Name: "db-0", Namespace: peerNS},
			Spec: corev1.PodSpec{NodeName: Node2, Containers: []corev1.Container{{Name: "db", Image: "db"}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "db-1", Namespace: peerNS},
			Spec: corev1.PodSpec{NodeName: Node2, Containers: []corev1.Container{{Name: "db", Image: "db"}}}},
	}
	for i, pod := range pods {
		created, err := s.Kube.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("pod %s: %w", pod.Name, err)
		}
		ip := fmt.Sprintf("%s.%d", p.net, 200+i)
		running, err := s.SetPodRunning(ctx, created, ip)
		if err != nil {
			return err
		}
		p.ips[pod.Namespace+"/"+pod.Name] = ip
		switch pod.Name {
		case "echo-0", "db-0", "db-1":
			if _, err := s.SetRedirected(ctx, running); err != nil {
				return err
			}
		}
		uids[pod.Name] = string(running.UID)
		if pod.Namespace == "istio-system" {
			p.ztunnelPods[Node2] = running
		}
	}
	// db's EndpointSlice, as a controller of a Service without selector writes it: db-0 with
	// its uid, db-1 with the uid of a pod of that name since replaced. The addresses are not
	// the pods' (the API server refuses loopback ones): both control planes join an endpoint
	// to its pod by the targetRef only.
	slice := fmt.Sprintf(`apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-abc, namespace: %[1]s, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: tcp-db, port: 5432}]
endpoints:
- addresses: [10.244.9.1]
  targetRef: {kind: Pod, namespace: %[1]s, name: db-0, uid: %[2]s}
- addresses: [10.244.9.2]
  targetRef: {kind: Pod, namespace: %[1]s, name: db-1, uid: 00000000-0000-0000-0000-000000000001}
`, peerNS, uids["db-0"])
	if _, err := s.Apply(ctx, "-f", writeTemp(slice)); err != nil {
		return err
	}
	// A workload PeerAuthentication, PERMISSIVE with one STRICT port, in a namespace without
	// its own (demo-strict's mesh-wide STRICT applies): the case where goambient and istiod
	// differ on purpose (acceptedDiffs).
	if _, err := s.Apply(ctx, "-f", writeTemp(`apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: echo-ports, namespace: `+peerNS+`}
spec:
  selector: {matchLabels: {app: echo}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls: {"8080": {mode: STRICT}}
`)); err != nil {
		return err
	}
	// The status istiod's Gateway controller writes once the waypoint is ready.
	status := fmt.Sprintf(`{"status":{"addresses":[{"type":"Hostname","value":"waypoint.%s.svc.cluster.local"},{"type":"IPAddress","value":%q}]}}`, peerNS, wpVIP)
	if _, err := s.Kubectl(ctx, "patch", "gateways.gateway.networking.k8s.io", "waypoint", "-n", peerNS, "--subresource=status", "--type=merge", "-p", status); err != nil {
		return err
	}
	return nil
}

// writeTemp writes a manifest to a temporary file for kubectl and returns its path.
func writeTemp(content string) string {
	f, err := os.CreateTemp("", "peer-*.yaml")
	if err != nil {
		panic(err)
	}
	f.WriteString(content)
	f.Close()
	cleanups = append(cleanups, func() { os.Remove(f.Name()) })
	return f.Name()
}

// ztunnelToken is a token for istio-ca of the ztunnel ServiceAccount bound to the ztunnel pod
// of node, in a file.
func (p *peerEnv) ztunnelToken(t *testing.T, node string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tok, err := p.s.Token(ctx, "istio-system", "ztunnel", []string{"istio-ca"}, p.ztunnelPods[node], 3600)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "istio-token")
	if err := os.WriteFile(file, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// watchIstiod subscribes to istiod's workload API as node's ztunnel does: TLS to its 15012
// with the ztunnel's token and cluster id.
func (p *peerEnv) watchIstiod(t *testing.T, node string) *watcher {
	t.Helper()
	creds, err := xds.TLSCredentials(p.istiod.RootFile, istiod.ServerName)
	if err != nil {
		t.Fatal(err)
	}
	return watchWith(t, xds.Options{Address: p.istiod.Secure, Credentials: creds, TokenFile: p.ztunnelToken(t, node),
		Node: xds.Node{IP: p.ips["istio-system/ztunnel-"+node], PodName: "ztunnel-" + node, Namespace: "istio-system", NodeName: node}})
}

// watchWith is watch with the client's options given (Types and Apply are set here).
func watchWith(t *testing.T, o xds.Options) *watcher {
	t.Helper()
	w := &watcher{res: map[string]map[string]*anypb.Any{}}
	o.Types = xds.Types
	o.Apply = func(typeURL string, r map[string]*anypb.Any) error {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.res[typeURL] = maps.Clone(r)
		return nil
	}
	c, err := xds.New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-c.Synced():
	case <-time.After(2 * time.Minute):
		t.Fatalf("the workload API of %s did not sync in two minutes", o.Address)
	}
	return w
}

// startXdsserverPlain runs xdsserver in Kubernetes mode without its CA (istiod's CA publishes
// the root's ConfigMaps in this cluster: two publishers would undo each other forever) and
// without status writes nor Gateway deployments (istiod's own are off here too: both read the
// objects the test wrote, not ones either deployed), with the bundle's ServiceAccount token.
func (p *peerEnv) startXdsserverPlain(t *testing.T, host string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tok, err := p.s.Token(ctx, "istio-system", "xdsserver", nil, nil, 3600)
	if err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := kubeapi.WriteKubeconfig(kc, p.s.ConfigFor(tok)); err != nil {
		t.Fatal(err)
	}
	bin := p.bins["xdsserver"]
	if b := os.Getenv("PEER_XDSSERVER"); b != "" {
		bin = b
	}
	start(t, "xdsserver", bin, "--kubeconfig", kc, "--no-status", "--no-gateway-deploy",
		"--xds-listen", host+":15010", "--http-listen", host+":15014", "--log-level", "info")
	eventually(t, 2*time.Minute, "xdsserver ready", func() bool { return httpOK("http://" + host + ":15014/healthz/ready") })
	return host + ":15010"
}
