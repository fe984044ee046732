package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"istio.io/istio/pkg/workloadapi"

	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/lograte"
	"github.com/goambient/goambient/ztunnel/metrics"
	"github.com/goambient/goambient/ztunnel/socks5"
	"github.com/goambient/goambient/ztunnel/state"
)

// Proxy is one node's ztunnel.
type Proxy struct {
	cfg Config
	log *slog.Logger
	// earlyLog is log at a bounded rate (HBONEServer.FailureLogsPerSecond), for the access-log
	// lines of inbound streams that their client reset before the answer, or that failed
	// without carrying a byte: a peer can cause those at will (Rapid Reset).
	earlyLog *slog.Logger
	metrics  *metrics.Metrics
	appAddr  func(netip.AddrPort) netip.AddrPort
	resolver HostResolver
	td       spiffeid.TrustDomain

	client *hbone.Client
	server *hbone.Server
	socks  *socks5.Server

	mu        sync.Mutex
	closed    bool
	listeners map[string]net.Listener // loopback per-pod listeners by address, and the fixed ones
	http      []*http.Server
	open      map[*inboundConn]struct{} // inbound connections, re-checked on policy change
	relays    map[net.Conn]struct{}     // plaintext and captured client connections
	inpod     map[string]*inpodPod      // namespace mode: served pods by "uid/ip"
	wg        sync.WaitGroup

	up       atomic.Bool // listeners started
	listenOK atomic.Bool // the last reconcile opened every per-pod listener
	unsub    func()
}

// New checks cfg and builds a Proxy; Start opens its listeners.
func New(cfg Config) (*Proxy, error) {
	if cfg.Store == nil || cfg.Identity == nil {
		return nil, errors.New("proxy: Config.Store and Config.Identity are required")
	}
	td, err := spiffeid.TrustDomainFromString(cmp.Or(cfg.TrustDomain, "cluster.local"))
	if err != nil {
		return nil, fmt.Errorf("proxy: trust domain: %w", err)
	}
	p := &Proxy{
		cfg:       cfg,
		log:       cmp.Or(cfg.Logger, slog.New(slog.DiscardHandler)),
		metrics:   cfg.Metrics,
		appAddr:   cfg.AppAddr,
		resolver:  cfg.Resolver,
		td:        td,
		listeners: map[string]net.Listener{},
		open:      map[*inboundConn]struct{}{},
		relays:    map[net.Conn]struct{}{},
	}
	if p.metrics == nil {
		p.metrics = metrics.New()
	}
	p.earlyLog = slog.New(lograte.NewHandler(p.log.Handler(), cmp.Or(cfg.HBONEServer.FailureLogsPerSecond, hbone.DefaultFailureLogsPerSecond)))
	if p.resolver == nil {
		p.resolver = systemResolver{}
	}
	if p.appAddr == nil {
		p.appAddr = AppOffsetRule(DefaultAppOffset)
	}
	cc := cfg.HBONEClient
	cc.Bundle = cfg.Identity
	if cc.Logger == nil {
		cc.Logger = p.log.With("scope", "hbone")
	}
	if p.client, err = hbone.NewClient(cc); err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	sc := cfg.HBONEServer
	sc.Bundle = cfg.Identity
	sc.GetCertificate = p.inboundCertificate
	sc.Handler = hbone.HandlerFunc(p.serveHBONE)
	if sc.Logger == nil {
		sc.Logger = p.log.With("scope", "hbone")
	}
	if p.server, err = hbone.NewServer(sc); err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	p.socks = &socks5.Server{
		Handler:  socks5.HandlerFunc(p.serveSOCKS5),
		Resolver: socks5.Fallback(socks5.ResolverFunc(p.resolveMesh), socks5.SystemResolver{}),
		Logger:   p.log.With("scope", "socks5"),
	}
	return p, nil
}

// Metrics returns the proxy's metrics.
func (p *Proxy) Metrics() *metrics.Metrics { return p.metrics }

// Start opens the listeners and subscribes to state changes (new local pods get their loopback
// listeners, changed policies re-check open connections). It fails if a fixed listener cannot
// be opened.
func (p *Proxy) Start() error {
	l := p.cfg.Listen
	fixed := []struct {
		addr  string
		serve func(net.Listener)
	}{
		{l.InboundHBONE, func(ln net.Listener) { p.server.Serve(ln) }},
		{l.InboundPlaintext, func(ln net.Listener) { p.servePlaintext(ln, true) }},
		{l.Outbound, p.serveCapture},
		{l.SOCKS5, func(ln net.Listener) { p.socks.Serve(ln) }},
		{l.Metrics, p.metricsServe(p.metrics.Handler())},
		{l.Readiness, p.httpServe(p.readyHandler())},
		{l.Admin, p.httpServe(p.adminHandler())},
	}
	if p.cfg.Loopback {
		fixed[0].addr, fixed[1].addr = "", ""
	}
	if p.cfg.Namespaces != nil {
		fixed[0].addr, fixed[1].addr, fixed[2].addr = "", "", ""
	}
	for i, f := range fixed {
		if f.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", f.addr)
		if err != nil {
			p.closeListeners()
			return fmt.Errorf("proxy: listen %s: %w", f.addr, err)
		}
		p.mu.Lock()
		p.listeners[fmt.Sprintf("fixed/%d", i)] = ln
		p.mu.Unlock()
		p.log.Info("listener established", "address", ln.Addr().String(), "component", listenerNames[i])
		p.goServe(f.serve, ln)
	}
	p.unsub = p.cfg.Store.Subscribe(p.onState)
	p.onState(p.cfg.Store.Load())
	p.up.Store(true)
	return nil
}

