// Package server is the embedded waypoint's data path: it takes each HBONE CONNECT stream addressed to a service VIP:port, reads the HTTP/1.1 requests it carries, runs each through the authorization filter, answers the filter's local replies itself and proxies the rest over HBONE to an endpoint of the service, with one access-log line per request.
package server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"istio.io/istio/pkg/workloadapi"

	"github.com/goambient/goambient/cmd/waypoint/internal/accesslog"
	"github.com/goambient/goambient/cmd/waypoint/internal/authzhost"
	"github.com/goambient/goambient/cmd/waypoint/internal/config"
	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/envoytest"
	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/state"
)

// Defaults of Options.
const (
	DefaultMaxRequestBody = 4 << 20
	DefaultConnectTimeout = 5 * time.Second
)

// Options configure a Server. Store, Host, Client and SVID are required.
type Options struct {
	Logger    *slog.Logger
	Store     *config.Store
	Host      *authzhost.Host
	AccessLog *accesslog.Logger // nil: none
	// Client opens the HBONE streams to the endpoints.
	Client *hbone.Client
	// SVID returns the waypoint's own SVID: its client certificate towards the endpoints.
	SVID func() (*x509svid.SVID, error)
	// MaxRequestBody is the largest request body buffered for the filter (413 above it).
	MaxRequestBody int64
	// ConnectTimeout bounds opening the upstream stream.
	ConnectTimeout time.Duration
}

// Server is the hbone.Handler of the embedded waypoint.
type Server struct {
	o   Options
	log *slog.Logger
	rr  atomic.Uint64

	requests, denied, upstreamFailures atomic.Int64
}

// New returns a Server.
func New(o Options) (*Server, error) {
	if o.Store == nil || o.Host == nil || o.Client == nil || o.SVID == nil {
		return nil, errors.New("server: Store, Host, Client and SVID are required")
	}
	if o.MaxRequestBody <= 0 {
		o.MaxRequestBody = DefaultMaxRequestBody
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{o: o, log: log}, nil
}

// Stats are the server's counters.
type Stats struct{ Requests, LocalReplies, UpstreamFailures int64 }

// Stats returns the counters.
func (s *Server) Stats() Stats {
	return Stats{Requests: s.requests.Load(), LocalReplies: s.denied.Load(), UpstreamFailures: s.upstreamFailures.Load()}
}

// stream is what every request of one CONNECT stream shares.
type stream struct {
	vip    netip.AddrPort // the CONNECT's :authority
	src    netip.AddrPort // the original source (forwarded: for=), else the peer's address
	peer   string         // the peer's SPIFFE ID
	hbPeer netip.AddrPort
}

// ServeHBONE accepts a CONNECT to a known service VIP:port and serves its HTTP/1.1 requests.
func (s *Server) ServeHBONE(ctx context.Context, req *hbone.Request) hbone.Response {
	if !req.Authority.Addr.IsValid() {
		s.log.Info("connect refused: the authority is not a VIP:port", "authority", req.Authority.String(), "src.identity", req.Peer.String())
		return hbone.Response{Status: http.StatusBadRequest}
	}
	snap := s.o.Store.Load()
	if snap.State.ServiceByVIP(req.Authority.Addr.Addr()) == nil {
		s.log.Info("connect refused: unknown service", "authority", req.Authority.String(), "src.identity", req.Peer.String())
		return hbone.Response{Status: http.StatusServiceUnavailable}
	}
	st := &stream{vip: req.Authority.Addr, peer: req.Peer.String(), hbPeer: req.RemoteAddr, src: req.RemoteAddr}
	if fwd, _ := hbone.ParseForwarded(req.Forwarded); fwd.IsValid() {
		st.src = fwd
	}
	up, down := pipe()
	go s.serveHTTP(ctx, down, st)
	return hbone.Response{Status: http.StatusOK, Upstream: up}
}

// serveHTTP reads HTTP/1.1 requests from conn until the client is done or one asks to close.
func (s *Server) serveHTTP(ctx context.Context, conn net.Conn, st *stream) {
	defer conn.Close()
	br := bufio.NewReaderSize(conn, 16<<10)
	bw := bufio.NewWriterSize(conn, 16<<10)
	var up *upstream
	defer func() { up.close() }()
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.ErrUnexpectedEOF) {
				s.log.Info("not an HTTP/1.1 request; stream closed", "authority", st.vip.String(), "error", err.Error())
				writeSimple(bw, http.StatusBadRequest, "Bad Request", true)
				bw.Flush()
			}
			return
		}
		if req.ProtoMajor != 1 {
			s.log.Info("HTTP/2 and other protocols are not served on a stream; closed", "authority", st.vip.String(), "proto", req.Proto)
			return
		}
		keep := s.handle(ctx, req, bw, &up, st)
		if err := bw.Flush(); err != nil || !keep {
			return
		}
	}
}

