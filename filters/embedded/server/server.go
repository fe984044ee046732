// Package server is the embedded waypoint's data path, Envoy's HTTP connection manager and router for it: it takes each HBONE CONNECT stream addressed to a service VIP:port, reads the HTTP/1.1 requests it carries, selects each one's route, runs the authorization filter and the fault filter, then answers locally (denials, faults, redirects, direct responses) or sends the request to an endpoint of the route's cluster over HBONE, with retries, timeouts and mirrors, writing one access-log line per request.
package server

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/embedded/accesslog"
	"github.com/goambient/goambient/filters/embedded/config"
	"github.com/goambient/goambient/filters/embedded/host"
	"github.com/goambient/goambient/filters/embedded/router"
	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/lograte"
)

// Defaults of Limits (Envoy's, or Istio's where Istio sets one; see ../README.md "Limits").
const (
	DefaultMaxRequestBody         = 4 << 20
	DefaultMaxRequestHeaderBytes  = 60 << 10 // Envoy max_request_headers_kb
	DefaultMaxRequestHeaders      = 100      // Envoy max_headers_count
	DefaultMaxResponseHeaderBytes = 60 << 10 // Envoy max_response_headers_kb
	DefaultRequestHeadersTimeout  = 60 * time.Second
	DefaultIdleTimeout            = time.Hour       // Envoy common_http_protocol_options.idle_timeout
	DefaultStreamIdleTimeout      = 5 * time.Minute // Envoy stream_idle_timeout
	DefaultMaxMirrors             = 64
	DefaultMirrorTimeout          = 15 * time.Second
	DefaultFailureLogsPerSecond   = 5
	// delayedClose is how long a stream closed after a local reply keeps reading (and
	// discarding, up to drainLimit) what the client still sends, so that the client reads the
	// reply before the stream is reset (Envoy's delayed_close_timeout).
	delayedClose = time.Second
	drainLimit   = 1 << 20
)

// Limits bound what one client can make the waypoint hold on a stream. A zero field takes its
// default; a negative timeout turns that timeout off.
type Limits struct {
	// MaxRequestBody is the largest request body buffered (for the filter, retries and
	// mirrors): 413 above it, at once when the Content-Length says so.
	MaxRequestBody int64
	// MaxRequestHeaderBytes bounds the bytes read for a request line and its headers (plus
	// what the stream's 16 KiB read buffer already held): 431 and the stream closed.
	MaxRequestHeaderBytes int
	// MaxRequestHeaders bounds the number of header fields of a request: 431.
	MaxRequestHeaders int
	// MaxResponseHeaderBytes bounds the bytes read for an upstream answer's status line and
	// headers (plus what the connection's 16 KiB read buffer already held): the try fails as a
	// connection termination (503 UC, retried as one).
	MaxResponseHeaderBytes int
	// RequestHeadersTimeout runs from a request's first byte to the end of its headers: the
	// stream is closed when it passes.
	RequestHeadersTimeout time.Duration
	// IdleTimeout closes a stream on which no request has started for that long.
	IdleTimeout time.Duration
	// StreamIdleTimeout closes a stream when reading a request's body or writing its answer
	// makes no progress for that long (a client that stops sending, or stops reading).
	StreamIdleTimeout time.Duration
	// MaxMirrors bounds the mirrored requests in flight; more are not mirrored.
	MaxMirrors int
	// MirrorTimeout bounds a mirrored request when its route has no timeout.
	MirrorTimeout time.Duration
	// FailureLogsPerSecond rate-limits the server's own log lines (refused streams, bad
	// requests, timeouts); the rest are counted and reported as suppressed. Negative: no limit.
	FailureLogsPerSecond float64
}

func (l Limits) withDefaults() Limits {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if l.MaxRequestBody <= 0 {
		l.MaxRequestBody = DefaultMaxRequestBody
	}
	if l.MaxRequestHeaderBytes <= 0 {
		l.MaxRequestHeaderBytes = DefaultMaxRequestHeaderBytes
	}
	if l.MaxRequestHeaders <= 0 {
		l.MaxRequestHeaders = DefaultMaxRequestHeaders
	}
	if l.MaxResponseHeaderBytes <= 0 {
		l.MaxResponseHeaderBytes = DefaultMaxResponseHeaderBytes
	}
	def(&l.RequestHeadersTimeout, DefaultRequestHeadersTimeout)
	def(&l.IdleTimeout, DefaultIdleTimeout)
	def(&l.StreamIdleTimeout, DefaultStreamIdleTimeout)
	if l.MaxMirrors <= 0 {
		l.MaxMirrors = DefaultMaxMirrors
	}
	if l.MirrorTimeout <= 0 {
		l.MirrorTimeout = DefaultMirrorTimeout
	}
	if l.FailureLogsPerSecond == 0 {
		l.FailureLogsPerSecond = DefaultFailureLogsPerSecond
	}
	return l
}

