package node

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// scenario is one of manifests/examples played on the node with kubectl, as its README says.
type scenario struct {
	t    *testing.T
	n    *Node
	dir  string // manifests/examples/<name>
	ns   string
	root string
}

func newScenario(t *testing.T, n *Node, name, ns string) *scenario {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return &scenario{t: t, n: n, dir: filepath.Join(root, "manifests", "examples", name), ns: ns, root: root}
}

// renderForNode rewrites a scenario's YAML for this node: every Pod runs the test application
// image on whatever node the scheduler picks (there is one), never pulled: a container whose
// image is curl is an idle client with curl; any other serves HTTP on its container port, or
// on the target port of the Services that select it, calling the upstreams its annotation
// demo/upstreams names. Everything else is applied as written.
func renderForNode(in []byte) ([]byte, error) {
	var objs []map[string]any
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(in), -1) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			return nil, err
		}
		if obj != nil {
			objs = append(objs, obj)
		}
	}
	servicePort := func(ns string, labels map[string]any) any {
		for _, o := range objs {
			meta, _ := o["metadata"].(map[string]any)
			spec, _ := o["spec"].(map[string]any)
			if o["kind"] != "Service" || meta["namespace"] != ns {
				continue
			}
			sel, _ := spec["selector"].(map[string]any)
			match := len(sel) > 0
			for k, v := range sel {
				match = match && labels[k] == v
			}
			ports, _ := spec["ports"].([]any)
			if match && len(ports) > 0 {
				p := ports[0].(map[string]any)
				if tp, ok := p["targetPort"]; ok {
					return tp
				}
				return p["port"]
			}
		}
		return nil
	}
	var out bytes.Buffer
	for _, obj := range objs {
		if obj["kind"] == "Pod" {
			meta, _ := obj["metadata"].(map[string]any)
			spec, _ := obj["spec"].(map[string]any)
			labels, _ := meta["labels"].(map[string]any)
			annotations, _ := meta["annotations"].(map[string]any)
			delete(spec, "nodeName")
			containers, _ := spec["containers"].([]any)
			for _, c := range containers {
				c := c.(map[string]any)
				client := c["image"] == "curl"
				c["image"], c["imagePullPolicy"] = AppImage, "Never"
				if client {
					c["args"] = []any{"idle"}
					continue
				}
				port := servicePort(fmt.Sprint(meta["namespace"]), labels)
				if ports, _ := c["ports"].([]any); len(ports) > 0 {
					port = ports[0].(map[string]any)["containerPort"]
				}
				if port == nil {
					return nil, fmt.Errorf("pod %v: no port to serve on", meta["name"])
				}
				args := []any{"serve", fmt.Sprintf("--listen=:%v", port), fmt.Sprintf("--name=%v", meta["name"])}
				if ups, ok := annotations["demo/upstreams"].(string); ok {
					for _, u := range strings.Split(ups, ",") {
						args = append(args, "--upstream="+strings.TrimSpace(u))
					}
				}
				c["args"] = args
			}
		}
		b, err := yaml.Marshal(obj)
		if err != nil {
			return nil, err
		}
		out.WriteString("---\n")
		out.Write(b)
	}
	return out.Bytes(), nil
}

// kubectl runs kubectl, logging the command as the README writes it, and fails t on error.
func (s *scenario) kubectl(args ...string) string {
	s.t.Helper()
	s.t.Logf("$ kubectl %s", strings.Join(args, " "))
	out, err := s.n.Kubectl(context.Background(), args...)
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}

// apply applies a file of the scenario (rendered for the node).
func (s *scenario) apply(file string) {
	s.t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, file))
	if err != nil {
		s.t.Fatal(err)
	}
	r, err := renderForNode(b)
	if err != nil {
		s.t.Fatalf("%s: %v", file, err)
	}
	path := filepath.Join(s.n.Dir, filepath.Base(s.dir)+"-"+file)
	if err := os.WriteFile(path, r, 0o644); err != nil {
		s.t.Fatal(err)
	}
	s.t.Logf("$ kubectl apply -f %s", file)
	if out, err := s.n.API.Apply(context.Background(), "-f", path); err != nil {
		s.t.Fatalf("%v\n%s", err, out)
	}
}

// delete deletes what a file of the scenario declares.
func (s *scenario) delete(file string) {
	s.t.Helper()
	s.kubectl("delete", "-f", filepath.Join(s.dir, file))
}