// handle answers one request; it reports whether the stream can carry another.
func (s *Server) handle(ctx context.Context, req *http.Request, bw *bufio.Writer, up **upstream, st *stream) (keep bool) {
	s.requests.Add(1)
	e := &accesslog.Entry{
		StartTime: time.Now(), Method: req.Method, Path: req.RequestURI, Protocol: req.Proto, Authority: req.Host,
		UserAgent: req.Header.Get("User-Agent"), XForwardedFor: req.Header.Get("X-Forwarded-For"), RequestID: req.Header.Get("X-Request-Id"),
		DownstreamLocalAddress: st.vip.String(), DownstreamRemoteAddress: st.src.String(), PeerPrincipal: st.peer,
		UpstreamServiceTime: -1,
	}
	defer func() {
		e.Duration = time.Since(e.StartTime)
		if s.o.AccessLog != nil {
			s.o.AccessLog.Log(e)
		}
	}()
	keep = !req.Close
	reply := func(status int, body, details, flags string, hdr map[string][]string) bool {
		s.denied.Add(1)
		e.ResponseCode, e.ResponseCodeDetails, e.ResponseFlags = status, details, flags
		n, err := writeLocalReply(bw, req, status, body, hdr, !keep)
		e.BytesSent = n
		return keep && err == nil
	}

	snap := s.o.Store.Load()
	sv := snap.State.ServiceByVIP(st.vip.Addr())
	if sv == nil {
		return reply(http.StatusServiceUnavailable, "no healthy upstream", "cluster_not_found", "NC", nil)
	}
	rt := snap.Route(st.vip.Port(), sv.GetHostname())
	if rt == nil {
		return reply(http.StatusNotFound, "", "route_not_found", "NR", nil)
	}
	e.UpstreamCluster = rt.Cluster

	if strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
		// As Envoy does: answer 100 Continue here and do not forward the expectation.
		req.Header.Del("Expect")
		if req.ContentLength > s.o.MaxRequestBody {
			keep = false
			return reply(http.StatusRequestEntityTooLarge, "Payload Too Large", "request_payload_too_large", "", nil)
		}
		if _, err := io.WriteString(bw, "HTTP/1.1 100 Continue\r\n\r\n"); err != nil || bw.Flush() != nil {
			return false
		}
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, s.o.MaxRequestBody+1))
	req.Body.Close()
	e.BytesReceived = int64(len(body))
	if err != nil {
		e.ResponseFlags, e.ResponseCodeDetails = "DC", "downstream_remote_disconnect"
		return false
	}
	if int64(len(body)) > s.o.MaxRequestBody {
		keep = false
		return reply(http.StatusRequestEntityTooLarge, "Payload Too Large", "request_payload_too_large", "", nil)
	}
	if rt.Config == nil {
		// Fail closed: no filter config (yet) means no request passes.
		return reply(http.StatusForbidden, "RBAC: access denied", "goambient_no_filter_config", "", nil)
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	res := s.o.Host.Do(rt.Config, req, envoytest.Stream{
		FilterState:             map[string]string{authzconfig.PeerPrincipalKey: st.peer},
		DownstreamRemoteAddress: st.src.String(),
		DownstreamLocalAddress:  st.vip.String(),
	})
	if lr := res.LocalReply; lr != nil {
		return reply(lr.Status, lr.Body, lr.Details, "", lr.Headers)
	}
	if !res.Continued {
		return reply(http.StatusInternalServerError, "error happened in filter\r\n", "goambient_filter_no_decision", "", nil)
	}
	if res.RequestHeaders != nil {
		req.Header = res.RequestHeaders
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	req.ContentLength = int64(len(body))
	req.TransferEncoding = nil
	return s.proxy(ctx, req, bw, up, st, snap.State, sv, e, keep)
}

// upstream is the HBONE stream (or TCP connection) to one endpoint, reused by the following
// requests of the same downstream stream while both sides keep the connection alive.
type upstream struct {
	conn net.Conn
	br   *bufio.Reader
	svc  string
	host string // for the access log
}

func (u *upstream) close() {
	if u != nil {
		u.conn.Close()
	}
}

func (s *Server) proxy(ctx context.Context, req *http.Request, bw *bufio.Writer, upp **upstream, st *stream,
	state *state.State, sv *workloadapi.Service, e *accesslog.Entry, keep bool) bool {
	fail := func(details, flags, reason string) bool {
		s.upstreamFailures.Add(1)
		e.UpstreamTransportFailure = reason
		e.ResponseCode, e.ResponseCodeDetails, e.ResponseFlags = http.StatusServiceUnavailable, details, flags
		body := "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
		if flags == "UH" {
			body = "no healthy upstream"
		}
		n, err := writeLocalReply(bw, req, http.StatusServiceUnavailable, body, nil, !keep)
		e.BytesSent = n
		return keep && err == nil
	}
	key := sv.GetNamespace() + "/" + sv.GetHostname() + ":" + strconv.Itoa(int(st.vip.Port()))
	up := *upp
	if up != nil && up.svc != key {
		up.close()
		up, *upp = nil, nil
	}
	if up == nil {
		var err error
		up, err = s.dial(ctx, state, sv, st, key)
		if up == nil {
			return fail("no_healthy_upstream", "UH", "")
		}
		if err != nil {
			e.UpstreamHost = up.host
			s.log.Info("upstream connect failed", "upstream", up.host, "error", err.Error())
			return fail("upstream_reset_before_response_started{connection_failure}", "UF", err.Error())
		}
		*upp = up
	}
	e.UpstreamHost = up.host
	req.Close = false
	req.Header.Del("Connection")
	req.Header.Set("X-Forwarded-Proto", "http")
	sent := time.Now()
	uw := bufio.NewWriterSize(up.conn, 16<<10)
	err := req.Write(uw)
	if err == nil {
		err = uw.Flush()
	}
	var resp *http.Response
	if err == nil {
		resp, err = http.ReadResponse(up.br, req)
	}
	if err != nil {
		up.close()
		*upp = nil
		return fail("upstream_reset_before_response_started{connection_termination}", "UC", err.Error())
	}
	e.UpstreamServiceTime = time.Since(sent)
	e.ResponseCode, e.ResponseCodeDetails = resp.StatusCode, "via_upstream"
	upKeep := !resp.Close
	resp.Close = !keep
	cb := &countingReader{r: resp.Body}
	resp.Body = cb
	werr := resp.Write(bw)
	resp.Body.Close()
	e.BytesSent = cb.n
	if cb.err != nil || !upKeep {
		up.close()
		*upp = nil
	}
	return keep && werr == nil && cb.err == nil
}

// dial picks an endpoint of sv (round robin) and opens a stream to it; up is nil when the
// service has no endpoint, and carries the chosen host when err is set.
func (s *Server) dial(ctx context.Context, st *state.State, sv *workloadapi.Service, ds *stream, key string) (*upstream, error) {
	eps := st.Endpoints(sv)
	if len(eps) == 0 {
		return nil, nil
	}
	start := s.rr.Add(1)
	var ep *workloadapi.Workload
	var target uint16
	for i := range eps {
		cand := eps[(int(start)+i)%len(eps)]
		if p, ok := st.TargetPort(sv, cand, ds.vip.Port()); ok && len(st.Addresses(cand)) > 0 {
			ep, target = cand, p
			break
		}
	}
	if ep == nil {
		return nil, nil
	}
	ip := st.Addresses(ep)[0]
	addr := netip.AddrPortFrom(ip, target)
	ctx, cancel := context.WithTimeout(ctx, s.o.ConnectTimeout)
	defer cancel()
	if ep.GetTunnelProtocol() != workloadapi.TunnelProtocol_HBONE {
		up := &upstream{svc: key, host: addr.String()}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr.String())
		if err != nil {
			return up, err
		}
		up.conn, up.br = c, bufio.NewReaderSize(c, 16<<10)
		return up, nil
	}
	up := &upstream{svc: key, host: "envoy://connect_originate/" + addr.String()}
	svid, err := s.o.SVID()
	if err != nil {
		return up, fmt.Errorf("the waypoint's SVID: %w", err)
	}
	var ids []spiffeid.ID
	for _, id := range append([]string{st.Identity(ep)}, sv.GetSubjectAltNames()...) {
		if sid, err := spiffeid.FromString(id); err == nil {
			ids = append(ids, sid)
		} else if !strings.HasPrefix(id, "spiffe://") {
			if sid, err := spiffeid.FromString("spiffe://" + id); err == nil {
				ids = append(ids, sid)
			}
		}
	}
	c, err := s.o.Client.Dial(ctx, hbone.Target{
		Source: svid, Address: netip.AddrPortFrom(ip, state.HBONEPort), Identities: ids,
		Authority: addr.String(), SourceAddr: ds.src, Host: sv.GetHostname(),
	})
	if err != nil {
		return up, err
	}
	up.conn, up.br = c, bufio.NewReaderSize(c, 16<<10)
	return up, nil
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

// writeLocalReply writes an answer made by the waypoint, as Envoy's local replies look
// (text/plain body, content-length, date); it returns the body bytes written.
func writeLocalReply(w io.Writer, req *http.Request, status int, body string, hdr map[string][]string, closeConn bool) (int64, error) {
	h := http.Header{}
	for k, v := range hdr {
		h[http.CanonicalHeaderKey(k)] = v
	}
	if h.Get("Content-Type") == "" && body != "" {
		h.Set("Content-Type", "text/plain")
	}
	h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	h.Set("Server", "istio-envoy")
	resp := &http.Response{
		StatusCode: status, ProtoMajor: 1, ProtoMinor: 1, Header: h, Request: req,
		ContentLength: int64(len(body)), Body: io.NopCloser(strings.NewReader(body)), Close: closeConn,
	}
	if err := resp.Write(w); err != nil {
		return 0, err
	}
	if req != nil && req.Method == http.MethodHead {
		return 0, nil
	}
	return int64(len(body)), nil
}

func writeSimple(w io.Writer, status int, body string, closeConn bool) {
	_, _ = writeLocalReply(w, nil, status, body, nil, closeConn)
}
