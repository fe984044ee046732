package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/goambient/goambient/filters/embedded/accesslog"
	"github.com/goambient/goambient/filters/embedded/router"
	"github.com/goambient/goambient/filters/embedded/upstream"
	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/state"
)

// handler serves one listener port.
type handler struct {
	g    *Gateway
	port uint32
}

// request adapts an *http.Request to the router's view of it.
type request struct {
	r    *http.Request
	path string // normalised path and the query as it came
}

func (q request) Method() string    { return q.r.Method }
func (q request) Path() string      { return q.path }
func (q request) Authority() string { return q.r.Host }
func (q request) Scheme() string {
	if q.r.TLS != nil {
		return "https"
	}
	return "http"
}
func (q request) Header(name string) (string, bool) {
	v, ok := q.r.Header[http.CanonicalHeaderKey(name)]
	if !ok {
		return "", false
	}
	return strings.Join(v, ","), true
}

// hopByHop are the headers a proxy does not forward (RFC 9110 7.6.1).
var hopByHop = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g := h.g
	start := time.Now()
	e := accesslog.Entry{StartTime: start, Method: r.Method, Path: r.RequestURI, Protocol: r.Proto, Authority: r.Host,
		UserAgent: r.UserAgent(), DownstreamRemoteAddress: r.RemoteAddr, UpstreamServiceTime: -1}
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		e.DownstreamLocalAddress = a.String()
	}
	cw := &countingWriter{ResponseWriter: w}
	defer func() {
		e.Duration = time.Since(start)
		e.ResponseCode = cw.status
		e.BytesSent = cw.n
		if g.al != nil {
			g.al.Log(&e)
		}
	}()
	reply := func(status int, details, flag string) {
		e.ResponseCodeDetails, e.ResponseFlags = details, flag
		cw.Header().Set("content-type", "text/plain")
		cw.WriteHeader(status)
		io.WriteString(cw, details+"\n")
	}
	e.RequestID = r.Header.Get("x-request-id")
	if e.RequestID == "" {
		e.RequestID = newRequestID()
		r.Header.Set("x-request-id", e.RequestID)
	}
	raw := r.URL.EscapedPath()
	path, err := policies.NormalizePath(raw)
	if err != nil {
		reply(http.StatusBadRequest, "path_normalization_failed", "")
		return
	}
	if r.URL.RawQuery != "" {
		path += "?" + r.URL.RawQuery
	}
	snap := g.store.Load()
	p := snap.Ports[h.port]
	var chain *Chain
	if p != nil {
		sni := ""
		if r.TLS != nil {
			sni = strings.ToLower(r.TLS.ServerName)
		}
		chain = p.chain(sni)
	}
	var table *router.Table
	if chain != nil {
		if hosts := snap.Routes[chain.RDS]; hosts != nil {
			table = hosts.Select(r.Host)
		}
	}
	q := request{r: r, path: path}
	var rt *router.Route
	if table != nil {
		rt = table.Select(q)
	}
	if rt == nil {
		reply(http.StatusNotFound, "route_not_found", "NR")
		return
	}
	e.RouteName = rt.Name
	vars := &router.Vars{DownstreamRemoteAddress: r.RemoteAddr, DownstreamLocalAddress: e.DownstreamLocalAddress, Protocol: r.Proto, RequestID: e.RequestID}
	switch rt.Kind {
	case router.ActionDirect:
		rt.Headers.ApplyResponse(cw.Header(), vars)
		e.ResponseCodeDetails = "direct_response"
		cw.WriteHeader(rt.Direct.Status)
		io.WriteString(cw, rt.Direct.Body)
		return
	case router.ActionRedirect:
		cw.Header().Set("location", rt.Location(q, q.Scheme()))
		e.ResponseCodeDetails = "direct_response"
		cw.WriteHeader(rt.Redirect.Status)
		return
	}
	a := rt.Action
	name, weighted := a.Pick(g.random())
	e.UpstreamCluster = name
	c := snap.Clusters[name]
	if c == nil {
		status := a.NotFoundStatus
		if status == 0 {
			status = http.StatusServiceUnavailable
		}
		reply(status, "cluster_not_found", "NC")
		return
	}
	host, err := c.Pick(time.Now(), nil, 0, g.random)
	if err != nil || host == nil {
		reply(http.StatusServiceUnavailable, "no_healthy_upstream", "UH")
		return
	}
	if !c.Begin(host) {
		reply(http.StatusServiceUnavailable, "upstream_reset_before_response_started{overflow}", "UO")
		return
	}
	defer c.End(host)
	e.UpstreamHost = host.Addr.String()

	ctx := r.Context()
	if a.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.Timeout)
		defer cancel()
	}
	out := r.Clone(ctx)
	out.RequestURI = ""
	out.URL.Scheme, out.URL.Host = "http", r.Host
	out.Host = r.Host
	if rewritten, ok := rt.RewritePath(pathOnly(path)); ok {
		out.URL.Path, out.URL.RawPath = rewritten, ""
	} else {
		out.URL.Path, out.URL.RawPath = pathOnly(path), ""
	}
	if a.HostRewrite != "" {
		out.Host = a.HostRewrite
	}
	if weighted != nil && weighted.HostRewrite != "" {
		out.Host = weighted.HostRewrite
	}
	for _, k := range hopByHop {
		out.Header.Del(k)
	}
	if client, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := out.Header.Get("x-forwarded-for"); prior != "" {
			client = prior + ", " + client
		}
		out.Header.Set("x-forwarded-for", client)
		e.XForwardedFor = client
	}
	out.Header.Set("x-forwarded-proto", q.Scheme())
	rt.Headers.ApplyRequest(out.Header, vars)
	if weighted != nil {
		weighted.Headers.ApplyRequest(out.Header, vars)
	}
	if r.ContentLength == 0 {
		out.Body = nil
	}
	sent := time.Now()
	resp, err := g.up.get(host, name).RoundTrip(out)
	if err != nil {
		switch {
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			reply(http.StatusGatewayTimeout, "upstream_response_timeout", "UT")
		case r.Context().Err() != nil:
			e.ResponseFlags = "DC"
			e.ResponseCodeDetails = "downstream_remote_disconnect"
		default:
			e.UpstreamTransportFailure = err.Error()
			reply(http.StatusServiceUnavailable, "upstream_reset_before_response_started{connection_failure}", "UF")
		}
		c.Result(host, 0, true, time.Now())
		return
	}
	defer resp.Body.Close()
	e.UpstreamServiceTime = time.Since(sent)
	c.Result(host, resp.StatusCode, false, time.Now())
	for _, k := range hopByHop {
		resp.Header.Del(k)
	}
	hdr := cw.Header()
	for k, v := range resp.Header {
		hdr[k] = v
	}
	rt.Headers.ApplyResponse(hdr, vars)
	if weighted != nil {
		weighted.Headers.ApplyResponse(hdr, vars)
	}
	e.ResponseCodeDetails = "via_upstream"
	cw.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(cw)
	buf := make([]byte, 32<<10)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := cw.Write(buf[:n]); werr != nil {
				e.ResponseFlags = "DC"
				return
			}
			_ = rc.Flush()
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) {
				e.ResponseFlags = "UPE"
			}
			return
		}
	}
}

