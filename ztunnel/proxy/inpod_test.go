package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeNetns stands for a pod's network namespace: its listeners are loopback listeners on
// free ports, recorded by the address the proxy asked for; failListen makes Listen fail.
type fakeNetns struct {
	mu         sync.Mutex
	lns        map[string]net.Listener
	closed     []string
	failListen bool
}

func (f *fakeNetns) Listen(_ context.Context, network, addr string) (net.Listener, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failListen {
		return nil, errors.New("fake: cannot enter the namespace")
	}
	ln, err := net.Listen(network, "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	if f.lns == nil {
		f.lns = map[string]net.Listener{}
	}
	f.lns[addr] = &fakeLn{Listener: ln, onClose: func() { f.mu.Lock(); f.closed = append(f.closed, addr); f.mu.Unlock() }}
	return f.lns[addr], nil
}

func (f *fakeNetns) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return nil, errors.New("fake: no dialing")
}

func (f *fakeNetns) addrs() (open, closed []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for a := range f.lns {
		open = append(open, a)
	}
	slices.Sort(open)
	return open, slices.Clone(f.closed)
}

type fakeLn struct {
	net.Listener
	once    sync.Once
	onClose func()
}

func (l *fakeLn) Close() error { l.once.Do(l.onClose); return l.Listener.Close() }

type fakePods map[netip.Addr]*fakeNetns

func (m fakePods) For(ip netip.Addr) Netns {
	if ns := m[ip]; ns != nil {
		return ns
	}
	return nil
}

func inpodState(net string, pods ...string) string {
	var b strings.Builder
	b.WriteString("workloads:\n")
	for _, p := range pods {
		name, node, _ := strings.Cut(p, "@")
		ip := map[string]string{"a": ".2", "b": ".3", "c": ".4"}[name]
		fmt.Fprintf(&b, "- {uid: Kubernetes//Pod/ns/%s, name: %s, namespace: ns, addresses: [%q], node: %s, tunnelProtocol: HBONE}\n", name, name, net+ip, node)
	}
	return b.String()
}

// TestNamespaceModeListeners: each local workload with a namespace gets 127.0.0.1:15001,
// podIP:15006 and podIP:15008 inside it; no fixed 15001/15006/15008 are opened; a workload
// that leaves the node has its listeners closed; a namespace that cannot be entered makes the
// proxy not ready.
func TestNamespaceModeListeners(t *testing.T) {
	n := randomNet()
	a, b, c := &fakeNetns{}, &fakeNetns{}, &fakeNetns{}
	pods := fakePods{
		netip.MustParseAddr(n + ".2"): a, netip.MustParseAddr(n + ".3"): b, netip.MustParseAddr(n + ".4"): c,
	}
	// a and b are local, c is on another node.
	tp := startProxy(t, parseState(t, inpodState(n, "a@n1", "b@n1", "c@n2")), func(cfg *Config) {
		cfg.Loopback = false
		cfg.Namespaces = pods
		cfg.Listen = Listen{InboundHBONE: "127.0.0.1:0", InboundPlaintext: "127.0.0.1:0", Outbound: "127.0.0.1:0"}
	})
	for _, name := range []string{"inbound", "inbound_plaintext", "outbound"} {
		if tp.p.Addr(name) != nil {
			t.Errorf("namespace mode opened the node-wide %s listener", name)
		}
	}
	for ns, ip := range map[*fakeNetns]string{a: n + ".2", b: n + ".3"} {
		open, _ := ns.addrs()
		want := []string{ip + ":15006", ip + ":15008", "127.0.0.1:15001"}
		slices.Sort(want)
		if !slices.Equal(open, want) {
			t.Errorf("pod %s: listeners %v, want %v", ip, open, want)
		}
	}
	if open, _ := c.addrs(); len(open) != 0 {
		t.Errorf("the remote pod got listeners: %v", open)
	}
	if !tp.p.Ready() {
		t.Error("not ready with every pod's listeners open")
	}

	// b leaves the node: its three listeners close, a's stay.
	tp.store.Store(parseState(t, inpodState(n, "a@n1", "b@n2", "c@n2")))
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, closed := b.addrs()
		if len(closed) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b's listeners closed: %v, want 3", closed)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, closed := a.addrs(); len(closed) != 0 {
		t.Errorf("a's listeners closed: %v", closed)
	}

	// c arrives on this node but its namespace cannot be entered: not ready, and logged.
	c.mu.Lock()
	c.failListen = true
	c.mu.Unlock()
	tp.store.Store(parseState(t, inpodState(n, "a@n1", "b@n2", "c@n1")))
	for tp.p.Ready() {
		if time.Now().After(deadline.Add(5 * time.Second)) {
			t.Fatal("still ready with a pod it cannot serve")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(tp.logs.String(), "cannot serve a local workload in its namespace") {
		t.Errorf("no log of the failure:\n%s", tp.logs)
	}
}