// curl runs curl in a pod with kubectl exec and returns its output and exit code.
func (s *scenario) curl(pod string, args ...string) (string, int) {
	s.t.Helper()
	full := append([]string{"-n", s.ns, "exec", pod, "--", "curl", "-s", "-m", "10"}, args...)
	out, err := s.n.Kubectl(context.Background(), full...)
	if err == nil {
		return out, 0
	}
	// kubectl's output is combined: the remote command's, then kubectl's own line
	exitLine := regexp.MustCompile(`\s*command terminated with exit code (\d+)\s*`)
	if m := exitLine.FindStringSubmatch(out); m != nil {
		code, _ := strconv.Atoi(m[1])
		return exitLine.ReplaceAllString(out, ""), code
	}
	s.t.Fatalf("kubectl exec %s: %v", pod, err)
	return "", -1
}

// expectCurl polls (bounded: changes reach the proxies asynchronously) until curl in pod gives
// the HTTP status want ("000" for no response) and, for "000", exits non-zero; it logs the
// command and result as the README shows them.
func (s *scenario) expectCurl(pod, want string, args ...string) string {
	s.t.Helper()
	full := append([]string{"-o", "/dev/null", "-w", "%{http_code}"}, args...)
	deadline := time.Now().Add(2 * time.Minute)
	var out string
	var code int
	for {
		out, code = s.curl(pod, full...)
		got := strings.TrimSpace(out)
		if got == want && (want != "000" || code != 0) {
			s.t.Logf("$ kubectl -n %s exec %s -- curl -s -o /dev/null -w '%%{http_code}' %s   → %s (exit %d)", s.ns, pod, strings.Join(args, " "), got, code)
			return got
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("curl from %s %s: got %q (exit %d), want %s", pod, strings.Join(args, " "), got, code, want)
		}
		time.Sleep(500 * time.Millisecond) // a poll interval, not a synchronisation: the loop checks the result
	}
}

// waitLog polls the logs of a workload (deploy/NAME, ds/NAME, pod) until a line contains every
// one of parts, and returns that line.
func (s *scenario) waitLog(ns, what string, parts ...string) string {
	s.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := s.n.Kubectl(context.Background(), "-n", ns, "logs", what, "--tail=2000")
		if err == nil {
			for _, line := range strings.Split(out, "\n") {
				ok := true
				for _, p := range parts {
					ok = ok && strings.Contains(line, p)
				}
				if ok {
					s.t.Logf("$ kubectl -n %s logs %s | grep ...\n    %s", ns, what, line)
					return line
				}
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("no line of kubectl -n %s logs %s has %q; last lines:\n%s", ns, what, parts, Last(out, 30))
		}
		time.Sleep(500 * time.Millisecond) // a poll interval: the loop checks the logs
	}
}

// waitEnrolled waits until every pod of the namespace is Ready and redirected by the node
// agent (istio-cni's annotation ambient.istio.io/redirection=enabled).
func (s *scenario) waitEnrolled(pods ...string) {
	s.t.Helper()
	ctx := context.Background()
	if _, err := s.n.Kubectl(ctx, "-n", s.ns, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=3m"); err != nil {
		out, _ := s.n.Kubectl(ctx, "-n", s.ns, "get", "pods", "-o", "wide")
		ev, _ := s.n.Kubectl(ctx, "-n", s.ns, "get", "events")
		s.t.Fatalf("%v\n%s\n%s", err, out, Last(ev, 20))
	}
	for _, p := range pods {
		if _, err := s.n.Kubectl(ctx, "-n", s.ns, "wait", "--for=jsonpath={.metadata.annotations.ambient\\.istio\\.io/redirection}=enabled", "pod/"+p, "--timeout=2m"); err != nil {
			cni, _ := s.n.Kubectl(ctx, "-n", "istio-system", "logs", "ds/istio-cni-node", "--tail=40")
			s.t.Fatalf("pod %s not redirected by istio-cni: %v\nistio-cni's log:\n%s", p, err, cni)
		}
	}
	s.t.Logf("pods %v Ready and redirected by istio-cni (ambient.istio.io/redirection=enabled)", pods)
}

