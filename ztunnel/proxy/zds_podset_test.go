package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/goambient/goambient/ztunnel/state"
)

// podNS is a fakeNetns the PodSet can close, with an ID as netns.NS has.
type podNS struct {
	*fakeNetns
	id     string
	closed atomic.Bool
	opened atomic.Int32 // listeners opened, counting re-opens
}

func (n *podNS) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	ln, err := n.fakeNetns.Listen(ctx, network, addr)
	if err == nil {
		n.opened.Add(1)
	}
	return ln, err
}

func newPodNS(id string) *podNS { return &podNS{fakeNetns: &fakeNetns{}, id: id} }

func (n *podNS) Close() error { n.closed.Store(true); return nil }
func (n *podNS) ID() string   { return n.id }

func podSetState(net string, pods ...string) string {
	var b strings.Builder
	b.WriteString("workloads:\n")
	for i, p := range pods {
		name, node, _ := strings.Cut(p, "@")
		fmt.Fprintf(&b, "- {uid: Kubernetes//Pod/ns/%s, name: %s, namespace: ns, addresses: [%q], node: %s, tunnelProtocol: HBONE}\n",
			name, name, fmt.Sprintf("%s.%d", net, i+2), node)
	}
	return b.String()
}

func wantListeners(t *testing.T, what string, ns *podNS, ip string) {
	t.Helper()
	open, _ := ns.addrs()
	var want []string
	if ip != "" {
		want = []string{ip + ":15006", ip + ":15008", "127.0.0.1:15001"}
		slices.Sort(want)
	}
	if !slices.Equal(open, want) {
		t.Errorf("%s: listeners %v, want %v", what, open, want)
	}
}

func wantClosed(t *testing.T, what string, ns *podNS, n int) {
	t.Helper()
	if _, closed := ns.addrs(); len(closed) != n {
		t.Errorf("%s: %d listeners closed (%v), want %d", what, len(closed), closed, n)
	}
}

// TestPodSetServesPodsAtRunTime: pods added to a PodSet are served right away when the state
// has a local workload of that namespace and name, later when it does not yet; a Del closes
// the listeners, drops the pod's HBONE pool and closes its namespace; a snapshot drops the
// pods not sent again; the same namespace sent again is kept, another one replaces it.
func TestPodSetServesPodsAtRunTime(t *testing.T) {
	n := randomNet()
	ipA, ipB, ipD := n+".2", n+".3", n+".5"
	set := NewPodSet(nil)
	tp := startProxy(t, parseState(t, podSetState(n, "a@n1", "b@n1", "c@n2")), func(cfg *Config) {
		cfg.Loopback = false
		cfg.Namespaces = set
		cfg.Listen = Listen{}
	})
	ctx := context.Background()
	if !tp.p.Ready() {
		t.Fatal("not ready with no pods")
	}

	// a: in the state and local: its listeners are open when AddPod returns.
	a := newPodNS("ns-a")
	if err := set.AddPod(ctx, "uid-a", "ns", "a", a); err != nil {
		t.Fatal(err)
	}
	wantListeners(t, "a after AddPod", a, ipA)
	if set.For(netip.MustParseAddr(ipA)) != Netns(a) || set.For(netip.MustParseAddr(ipB)) != nil {
		t.Error("For does not answer a's address with a's namespace (and only it)")
	}

	// c: in the state but on another node; d: not in the state yet. Both kept, unserved.
	c, d := newPodNS("ns-c"), newPodNS("ns-d")
	for _, p := range []struct {
		uid, name string
		ns        *podNS
	}{{"uid-c", "c", c}, {"uid-d", "d", d}} {
		if err := set.AddPod(ctx, p.uid, "ns", p.name, p.ns); err != nil {
			t.Fatalf("%s: %v", p.uid, err)
		}
		wantListeners(t, p.name+" before the state has it here", p.ns, "")
	}
	if set.Len() != 3 {
		t.Errorf("set holds %d pods, want 3", set.Len())
	}
	// The state brings d to this node: served on that state change.
	tp.store.Store(parseState(t, podSetState(n, "a@n1", "b@n1", "c@n2", "d@n1")))
	wantListeners(t, "d once the state has it", d, ipD)

	// The same namespace again (a reconnect's snapshot): nothing reopened, the new fd closed.
	again := newPodNS("ns-a")
	if err := set.AddPod(ctx, "uid-a", "ns", "a", again); err != nil {
		t.Fatal(err)
	}
	wantClosed(t, "a re-sent with its namespace", a, 0)
	if !again.closed.Load() || a.closed.Load() {
		t.Error("re-sent namespace: want the new file closed and the kept one open")
	}
	// Another namespace for uid-a (the pod's sandbox was re-created): replaced.
	a2 := newPodNS("ns-a2")
	if err := set.AddPod(ctx, "uid-a", "ns", "a", a2); err != nil {
		t.Fatal(err)
	}
	wantClosed(t, "a's old namespace", a, 3)
	wantListeners(t, "a's new namespace", a2, ipA)
	if !a.closed.Load() {
		t.Error("the replaced namespace was not closed")
	}

	// Del: listeners closed, pool gone, namespace closed; an unknown uid is fine.
	st := tp.store.Load()
	if tp.p.podOf(st, st.WorkloadByIP(netip.MustParseAddr(ipA))) == nil {
		t.Fatal("a has no served pod before its Del")
	}
	if err := set.DelPod(ctx, "uid-a"); err != nil {
		t.Fatal(err)
	}
	wantClosed(t, "a after Del", a2, 3)
	if !a2.closed.Load() {
		t.Error("a's namespace not closed after Del")
	}
	if tp.p.podOf(st, st.WorkloadByIP(netip.MustParseAddr(ipA))) != nil {
		t.Error("a still has a served pod (and HBONE pool) after Del")
	}
	if err := set.DelPod(ctx, "uid-nobody"); err != nil {
		t.Errorf("Del of an unknown uid: %v", err)
	}

	// A snapshot that sent only d: c dropped, d kept.
	if err := set.RetainPods(ctx, map[string]bool{"uid-d": true}); err != nil {
		t.Fatal(err)
	}
	if !c.closed.Load() || d.closed.Load() || set.Len() != 1 {
		t.Errorf("after the snapshot: c closed %v, d closed %v, %d pods; want c dropped, d kept", c.closed.Load(), d.closed.Load(), set.Len())
	}
	wantClosed(t, "d after the snapshot", d, 0)
}

