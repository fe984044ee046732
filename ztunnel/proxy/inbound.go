package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"istio.io/istio/pkg/workloadapi"

	"github.com/goambient/goambient/policies/l4"
	"github.com/goambient/goambient/ztunnel/accesslog"
	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/metrics"
	"github.com/goambient/goambient/ztunnel/state"
)

// inboundCertificate is the SVID presented on an HBONE connection that arrived at local: the
// destination workload's.
func (p *Proxy) inboundCertificate(local netip.Addr) (*x509svid.SVID, error) {
	st := p.cfg.Store.Load()
	w := st.WorkloadByIP(local)
	if w == nil || w.GetNode() != p.cfg.Node {
		return nil, fmt.Errorf("no local workload has address %s", local)
	}
	s, _, err := p.svid(st.Identity(w))
	return s, err
}

// inboundConn is an accepted inbound connection, kept for re-checks after a policy change.
type inboundConn struct {
	uid    string
	conn   l4.Conn
	up     net.Conn // closing it ends the relay
	entry  *accesslog.Entry
	denied error // set (under Proxy.mu) when a re-check closed it
}

// serveHBONE answers one CONNECT stream.
func (p *Proxy) serveHBONE(ctx context.Context, req *hbone.Request) hbone.Response {
	start := time.Now()
	st := p.cfg.Store.Load()
	local := req.LocalAddr.Addr()
	dst := st.WorkloadByIP(local)
	src := claimedSource(st, req)
	e := &accesslog.Entry{
		SrcAddr: src, SrcIdentity: req.Peer.String(), DstAddr: req.LocalAddr,
		DstHBONEAddr: req.Authority.String(), Direction: accesslog.Inbound, MTLS: true,
	}
	if sw := st.WorkloadByIP(src.Addr()); sw != nil {
		e.SrcWorkload, e.SrcNamespace = sw.GetName(), sw.GetNamespace()
	}
	labels := metrics.Labels{Reporter: metrics.ReporterDestination, SourcePrincipal: req.Peer.String(), ConnectionSecurityPolicy: metrics.SecurityMutualTLS}
	if !p.cfg.DisableBaggage {
		// What the source says of itself, where the state knows no workload at its address
		// (ztunnel's with_derived_source, then with_source over it).
		if d, ok := parseBaggage(req.Baggage); ok {
			d.fillSource(&labels)
		}
	}
	fillSrcLabels(&labels, st.WorkloadByIP(src.Addr()))
	fail := func(status int, err error, flag metrics.ResponseFlags) hbone.Response {
		mc := p.metrics.Open(labels)
		e.BytesSent, e.BytesRecv = mc.Close(flag)
		e.Duration, e.Err = time.Since(start), err
		log := p.log
		if cause := context.Cause(ctx); errors.Is(cause, hbone.ErrEarlyReset) {
			e.Err, log = fmt.Errorf("%w: %w", cause, err), p.earlyLog
		}
		e.Log(ctx, log)
		return hbone.Response{Status: status}
	}
	if dst == nil || dst.GetNode() != p.cfg.Node {
		return fail(http.StatusServiceUnavailable, fmt.Errorf("unknown destination %s", local), metrics.FlagConnect)
	}
	e.DstWorkload, e.DstNamespace, e.DstIdentity = dst.GetName(), dst.GetNamespace(), st.Identity(dst)
	_, fwdHost := hbone.ParseForwarded(req.Forwarded)
	svc := guessInboundService(st, dst, fwdHost, req.Authority.Addr.Port())
	if svc != nil {
		e.DstService = svc.GetHostname()
	}
	fillDstLabels(&labels, st, dst, svc)
	if !req.Authority.Addr.IsValid() || req.Authority.Addr.Addr() != local {
		return fail(http.StatusBadRequest, accesslog.ErrIPMismatch, metrics.FlagConnect)
	}
	conn := l4.Conn{SrcIdentity: req.Peer.String(), SrcIP: src.Addr(), DstIP: local, DstPort: req.Authority.Addr.Port()}
	if r := st.Authorize(dst, conn); !r.Allowed {
		return fail(http.StatusUnauthorized, &accesslog.PolicyError{Reason: r.Reason}, metrics.FlagDeny)
	}
	app := req.Authority.Addr
	if p.cfg.Loopback {
		app = p.appAddr(app)
	}
	up, err := p.dialAs(ctx, st, dst, app.String())
	if err != nil {
		return fail(http.StatusServiceUnavailable, err, metrics.FlagConnect)
	}
	ic := &inboundConn{uid: dst.GetUid(), conn: conn, up: up, entry: e}
	if denied := p.trackChecked(ic, st); denied != nil {
		p.track(ic, false) // the re-check closed up
		return fail(http.StatusUnauthorized, denied, metrics.FlagDeny)
	}
	mc := p.metrics.Open(labels)
	var hdr http.Header
	if !p.cfg.DisableBaggage {
		if kv := baggageOf(dst); len(kv) > 0 {
			hdr = http.Header{hbone.HeaderBaggage: {hbone.BaggageValue(kv)}}
		}
	}
	return hbone.Response{Status: http.StatusOK, Upstream: up, Header: hdr, Done: func(res hbone.Result) {
		denied := p.track(ic, false)
		mc.Received(res.Received)
		mc.Sent(res.Sent)
		flag := metrics.FlagNone
		e.Err = res.Err
		if denied != nil {
			e.Err, flag = denied, metrics.FlagDeny
		}
		e.BytesSent, e.BytesRecv = mc.Close(flag)
		e.Duration = time.Since(start)
		log := p.log
		if errors.Is(res.Err, hbone.ErrEarlyReset) || (res.Err != nil && res.Received == 0 && res.Sent == 0) {
			log = p.earlyLog // reset before or right after the answer, nothing carried
		}
		e.Log(context.Background(), log)
	}}
}

