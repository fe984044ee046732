//go:build linux

package integration

// Egress in namespace mode: a mesh pod reaches a host outside the mesh by name through its
// ztunnel's DNS proxy (istio-cni's DNS capture) and a ServiceEntry, and a WorkloadEntry (a "VM"
// namespace served by a ztunnel of its own) over HBONE. The mesh's workload API comes from the
// YAML below through xdsserver's model and wds translation, as the control plane sends it.
//
//	node "worker":  client pod 10.1.1.2 (mesh, DNS captured)
//	node "vmnode":  outside 10.1.2.2 (not in the mesh: HTTP on 80 and a DNS server on 53),
//	                legacy-vm 10.1.2.3 (the VM of WorkloadEntry legacy-vm, HTTP on 9080)

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/goambient/goambient/xdsserver/kubeobj"
	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/wds"
	"github.com/goambient/goambient/ztunnel/netns"
	"github.com/goambient/goambient/ztunnel/state"
)

const egressMesh = `apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec: {nodeName: worker, serviceAccountName: client}
status: {podIP: CLIENT_IP}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.external.test]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{name: http, number: 80, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: shop}
spec:
  hosts: [legacy.shop.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: legacy}}
  ports: [{name: http, number: 80, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: legacy-vm
  namespace: shop
  annotations: {ambient.istio.io/redirection: enabled}
spec:
  address: VM_IP
  serviceAccount: legacy
  labels: {app: legacy}
  ports: {http: 9080}
`

// egressState builds the ztunnels' state file from egressMesh through the model and wds. An
// Istio WorkloadEntry names no node; the VM's ztunnel here serves the workload as local,
// so the test gives the WorkloadEntry's workload the VM's node (what VM onboarding would do).
func egressState(t *testing.T, clientIP, vmIP, vmNode string) string {
	t.Helper()
	yaml := strings.NewReplacer("CLIENT_IP", clientIP, "VM_IP", vmIP).Replace(egressMesh)
	return egressStateOf(t, yaml, map[string]string{"Kubernetes/networking.istio.io/WorkloadEntry/shop/legacy-vm": vmNode})
}

// egressStateOf is the ztunnels' state file of a mesh's YAML, with nodes given to workloads
// by uid.
func egressStateOf(t *testing.T, yaml string, nodes map[string]string) string {
	t.Helper()
	set, problems, err := kubeobj.Load([]byte(yaml), "egress.yaml")
	if err != nil || len(problems) > 0 {
		t.Fatalf("egress.yaml: %v %v", err, problems)
	}
	m, err := model.Build(set, model.DefaultConfig())
	if err != nil || len(m.Errors) > 0 {
		t.Fatalf("egress.yaml: %v %v", err, m.Errors)
	}
	r := wds.Translate(m, wds.Options{})
	var res state.Resources
	for _, a := range r.Addresses {
		switch {
		case a.GetWorkload() != nil:
			w := a.GetWorkload()
			if n, ok := nodes[w.GetUid()]; ok {
				w.Node = n
			}
			res.Workloads = append(res.Workloads, w)
		case a.GetService() != nil:
			res.Services = append(res.Services, a.GetService())
		}
	}
	res.Authorizations = r.Authorizations
	st, err := state.New(res)
	if err != nil {
		t.Fatal(err)
	}
	b, err := st.ConfigDump()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// serveDNS runs a DNS server (miekg/dns) in the pod's namespace on ip:53, UDP and TCP,
// answering A queries for every name under external.test with ip.
func serveDNS(t *testing.T, p *nsPod) {
	t.Helper()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		r := new(dns.Msg)
		r.SetReply(q)
		if n := q.Question[0]; n.Qtype == dns.TypeA && strings.HasSuffix(n.Name, ".external.test.") {
			r.Answer = append(r.Answer, &dns.A{Hdr: dns.RR_Header{Name: n.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP(p.ip)})
		} else if n.Qtype != dns.TypeAAAA {
			r.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(r)
	})
	pc, err := p.ns.ListenPacket(context.Background(), "udp", p.ip+":53")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := p.ns.Listen(context.Background(), "tcp", p.ip+":53")
	if err != nil {
		t.Fatal(err)
	}
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		go srv.ActivateAndServe()
		t.Cleanup(func() { srv.Shutdown() })
	}
}

// podResolver is a resolver whose queries leave the pod, unmarked, to nameserver:53, as the
// pod's libc would: the pod's DNS capture sends them to its ztunnel's DNS proxy.
func (p *nsPod) resolver(nameserver string) *net.Resolver {
	dial := p.ns.Dialer(0)
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return dial(ctx, network, nameserver+":53")
	}}
}

// getByName does GET http://host:port/path from the pod, resolving host with r.
func (p *nsPod) getByName(r *net.Resolver, url string) (int, string, error) {
	dial := p.ns.Dialer(0)
	c := p.client()
	c.Transport = &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		ips, err := r.LookupNetIP(ctx, "ip4", host)
		if err != nil {
			return nil, err
		}
		return dial(ctx, network, net.JoinHostPort(ips[0].String(), port))
	}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestEgressNamespaces: the client pod resolves a ServiceEntry host through its ztunnel's DNS