// TestPodSetAddFails: a pod whose listeners cannot be opened is refused with the reason, not
// kept, its namespace closed, and the proxy is ready again.
func TestPodSetAddFails(t *testing.T) {
	n := randomNet()
	set := NewPodSet(nil)
	tp := startProxy(t, parseState(t, podSetState(n, "a@n1")), func(cfg *Config) {
		cfg.Loopback = false
		cfg.Namespaces = set
		cfg.Listen = Listen{}
	})
	bad := newPodNS("ns-bad")
	bad.failListen = true
	err := set.AddPod(context.Background(), "uid-a", "ns", "a", bad)
	if err == nil || !strings.Contains(err.Error(), "uid-a") || !strings.Contains(err.Error(), "cannot enter the namespace") {
		t.Fatalf("AddPod error %v, want the pod and the reason", err)
	}
	if set.Len() != 0 || !bad.closed.Load() {
		t.Errorf("refused pod: %d pods kept, namespace closed %v", set.Len(), bad.closed.Load())
	}
	if !tp.p.Ready() {
		t.Error("not ready after the refused pod was dropped")
	}
	for _, tc := range []struct{ uid, ns, name string }{{"", "ns", "a"}, {"u", "", "a"}, {"u", "ns", ""}} {
		if err := set.AddPod(context.Background(), tc.uid, tc.ns, tc.name, newPodNS("x")); err == nil {
			t.Errorf("AddPod(%q, %q, %q) accepted", tc.uid, tc.ns, tc.name)
		}
	}
}

// TestPodSetBeforeStart: pods added before the proxy starts are served by its Start.
func TestPodSetBeforeStart(t *testing.T) {
	n := randomNet()
	set := NewPodSet(nil)
	a := newPodNS("ns-a")
	if err := set.AddPod(context.Background(), "uid-a", "ns", "a", a); err != nil {
		t.Fatal(err)
	}
	startProxy(t, parseState(t, podSetState(n, "a@n1")), func(cfg *Config) {
		cfg.Loopback = false
		cfg.Namespaces = set
		cfg.Listen = Listen{}
	})
	wantListeners(t, "a after Start", a, n+".2")
}

// TestPodSetConcurrentChanges: node agent changes and state changes racing each other end
// with the listeners the last of each asks for (run with -race).
func TestPodSetConcurrentChanges(t *testing.T) {
	n := randomNet()
	set := NewPodSet(nil)
	here, away := podSetState(n, "a@n1", "b@n1"), podSetState(n, "a@n1", "b@n2")
	tp := startProxy(t, parseState(t, here), func(cfg *Config) {
		cfg.Loopback = false
		cfg.Namespaces = set
		cfg.Listen = Listen{}
	})
	a := newPodNS("ns-a")
	if err := set.AddPod(context.Background(), "uid-a", "ns", "a", a); err != nil {
		t.Fatal(err)
	}
	states := []*state.State{parseState(t, here), parseState(t, away)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 50 {
			tp.store.Store(states[i%2])
		}
	}()
	var bs []*podNS
	for i := range 50 {
		b := newPodNS(fmt.Sprintf("ns-b%d", i))
		bs = append(bs, b)
		if err := set.AddPod(context.Background(), "uid-b", "ns", "b", b); err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			set.DelPod(context.Background(), "uid-b")
		}
	}
	<-done
	tp.store.Store(states[0])
	wantListeners(t, "a", a, n+".2")
	last := bs[len(bs)-1] // 49: not deleted
	wantListeners(t, "the last b", last, n+".3")
	for i, b := range bs[:len(bs)-1] {
		if !b.closed.Load() {
			t.Errorf("b's namespace %d, replaced or deleted, is still open", i)
		}
		if _, closed := b.addrs(); int(b.opened.Load()) != len(closed) {
			t.Errorf("b's namespace %d: %d listeners opened, %d closed", i, b.opened.Load(), len(closed))
		}
	}
	if !tp.p.Ready() {
		t.Error("not ready at the end")
	}
}