// TestHandson plays manifests/examples/handson on the node: L4 allow and deny by the
// ztunnel, then the waypoint (the embedded Go waypoint, deployed by xdsserver's controller)
// and the L7 deny with Istio's details in the waypoint's log. Peers: real pods, Istio's
// istio-cni, the install bundle's xdsserver and ztunnel.
func TestHandson(t *testing.T) {
	n := testNode(t)
	s := newScenario(t, n, "handson", "handson")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if t.Failed() {
			for _, w := range []string{"ds/ztunnel", "deploy/xdsserver", "ds/istio-cni-node"} {
				out, _ := n.Kubectl(ctx, "-n", "istio-system", "logs", w, "--tail=40")
				t.Logf("kubectl -n istio-system logs %s:\n%s", w, out)
			}
		}
		n.Kubectl(ctx, "delete", "namespace", "handson", "--wait=true", "--timeout=2m")
	})

	t.Log("step 1 — mesh only")
	s.apply("mesh.yaml")
	s.waitEnrolled("handson-blue", "curl-allow", "curl-deny", "curl")
	s.expectCurl("curl-allow", "200", "http://handson:8080/")
	s.expectCurl("curl-deny", "200", "http://handson:8080/")
	s.waitLog("istio-system", "ds/ztunnel", "src.identity", "spiffe://cluster.local/ns/handson/sa/curl-allow", "dst.identity", "spiffe://cluster.local/ns/handson/sa/handson")

	t.Log("step 2 — L4 policy")
	s.apply("L4-authorization-policy.yaml")
	s.expectCurl("curl-deny", "000", "http://handson:8080/")
	s.expectCurl("curl-allow", "200", "http://handson:8080/")
	s.waitLog("istio-system", "ds/ztunnel", "spiffe://cluster.local/ns/handson/sa/curl-deny", "explicitly denied by: handson/layer4-authz")
	s.delete("L4-authorization-policy.yaml")
	s.expectCurl("curl-deny", "200", "http://handson:8080/")

	t.Log("step 3 — waypoint and L7 policy")
	s.apply("k8s-gateway.yaml")
	if _, err := n.Kubectl(context.Background(), "-n", "handson", "wait", "--for=condition=Programmed", "gateway/handson", "--timeout=3m"); err != nil {
		gw, _ := n.Kubectl(context.Background(), "-n", "handson", "get", "gateway,deploy,pods", "-o", "wide")
		t.Fatalf("waypoint not Programmed: %v\n%s", err, gw)
	}
	wp := s.kubectl("-n", "handson", "get", "deploy", "-l", "gateway.networking.k8s.io/gateway-name=handson", "-o", "jsonpath={.items[0].metadata.name}")
	s.apply("L7-authorization-policy.yaml")
	s.expectCurl("curl", "403", "-X", "POST", "-d", "{}", "http://handson:8080/")
	s.expectCurl("curl", "200", "-X", "GET", "http://handson:8080/")
	s.expectCurl("curl", "403", "-X", "DELETE", "http://handson:8080/id/123")
	body, _ := s.curl("curl", "-X", "POST", "-d", "{}", "http://handson:8080/")
	if !strings.Contains(body, "RBAC: access denied") {
		t.Errorf("POST body %q, want RBAC: access denied", body)
	}
	line := s.waitLog("handson", "deploy/"+wp, `"method":"POST"`, `"response_code":403`,
		`rbac_access_denied_matched_policy[ns[handson]-policy[layer7-authz]-rule[0]]`,
		`inbound-vip|8080|http|handson.handson.svc.cluster.local`)
	// The README: no upstream host, the request never reached handson-blue.
	if strings.Contains(line, `"upstream_host":"10.`) {
		t.Errorf("the denied request has an upstream host: %s", line)
	}
}

// in returns the scenario acting in another namespace.
func (s *scenario) in(ns string) *scenario { c := *s; c.ns = ns; return &c }

// cleanup deletes, when the test ends, what the scenario's files declare except Namespaces
// that already existed (default, istio-system), and the namespaces it created; it removes the
// ambient label from default.
func (s *scenario) cleanup(created []string, files ...string) {
	s.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if s.t.Failed() {
			for _, w := range []string{"ds/ztunnel", "deploy/xdsserver", "ds/istio-cni-node"} {
				out, _ := s.n.Kubectl(ctx, "-n", "istio-system", "logs", w, "--tail=40")
				s.t.Logf("kubectl -n istio-system logs %s:\n%s", w, out)
			}
		}
		for _, f := range files {
			b, err := os.ReadFile(filepath.Join(s.dir, f))
			if err != nil {
				continue
			}
			for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
				var obj struct {
					Kind     string `json:"kind"`
					Metadata struct{ Name, Namespace string }
				}
				if yaml.Unmarshal([]byte(doc), &obj) != nil || obj.Kind == "" || obj.Kind == "Namespace" {
					continue
				}
				args := []string{"delete", obj.Kind, obj.Metadata.Name, "--ignore-not-found", "--wait=false"}
				if obj.Metadata.Namespace != "" {
					args = append(args, "-n", obj.Metadata.Namespace)
				}
				s.n.Kubectl(ctx, args...)
			}
		}
		s.n.Kubectl(ctx, "label", "namespace", "default", "istio.io/dataplane-mode-")
		for _, ns := range created {
			s.n.Kubectl(ctx, "delete", "namespace", ns, "--wait=true", "--timeout=2m")
		}
	})
}

