package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/goambient/goambient/policies"
)

// handsonState is the workload state of handson steps 1–2 on loopback: pods at net.{2..5},
// the Service VIP at net.200, with the authorizations given (JSON items).
func handsonState(net string, auths []string) string {
	wl := func(name, sa, ip, node, extra string) string {
		return fmt.Sprintf(`- uid: Kubernetes//Pod/handson/%s
  name: %s
  namespace: handson
  addresses: [%q]
  node: %s
  tunnelProtocol: HBONE
  serviceAccount: %s
  workloadType: POD
  workloadName: %s
  canonicalName: %s
  clusterId: Kubernetes
%s`, name, name, ip, node, sa, name, name, extra)
	}
	var b strings.Builder
	b.WriteString("workloads:\n")
	b.WriteString(wl("handson-blue", "handson", net+".5", "worker2", `  canonicalRevision: blue
  services:
    handson/handson.handson.svc.cluster.local:
      ports: [{servicePort: 8080, targetPort: 8080}]
  authorizationPolicies: [handson/layer4-authz]
`))
	b.WriteString(wl("curl-allow", "curl-allow", net+".2", "worker", ""))
	b.WriteString(wl("curl-deny", "curl-deny", net+".3", "worker", ""))
	b.WriteString(wl("curl", "curl", net+".4", "worker", ""))
	fmt.Fprintf(&b, `services:
- name: handson
  namespace: handson
  hostname: handson.handson.svc.cluster.local
  addresses: [{address: %q}]
  ports: [{servicePort: 8080, targetPort: 8080}]
authorizations: [%s]
`, net+".200", strings.Join(auths, ", "))
	return b.String()
}