// proxy (the captured port 53) to the ServiceEntry's auto-allocated VIP, and its connection to
// that VIP is routed by the ztunnel to the host's resolved address (resolution DNS); a name
// outside the mesh is forwarded to the node's resolver from inside the pod, and its traffic
// passes through (what Istio's ztunnel does, with ALLOW_ANY or REGISTRY_ONLY alike); the
// WorkloadEntry's VM is reached over HBONE, mutual TLS on the wire.
func TestEgressNamespaces(t *testing.T) {
	tp := newNSTopo(t, "worker", "vmnode")
	bins := buildBinaries(t)
	dir := t.TempDir()
	client := tp.addPod("worker", "client", true)
	outside := tp.addPod("vmnode", "outside", false)
	vm := tp.addPod("vmnode", "legacy-vm", true)
	if err := netns.ApplyDNS(context.Background(), client.netns); err != nil {
		t.Fatal(err)
	}
	serveDNS(t, outside)
	outside.serve(t, 80, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "outside: %s %s%s from %s\n", r.Method, r.Host, r.URL.Path, r.RemoteAddr)
	}))
	vm.serve(t, 9080, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "legacy-vm: %s %s\n", r.Method, r.URL.Path)
	}))

	svids := filepath.Join(dir, "svids")
	meshctl(t, bins["meshctl"], "certs", "root", "--dir", svids)
	for _, sa := range []string{"client", "legacy"} {
		meshctl(t, bins["meshctl"], "certs", "issue", "--dir", svids, "--ns", "shop", "--sa", sa)
	}
	stateFile := filepath.Join(dir, "state.json")
	writeAtomic(t, stateFile, egressState(t, client.ip, vm.ip, "vmnode"))
	resolvConf := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolvConf, []byte("nameserver "+outside.ip+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	worker, vmnode := tp.node("worker"), tp.node("vmnode")
	worker.runZtunnel(t, bins["ztunnel"], stateFile, svids, "--pod-netns", client.ip+"=/var/run/netns/"+client.netns,
		"--dns-capture", "--resolv-conf", resolvConf)
	vmnode.runZtunnel(t, bins["ztunnel"], stateFile, svids, "--pod-netns", vm.ip+"=/var/run/netns/"+vm.netns, "--resolv-conf", resolvConf)
	wire := captureWire(t, tp)
	r := client.resolver(outside.ip)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// DNS: the ServiceEntry host is answered by the ztunnel with its VIP (the outside server
	// would say outside's address); another name is forwarded and answered by the outside server.
	if ips, err := r.LookupNetIP(ctx, "ip4", "api.external.test"); err != nil || len(ips) != 1 || ips[0] != netip.MustParseAddr("240.240.0.1") {
		t.Fatalf("api.external.test from the pod: %v %v, want the ServiceEntry's VIP 240.240.0.1", ips, err)
	}
	if ips, err := r.LookupNetIP(ctx, "ip4", "other.external.test"); err != nil || len(ips) != 1 || ips[0].String() != outside.ip {
		t.Fatalf("other.external.test from the pod: %v %v, want %s from the outside DNS server", ips, err, outside.ip)
	}

	// The ServiceEntry by name: the VIP, then the ztunnel resolves the hostname workload.
	code, body, err := client.getByName(r, "http://api.external.test/egress")
	if err != nil || code != 200 || !strings.Contains(body, "outside: GET api.external.test/egress from "+client.ip) {
		t.Fatalf("GET api.external.test from the pod: %d %q %v", code, body, err)
	}
	eventually(t, 10*time.Second, "worker's outbound log to the ServiceEntry", func() bool {
		return len(worker.out.lines("connection complete", `direction="outbound"`, `dst.service="api.external.test"`, `dst.workload="api"`)) > 0
	})

	// An unknown host passes through, as Istio's ztunnel does whatever outboundTrafficPolicy says.
	if code, body, err := client.getByName(r, "http://other.external.test/unknown"); err != nil || code != 200 || !strings.Contains(body, "outside: GET other.external.test/unknown") {
		t.Fatalf("GET other.external.test from the pod: %d %q %v", code, body, err)
	}

	// The WorkloadEntry: legacy.shop.mesh's VIP → HBONE to the VM's ztunnel → the VM's 9080.
	code, body, err = client.getByName(r, "http://legacy.shop.mesh/vm")
	if err != nil || code != 200 || !strings.Contains(body, "legacy-vm: GET /vm") {
		t.Fatalf("GET legacy.shop.mesh from the pod: %d %q %v", code, body, err)
	}
	eventually(t, 10*time.Second, "vmnode's inbound log with the client's identity", func() bool {
		return len(vmnode.out.lines("connection complete", `direction="inbound"`, `src.identity="spiffe://cluster.local/ns/shop/sa/client"`,
			`dst.workload="legacy-vm"`)) > 0
	})
	wire.checkHBONETLS(t, vm.ip, "GET /vm", "legacy-vm", "CONNECT")
}
