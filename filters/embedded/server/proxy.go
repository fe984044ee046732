package server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"istio.io/istio/pkg/workloadapi"

	"github.com/goambient/goambient/filters/embedded/accesslog"
	"github.com/goambient/goambient/filters/embedded/router"
	"github.com/goambient/goambient/filters/embedded/upstream"
	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/state"
)

// attempt is one try's outcome: an answer (its headers read), or why there is none.
type attempt struct {
	resp    *http.Response
	conn    *upstream.Conn
	h       *upstream.Host
	reset   router.Reset
	sent    bool   // the request was written
	reason  string // the transport failure (for the body and details)
	timeout bool   // the try's deadline passed (per try, or the route's)
	stop    func() bool
}

// route sends the request to its route's cluster: the cluster picked (weighted clusters),
// the request changed (headers, path, host), mirrors started, then tries with the retry policy
// under the route's timeout, and the answer forwarded.
func (x *exchange) route() bool {
	a := x.rt.Action
	w := x.weighted
	c := x.snap.Clusters[x.cluster]
	if c == nil {
		return x.reply(a.NotFoundStatus, "", "cluster_not_found", accesslog.NoClusterFound, nil)
	}
	if w != nil {
		w.Headers.ApplyRequest(x.hreq, &x.vars)
	}
	x.rt.Headers.ApplyRequest(x.hreq, &x.vars)
	if p, ok := x.rt.RewritePath(x.hreq.Path()); ok {
		x.hreq.SetPath(p)
	}
	if w != nil && w.HostRewrite != "" {
		x.hreq.SetAuthority(w.HostRewrite)
	} else if a.HostRewrite != "" {
		x.hreq.SetAuthority(a.HostRewrite)
	}
	out := x.upstreamRequest()
	for _, m := range a.Mirrors {
		if router.Enabled(x.s.rnd.next(), m.Numerator, m.Denominator) {
			x.mirror(m.Cluster, out, a.Timeout)
		}
	}

	ctx := x.ctx
	if a.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.Timeout)
		defer cancel()
	}
	rp := a.Retry
	var tried []netip.AddrPort
	retries := 0
	for {
		if ctx.Err() != nil {
			return x.timedOut("upstream_response_timeout")
		}
		now := x.s.o.Now()
		attempts, previous := 1, []netip.AddrPort(nil)
		if rp != nil && rp.PreviousHosts {
			attempts, previous = rp.HostSelectionAttempts, tried
		}
		h, err := c.Pick(now, previous, attempts, x.s.rnd.next)
		if err != nil {
			return x.reply(http.StatusServiceUnavailable, "no healthy upstream", "no_healthy_upstream", accesslog.NoHealthyUpstream, nil)
		}
		if !c.Begin(h) {
			return x.overflow()
		}
		at := x.try(ctx, c, h, out, rp)
		retryable := false
		if at.resp != nil {
			c.Result(h, at.resp.StatusCode, false, x.s.o.Now())
			retryable = rp != nil && rp.RetryOnStatus(at.resp.StatusCode, grpcStatus(at.resp))
		} else {
			c.Result(h, 0, at.reset != router.Overflow, x.s.o.Now())
			retryable = rp != nil && (at.timeout && ctx.Err() == nil || !at.timeout) && rp.RetryOnReset(at.reset, at.sent)
		}
		if retryable && retries < int(rp.NumRetries) {
			if !c.BeginRetry() {
				x.e.Flags |= accesslog.UpstreamOverflow // max_retries: no retry, this answer stands
			} else {
				x.discard(c, at)
				c.End(h)
				retries++
				x.s.retried.Add(1)
				tried = append(tried, h.Addr)
				ok := x.backoff(ctx, rp.Backoff(retries, x.s.rnd.next()))
				c.EndRetry()
				if !ok {
					return x.timedOut("upstream_response_timeout")
				}
				continue
			}
		} else if retryable {
			x.e.Flags |= accesslog.UpstreamRetryLimitExceeded
		}
		defer c.End(h)
		return x.finish(c, at, retries > 0, ctx)
	}
}