// track adds or removes an open inbound connection; on removal it returns why a re-check
// closed it, if one did.
func (p *Proxy) track(ic *inboundConn, add bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.open[ic] = struct{}{}
	} else {
		delete(p.open, ic)
	}
	return ic.denied
}

// trackChecked tracks ic as open and, when the state is no longer st (the snapshot ic was
// authorized with), re-checks ic against the current one: a policy change that landed between
// the Authorize and the track re-checked the open connections without ic, and would otherwise
// leave it open for good. It returns why ic was denied (its upstream is then closed), or nil.
func (p *Proxy) trackChecked(ic *inboundConn, st *state.State) error {
	p.track(ic, true)
	if cur := p.cfg.Store.Load(); cur != st {
		p.recheckConns(cur, []*inboundConn{ic})
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return ic.denied
}

// errPolicyUpdate is the log wording of a connection closed by a re-check.
var errPolicyUpdate = errors.New("connection closed because it's no longer allowed after a policy update")

// recheck closes the open inbound connections that st no longer allows.
func (p *Proxy) recheck(st *state.State) {
	p.mu.Lock()
	open := make([]*inboundConn, 0, len(p.open))
	for ic := range p.open {
		open = append(open, ic)
	}
	p.mu.Unlock()
	p.recheckConns(st, open)
}

// recheckConns closes those of open that st no longer allows.
func (p *Proxy) recheckConns(st *state.State, open []*inboundConn) {
	conns := make([]state.OpenConn, 0, len(open))
	for _, ic := range open {
		conns = append(conns, state.OpenConn{WorkloadUID: ic.uid, Conn: ic.conn, Handle: ic})
	}
	for _, c := range st.Recheck(conns) {
		ic := c.Handle.(*inboundConn)
		p.log.Info(errPolicyUpdate.Error(), "scope", "inbound", "src.identity", ic.conn.SrcIdentity,
			"dst.addr", netip.AddrPortFrom(ic.conn.DstIP, ic.conn.DstPort).String(), "reason", c.Result.Reason)
		p.mu.Lock()
		ic.denied = &accesslog.PolicyError{Reason: c.Result.Reason}
		p.mu.Unlock()
		ic.up.Close()
	}
}

// closeInbound closes the plaintext and captured connections still open.
func (p *Proxy) closeInbound() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.relays {
		c.Close()
	}
	for ic := range p.open {
		ic.up.Close()
	}
}

func fillSrcLabels(l *metrics.Labels, w *workloadapi.Workload) {
	if w == nil {
		return
	}
	l.SourceWorkload, l.SourceWorkloadNamespace = w.GetWorkloadName(), w.GetNamespace()
	l.SourceCanonicalService, l.SourceCanonicalRevision = w.GetCanonicalName(), w.GetCanonicalRevision()
	l.SourceApp, l.SourceVersion, l.SourceCluster = w.GetCanonicalName(), w.GetCanonicalRevision(), w.GetClusterId()
}

func fillDstLabels(l *metrics.Labels, st *state.State, w *workloadapi.Workload, svc *workloadapi.Service) {
	if svc != nil {
		l.DestinationService, l.DestinationServiceNamespace, l.DestinationServiceName = svc.GetHostname(), svc.GetNamespace(), svc.GetName()
	}
	if w == nil {
		return
	}
	l.DestinationPrincipal = st.Identity(w)
	l.DestinationWorkload, l.DestinationWorkloadNamespace = w.GetWorkloadName(), w.GetNamespace()
	l.DestinationCanonicalService, l.DestinationCanonicalRevision = w.GetCanonicalName(), w.GetCanonicalRevision()
	l.DestinationApp, l.DestinationVersion, l.DestinationCluster = w.GetCanonicalName(), w.GetCanonicalRevision(), w.GetClusterId()
}

// targetPorts are the ports a workload's application listens on: the target ports of its
// services (the service port when the target port is 0), without duplicates.
func targetPorts(w *workloadapi.Workload) []uint16 {
	seen := map[uint16]bool{}
	var out []uint16
	for _, pl := range w.GetServices() {
		for _, pt := range pl.GetPorts() {
			port := uint16(pt.GetTargetPort())
			if port == 0 {
				port = uint16(pt.GetServicePort())
			}
			if port != 0 && !seen[port] {
				seen[port] = true
				out = append(out, port)
			}
		}
	}
	return out
}

// claimedSource is the client's address for logs and ipBlocks: the `forwarded: for=` address
// the source ztunnel sent (on loopback every ztunnel dials from the node's address), but only
// when the workload at that address has the peer's own SPIFFE identity. Otherwise any mesh
// peer could claim another workload's address to pass an ipBlocks rule; its claim is ignored
// and the TCP peer address is used.
func claimedSource(st *state.State, req *hbone.Request) netip.AddrPort {
	fwd, _ := hbone.ParseForwarded(req.Forwarded)
	if !fwd.IsValid() {
		return req.RemoteAddr
	}
	if w := st.WorkloadByIP(fwd.Addr()); w != nil && st.Identity(w) == req.Peer.String() {
		return fwd
	}
	return req.RemoteAddr
}