var listenerNames = []string{"inbound", "inbound_plaintext", "outbound", "socks5", "metrics", "readiness", "admin"}

// Addr returns the address a fixed listener is bound to ("socks5", "metrics", "readiness",
// "admin", "outbound", "inbound", "inbound_plaintext"), for listeners bound to port 0.
func (p *Proxy) Addr(name string) net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, n := range listenerNames {
		if n == name {
			if ln := p.listeners[fmt.Sprintf("fixed/%d", i)]; ln != nil {
				return ln.Addr()
			}
		}
	}
	return nil
}

func (p *Proxy) goServe(serve func(net.Listener), ln net.Listener) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		serve(ln)
	}()
}

// onState is called after each state swap.
func (p *Proxy) onState(st *state.State) {
	if p.cfg.Loopback {
		p.reconcileLoopback(st)
	}
	if p.cfg.Namespaces != nil {
		p.reconcileNamespaces(st)
	}
	p.recheck(st)
}

// reconcileLoopback opens podIP:15008 and podIP:targetPort for each local workload and closes
// those of workloads that left.
func (p *Proxy) reconcileLoopback(st *state.State) {
	want := map[string]func(net.Listener){}
	for _, w := range st.Resources().Workloads {
		// Only pods in the mesh are captured (as istio-cni enrols only those): a pod outside
		// it, such as a waypoint's, listens on its own address.
		if w.GetNode() != p.cfg.Node || w.GetTunnelProtocol() != workloadapi.TunnelProtocol_HBONE {
			continue
		}
		for _, ip := range st.Addresses(w) {
			want[netip.AddrPortFrom(ip, PortInboundHBONE).String()] = func(ln net.Listener) { p.server.Serve(ln) }
			for _, port := range targetPorts(w) {
				want[netip.AddrPortFrom(ip, port).String()] = func(ln net.Listener) { p.servePlaintext(ln, false) }
			}
		}
	}
	ok := true
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	for addr, ln := range p.listeners {
		if _, keep := want[addr]; !keep && !isFixed(addr) {
			ln.Close()
			delete(p.listeners, addr)
			p.log.Info("listener closed", "address", addr, "scope", "loopback")
		}
	}
	for addr, serve := range want {
		if _, have := p.listeners[addr]; have {
			continue
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			ok = false
			p.log.Error("cannot listen for a local workload", "address", addr, "error", err.Error())
			continue
		}
		p.listeners[addr] = ln
		p.log.Info("listener established", "address", addr, "scope", "loopback")
		p.goServe(serve, ln)
	}
	p.listenOK.Store(ok)
}

func isFixed(key string) bool { return len(key) > 6 && key[:6] == "fixed/" }

// Ready reports whether the listeners are up and Config.Ready (the state) says so.
func (p *Proxy) Ready() bool {
	if !p.up.Load() || ((p.cfg.Loopback || p.cfg.Namespaces != nil) && !p.listenOK.Load()) {
		return false
	}
	return p.cfg.Ready == nil || p.cfg.Ready()
}

// Shutdown stops accepting, lets open connections run for the drain grace period (or until ctx
// ends), then closes what is left.
func (p *Proxy) Shutdown(ctx context.Context) error {
	if p.unsub != nil {
		p.unsub()
	}
	p.closeListeners()
	grace := cmp.Or(p.cfg.DrainGrace, 5*time.Second)
	ctx, cancel := context.WithTimeout(ctx, grace)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.server.Shutdown(ctx) }()
	go func() { defer wg.Done(); p.socks.Shutdown(ctx) }()
	for _, hs := range p.httpServers() {
		hs.Shutdown(ctx)
	}
	wg.Wait()
	// Captured and plaintext connections: close what is left after the grace period.
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		p.closeInbound()
		<-done
	}
	p.client.Close()
	p.closePods()
	return nil
}

func (p *Proxy) httpServers() []*http.Server {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.http
}

func (p *Proxy) closeListeners() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, ln := range p.listeners {
		ln.Close()
	}
}

// svid returns the SVID of a workload's identity.
func (p *Proxy) svid(id string) (*x509svid.SVID, spiffeid.ID, error) {
	sid, err := spiffeid.FromString(id)
	if err != nil {
		return nil, spiffeid.ID{}, err
	}
	s, err := p.cfg.Identity.GetSVID(sid)
	return s, sid, err
}