// Rand is the waypoint's one source of randomness (weighted clusters, fault and mirror
// percentages, load balancing, retry back-off): tests give a seeded one.
type Rand interface{ Uint64() uint64 }

// Options configure a Server. Store, Host, Client and SVID are required.
type Options struct {
	Logger    *slog.Logger
	Store     *config.Store
	Host      *host.Host
	AccessLog *accesslog.Logger // nil: none
	// Client opens the HBONE streams to the endpoints.
	Client *hbone.Client
	// SVID returns the waypoint's own SVID: its client certificate towards the endpoints.
	SVID func() (*x509svid.SVID, error)
	// Rand is the source of randomness; a random-seeded one when nil.
	Rand Rand
	// Limits bound each stream's resources (defaults when zero).
	Limits Limits
	// Hostname is %HOSTNAME% in header values (the pod name).
	Hostname string
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Observer, when set, sees each request once it is over (the request metrics).
	Observer Observer
}

// Observer sees each finished request: its access-log entry, the config snapshot it was
// served with, and whether it was gRPC. It must not keep e.
type Observer interface {
	ObserveRequest(e *accesslog.Entry, snap *config.Snapshot, grpc bool)
}

// Server is the hbone.Handler of the embedded waypoint.
type Server struct {
	o       Options
	log     *slog.Logger
	rnd     lockedRand
	mirrors chan struct{} // tokens: mirrored requests in flight

	requests, local, upstreamFailures, retried, timeouts, streams atomic.Int64
}

// lockedRand serialises a Rand (math/rand/v2 sources are not safe for concurrent use).
type lockedRand struct {
	mu sync.Mutex
	r  Rand
}

func (l *lockedRand) next() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Uint64()
}

type cryptoRand struct{}

func (cryptoRand) Uint64() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