func (x *exchange) backoff(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// upstreamRequest is the request as sent upstream (with the changes made so far).
func (x *exchange) upstreamRequest() *http.Request {
	h := x.req.Header
	if x.hreq.Dirty() {
		h = x.hreq.HTTPHeader()
	}
	h.Del("Connection")
	h.Set("X-Forwarded-Proto", "http")
	// The path as is (Opaque): it was normalised once, as Envoy does, and must not be re-encoded.
	return &http.Request{
		Method: x.hreq.Method(), URL: &url.URL{Opaque: x.hreq.Path()}, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Host: x.hreq.Authority(), ContentLength: int64(len(x.body)),
	}
}

// try is one attempt on host h: a connection from the pool, the request written, the answer's
// headers read, within the try's timeout (per_try_timeout) and the route's (ctx). A reused
// idle connection that the peer closed meanwhile is replaced once, not counted as a try.
func (x *exchange) try(ctx context.Context, c *upstream.Cluster, h *upstream.Host, out *http.Request, rp *router.RetryPolicy) attempt {
	if rp == nil || rp.PerTryTimeout <= 0 {
		return x.tryOnce(ctx, c, h, out, true)
	}
	// per_try_timeout runs until the answer is complete (Envoy's per-try timer too).
	ctx, cancel := context.WithTimeout(ctx, rp.PerTryTimeout)
	at := x.tryOnce(ctx, c, h, out, true)
	if at.resp == nil {
		cancel()
		return at
	}
	stop := at.stop
	at.stop = func() bool { ok := stop(); cancel(); return ok }
	return at
}

func (x *exchange) tryOnce(ctx context.Context, c *upstream.Cluster, h *upstream.Host, out *http.Request, mayRedo bool) attempt {
	at := attempt{h: h}
	x.e.UpstreamHost = x.hostName(h)
	if c.Direct {
		x.e.UpstreamHost = h.Addr.String() // outside the mesh: the address itself, as Envoy logs it
	}
	conn, err := c.Acquire(ctx, h, x.st.src.String(), x.dialer(c))
	if err != nil {
		switch {
		case errors.Is(err, upstream.ErrOverflow):
			at.reset = router.Overflow
		case ctx.Err() != nil:
			at.reset, at.timeout = router.PerTryTimeout, true
		default:
			at.reset, at.reason = router.ConnectFailure, err.Error()
		}
		return at
	}
	at.conn = conn
	at.stop = context.AfterFunc(ctx, func() { conn.Conn.Close() }) // a deadline ends the exchange
	start := x.s.o.Now()
	bw := bufio.NewWriterSize(conn, 16<<10)
	out.Body = io.NopCloser(bytes.NewReader(x.body))
	err = out.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	var resp *http.Response
	if err == nil {
		at.sent = true
		conn.LimitRead(x.s.o.Limits.MaxResponseHeaderBytes)
		resp, err = http.ReadResponse(conn.BR, out)
		conn.LimitRead(-1)
	}
	if err != nil {
		at.stop()
		c.Release(conn, false)
		at.conn = nil
		if ctx.Err() != nil {
			at.reset, at.timeout = router.PerTryTimeout, true
			return at
		}
		if errors.Is(err, upstream.ErrReadLimit) {
			at.reset, at.reason = router.ConnectionReset, upstream.ErrReadLimit.Error()
			return at
		}
		if conn.Reused && mayRedo {
			return x.tryOnce(ctx, c, h, out, false) // the idle stream was closed by the peer
		}
		at.reset, at.reason = router.ConnectionReset, err.Error()
		return at
	}
	x.e.UpstreamServiceTime = x.s.o.Now().Sub(start)
	at.resp = resp
	return at
}

// discard drops an answer that will be retried (read to its end when short, so the
// connection can serve again).
func (x *exchange) discard(c *upstream.Cluster, at attempt) {
	if at.resp == nil {
		return
	}
	_, err := io.Copy(io.Discard, io.LimitReader(at.resp.Body, 64<<10))
	reusable := err == nil && !at.resp.Close && at.stop()
	if reusable {
		if n, _ := at.resp.Body.Read(make([]byte, 1)); n > 0 {
			reusable = false
		}
	}
	at.resp.Body.Close()
	c.Release(at.conn, reusable)
}

// finish answers the client with the last attempt: the upstream's answer, or Envoy's reply for
// the failure.
func (x *exchange) finish(c *upstream.Cluster, at attempt, retried bool, ctx context.Context) bool {
	if at.resp == nil {
		x.s.upstreamFailures.Add(1)
		switch {
		case at.reset == router.Overflow:
			return x.overflow()
		case at.timeout && ctx.Err() != nil:
			return x.timedOut("upstream_response_timeout")
		case at.timeout:
			return x.timedOut("upstream_per_try_timeout")
		}
		reason, flag := "remote connection failure", accesslog.UpstreamConnectionFailure
		if at.reset == router.ConnectionReset {
			reason, flag = "connection termination", accesslog.UpstreamConnectionTermination
		}
		x.e.UpstreamTransportFailure = at.reason
		body := "upstream connect error or disconnect/reset before headers. "
		if retried {
			body += "retried and the latest "
		}
		body += "reset reason: " + reason
		details := "upstream_reset_before_response_started{" + strings.ReplaceAll(reason, " ", "_")
		if at.reason != "" {
			body += ", transport failure reason: " + at.reason
			details += "|" + strings.ReplaceAll(at.reason, " ", "_")
		}
		return x.reply(http.StatusServiceUnavailable, body, details+"}", flag, nil)
	}
	resp := at.resp
	x.e.ResponseCode, x.e.ResponseCodeDetails = resp.StatusCode, "via_upstream"
	x.e.GRPCStatus = resp.Header.Get("Grpc-Status")
	if x.weighted != nil {
		x.weighted.Headers.ApplyResponse(resp.Header, &x.vars)
	}
	x.rt.Headers.ApplyResponse(resp.Header, &x.vars)
	upKeep := !resp.Close
	resp.Close = !x.keep
	cb := &countingReader{r: resp.Body}
	resp.Body = cb
	werr := resp.Write(x.bw)
	resp.Body.Close()
	x.e.BytesSent = cb.n
	complete := at.stop() // false: a deadline closed the connection meanwhile
	if !complete {
		x.e.Flags |= accesslog.UpstreamRequestTimeout
	}
	c.Release(at.conn, upKeep && cb.err == nil && complete)
	return x.keep && werr == nil && cb.err == nil && complete
}

func (x *exchange) timedOut(details string) bool {
	x.s.upstreamFailures.Add(1)
	return x.reply(http.StatusGatewayTimeout, "upstream request timeout", details, accesslog.UpstreamRequestTimeout, nil)
}

func (x *exchange) overflow() bool {
	x.s.upstreamFailures.Add(1)
	return x.reply(http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: overflow",
		"upstream_reset_before_response_started{overflow}", accesslog.UpstreamOverflow, nil)
}

// grpcStatus is the answer's grpc-status header (-1 when absent).
func grpcStatus(r *http.Response) int {
	if v := r.Header.Get("Grpc-Status"); v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
	}
	return -1
}

