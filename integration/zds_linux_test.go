//go:build linux

package integration

// Namespace mode fed by istio-cni's node agent over ZDS: the ztunnels run with --zds-socket,
// and a fake node agent per node (a SOCK_SEQPACKET listener in the test) sends them the pods
// with their network namespace fds, as istio-cni does. The nodes and pods are the namespaces
// of netns_linux_test.go (newNSTopo, addPod with istio-cni's in-pod rules).

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"istio.io/istio/pkg/zdsapi"

	"github.com/goambient/goambient/ztunnel/zds/zdstest"
)

const zdsWait = zdstest.Wait

// zdsAgent is a fake istio-cni node agent (zdstest) and its connection to the ztunnel it
// serves.
type zdsAgent struct {
	*zdstest.Agent
	t    *testing.T
	conn *zdstest.Conn
}

func zdsNewAgent(t *testing.T, path string) *zdsAgent {
	t.Helper()
	a, err := zdstest.Listen(t, path)
	if err != nil {
		t.Fatal(err)
	}
	return &zdsAgent{Agent: a, t: t}
}

// accept waits for the ztunnel to connect and say hello (V1).
func (a *zdsAgent) accept() { a.t.Helper(); a.conn = a.Accept() }

// send sends req (with the namespace file of pod, when set) and returns the ack's error.
func (a *zdsAgent) send(req *zdsapi.WorkloadRequest, pod *nsPod) string {
	a.t.Helper()
	var fds []int
	if pod != nil {
		f, err := os.Open("/var/run/netns/" + pod.netns)
		if err != nil {
			a.t.Fatal(err)
		}
		defer f.Close() // the ztunnel has its own copy once sent
		fds = append(fds, int(f.Fd()))
	}
	return a.conn.Send(req, fds...)
}

func zdsAdd(p *nsPod, ns, sa string) *zdsapi.WorkloadRequest {
	return zdstest.Add("uid-"+p.name, ns, p.name, sa)
}

// snapshot sends an Add per pod, then SnapshotSent, each acked without error.
func (a *zdsAgent) snapshot(ns string, pods map[*nsPod]string) {
	a.t.Helper()
	for p, sa := range pods {
		if e := a.send(zdsAdd(p, ns, sa), p); e != "" {
			a.t.Fatalf("snapshot add %s: ack error %q", p.name, e)
		}
	}
	if e := a.send(zdstest.SnapshotSent(), nil); e != "" {
		a.t.Fatalf("snapshot sent: ack error %q", e)
	}
}

// zdsRefused reports whether a TCP connection from inside pod (unmarked) to addr is refused.
func zdsRefused(t *testing.T, pod *nsPod, addr string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), zdsWait)
	defer cancel()
	c, err := pod.ns.Dialer(0)(ctx, "tcp", addr)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// TestZDSNamespaces: ztunnels that learn their pods from a (fake) istio-cni node agent. A
