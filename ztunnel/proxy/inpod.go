package proxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"

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
	ns      Netns
	client  *hbone.Client // HBONE from inside the pod: the pool is the pod's, as Istio's
	keys    []string      // its listeners in Proxy.listeners
	stopDNS func()        // stops its DNS proxy (nil: none)
}

// reconcileNamespaces opens the three listeners of each local workload that has a namespace
// and closes those of workloads that left. It returns the namespaces whose listeners could not
// be opened, with why. With a PodSet it is also the hook that lets the set reconcile on its own
// changes (see PodSet).
func (p *Proxy) reconcileNamespaces(st *state.State) map[Netns]error {
	set, dynamic := p.cfg.Namespaces.(*PodSet)
	if dynamic {
		set.bind(p)
		// One reconcile at a time, against the newest state: the node agent's changes and the
		// state's may arrive together.
		set.recMu.Lock()
		defer set.recMu.Unlock()
		st = p.cfg.Store.Load()
	}
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
			var ns Netns
			if dynamic {
				ns = set.forWorkload(w)
			} else {
				ns = p.cfg.Namespaces.For(ip)
			}
			if ns != nil {
				wants[w.GetUid()+"/"+ip.String()] = want{w.GetUid(), ip, ns}
				break
			}
		}
	}
	failed := map[Netns]error{}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return failed
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
			failed[w.ns] = err
			p.log.Error("cannot serve a local workload in its namespace", "scope", "inpod", "workload", w.uid, "error", err.Error())
			continue
		}
		p.inpod[key] = pod
	}
	p.listenOK.Store(len(failed) == 0)
	return failed
}

// served reports whether ns has its listeners open (a pod of p.inpod is in it).
func (p *Proxy) served(ns Netns) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pod := range p.inpod {
		if pod.ns == ns {
			return true
		}
	}
	return false
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
	if err := p.openPodDNS(key, pod, loop); err != nil {
		p.dropPod(key, pod)
		return nil, err
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
	if pod.stopDNS != nil {
		pod.stopDNS()
	}
	delete(p.inpod, key)
	p.log.Info("listeners closed", "scope", "inpod", "pod", key)
}

// closePods closes the HBONE clients of namespace mode (Shutdown).
func (p *Proxy) closePods() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pod := range p.inpod {
		pod.client.Close()
		if pod.stopDNS != nil {
			pod.stopDNS()
		}
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

// PodSet is a PodNetworks whose pods come and go at run time: istio-cni's node agent adds and
// removes them over ZDS (ztunnel/zds), each with its network namespace. Pods are keyed by the
// node agent's uid (the Kubernetes pod UID) and matched to the state's workloads by namespace
// and name (ZDS WorkloadInfo ↔ workload API Workload); the matched workload's addresses are
// the IPs For answers. A pod whose workload is not (yet) a local workload of the state is kept,
// and served as soon as a state has it.
//
// The hook: a Proxy whose Config.Namespaces is a PodSet binds to it on its first reconcile
// (in Start), and from then on AddPod, DelPod and RetainPods reconcile the in-pod listeners
// right away, besides the reconcile that follows every state change. Reconciles are serialized
// and always use the store's newest state.
type PodSet struct {
	log   *slog.Logger
	recMu sync.Mutex // one reconcile at a time (reconcileNamespaces)

	mu    sync.Mutex
	proxy *Proxy
	pods  map[string]*setPod // by uid
	seq   uint64
}

type setPod struct {
	uid, namespace, name string
	ns                   Netns
	seq                  uint64 // the newest of two pods with one name wins (a pod re-created)
}

// NewPodSet returns an empty PodSet that logs to log (nil: nowhere).
func NewPodSet(log *slog.Logger) *PodSet {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &PodSet{log: log, pods: map[string]*setPod{}}
}

func (s *PodSet) bind(p *Proxy) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proxy == nil {
		s.proxy = p
	}
}

func (s *PodSet) bound() *Proxy {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proxy
}

// For returns the namespace of the pod whose workload (in the proxy's current state) has
// address ip, or nil; nil too before a proxy is bound.
func (s *PodSet) For(ip netip.Addr) Netns {
	p := s.bound()
	if p == nil {
		return nil
	}
	w := p.cfg.Store.Load().WorkloadByIP(ip)
	if w == nil {
		return nil
	}
	return s.forWorkload(w)
}

// forWorkload returns the namespace of the pod named as w, or nil.
func (s *PodSet) forWorkload(w *workloadapi.Workload) Netns {
	s.mu.Lock()
	defer s.mu.Unlock()
	var best *setPod
	for _, pod := range s.pods {
		if pod.namespace == w.GetNamespace() && pod.name == w.GetName() && (best == nil || pod.seq > best.seq) {
			best = pod
		}
	}
	if best == nil {
		return nil
	}
	return best.ns
}