// hostName is how the access log names an endpoint (upstream_host).
func (x *exchange) hostName(h *upstream.Host) string {
	if w := x.snap.State.WorkloadByIP(h.Addr.Addr()); w != nil && w.GetTunnelProtocol() != workloadapi.TunnelProtocol_HBONE {
		return h.Addr.String()
	}
	return "envoy://connect_originate/" + h.Addr.String()
}

// dialer opens a connection to an endpoint: HBONE to its ztunnel (podIP:15008) with the
// waypoint's SVID, the pod's identity (and its Service's SANs) required of the server, the
// original source in forwarded; plain TCP to a pod outside the mesh.
func (x *exchange) dialer(c *upstream.Cluster) upstream.Dialer {
	return func(ctx context.Context, h *upstream.Host) (net.Conn, error) {
		if c.Direct {
			return dialDirect(ctx, c, h)
		}
		st := x.snap.State
		w := st.WorkloadByIP(h.Addr.Addr())
		if w != nil && w.GetTunnelProtocol() != workloadapi.TunnelProtocol_HBONE {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", h.Addr.String())
		}
		svid, err := x.s.o.SVID()
		if err != nil {
			return nil, fmt.Errorf("the waypoint's SVID: %w", err)
		}
		host := clusterHost(c.Name)
		var ids []spiffeid.ID
		cands := []string{}
		if w != nil {
			cands = append(cands, st.Identity(w))
		}
		if sv := serviceOf(st, host); sv != nil {
			cands = append(cands, sv.GetSubjectAltNames()...)
		}
		for _, id := range cands {
			if sid, err := spiffeid.FromString(id); err == nil {
				ids = append(ids, sid)
			} else if !strings.HasPrefix(id, "spiffe://") {
				if sid, err := spiffeid.FromString("spiffe://" + id); err == nil {
					ids = append(ids, sid)
				}
			}
		}
		if len(ids) == 0 {
			return nil, fmt.Errorf("%s: no identity known for the endpoint", h.Addr)
		}
		return x.s.o.Client.Dial(ctx, hbone.Target{
			Source: svid, Address: netip.AddrPortFrom(h.Addr.Addr(), state.HBONEPort), Identities: ids,
			Authority: h.Addr.String(), SourceAddr: x.st.src, Host: host,
		})
	}
}

// clusterHost is the hostname of a cluster named <dir>|<port>|<subset>|<host>.
func clusterHost(name string) string {
	if i := strings.LastIndexByte(name, '|'); i >= 0 {
		return name[i+1:]
	}
	return ""
}

func serviceOf(st *state.State, hostname string) *workloadapi.Service {
	parts := strings.Split(hostname, ".")
	if len(parts) < 3 {
		return nil
	}
	return st.Service(parts[1] + "/" + hostname)
}

type countingReader struct {
	r   io.Reader
	n   int64
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF {
		c.err = err
	}
	return n, err
}

func (c *countingReader) Close() error { return nil }