// TestZtunnelHandsonLoopback runs handson steps 1–2 with two ztunnels in loopback mode: node
// worker (curl-allow, curl-deny, curl) and node worker2 (handson-blue).
func TestZtunnelHandsonLoopback(t *testing.T) {
	bins := buildBinaries(t)
	start := time.Now()
	dir := t.TempDir()
	svids := filepath.Join(dir, "svids")
	for _, args := range [][]string{
		{"certs", "root", "--dir", svids},
		{"certs", "issue-from-mesh", "--dir", svids, "-f", "../manifests/examples/handson/mesh.yaml"},
	} {
		if b, err := exec.Command(bins["meshctl"], args...).CombinedOutput(); err != nil {
			t.Fatalf("meshctl %v: %v\n%s", args, err, b)
		}
	}

	// The L4 policy of step 2, as the control plane would send it.
	objs, errs := policies.LoadPath("../manifests/examples/handson/L4-authorization-policy.yaml")
	for _, e := range errs {
		t.Fatal(e)
	}
	var l4 []string
	for _, a := range policies.ToZtunnel(objs, policies.Options{}).Authorizations() {
		js, err := protojson.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		l4 = append(l4, string(js))
	}

	// A random 127.a.b.0/24 per run; pods at .2-.5, the ztunnels' own listeners at .250/.251,
	// apps (private) at 127.(a+100).b.x (the default --app-offset rule).
	a, b := 10+rand.IntN(90), 1+rand.IntN(250)
	podNet := fmt.Sprintf("127.%d.%d", a, b)
	blue, allow, deny, plainClient := podNet+".5", podNet+".2", podNet+".3", podNet+".4"
	appAddr := fmt.Sprintf("127.%d.%d.5:8080", a+100, b)

	stateFile := filepath.Join(dir, "state.yaml")
	writeAtomic(t, stateFile, handsonState(podNet, nil))

	ln, err := net.Listen("tcp", appAddr)
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "handson-blue: %s %s\n", r.Method, r.URL.Path)
	})}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })

	worker := startZtunnel(t, bins["ztunnel"], "worker", podNet+".250", stateFile, svids)
	worker2 := startZtunnel(t, bins["ztunnel"], "worker2", podNet+".251", stateFile, svids)
	socks := worker.host + ":15080"
	url := "http://handson:8080/"

	// Step 1: no policy, both curls get the app's answer over HBONE.
	for _, from := range []string{allow, deny} {
		code, body, err := curl(socks, from, url)
		if err != nil || code != 200 || !strings.Contains(body, "handson-blue: GET /") {
			t.Fatalf("step 1: GET %s from %s: %d %q %v", url, from, code, body, err)
		}
	}
	for _, sa := range []string{"curl-allow", "curl-deny"} {
		id := `src.identity="spiffe://cluster.local/ns/handson/sa/` + sa + `"`
		eventually(t, 5*time.Second, "worker2's inbound log of "+sa, func() bool {
			return len(worker2.out.lines("connection complete", `direction="inbound"`, id, `dst.workload="handson-blue"`)) > 0
		})
	}
	eventually(t, 5*time.Second, "worker's two outbound HBONE log lines", func() bool {
		return len(worker.out.lines("connection complete", `direction="outbound"`, `dst.service="handson.handson.svc.cluster.local"`, `dst.hbone_addr=`+blue+`:8080`)) >= 2
	})
	// Plaintext to the pod's own port reaches the app through worker2 (no STRICT policy).
	if resp, err := http.Get("http://" + blue + ":8080/"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("step 1: plaintext GET to %s:8080: %v %v", blue, resp, err)
	} else {
		resp.Body.Close()
	}
	_ = plainClient

	// Step 2: the L4 policy (the workload names it from the start; the authorization itself,
	// with its curl-deny principal, arrives now) denies curl-deny on port 8080.
	writeAtomic(t, stateFile, handsonState(podNet, l4))
	for _, z := range []*ztunnelProc{worker, worker2} {
		eventually(t, 5*time.Second, z.name+" /config_dump with the policy", func() bool {
			return strings.Contains(z.get(t, ":15000/config_dump"), "ns/handson/sa/curl-deny")
		})
	}
	if code, body, err := curl(socks, allow, url); err != nil || code != 200 {
		t.Fatalf("step 2: curl-allow: %d %q %v", code, body, err)
	}
	if code, body, err := curl(socks, deny, url); err == nil {
		t.Fatalf("step 2: curl-deny got an HTTP response: %d %q", code, body)
	} else {
		t.Logf("step 2: curl-deny: %v", err)
	}
	eventually(t, 5*time.Second, "worker2's deny log", func() bool {
		return len(worker2.out.lines("error", "connection complete", `direction="inbound"`,
			`src.identity="spiffe://cluster.local/ns/handson/sa/curl-deny"`,
			`connection closed due to policy rejection: explicitly denied by: handson/layer4-authz`)) > 0
	})
	eventually(t, 5*time.Second, "worker's outbound 401 log", func() bool {
		return len(worker.out.lines("error", `direction="outbound"`, `src.identity="spiffe://cluster.local/ns/handson/sa/curl-deny"`, `error="http status: 401 Unauthorized"`)) > 0
	})
	m := worker2.get(t, ":15020/metrics")
	for _, want := range []string{
		`reporter="destination"`, `response_flags="DENY"`, `connection_security_policy="mutual_tls"`,
		`source_principal="spiffe://cluster.local/ns/handson/sa/curl-deny"`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("worker2 metrics lack %s", want)
		}
	}

	// Policy removed: curl-deny is allowed again.
	writeAtomic(t, stateFile, handsonState(podNet, nil))
	eventually(t, 5*time.Second, "worker2 /config_dump without the policy", func() bool {
		return !strings.Contains(worker2.get(t, ":15000/config_dump"), "ns/handson/sa/curl-deny")
	})
	if code, body, err := curl(socks, deny, url); err != nil || code != 200 {
		t.Fatalf("after removing the policy: curl-deny: %d %q %v", code, body, err)
	}

	// SIGTERM: both drain and exit.
	t.Logf("scenario done after %v", time.Since(start))
	for _, z := range []*ztunnelProc{worker, worker2} {
		z.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, z := range []*ztunnelProc{worker, worker2} {
		select {
		case <-z.exited:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s did not exit within 5s of SIGTERM", z.name)
		}
		t.Logf("%s exited %v after SIGTERM", z.name, time.Since(start))
		if !strings.Contains(z.out.String(), "stopped") {
			t.Errorf("%s did not log its shutdown", z.name)
		}
	}
	_ = context.Background
}
