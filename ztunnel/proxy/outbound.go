package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"istio.io/istio/pkg/workloadapi"

	"github.com/goambient/goambient/policies/l4"
	"github.com/goambient/goambient/ztunnel/accesslog"
	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/metrics"
	"github.com/goambient/goambient/ztunnel/socks5"
	"github.com/goambient/goambient/ztunnel/state"
)

// DialTimeout bounds an outbound dial (TCP, TLS and CONNECT).
const DialTimeout = 10 * time.Second

// resolveMesh resolves a mesh name for the SOCKS5 server, which does not say who asks: a name
// any local workload's namespace resolves (or a fully qualified one) gives that Service's VIP.
// serveSOCKS5 resolves the name again from the client's own namespace.
func (p *Proxy) resolveMesh(_ context.Context, name string) (netip.Addr, error) {
	st := p.cfg.Store.Load()
	if a, ok := vip(st, name, ""); ok {
		return a, nil
	}
	for _, w := range st.Resources().Workloads {
		if w.GetNode() == p.cfg.Node {
			if a, ok := vip(st, name, w.GetNamespace()); ok {
				return a, nil
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("%s: not a mesh name", name)
}

func vip(st *state.State, name, ns string) (netip.Addr, bool) {
	svc, ok := st.Resolve(name, ns)
	if !ok {
		return netip.Addr{}, false
	}
	vips := st.VIPs(svc)
	if len(vips) == 0 {
		return netip.Addr{}, false
	}
	return vips[0], true
}

// serveSOCKS5 carries one SOCKS5 CONNECT. The source workload is the one whose IP the client
// connected from (in loopback mode clients bind their pod IP).
func (p *Proxy) serveSOCKS5(ctx context.Context, req *socks5.Request) error {
	st := p.cfg.Store.Load()
	src := st.WorkloadByIP(req.Client.Addr())
	if src == nil || src.GetNode() != p.cfg.Node {
		p.log.Warn("socks5 client is not a local workload", "scope", "outbound", "src.addr", req.Client.String(), "dst.addr", req.Dest.String())
		return socks5.ErrNotAllowed
	}
	dst := req.Dest
	if req.Hostname != "" {
		if a, ok := vip(st, req.Hostname, src.GetNamespace()); ok {
			dst = netip.AddrPortFrom(a, dst.Port())
		}
	}
	route, err := st.Route(dst, src)
	if err != nil {
		e := p.outboundEntry(st, req.Client, src, dst, state.Route{})
		e.Err = err
		if errors.Is(err, state.ErrNoHealthyUpstream) {
			e.Err = accesslog.NoHealthyUpstream(dst)
		}
		e.Log(ctx, p.log)
		return socks5.WithReply(socks5.ReplyHostUnreachable, err)
	}
	if !route.HBONE() {
		if route, err = p.resolveRoute(ctx, route, dst); err != nil {
			return socks5.WithReply(socks5.ReplyHostUnreachable, err)
		}
		var d net.Dialer
		up, err := d.DialContext(ctx, "tcp", route.Dial.String())
		if err != nil {
			return err
		}
		client, err := req.Accept(netip.AddrPort{})
		if err != nil {
			up.Close()
			return err
		}
		p.relayOutbound(st, client, up, req.Client, src, dst, route, time.Now())
		return nil
	}
	// As Istio's ztunnel, the client's connection is accepted before the HBONE stream is
	// opened: a denial is then a closed connection, as it is for a captured one.
	client, err := req.Accept(netip.AddrPort{})
	if err != nil {
		return err
	}
	p.outbound(ctx, st, client, req.Client, src, dst, route)
	return nil
}

// outbound opens the route's upstream for client and relays; it closes client.
func (p *Proxy) outbound(ctx context.Context, st *state.State, client net.Conn, from netip.AddrPort, src *workloadapi.Workload, dst netip.AddrPort, route state.Route) {
	start := time.Now()
	route, err := p.resolveRoute(ctx, route, dst)
	var up net.Conn
	if err == nil {
		up, err = p.dialRoute(ctx, st, from, src, route)
	}
	if err != nil {
		client.Close()
		e := p.outboundEntry(st, from, src, dst, route)
		labels := p.outboundLabels(st, src, route)
		flag := metrics.FlagConnect
		var se hbone.StatusError
		if errors.As(err, &se) {
			err = &accesslog.HTTPStatusError{Code: se.Code}
			if se.Code == 401 {
				flag = metrics.FlagDeny
			}
		}
		e.BytesSent, e.BytesRecv = p.metrics.Open(labels).Close(flag)
		e.Duration, e.Err = time.Since(start), err
		e.Log(ctx, p.log)
		return
	}
	p.relayOutbound(st, client, up, from, src, dst, route, start)
}

func (p *Proxy) dialRoute(ctx context.Context, st *state.State, from netip.AddrPort, src *workloadapi.Workload, route state.Route) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, DialTimeout)
	defer cancel()
	if !route.HBONE() {
		return p.dialAs(ctx, st, src, route.Dial.String())
	}
	svid, _, err := p.svid(st.Identity(src))
	if err != nil {
		return nil, err
	}
	ids := make([]spiffeid.ID, 0, len(route.Identities))
	for _, s := range route.Identities {
		if id, err := spiffeid.FromString(s); err == nil {
			ids = append(ids, id)
		}
	}
	t := hbone.Target{Source: svid, Address: route.Dial, Identities: ids, Authority: route.Authority.String(), SourceAddr: from}
	if route.Service != nil {
		t.Host = route.Service.GetHostname()
	}
	if !p.cfg.DisableBaggage {
		t.Baggage = baggageOf(src)
	}
	return p.clientFor(st, src).Dial(ctx, t)
}

func (p *Proxy) relayOutbound(st *state.State, client, up net.Conn, from netip.AddrPort, src *workloadapi.Workload, dst netip.AddrPort, route state.Route, start time.Time) {
	e := p.outboundEntry(st, from, src, dst, route)
	labels := p.outboundLabels(st, src, route)
	if hc, ok := up.(*hbone.Conn); ok && !p.cfg.DisableBaggage {
		// The destination's answer says who it is (ztunnel's with_derived_destination).
		if d, ok := parseBaggage(hc.ResponseHeader().Get(hbone.HeaderBaggage)); ok {
			d.fillDestination(&labels, peerID(hc))
		}
	}
	mc := p.metrics.Open(labels)
	sent, recv, err := hbone.Relay(client, up)
	mc.Sent(sent)
	mc.Received(recv)
	e.BytesSent, e.BytesRecv = mc.Close(metrics.FlagNone)
	e.Duration, e.Err = time.Since(start), err
	e.Log(context.Background(), p.log)
}

func (p *Proxy) outboundEntry(st *state.State, from netip.AddrPort, src *workloadapi.Workload, dst netip.AddrPort, route state.Route) *accesslog.Entry {
	e := &accesslog.Entry{SrcAddr: from, Direction: accesslog.Outbound, DstAddr: dst, MTLS: route.HBONE()}
	if src != nil {
		e.SrcWorkload, e.SrcNamespace, e.SrcIdentity = src.GetName(), src.GetNamespace(), st.Identity(src)
	}
	if route.HBONE() {
		e.DstAddr, e.DstHBONEAddr = route.Dial, route.Authority.String()
		if len(route.Identities) > 0 {
			e.DstIdentity = route.Identities[0]
		}
	}
	if route.Service != nil {
		e.DstService = route.Service.GetHostname()
	}
	if w := route.Workload; w != nil {
		e.DstWorkload, e.DstNamespace = w.GetName(), w.GetNamespace()
	}
	return e
}

func (p *Proxy) outboundLabels(st *state.State, src *workloadapi.Workload, route state.Route) metrics.Labels {
	l := metrics.Labels{Reporter: metrics.ReporterSource, ConnectionSecurityPolicy: metrics.SecurityUnknown}
	if route.HBONE() {
		l.ConnectionSecurityPolicy = metrics.SecurityMutualTLS
	}
	fillSrcLabels(&l, src)
	if src != nil {
		l.SourcePrincipal = st.Identity(src)
	}
	fillDstLabels(&l, st, route.Workload, route.Service)
	return l
}

// serveCapture accepts connections redirected by iptables to the outbound port and carries
// each to its original destination.
func (p *Proxy) serveCapture(ln net.Listener) {
	p.acceptLoop(ln, func(c net.Conn) {
		st := p.cfg.Store.Load()
		dst, err := OriginalDst(c)
		if err != nil || dst == addrPortOf(c.LocalAddr()) {
			p.log.Warn("captured connection without a usable original destination", "scope", "outbound", "error", fmt.Sprint(err))
			c.Close()
			return
		}
		from := addrPortOf(c.RemoteAddr())
		src := st.WorkloadByIP(from.Addr())
		if src == nil || src.GetNode() != p.cfg.Node {
			c.Close()
			return
		}
		route, err := st.Route(dst, src)
		if err != nil {
			c.Close()
			return
		}
		p.outbound(context.Background(), st, c, from, src, dst, route)
	})
}

// servePlaintext serves plaintext inbound connections: in loopback mode on podIP:targetPort
// (redirect false: the destination is where the connection arrived), otherwise on 15006 with
// the original destination from SO_ORIGINAL_DST. The connection has no identity, so a STRICT
// PeerAuthentication (a static policy in the state's authorizations) denies it.
func (p *Proxy) servePlaintext(ln net.Listener, redirect bool) {
	p.acceptLoop(ln, func(c net.Conn) {
		start := time.Now()
		st := p.cfg.Store.Load()
		dst := addrPortOf(c.LocalAddr())
		if redirect {
			var err error
			if dst, err = OriginalDst(c); err != nil {
				c.Close()
				return
			}
		}
		from := addrPortOf(c.RemoteAddr())
		e := &accesslog.Entry{SrcAddr: from, DstAddr: dst, Direction: accesslog.Inbound}
		labels := metrics.Labels{Reporter: metrics.ReporterDestination, ConnectionSecurityPolicy: metrics.SecurityUnknown}
		if sw := st.WorkloadByIP(from.Addr()); sw != nil {
			e.SrcWorkload, e.SrcNamespace = sw.GetName(), sw.GetNamespace()
			fillSrcLabels(&labels, sw)
		}
		w := st.WorkloadByIP(dst.Addr())
		fail := func(err error, flag metrics.ResponseFlags) {
			c.Close()
			e.BytesSent, e.BytesRecv = p.metrics.Open(labels).Close(flag)
			e.Duration, e.Err = time.Since(start), err
			e.Log(context.Background(), p.log)
		}
		if w == nil || w.GetNode() != p.cfg.Node {
			fail(fmt.Errorf("unknown destination %s", dst), metrics.FlagConnect)
			return
		}
		e.DstWorkload, e.DstNamespace = w.GetName(), w.GetNamespace()
		fillDstLabels(&labels, st, w, nil)
		conn := l4.Conn{SrcIP: from.Addr(), DstIP: dst.Addr(), DstPort: dst.Port()}
		if r := st.Authorize(w, conn); !r.Allowed {
			fail(&accesslog.PolicyError{Reason: r.Reason}, metrics.FlagDeny)
			return
		}
		app := dst
		if p.cfg.Loopback {
			app = p.appAddr(dst)
		}
		dctx, cancel := context.WithTimeout(context.Background(), DialTimeout)
		up, err := p.dialAs(dctx, st, w, app.String())
		cancel()
		if err != nil {
			fail(err, metrics.FlagConnect)
			return
		}
		ic := &inboundConn{uid: w.GetUid(), conn: conn, up: up, entry: e}
		if denied := p.trackChecked(ic, st); denied != nil {
			p.track(ic, false) // the re-check closed up
			fail(denied, metrics.FlagDeny)
			return
		}
		mc := p.metrics.Open(labels)
		recv, sent, rerr := hbone.Relay(c, up)
		denied := p.track(ic, false)
		mc.Received(recv)
		mc.Sent(sent)
		flag := metrics.FlagNone
		e.Err = rerr
		if denied != nil {
			e.Err, flag = denied, metrics.FlagDeny
		}
		e.BytesSent, e.BytesRecv = mc.Close(flag)
		e.Duration = time.Since(start)
		e.Log(context.Background(), p.log)
	})
}

// acceptLoop accepts on ln until it is closed and runs handle on each connection in its own
// goroutine, tracking it so that Shutdown can close it after the grace period.
func (p *Proxy) acceptLoop(ln net.Listener, handle func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			return
		}
		p.relays[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go func() {
			defer func() {
				p.mu.Lock()
				delete(p.relays, c)
				p.mu.Unlock()
				p.wg.Done()
			}()
			handle(c)
		}()
	}
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