// TestBookinfoLite plays manifests/examples/bookinfo-lite on the node: the call chain through
// real pods, deny-by-default, then per-service ALLOW (peers as TestHandson).
func TestBookinfoLite(t *testing.T) {
	n := testNode(t)
	s := newScenario(t, n, "bookinfo-lite", "default")
	s.cleanup(nil, "rbac.yaml", "allow-nothing.yaml", "mesh.yaml")

	t.Log("step 1 — mesh only")
	s.apply("mesh.yaml")
	s.waitEnrolled("web-api-1", "recommendation-1", "purchase-history-v1-1", "sleep-1", "notsleep-1")
	s.expectCurl("sleep-1", "200", "http://web-api:8080/")
	body, _ := s.curl("sleep-1", "http://web-api:8080/")
	t.Logf("$ kubectl exec sleep-1 -- curl -s http://web-api:8080/\n    %s", body)
	if strings.Count(body, `"code":200`) != 2 {
		t.Errorf("the chain should answer 200 at both hops: %s", body)
	}

	t.Log("step 2 — allow-nothing")
	s.apply("allow-nothing.yaml")
	s.expectCurl("sleep-1", "000", "http://web-api:8080/")
	s.waitLog("istio-system", "ds/ztunnel", "spiffe://cluster.local/ns/default/sa/sleep", "allow policies exist, but none allowed")

	t.Log("step 3 — rbac along the chain")
	s.apply("rbac.yaml")
	s.expectCurl("sleep-1", "200", "http://web-api:8080/")
	body, _ = s.curl("sleep-1", "http://web-api:8080/")
	t.Logf("$ kubectl exec sleep-1 -- curl -s http://web-api:8080/\n    %s", body)
	if strings.Count(body, `"code":200`) != 2 {
		t.Errorf("the chain should answer 200 at both hops: %s", body)
	}
	s.expectCurl("notsleep-1", "000", "http://web-api:8080/")
	s.expectCurl("sleep-1", "000", "http://recommendation:8080/")
}

// TestDemoStrict plays manifests/examples/demo-strict on the node: mesh-wide STRICT, a
// principal allow-list, a pod outside the mesh refused, PERMISSIVE and back (peers as
// TestHandson).
func TestDemoStrict(t *testing.T) {
	n := testNode(t)
	s := newScenario(t, n, "demo-strict", "demo")
	s.cleanup([]string{"demo", "non-mesh"}, "authz-policy.yaml", "peer-authentication.yaml", "mesh.yaml")
	outside := s.in("non-mesh")

	t.Log("step 1 — STRICT and the allow-list")
	s.apply("mesh.yaml")
	s.apply("peer-authentication.yaml")
	s.apply("authz-policy.yaml")
	s.waitEnrolled("frontend-1", "attacker", "backend-1")
	if _, err := n.Kubectl(context.Background(), "-n", "non-mesh", "wait", "--for=condition=Ready", "pod/curl-test", "--timeout=3m"); err != nil {
		t.Fatal(err)
	}
	s.expectCurl("frontend-1", "200", "http://backend.demo/status/200")
	s.expectCurl("frontend-1", "200", "http://backend.demo/get")
	s.expectCurl("attacker", "000", "http://backend.demo/get")
	s.waitLog("istio-system", "ds/ztunnel", "spiffe://cluster.local/ns/demo/sa/attacker", "direction=\"inbound\"", "policy rejection")
	outside.expectCurl("curl-test", "000", "http://backend.demo.svc.cluster.local/get")

	t.Log("step 2 — the allow-list removed")
	s.delete("authz-policy.yaml")
	s.expectCurl("attacker", "200", "http://backend.demo/get")

	t.Log("step 3 — PERMISSIVE, then STRICT again")
	s.kubectl("-n", "istio-system", "patch", "peerauthentication", "default", "--type=merge", "-p", `{"spec":{"mtls":{"mode":"PERMISSIVE"}}}`)
	outside.expectCurl("curl-test", "200", "http://backend.demo.svc.cluster.local/get")
	s.kubectl("-n", "istio-system", "patch", "peerauthentication", "default", "--type=merge", "-p", `{"spec":{"mtls":{"mode":"STRICT"}}}`)
	outside.expectCurl("curl-test", "000", "http://backend.demo.svc.cluster.local/get")
}