// AddPod serves the pod uid (Kubernetes namespace and name) in its network namespace ns, which
// the set owns from then on (it is closed when the pod leaves, or now if it is not kept). It
// returns once the pod's listeners are open, or with why they cannot be (the pod is then
// dropped). A pod whose workload the state does not have yet is kept and nil is returned: its
// listeners open when the state brings it. The same uid added again with the same namespace
// keeps the pod as it is; with another namespace it replaces it.
func (s *PodSet) AddPod(_ context.Context, uid, namespace, name string, ns Netns) error {
	switch {
	case ns == nil:
		return fmt.Errorf("pod %s: no network namespace", uid)
	case uid == "" || namespace == "" || name == "":
		closeNetns(ns)
		return fmt.Errorf("pod %q (%s/%s): uid, namespace and name are required", uid, namespace, name)
	}
	s.mu.Lock()
	old := s.pods[uid]
	if old != nil && old.namespace == namespace && old.name == name && sameNetns(old.ns, ns) {
		closeNetns(ns)
		ns, old = old.ns, nil
	} else {
		s.seq++
		s.pods[uid] = &setPod{uid: uid, namespace: namespace, name: name, ns: ns, seq: s.seq}
	}
	p := s.proxy
	s.mu.Unlock()
	log := s.log.With("scope", "inpod", "uid", uid, "workload", namespace+"/"+name)
	if p == nil {
		if old != nil {
			closeNetns(old.ns)
		}
		log.Info("pod kept until the proxy starts")
		return nil
	}
	failed := p.reconcileNamespaces(p.cfg.Store.Load())
	if old != nil {
		closeNetns(old.ns) // its listeners were closed by the reconcile
	}
	if err := failed[ns]; err != nil {
		s.remove(map[string]bool{uid: true}, ns)
		return fmt.Errorf("pod %s (%s/%s): %w", uid, namespace, name, err)
	}
	if p.served(ns) {
		log.Info("pod added: listeners open in its namespace")
	} else {
		log.Info("pod added: no local workload of that namespace and name in the state yet; its listeners open when the state has it")
	}
	return nil
}

// DelPod stops serving the pod uid: its listeners and its HBONE pool are closed, then its
// namespace. An unknown uid is not an error.
func (s *PodSet) DelPod(_ context.Context, uid string) error {
	if !s.remove(map[string]bool{uid: true}, nil) {
		s.log.Debug("pod to delete is not served", "scope", "inpod", "uid", uid)
		return nil
	}
	s.log.Info("pod deleted", "scope", "inpod", "uid", uid)
	return nil
}

// RetainPods drops every pod whose uid is not in keep (the node agent's snapshot: pods it
// did not send again are gone), as DelPod does.
func (s *PodSet) RetainPods(_ context.Context, keep map[string]bool) error {
	drop := map[string]bool{}
	s.mu.Lock()
	for uid := range s.pods {
		if !keep[uid] {
			drop[uid] = true
		}
	}
	s.mu.Unlock()
	if len(drop) > 0 && s.remove(drop, nil) {
		s.log.Info("pods not in the node agent's snapshot dropped", "scope", "inpod", "count", len(drop))
	}
	return nil
}

// remove drops the pods of uids (only if their namespace is only, when set), reconciles, then
// closes their namespaces. It reports whether any was dropped.
func (s *PodSet) remove(uids map[string]bool, only Netns) bool {
	var gone []Netns
	s.mu.Lock()
	for uid := range uids {
		if pod := s.pods[uid]; pod != nil && (only == nil || pod.ns == only) {
			gone = append(gone, pod.ns)
			delete(s.pods, uid)
		}
	}
	p := s.proxy
	s.mu.Unlock()
	if len(gone) == 0 {
		return false
	}
	if p != nil {
		p.reconcileNamespaces(p.cfg.Store.Load())
	}
	for _, ns := range gone {
		closeNetns(ns)
	}
	return true
}

// Len returns how many pods the set holds (served or waiting for the state).
func (s *PodSet) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pods)
}

// Close closes the namespaces of every pod; call it after the proxy's Shutdown.
func (s *PodSet) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for uid, pod := range s.pods {
		closeNetns(pod.ns)
		delete(s.pods, uid)
	}
	return nil
}

// closeNetns closes ns if it can be closed (a netns.NS).
func closeNetns(ns Netns) {
	if c, ok := ns.(io.Closer); ok {
		c.Close()
	}
}

// sameNetns reports whether a and b are the same namespace: the same value, or two files
// whose ID (netns.NS.ID) is equal.
func sameNetns(a, b Netns) bool {
	if a == b {
		return true
	}
	type ider interface{ ID() string }
	ai, ok1 := a.(ider)
	bi, ok2 := b.(ider)
	return ok1 && ok2 && ai.ID() != "" && ai.ID() == bi.ID()
}
