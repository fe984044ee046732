package integration

// The embedded waypoint (cmd/waypoint) in handson step 3, with the real binaries: xdsserver
// serving two ztunnels and the waypoint, an HTTP app behind handson-blue.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	xdsserverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"golang.org/x/net/proxy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/source/files"
	"github.com/goambient/goambient/xdsserver/waypointxds"
	"github.com/goambient/goambient/xdsserver/wds"
)

// waypointPodYAML runs handson's waypoint on a node of its own: in loopback mode a ztunnel
// listens on podIP:15008 for every pod of its node, which would take the waypoint's port.
const waypointPodYAML = `apiVersion: v1
kind: ServiceAccount
metadata: {name: handson-istio-waypoint, namespace: handson}
---
apiVersion: v1
kind: Pod
metadata:
  name: handson-istio-waypoint
  namespace: handson
  labels:
    gateway.networking.k8s.io/gateway-name: handson
    istio.io/dataplane-mode: none
spec:
  serviceAccountName: handson-istio-waypoint
  nodeName: waypoint
  containers:
  - name: istio-proxy
    ports: [{containerPort: 15008}, {containerPort: 15021}]
`

const (
	wpExtensionType = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
	wpRouteType     = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
)

// xdsServesWaypoints asks xdsserver for a waypoint's ECDS resources (delta, wildcard); it
// returns why not when the stream fails or nothing comes within 5 s.
func xdsServesWaypoints(addr, nodeID string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	for _, typ := range []string{wpExtensionType, wpRouteType} {
		if err := s.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: nodeID}, TypeUrl: typ, ResourceNamesSubscribe: []string{"*"}}); err != nil {
			return err
		}
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return err
		}
		for _, r := range resp.GetResources() {
			if strings.HasPrefix(r.GetName(), "goambient.authz/handson/") {
				return nil
			}
		}
	}
}

func buildWaypoint(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "waypoint")
	if b, err := exec.Command("go", "build", "-o", out, "../cmd/waypoint").CombinedOutput(); err != nil {
		t.Fatalf("go build waypoint: %v\n%s", err, b)
	}
	return out
}

// placePods gives every Pod of a YAML stream an address: status.podIP <net>.<2, 3, ...>, or
// exactly net when it is a full address (one pod).
func placePods(yaml, net string) string {
	docs := strings.Split(yaml, "\n---\n")
	i := 2
	for d, doc := range docs {
		if !strings.Contains(doc, "\nkind: Pod\n") {
			continue
		}
		ip := fmt.Sprintf("%s.%d", net, i)
		if strings.Count(net, ".") == 3 {
			ip = net
		}
		docs[d] = strings.TrimRight(doc, "\n") + "\nstatus:\n  podIP: " + ip + "\n"
		i++
	}
	return strings.Join(docs, "\n---\n")
}

// inProcessXDS serves the mesh of the config folder over delta ADS as xdsserver would: the
// workload API (wds) to every node, and the waypoint's RDS and ECDS (waypointxds).
func inProcessXDS(t *testing.T, config string) string {
	t.Helper()
	cfg := model.DefaultConfig()
	cfg.Placement = model.LoopbackPlacement
	m, err := files.New(files.Options{Paths: []string{config}, Model: cfg}).Load()
	if err != nil {
		t.Fatal(err)
	}
	byType := wds.Translate(m, wds.Options{}).ByType()
	wr := waypointxds.Translate(m, waypointxds.Options{})
	for _, w := range wr.Waypoints {
		for typ, res := range w.ByType() {
			if typ == resource.RouteType || typ == resource.ExtensionConfigType {
				byType[typ] = res
			}
		}
	}
	mux := &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cache.Cache{},
	}
	for typ, res := range byType {
		lc := cache.NewLinearCache(typ)
		up := map[string]types.Resource{}
		for name, m := range res {
			up[name] = m
		}
		if err := lc.UpdateResources(up, nil); err != nil {
			t.Fatal(err)
		}
		mux.Caches[typ] = lc
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(g, xdsserverv3.NewServer(ctx, mux, nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	t.Cleanup(func() { g.Stop(); cancel() })
	return ln.Addr().String()
}

// sendVia sends method url with body from podIP through the SOCKS5 listener socks.
func sendVia(socks, podIP, method, url, body string) (int, string, error) {
	fwd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(podIP)}, Timeout: 5 * time.Second}
	d, err := proxy.SOCKS5("tcp", socks, nil, fwd)
	if err != nil {
		return 0, "", err
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: d.(proxy.ContextDialer).DialContext, DisableKeepAlives: true,
	}}
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// handsonWaypoint is handson step 3 running on loopback: xdsserver (or its translators
// in-process), two ztunnels, the embedded waypoint binary and handson-blue's app.
type handsonWaypoint struct {
	socks     string // the worker ztunnel's SOCKS5 listener
	curl      string // the pod IPs of curl and curl-allow
	curlAllow string
	accessLog string
	wp        *exec.Cmd
	ztunnels  []*ztunnelProc
}