// call between two mesh pods on two nodes is answered; a pod added after the start is served
// as soon as its Add is acked; after its Del is acked its listeners are gone; when the node
// agent restarts, the ztunnel connects again, keeps serving the pods of the new snapshot (without
// reopening their listeners) and drops those the snapshot lacks.
func TestZDSNamespaces(t *testing.T) {
	h := newNSHandson(t, "10.96.0.30")
	tp, bins, svids, stateFile, dir, vip := h.tp, h.bins, h.svids, h.stateFile, h.dir, h.vip
	blue, allow := h.blue, h.allow
	late := h.deny // in the state from the start, sent by ZDS later

	worker, worker2 := tp.node("worker"), tp.node("worker2")
	agent1 := zdsNewAgent(t, filepath.Join(dir, "worker.sock"))
	agent2 := zdsNewAgent(t, filepath.Join(dir, "worker2.sock"))
	worker.runZtunnel(t, bins["ztunnel"], stateFile, svids, "--zds-socket", agent1.Path)
	worker2.runZtunnel(t, bins["ztunnel"], stateFile, svids, "--zds-socket", agent2.Path)
	agent1.accept()
	agent2.accept()
	agent1.snapshot("handson", map[*nsPod]string{allow: "curl-allow"})
	agent2.snapshot("handson", map[*nsPod]string{blue: "handson"})

	// Served from the snapshot: curl-allow → Service → handson-blue on the other node, over HBONE.
	url := "http://" + vip + ":8080/"
	if code, body, err := allow.get(url); err != nil || code != 200 || !strings.Contains(body, "handson-blue: GET /") {
		t.Fatalf("curl-allow → handson: %d %q %v", code, body, err)
	}
	eventually(t, 10*time.Second, "worker2's inbound log of curl-allow", func() bool {
		return len(worker2.out.lines("connection complete", `direction="inbound"`,
			`src.identity="spiffe://cluster.local/ns/handson/sa/curl-allow"`, "src.addr="+allow.ip+":")) > 0
	})

	// The late pod: in the mesh (its iptables send its calls to 15001) but not sent yet: nothing
	// listens in it, so its calls are refused.
	if !zdsRefused(t, late, "127.0.0.1:15001") || !zdsRefused(t, late, late.ip+":15008") {
		t.Fatal("the late pod has listeners before its Add")
	}
	if e := agent1.send(zdsAdd(late, "handson", "curl-deny"), late); e != "" {
		t.Fatalf("add %s: ack error %q", late.name, e)
	}
	// Acked: its listeners are open now (no waiting).
	if code, body, err := late.get(url); err != nil || code != 200 || !strings.Contains(body, "handson-blue: GET /") {
		t.Fatalf("late pod → handson right after its ack: %d %q %v", code, body, err)
	}
	if zdsRefused(t, late, late.ip+":15008") {
		t.Fatal("the late pod's HBONE listener is not open")
	}
	eventually(t, 10*time.Second, "worker2's inbound log of the late pod", func() bool {
		return len(worker2.out.lines("connection complete", `direction="inbound"`,
			`src.identity="spiffe://cluster.local/ns/handson/sa/curl-deny"`, "src.addr="+late.ip+":")) > 0
	})

	// Del: acked once its listeners are closed.
	del := &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Del{Del: &zdsapi.DelWorkload{Uid: "uid-" + late.name}}}
	if e := agent1.send(del, nil); e != "" {
		t.Fatalf("del %s: ack error %q", late.name, e)
	}
	for _, addr := range []string{"127.0.0.1:15001", late.ip + ":15006", late.ip + ":15008"} {
		if !zdsRefused(t, late, addr) {
			t.Errorf("after its Del the late pod still listens on %s", addr)
		}
	}
	if _, _, err := late.get(url); err == nil {
		t.Error("the deleted pod's call was still carried")
	}
	// A bad request is refused with a reason and the connection keeps working.
	noFD := zdsAdd(late, "handson", "curl-deny")
	if e := agent1.send(noFD, nil); !strings.Contains(e, "1 fd, got 0") {
		t.Errorf("add without fd: ack %q, want an error", e)
	}
	if code, _, err := allow.get(url); err != nil || code != 200 {
		t.Fatalf("curl-allow after the Del: %d %v", code, err)
	}

	// The node agent restarts: worker2's ztunnel connects again and gets a new snapshot; the
	// same pod's namespace is kept, and the call still works.
	agent2.conn.Close()
	agent2.accept()
	agent2.snapshot("handson", map[*nsPod]string{blue: "handson"})
	if code, body, err := allow.get(url); err != nil || code != 200 {
		t.Fatalf("curl-allow after worker2's node agent reconnected: %d %q %v", code, body, err)
	}
	if l := worker2.out.lines("listeners closed"); len(l) > 0 {
		t.Errorf("worker2 reopened the kept pod's listeners on reconnect: %q", l)
	}

	// worker's node agent restarts too, after the late pod came back: its new snapshot lacks the
	// late pod (gone while the agent was down), so the ztunnel drops it.
	if e := agent1.send(zdsAdd(late, "handson", "curl-deny"), late); e != "" {
		t.Fatalf("add %s again: ack error %q", late.name, e)
	}
	if zdsRefused(t, late, late.ip+":15008") {
		t.Fatal("the late pod's HBONE listener is not open after its second Add")
	}
	agent1.conn.Close()
	agent1.accept()
	agent1.snapshot("handson", map[*nsPod]string{allow: "curl-allow"})
	if !zdsRefused(t, late, late.ip+":15008") || !zdsRefused(t, late, "127.0.0.1:15001") {
		t.Error("the pod missing from the new snapshot still has listeners")
	}
	if code, body, err := allow.get(url); err != nil || code != 200 {
		t.Fatalf("curl-allow after worker's node agent reconnected: %d %q %v", code, body, err)
	}
	for _, n := range []*nsNode{worker, worker2} {
		t.Logf("%s's node agent and in-pod log:\n%s", n.name, strings.Join(append(n.out.lines("zds"), n.out.lines("inpod")...), "\n"))
		select {
		case <-n.exited:
			t.Fatalf("%s's ztunnel exited", n.name)
		default:
		}
	}
}