func pathOnly(p string) string {
	if i := strings.IndexByte(p, '?'); i >= 0 {
		return p[:i]
	}
	return p
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	s := hex.EncodeToString(b[:])
	return s[0:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:]
}

type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (c *countingWriter) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// transports are the HTTP/1.1 clients to upstream hosts, one per host (its pooled HBONE
// streams), dropped when the host leaves the configuration.
type transports struct {
	g  *Gateway
	mu sync.Mutex
	m  map[netip.AddrPort]*http.Transport
}

func newTransports(g *Gateway) *transports {
	return &transports{g: g, m: map[netip.AddrPort]*http.Transport{}}
}

func (t *transports) get(h *upstream.Host, cluster string) *http.Transport {
	t.mu.Lock()
	defer t.mu.Unlock()
	if tr := t.m[h.Addr]; tr != nil {
		return tr
	}
	lim := t.g.lim
	addr, authority := h.Addr, h.Addr
	if h.Authority.IsValid() {
		authority = h.Authority
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return t.g.dial(ctx, addr, authority, clusterHost(cluster))
		},
		MaxConnsPerHost:        lim.MaxUpstreamPerHost,
		MaxIdleConnsPerHost:    16,
		IdleConnTimeout:        60 * time.Second,
		MaxResponseHeaderBytes: lim.MaxResponseHeader,
		DisableCompression:     true,
	}
	t.m[h.Addr] = tr
	return tr
}

// retain closes the clients of hosts no cluster has any more.
func (t *transports) retain(snap *Snapshot) {
	t.mu.Lock()
	defer t.mu.Unlock()
	keep := map[netip.AddrPort]bool{}
	for _, c := range snap.Clusters {
		for _, h := range c.Hosts {
			keep[h.Addr] = true
		}
	}
	for a, tr := range t.m {
		if !keep[a] {
			tr.CloseIdleConnections()
			delete(t.m, a)
		}
	}
}

func (t *transports) closeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for a, tr := range t.m {
		tr.CloseIdleConnections()
		delete(t.m, a)
	}
}

// dial opens an HBONE stream with the gateway's SVID to addr's ztunnel (a pod: addr's IP,
// port 15008) or to a waypoint (addr is already its HBONE address), :authority the pod's
// ip:port or the Service's VIP:port. The peer must present the identity the workload API gives
// the workload at that IP (or one of the Service's SANs).
func (g *Gateway) dial(ctx context.Context, addr, authority netip.AddrPort, host string) (net.Conn, error) {
	svid, err := g.SVID()
	if err != nil {
		return nil, fmt.Errorf("the gateway's SVID: %w", err)
	}
	st := g.store.Load().State
	var cands []string
	if w := st.WorkloadByIP(addr.Addr()); w != nil {
		cands = append(cands, st.Identity(w))
	}
	if sv := serviceOf(st, host); sv != nil {
		cands = append(cands, sv.GetSubjectAltNames()...)
	}
	var ids []spiffeid.ID
	for _, c := range cands {
		if !strings.HasPrefix(c, "spiffe://") {
			c = "spiffe://" + c
		}
		if id, err := spiffeid.FromString(c); err == nil {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("%s: no identity known for the endpoint", addr)
	}
	return g.client.Dial(ctx, hbone.Target{
		Source: svid, Address: netip.AddrPortFrom(addr.Addr(), state.HBONEPort), Identities: ids,
		Authority: authority.String(),
	})
}

// clusterHost is the hostname of a cluster named outbound|<port>|<subset>|<host>.
func clusterHost(name string) string {
	if i := strings.LastIndexByte(name, '|'); i >= 0 {
		return name[i+1:]
	}
	return ""
}

func serviceOf(st *state.State, hostname string) interface{ GetSubjectAltNames() []string } {
	parts := strings.Split(hostname, ".")
	if len(parts) < 3 || st == nil {
		return nil
	}
	if s := st.Service(parts[1] + "/" + hostname); s != nil {
		return s
	}
	return nil
}
