package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"istio.io/istio/pkg/workloadapi"

	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/state"
)

// PodNetworks is namespace (in-pod) mode, as Istio's ztunnel with istio-cni: each local pod
// is a network namespace whose iptables send its outbound TCP to 15001 and its inbound to
// 15006 (15008 untouched), and the proxy opens, for each local workload that has a namespace,
// its 15001, 15006 and 15008 listeners inside it and its own connections (HBONE out, to the
// application, passthrough) from inside it, marked so the pod's rules let them through.
type PodNetworks interface {
	// For returns the namespace of the pod that has address ip, or nil (that workload then
	// gets no listeners here).
	For(ip netip.Addr) Netns
}

// Netns is one pod's network namespace (ztunnel/netns.NS).
type Netns interface {
	// Listen opens a listener inside the namespace.
	Listen(ctx context.Context, network, addr string) (net.Listener, error)
	// DialContext connects from inside the namespace with ztunnel's socket mark.
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// inpodPod is one pod served in namespace mode.
type inpodPod struct {
	ns     Netns
	client *hbone.Client // HBONE from inside the pod: the pool is the pod's, as Istio's
	keys   []string      // its listeners in Proxy.listeners
}

// reconcileNamespaces opens the three listeners of each local workload that has a namespace
// and closes those of workloads that left.
func (p *Proxy) reconcileNamespaces(st *state.State) {
	type want struct {
		uid string
		ip  netip.Addr
		ns  Netns
	}
	wants := map[string]want{}
	for _, w := range st.Resources().Workloads {
		if w.GetNode() != p.cfg.Node {
			continue
		}
		for _, ip := range st.Addresses(w) {
			if ns := p.cfg.Namespaces.For(ip); ns != nil {
				wants[w.GetUid()+"/"+ip.String()] = want{w.GetUid(), ip, ns}
				break
			}
		}
	}
	ok := true
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	if p.inpod == nil {
		p.inpod = map[string]*inpodPod{}
	}
	for key, pod := range p.inpod {
		if w, keep := wants[key]; keep && w.ns == pod.ns {
			continue
		}
		p.dropPod(key, pod)
	}
	for key, w := range wants {
		if _, have := p.inpod[key]; have {
			continue
		}
		pod, err := p.openPod(key, w.ip, w.ns)
		if err != nil {
			ok = false
			p.log.Error("cannot serve a local workload in its namespace", "scope", "inpod", "workload", w.uid, "error", err.Error())
			continue
		}
		p.inpod[key] = pod
	}
	p.listenOK.Store(ok)
}

// openPod opens a pod's listeners in its namespace (under p.mu): 127.0.0.1:15001 (an
// OUTPUT REDIRECT goes to the loopback address), podIP:15006 and podIP:15008.
func (p *Proxy) openPod(key string, ip netip.Addr, ns Netns) (*inpodPod, error) {
	client, err := p.podClient(ns)
	if err != nil {
		return nil, err
	}
	pod := &inpodPod{ns: ns, client: client}
	loop := netip.IPv6Loopback()
	if ip.Is4() {
		loop = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	for _, l := range []struct {
		addr  netip.AddrPort
		serve func(net.Listener)
		name  string
	}{
		{netip.AddrPortFrom(loop, PortOutbound), p.serveCapture, "outbound"},
		{netip.AddrPortFrom(ip, PortInboundPlaintext), func(ln net.Listener) { p.servePlaintext(ln, true) }, "inbound_plaintext"},
		{netip.AddrPortFrom(ip, PortInboundHBONE), func(ln net.Listener) { p.server.Serve(ln) }, "inbound"},
	} {
		ln, err := ns.Listen(context.Background(), "tcp", l.addr.String())
		if err != nil {
			p.dropPod(key, pod)
			return nil, fmt.Errorf("listen %s in the pod's namespace: %w", l.addr, err)
		}
		k := "pod/" + key + "/" + l.name
		p.listeners[k] = ln
		pod.keys = append(pod.keys, k)
		p.log.Info("listener established", "address", l.addr.String(), "component", l.name, "scope", "inpod", "pod", ip.String())
		p.goServe(l.serve, ln)
	}
	return pod, nil
}

// podClient is an HBONE client whose connections leave from inside ns.
func (p *Proxy) podClient(ns Netns) (*hbone.Client, error) {
	cc := p.cfg.HBONEClient
	cc.Bundle = p.cfg.Identity
	cc.DialContext = ns.DialContext
	if cc.Logger == nil {
		cc.Logger = p.log.With("scope", "hbone")
	}
	return hbone.NewClient(cc)
}

// dropPod closes a pod's listeners and HBONE client (under p.mu).
func (p *Proxy) dropPod(key string, pod *inpodPod) {
	for _, k := range pod.keys {
		if ln := p.listeners[k]; ln != nil {
			ln.Close()
			delete(p.listeners, k)
		}
	}
	pod.client.Close()
	delete(p.inpod, key)
	p.log.Info("listeners closed", "scope", "inpod", "pod", key)
}

// closePods closes the HBONE clients of namespace mode (Shutdown).
func (p *Proxy) closePods() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pod := range p.inpod {
		pod.client.Close()
	}
}

// podOf returns the served pod of a local workload in namespace mode, or nil.
func (p *Proxy) podOf(st *state.State, w *workloadapi.Workload) *inpodPod {
	if p.cfg.Namespaces == nil || w == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ip := range st.Addresses(w) {
		if pod := p.inpod[w.GetUid()+"/"+ip.String()]; pod != nil {
			return pod
		}
	}
	return nil
}

// clientFor is the HBONE client for connections of the local workload src: its pod's in
// namespace mode, else the node's.
func (p *Proxy) clientFor(st *state.State, src *workloadapi.Workload) *hbone.Client {
	if pod := p.podOf(st, src); pod != nil {
		return pod.client
	}
	return p.client
}

// dialAs opens a plain TCP connection on behalf of the local workload w: from inside its
// namespace (marked) in namespace mode, else from the node.
func (p *Proxy) dialAs(ctx context.Context, st *state.State, w *workloadapi.Workload, addr string) (net.Conn, error) {
	if pod := p.podOf(st, w); pod != nil {
		return pod.ns.DialContext(ctx, "tcp", addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}