// New returns a Server.
func New(o Options) (*Server, error) {
	if o.Store == nil || o.Host == nil || o.Client == nil || o.SVID == nil {
		return nil, errors.New("server: Store, Host, Client and SVID are required")
	}
	o.Limits = o.Limits.withDefaults()
	if o.Rand == nil {
		o.Rand = cryptoRand{}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = slog.New(lograte.NewHandler(log.Handler(), o.Limits.FailureLogsPerSecond))
	return &Server{o: o, log: log, rnd: lockedRand{r: o.Rand}, mirrors: make(chan struct{}, o.Limits.MaxMirrors)}, nil
}

// Stats are the server's counters (Requests to Timeouts) and gauges (Streams, Mirrors).
type Stats struct {
	Requests, LocalReplies, UpstreamFailures, Retries int64
	// Timeouts counts streams closed by the idle, request-headers or stream idle timeout.
	Timeouts int64
	// Streams is the number of CONNECT streams being served; Mirrors the mirrored requests
	// in flight.
	Streams, Mirrors int64
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	return Stats{Requests: s.requests.Load(), LocalReplies: s.local.Load(), UpstreamFailures: s.upstreamFailures.Load(), Retries: s.retried.Load(),
		Timeouts: s.timeouts.Load(), Streams: s.streams.Load(), Mirrors: int64(len(s.mirrors))}
}

// stream is what every request of one CONNECT stream shares.
type stream struct {
	vip    netip.AddrPort // the CONNECT's :authority
	src    netip.AddrPort // the original source (forwarded: for=), else the peer's address
	peer   string         // the peer's SPIFFE ID
	hbPeer netip.AddrPort
	g      *guard // set by the HTTP loop
	// timedOut: a request's access-log line reported the stream's timeout (it is counted once)
	timedOut bool
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

// serveHTTP reads HTTP/1.1 requests from conn until the client is done or one asks to close,
// within the stream's limits: the idle timeout while no request has started, the header
// timeout, size and count while one is read, the stream idle timeout while its body is read
// and its answer written.
func (s *Server) serveHTTP(ctx context.Context, conn net.Conn, st *stream) {
	lim := &s.o.Limits
	g := newGuard(conn)
	st.g = g
	s.streams.Add(1)
	defer s.streams.Add(-1)
	defer g.Close()
	br := bufio.NewReaderSize(g, 16<<10)
	bw := bufio.NewWriterSize(g, 16<<10)
	for {
		g.arm(lim.IdleTimeout)
		if _, err := br.Peek(1); err != nil {
			if g.expired.Load() {
				s.timeouts.Add(1)
				s.log.Info("stream idle: no request for the idle timeout; closed", "authority", st.vip.String(), "src.identity", st.peer)
			}
			return
		}
		g.arm(lim.RequestHeadersTimeout)
		g.setBudget(lim.MaxRequestHeaderBytes)
		req, err := http.ReadRequest(br)
		g.arm(0)
		spent := g.spent
		g.setBudget(-1)
		if err != nil {
			switch {
			case g.expired.Load():
				s.timeouts.Add(1)
				s.log.Info("request headers not complete within the timeout; stream closed", "authority", st.vip.String(), "src.identity", st.peer)
			case spent:
				s.log.Info("request headers over the limit; stream closed", "authority", st.vip.String(), "src.identity", st.peer, "limit", lim.MaxRequestHeaderBytes)
				s.refuse(g, br, bw, http.StatusRequestHeaderFieldsTooLarge, "Request Header Fields Too Large")
			case !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.ErrUnexpectedEOF):
				s.log.Info("not an HTTP/1.1 request; stream closed", "authority", st.vip.String(), "error", err.Error())
				s.refuse(g, br, bw, http.StatusBadRequest, "Bad Request")
			}
			return
		}
		if req.ProtoMajor != 1 {
			s.log.Info("HTTP/2 and other protocols are not served on a stream; closed", "authority", st.vip.String(), "proto", req.Proto)
			return
		}
		if n := headerCount(req.Header); n > lim.MaxRequestHeaders {
			s.log.Info("too many request headers; stream closed", "authority", st.vip.String(), "src.identity", st.peer, "headers", n, "limit", lim.MaxRequestHeaders)
			s.refuse(g, br, bw, http.StatusRequestHeaderFieldsTooLarge, "Request Header Fields Too Large")
			return
		}
		g.perOp = lim.StreamIdleTimeout
		keep := s.handle(ctx, req, bw, st)
		// The access-log line is written by now (before the client can read the end of the
		// answer, as the tests rely on); a stall on this last flush is counted here.
		err = bw.Flush()
		g.perOp = 0
		if err != nil {
			if g.expired.Load() && !st.timedOut {
				s.timeouts.Add(1)
				s.log.Info("stream idle: no progress writing the answer for the stream idle timeout; stream reset", "authority", st.vip.String(), "src.identity", st.peer)
			}
			return
		}
		if !keep {
			linger(g, br)
			return
		}
	}
}

// refuse answers a request that is not served (before an access-log entry exists) and ends
// the stream.
func (s *Server) refuse(g *guard, br *bufio.Reader, bw *bufio.Writer, status int, body string) {
	s.local.Add(1)
	g.perOp = s.o.Limits.StreamIdleTimeout
	writeSimple(bw, status, body, true)
	err := bw.Flush()
	g.perOp = 0
	if err == nil {
		linger(g, br)
	}
}

// linger ends a stream after an answer that closes it, as Envoy's delayed close does: our side
// ends (the client reads the answer, then EOF) and what the client still sends is read and
// dropped, up to drainLimit bytes and for at most delayedClose, so that the stream is not
// reset under the answer. The caller closes g.
func linger(g *guard, br *bufio.Reader) {
	if cw, ok := g.Conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	g.arm(delayedClose)
	_, _ = io.Copy(io.Discard, io.LimitReader(br, drainLimit))
}

// headerCount is the number of header fields of a request.
func headerCount(h http.Header) int {
	n := 0
	for _, vs := range h {
		n += len(vs)
	}
	return n
}

var requests = sync.Pool{New: func() any { return &host.Request{} }}

// exchange is one request's state through the filters and the router.
type exchange struct {
	s     *Server
	ctx   context.Context
	req   *http.Request
	hreq  *host.Request
	bw    *bufio.Writer
	st    *stream
	e     *accesslog.Entry
	body  []byte
	keep  bool
	snap  *config.Snapshot
	vars  router.Vars
	table *config.Table
	rt    *router.Route
	// cluster and weighted are the route's cluster, chosen when the route is (Envoy resolves
	// weighted clusters with the route: %UPSTREAM_CLUSTER% names it even for a denied request).
	cluster  string
	weighted *router.Weighted
}

// handle answers one request; it reports whether the stream can carry another.
func (s *Server) handle(ctx context.Context, req *http.Request, bw *bufio.Writer, st *stream) bool {
	s.requests.Add(1)
	x := &exchange{s: s, ctx: ctx, req: req, bw: bw, st: st, keep: !req.Close, snap: s.o.Store.Load()}
	x.e = &accesslog.Entry{
		StartTime: s.o.Now(), Method: req.Method, Path: req.RequestURI, Protocol: req.Proto, Authority: req.Host,
		UserAgent: req.Header.Get("User-Agent"), XForwardedFor: req.Header.Get("X-Forwarded-For"),
		DownstreamLocalAddress: st.vip.String(), DownstreamRemoteAddress: st.src.String(), PeerPrincipal: st.peer,
		UpstreamServiceTime: -1,
	}
	defer func() {
		if st.g != nil && st.g.expired.Load() {
			st.timedOut = true
			s.timeouts.Add(1)
			s.log.Info("stream idle: no progress reading the request or writing the answer for the stream idle timeout; stream reset",
				"authority", st.vip.String(), "src.identity", st.peer)
			x.e.Flags |= accesslog.StreamIdleTimeout
			x.e.ResponseCodeDetails = "stream_idle_timeout"
		}
		x.e.Duration = s.o.Now().Sub(x.e.StartTime)
		if s.o.AccessLog != nil {
			s.o.AccessLog.Log(x.e)
		}
		if s.o.Observer != nil {
			s.o.Observer.ObserveRequest(x.e, x.snap, isGRPC(req))
		}
	}()
	// Envoy's connection manager: a request id when the client sent none, the path normalised
	// (normalize_path, Istio's BASE), before any filter or route sees them.
	if req.Header.Get("X-Request-Id") == "" {
		req.Header.Set("X-Request-Id", newUUID(s.rnd.next(), s.rnd.next()))
	}
	x.e.RequestID = req.Header.Get("X-Request-Id")
	path, err := policies.NormalizePath(req.RequestURI)
	if err != nil {
		x.keep = false
		return x.reply(http.StatusBadRequest, "Bad Request", "path_normalization_failed", 0, nil)
	}
	if i := strings.IndexByte(req.RequestURI, '?'); i >= 0 {
		path += req.RequestURI[i:] // the query is kept as it came (Envoy normalises the path only)
	}
	hreq := requests.Get().(*host.Request)
	defer requests.Put(hreq)
	hreq.Reset(req.Method, path, req.Host, "http", req.Proto, req.Header)
	x.hreq = hreq
	x.vars = router.Vars{DownstreamRemoteAddress: st.src.String(), DownstreamLocalAddress: st.vip.String(), PeerURISAN: st.peer,
		Hostname: s.o.Hostname, Protocol: req.Proto, RequestID: x.e.RequestID}

	sv := x.snap.State.ServiceByVIP(st.vip.Addr())
	if sv == nil {
		return x.reply(http.StatusServiceUnavailable, "no healthy upstream", "cluster_not_found", accesslog.NoClusterFound, nil)
	}
	x.table = x.snap.Table(st.vip.Port(), sv.GetHostname())
	if x.table == nil {
		return x.reply(http.StatusNotFound, "", "route_not_found", accesslog.NoRouteFound, nil)
	}
	if req.ContentLength > s.o.Limits.MaxRequestBody {
		// Known too large before a byte of it is read (and never read: the stream closes).
		x.keep = false
		return x.reply(http.StatusRequestEntityTooLarge, "Payload Too Large", "request_payload_too_large", 0, nil)
	}
	if strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
		// As Envoy does: answer 100 Continue here and do not forward the expectation.
		req.Header.Del("Expect")
		hreq.Del("expect")
		if _, err := io.WriteString(bw, "HTTP/1.1 100 Continue\r\n\r\n"); err != nil || bw.Flush() != nil {
			return false
		}
	}
	x.body, err = io.ReadAll(io.LimitReader(req.Body, s.o.Limits.MaxRequestBody+1))
	req.Body.Close()
	x.e.BytesReceived = int64(len(x.body))
	if err != nil {
		x.e.Flags |= accesslog.DownstreamConnectionTermination
		x.e.ResponseCodeDetails = "downstream_remote_disconnect"
		return false
	}
	if int64(len(x.body)) > s.o.Limits.MaxRequestBody {
		x.keep = false
		return x.reply(http.StatusRequestEntityTooLarge, "Payload Too Large", "request_payload_too_large", 0, nil)
	}

	// The route, then the filters in istiod's order: authorization, fault, router.
	x.rt = x.table.Select(hreq)
	authz, custom := x.table.NoRoute, x.table.NoRouteCustom
	var extras *config.Extras
	if x.rt != nil {
		x.e.RouteName = x.rt.Name
		extras = x.table.Extras(x.rt)
		authz, custom = extras.Authz, extras.Custom
		if x.rt.Action != nil {
			x.cluster, x.weighted = x.rt.Action.Pick(s.rnd.next())
			x.e.UpstreamCluster = x.cluster
		}
	}
	if authz == nil {
		// Fail closed: no filter config (yet) means no request passes.
		return x.reply(http.StatusForbidden, "RBAC: access denied", "goambient_no_filter_config", 0, nil)
	}
	// istiod's waypoint chain: CUSTOM (its shadow RBAC and ext_authz), jwt_authn
	// (RequestAuthentication), then the RBAC filters (DENY, ALLOW). The provider sees the
	// request as the client sent it (the token too, valid or not); jwt_authn then verifies
	// what the provider let through (an Authorization header it set included).
	conn := host.Conn{
		PeerPrincipal: st.peer, PeerPrincipalKey: authzconfig.PeerPrincipalKey, RouteName: x.e.RouteName,
		DownstreamRemoteAddress: st.src.String(), DownstreamLocalAddress: st.vip.String(), GRPC: isGRPC(req),
	}
	if custom != nil {
		if res := s.o.Host.Decode(ctx, custom, hreq, conn); !res.Continue {
			lr := res.Reply
			return x.localReply(lr.Status, lr.Body, lr.Details, 0, lr.Headers)
		}
	}
	metadata, authn, done, keep := s.authenticate(ctx, x, req)
	if done {
		return keep
	}
	authn.Apply(hreq) // jwt_authn's header changes (the token removed unless forwarded) precede the RBAC filters
	conn.Metadata = metadata
	res := s.o.Host.Decode(ctx, authz, hreq, conn)
	if !res.Continue {
		lr := res.Reply
		return x.localReply(lr.Status, lr.Body, lr.Details, 0, lr.Headers)
	}
	if x.rt == nil {
		return x.reply(http.StatusNotFound, "", "route_not_found", accesslog.NoRouteFound, nil)
	}
	if f := extras.Fault; f != nil {
		d := f.Decide(s.rnd.next)
		if d.Delay > 0 {
			x.e.Flags |= accesslog.DelayInjected
			t := time.NewTimer(d.Delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return false
			}
		}
		if d.Abort {
			x.e.Flags |= accesslog.FaultInjected
			if f.GRPCStatus >= 0 && isGRPC(req) {
				return x.localReply(200, "", faultDetails, 0, []host.Header{{Name: "content-type", Value: "application/grpc"},
					{Name: "grpc-status", Value: fmt.Sprint(f.GRPCStatus)}, {Name: "grpc-message", Value: "fault filter abort"}})
			}
			return x.reply(f.HTTPStatus, "fault filter abort", faultDetails, 0, nil)
		}
	}
	switch x.rt.Kind {
	case router.ActionRedirect:
		loc := x.rt.Location(hreq, "http")
		return x.localReply(x.rt.Redirect.Status, "", "direct_response", 0, []host.Header{{Name: "location", Value: loc}})
	case router.ActionDirect:
		return x.reply(x.rt.Direct.Status, x.rt.Direct.Body, "direct_response", 0, nil)
	}
	return x.route()
}

const faultDetails = "fault_filter_abort"

func isGRPC(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	return ct == "application/grpc" || strings.HasPrefix(ct, "application/grpc+")
}

// newUUID is a version 4 UUID from two random numbers (Envoy's x-request-id).
func newUUID(a, b uint64) string {
	a = a&^(0xf<<12) | 4<<12         // version 4
	b = b&^(0x3<<62) | uint64(2)<<62 // variant 10
	return fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", a>>32, (a>>16)&0xffff, a&0xffff, b>>48, b&0xffffffffffff)
}