// startHandsonWaypoint starts handson step 3 with app serving handson-blue; extra are more
// flags of the waypoint (a later flag wins over an earlier one).
func startHandsonWaypoint(t *testing.T, app http.Handler, extra ...string) *handsonWaypoint {
	t.Helper()
	bins := buildXDSBinaries(t)
	dir := t.TempDir()
	bins["waypoint"] = buildWaypoint(t, filepath.Dir(bins["ztunnel"]))
	ex := filepath.Join("..", "manifests", "examples", "handson")
	svids, config := filepath.Join(dir, "svids"), filepath.Join(dir, "config")
	if err := os.MkdirAll(config, 0o755); err != nil {
		t.Fatal(err)
	}
	n, _, _ := randomNet()
	// mesh.yaml with each pod placed in this run's random 127.a.b.0/24 (status.podIP), so
	// that tests running at the same time do not take each other's pod addresses.
	writeAtomic(t, filepath.Join(config, "mesh.yaml"), placePods(readFile(t, filepath.Join(ex, "mesh.yaml")), n))
	for _, f := range []string{"k8s-gateway.yaml", "L7-authorization-policy.yaml"} {
		applyFile(t, config, filepath.Join(ex, f))
	}
	writeAtomic(t, filepath.Join(config, "waypoint-pod.yaml"), placePods(waypointPodYAML, n+".9"))
	meshctl(t, bins["meshctl"], "certs", "root", "--dir", svids)
	meshctl(t, bins["meshctl"], "certs", "issue-from-mesh", "--dir", svids, "-f", config)

	place := placementOf(t, config)
	blue := place.pod(t, "handson/handson-blue")
	h := &handsonWaypoint{curl: place.pod(t, "handson/curl"), curlAllow: place.pod(t, "handson/curl-allow")}
	wpIP := place.pod(t, "handson/handson-istio-waypoint")
	nodeID := fmt.Sprintf("waypoint~%s~handson-istio-waypoint.handson~handson.svc.cluster.local", wpIP)

	x := startXdsserver(t, bins["xdsserver"], config)
	xdsAddr := x.xds
	if err := xdsServesWaypoints(x.xds, nodeID); err != nil {
		// Until cmd/xdsserver serves waypoints, the same translators serve from this process.
		t.Logf("cmd/xdsserver does not serve the waypoint's ECDS/RDS resources (%v): serving wds + waypointxds translations of %s in-process instead", err, config)
		xdsAddr = inProcessXDS(t, config)
	}
	serveHTTP(t, appAddrOf(blue, 8080), app)
	worker := startZtunnelXDS(t, bins["ztunnel"], "worker", n+".250", xdsAddr, svids)
	worker2 := startZtunnelXDS(t, bins["ztunnel"], "worker2", n+".251", xdsAddr, svids)
	h.socks, h.ztunnels = worker.host+":15080", []*ztunnelProc{worker, worker2}

	h.accessLog = filepath.Join(dir, "access.log")
	ready := n + ".252:15021"
	args := []string{"--xds-address", xdsAddr, "--node-id", nodeID, "--listen", wpIP + ":15008",
		"--svid-dir", svids, "--ready-listen", ready, "--access-log", h.accessLog, "--log-level", "debug"}
	wp := exec.Command(bins["waypoint"], append(args, extra...)...)
	out := &syncBuf{}
	wp.Stdout, wp.Stderr = out, out
	if err := wp.Start(); err != nil {
		t.Fatal(err)
	}
	h.wp = wp
	exited := make(chan struct{})
	go func() { wp.Wait(); close(exited) }()
	t.Cleanup(func() {
		wp.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("waypoint log:\n%s", out)
		}
	})
	eventually(t, 10*time.Second, "waypoint ready", func() bool {
		resp, err := http.Get("http://" + ready + "/healthz/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return h
}

// TestWaypointHandsonStep3: GET through the waypoint → 200 from handson-blue; POST and DELETE
// from curl → 403 RBAC: access denied, and the waypoint's access log has Istio's details.
func TestWaypointHandsonStep3(t *testing.T) {
	h := startHandsonWaypoint(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "handson-blue: %s %s\n", r.Method, r.URL.Path)
	}))
	socks, curlPod, accessLog := h.socks, h.curl, h.accessLog

	url := "http://handson:8080/"
	if code, body, err := sendVia(socks, curlPod, "GET", url, ""); err != nil || code != 200 || !strings.Contains(body, "handson-blue: GET /") {
		t.Fatalf("GET %s: %d %q %v, want 200 from handson-blue", url, code, body, err)
	}
	if code, body, err := sendVia(socks, curlPod, "POST", url, "{}"); err != nil || code != 403 || body != "RBAC: access denied" {
		t.Fatalf("POST %s: %d %q %v, want 403 RBAC: access denied", url, code, body, err)
	}
	if code, _, err := sendVia(socks, curlPod, "DELETE", url+"id/123", ""); err != nil || code != 403 {
		t.Fatalf("DELETE %sid/123: %d %v, want 403", url, code, err)
	}

	b, err := os.ReadFile(accessLog)
	if err != nil {
		t.Fatal(err)
	}
	var post map[string]any
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("access log line %q: %v", l, err)
		}
		if e["method"] == "POST" {
			post = e
		}
	}
	if post == nil {
		t.Fatalf("no POST in the access log:\n%s", b)
	}
	want := map[string]any{
		"response_code": 403.0, "response_code_details": "rbac_access_denied_matched_policy[ns[handson]-policy[layer7-authz]-rule[0]]",
		"upstream_cluster": "inbound-vip|8080|http|handson.handson.svc.cluster.local", "upstream_host": nil,
	}
	for k, v := range want {
		if post[k] != v {
			t.Errorf("POST access log: %s = %#v, want %#v", k, post[k], v)
		}
	}
	if !strings.HasPrefix(fmt.Sprint(post["downstream_remote_address"]), curlPod+":") {
		t.Errorf("downstream_remote_address = %v, want curl's %s:port", post["downstream_remote_address"], curlPod)
	}
	t.Logf("waypoint access log:\n%s", b)
}
