package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/goambient/goambient/ztunnel/lograte"
)

// Istio ztunnel's server limits (reference/istio-ambient.md §1.1).
const (
	DefaultServerMaxStreams = 200      // max_concurrent_streams
	DefaultMaxHeaderList    = 64 << 10 // max_header_list_size
	DefaultHandshakeTimeout = 10 * time.Second
)

// Handler decides what happens to each CONNECT stream a Server receives.
type Handler interface {
	// ServeHBONE returns the answer to req. To accept, it dials the destination and returns
	// Status 200 with that connection as Upstream; the Server then relays bytes both ways and
	// closes Upstream. Any other status is sent as is (400 IP mismatch, 401 authorization
	// denied, 503 unknown destination or connection refused) and nothing is relayed. ctx ends
	// when the stream does.
	ServeHBONE(ctx context.Context, req *Request) Response
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, req *Request) Response

// ServeHBONE calls f.
func (f HandlerFunc) ServeHBONE(ctx context.Context, req *Request) Response { return f(ctx, req) }

// Request is a CONNECT stream as the Handler sees it.
type Request struct {
	Peer       spiffeid.ID          // the client's SPIFFE ID, from its verified certificate
	RemoteAddr netip.AddrPort       // the client's end of the TCP connection
	LocalAddr  netip.AddrPort       // where the connection arrived (the destination pod's IP:15008)
	TLS        *tls.ConnectionState // the connection's TLS state, shared by its streams: read only
	Authority  Authority            // the parsed :authority (Authority.Addr valid for ip:port)
	Header     http.Header          // all request headers
	// Forwarded, Baggage and Traceparent are the values of those headers ("" when absent);
	// see ParseForwarded and ParseBaggage.
	Forwarded, Baggage, Traceparent string
}

// Response is a Handler's answer.
type Response struct {
	Status   int         // http.StatusOK to relay to Upstream, or an error status
	Upstream net.Conn    // the destination connection, with StatusOK; the Server closes it
	Header   http.Header // extra response headers (e.g. the destination's baggage), may be nil
	// Done, when set, is called once the stream is over: for a 200 after both directions
	// have ended and Upstream is closed, otherwise once the status is sent.
	Done func(Result)
}

// Result is how a stream ended.
type Result struct {
	Status   int
	Received int64 // bytes read from the HBONE client and written to Upstream
	Sent     int64 // bytes read from Upstream and written to the HBONE client
	Err      error // the first error of the relay; nil when both directions ended with EOF
}

// ServerConfig configures a Server. Bundle, GetCertificate and Handler are required; zero
// values mean Istio's defaults.
type ServerConfig struct {
	Logger *slog.Logger // nil: no logs
	// Bundle holds the roots that client certificates must chain to.
	Bundle x509bundle.Source
	// TrustDomains are the trust domains clients may come from; any that Bundle has roots for
	// when empty.
	TrustDomains []spiffeid.TrustDomain
	// GetCertificate returns the SVID to present on a connection that arrived at local: the
	// destination workload's.
	GetCertificate func(local netip.Addr) (*x509svid.SVID, error)
	Handler        Handler
	// MaxConcurrentStreams per connection (DefaultServerMaxStreams when 0).
	MaxConcurrentStreams uint32
	// MaxHeaderListSize is the SETTINGS_MAX_HEADER_LIST_SIZE (DefaultMaxHeaderList when 0).
	MaxHeaderListSize int
	// HandshakeTimeout bounds the TLS handshake, and then the HTTP/2 preface
	// (DefaultHandshakeTimeout when 0).
	HandshakeTimeout time.Duration
	// PingInterval and PingTimeout as in ClientConfig.
	PingInterval, PingTimeout time.Duration

	// Limits (README "Limits"): 0 means the default; a negative timeout or log rate turns
	// that limit off, a negative count means the default.

	// MaxConnections bounds the connections served at once, handshaking or not; more are
	// closed as soon as accepted. Default: half the process's open-file limit, at most
	// DefaultMaxConnectionsCap. MaxConnectionsPerSource bounds them per client IP address
	// (default: a quarter of MaxConnections, at most DefaultMaxConnectionsPerSourceCap).
	MaxConnections, MaxConnectionsPerSource int
	// MaxHandshakes bounds the connections in their TLS handshake or HTTP/2 preface at once
	// (DefaultMaxHandshakes); MaxHandshakesPerSource per client IP address
	// (DefaultMaxHandshakesPerSource). More are closed as soon as accepted.
	MaxHandshakes, MaxHandshakesPerSource int
	// IdleTimeout: a connection without streams for this long gets GOAWAY and is closed
	// (DefaultServerIdleTimeout; negative: never).
	IdleTimeout time.Duration
	// WriteTimeout: a socket write that makes no progress for this long fails, which closes
	// the connection (DefaultWriteTimeout; negative: none).
	WriteTimeout time.Duration
	// MaxQueuedControlFrames: control frames waiting to be written beyond this close the
	// connection (DefaultMaxQueuedControlFrames).
	MaxQueuedControlFrames int
	// FailureLogsPerSecond bounds the WARN lines about connections that failed or were refused
	// before HTTP/2 was up; the rest are counted in a "suppressed" attribute or line
	// (DefaultFailureLogsPerSecond; negative: unbounded).
	FailureLogsPerSecond float64
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("hbone: server closed")

// ErrEarlyReset ends a stream whose client reset it (or closed the connection) before the
// answer: its Handler's context is cancelled with it as the cause (context.Cause), no answer
// is written, and Response.Done gets it as Result.Err. A peer can cause it at will, so it is
// worth logging only sparingly.
var ErrEarlyReset = errors.New("hbone: stream reset by the client before the answer")

// Server terminates HBONE: TLS 1.3 with a verified SPIFFE client certificate, HTTP/2, and a
// Handler per CONNECT stream.
type Server struct {
	log     *slog.Logger
	failLog *slog.Logger // rate-limited: what a peer can cause before HTTP/2 is up
	handler Handler
	tls     *tls.Config
	h2      h2Settings
	hsTO    time.Duration
	wTO     time.Duration // write timeout; 0: none
	limits  connLimiter

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{} // every connection being served
	h2conns   map[*h2Conn]struct{}  // those past the TLS handshake
	wg        sync.WaitGroup
}

// NewServer returns a Server; run it with Serve or ServeConn.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Handler == nil {
		return nil, errors.New("hbone: ServerConfig.Handler is required")
	}
	tlsConf, err := ServerTLSConfig(cfg.Bundle, cfg.TrustDomains, cfg.GetCertificate)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	maxConns := cfg.MaxConnections
	if maxConns <= 0 {
		maxConns = defaultMaxConnections()
	}
	maxPerSrc := cfg.MaxConnectionsPerSource
	if maxPerSrc <= 0 {
		maxPerSrc = min(max(maxConns/4, 1), DefaultMaxConnectionsPerSourceCap)
	}
	return &Server{
		log:     log,
		failLog: slog.New(lograte.NewHandler(log.Handler(), orDefault(cfg.FailureLogsPerSecond, DefaultFailureLogsPerSecond))),
		handler: cfg.Handler,
		tls:     tlsConf,
		h2: h2Settings{
			maxStreams:    uint32(orDefault(int(cfg.MaxConcurrentStreams), DefaultServerMaxStreams)),
			streamWindow:  StreamWindow,
			connWindow:    ConnWindow,
			maxFrame:      MaxFrameSize,
			maxHeaderList: uint32(positiveOr(cfg.MaxHeaderListSize, DefaultMaxHeaderList)),
			pingEvery:     orDefault(cfg.PingInterval, DefaultPingInterval),
			pingTimeout:   orDefault(cfg.PingTimeout, DefaultPingTimeout),
			idle:          orDefault(cfg.IdleTimeout, DefaultServerIdleTimeout),
			maxCtrl:       positiveOr(cfg.MaxQueuedControlFrames, DefaultMaxQueuedControlFrames),
		},
		hsTO: orDefault(cfg.HandshakeTimeout, DefaultHandshakeTimeout),
		wTO:  max(orDefault(cfg.WriteTimeout, DefaultWriteTimeout), 0),
		limits: connLimiter{
			maxConns: maxConns, maxConnsPerSrc: maxPerSrc,
			maxHS:       positiveOr(cfg.MaxHandshakes, DefaultMaxHandshakes),
			maxHSPerSrc: positiveOr(cfg.MaxHandshakesPerSource, DefaultMaxHandshakesPerSource),
			src:         make(map[netip.Addr]*srcUse),
		},
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[net.Conn]struct{}),
		h2conns:   make(map[*h2Conn]struct{}),
	}, nil
}

// Serve accepts connections on l and serves each in its own goroutine until l fails or the
// Server is shut down (then it returns ErrServerClosed). l is closed on return.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			// EMFILE, ECONNABORTED and friends: wait and retry, as net/http does.
			if te, ok := err.(interface{ Temporary() bool }); ok && te.Temporary() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.failLog.Warn("hbone accept error; retrying", "error", err, "delay", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		// Admitted here, so that a refused connection costs no goroutine.
		if remote, ok := s.admit(c); ok {
			go s.serveAdmitted(context.Background(), c, remote)
		}
	}
}

// admit counts c against the connection and handshake limits, or closes it.
func (s *Server) admit(c net.Conn) (netip.AddrPort, bool) {
	remote := addrPortOf(c.RemoteAddr())
	if why := s.limits.admit(remote.Addr()); why != "" {
		s.failLog.Warn("connection failed", "src.addr", remote.String(), "dst.addr", addrPortOf(c.LocalAddr()).String(), "error", "refused: "+why)
		c.Close()
		return remote, false
	}
	return remote, true
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// ServeConn serves one accepted TCP connection: the TLS handshake, then HTTP/2 until the
// connection ends. It closes c. The connection counts against the Server's connection and
// handshake limits: over one, it is closed at once.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) {
	if remote, ok := s.admit(c); ok {
		s.serveAdmitted(ctx, c, remote)
	}
}

// serveAdmitted is ServeConn for a connection admitted by the limits.
func (s *Server) serveAdmitted(ctx context.Context, c net.Conn, remote netip.AddrPort) {
	handshaking := true
	defer func() { s.limits.release(remote.Addr(), handshaking) }()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.wg.Done()
	}()

	local := addrPortOf(c.LocalAddr())
	raw := &gatherConn{Conn: rawConn(c)}
	raw.setWriteTimeout(s.wTO)
	tc := tls.Server(raw, s.tls)
	hctx, cancel := context.WithTimeout(ctx, s.hsTO)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		// Istio logs its early denials as "connection failed" too.
		s.failLog.Warn("connection failed", "src.addr", remote.String(), "dst.addr", local.String(), "error", err)
		c.Close()
		return
	}
	cs := tc.ConnectionState()
	peer, err := PeerID(&cs)
	if err != nil { // cannot happen after VerifyPeerCertificate; be safe
		s.failLog.Warn("connection failed", "src.addr", remote.String(), "error", err)
		c.Close()
		return
	}
	if s.isClosed() { // shut down during the handshake: the GOAWAY broadcast missed this one
		c.Close()
		return
	}
	s.log.Debug("hbone connection accepted", "src.addr", remote.String(), "dst.addr", local.String(), "src.identity", peer.String())
	info := &Request{Peer: peer, RemoteAddr: remote, LocalAddr: local, TLS: &cs}
	s.serveHTTP2(ctx, newGatheringTLS(tc, raw), c, info, func() {
		s.limits.handshakeDone(remote.Addr())
		handshaking = false
	})
}

// serveHTTP2 serves HTTP/2 on nc (raw is the connection under it) until it ends; info is
// what every stream's Request starts from. ready, when set, is called once the preface is in.
func (s *Server) serveHTTP2(ctx context.Context, nc, raw net.Conn, info *Request, ready func()) {
	h2 := newH2Conn(s.log, nc, raw, false, s.h2)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	slots := &handlerSlots{max: int(s.h2.maxStreams)}
	h2.onStream = func(st *h2Stream, f *http2.MetaHeadersFrame) error { return s.startStream(sctx, slots, st, f, info) }
	nc.SetReadDeadline(time.Now().Add(s.hsTO))
	if err := h2.readPreface(); err != nil {
		s.failLog.Warn("connection failed", "src.addr", info.RemoteAddr.String(), "src.identity", info.Peer.String(), "error", err)
		h2.lingerClose(err)
		return
	}
	nc.SetReadDeadline(time.Time{})
	if ready != nil {
		ready()
	}
	if err := h2.start(); err != nil {
		h2.closeWithError(err)
		return
	}
	s.mu.Lock()
	if s.closed { // shut down meanwhile: the GOAWAY broadcast missed this one
		s.mu.Unlock()
		h2.closeWithError(ErrServerClosed)
		return
	}
	s.h2conns[h2] = struct{}{}
	s.mu.Unlock()
	h2.readLoop()
	s.mu.Lock()
	delete(s.h2conns, h2)
	s.mu.Unlock()
}

// startStream takes a new request stream from the read loop: its headers are read here (the
// Framer reuses them), and the stream is answered by a handler goroutine of slots (now, or
// when a slot frees). An error closes the connection.
func (s *Server) startStream(ctx context.Context, slots *handlerSlots, st *h2Stream, f *http2.MetaHeadersFrame, conn *Request) error {
	if why := malformedRequest(f); why != "" {
		s.log.Debug("hbone request refused", "src.identity", conn.Peer.String(), "error", "malformed request: "+why)
		st.c.queueAsync(h2Ctrl{typ: http2.FrameRSTStream, id: st.id, val: uint32(http2.ErrCodeProtocol)})
		st.abort(errStreamReset)
		return nil
	}
	method := f.PseudoValue("method")
	authority := f.PseudoValue("authority")
	extended := f.PseudoValue("protocol") != ""
	req := *conn
	req.Header = make(http.Header, len(f.RegularFields()))
	for _, hf := range f.RegularFields() {
		k := http.CanonicalHeaderKey(hf.Name)
		req.Header[k] = append(req.Header[k], hf.Value)
	}
	req.Forwarded = req.Header.Get(HeaderForwarded)
	req.Baggage = req.Header.Get(HeaderBaggage)
	req.Traceparent = req.Header.Get(HeaderTraceparent)
	truncated := f.Truncated
	sctx, cancel := context.WithCancelCause(ctx)
	st.setCancel(cancel)
	return slots.start(st, func() {
		defer cancel(nil)
		switch {
		case truncated:
			s.refuse(st, http.StatusRequestHeaderFieldsTooLarge, "request headers larger than the limit", &req)
		case method != http.MethodConnect:
			s.refuse(st, http.StatusBadRequest, "expected method CONNECT, got "+method, &req)
		case extended:
			s.refuse(st, http.StatusBadRequest, "extended CONNECT (:protocol) is not HBONE", &req)
		default:
			auth, ok := ParseAuthority(authority)
			if !ok {
				s.refuse(st, http.StatusBadRequest, fmt.Sprintf("invalid authority %q", authority), &req)
				return
			}
			req.Authority = auth
			s.serveStream(sctx, st, &req)
		}
	})
}

// malformedRequest says why a request's header block is malformed (RFC 9113 §8.2–8.3), which
// is a stream error, or "" when it is well formed.
func malformedRequest(f *http2.MetaHeadersFrame) string {
	pseudo := map[string]bool{}
	for _, hf := range f.PseudoFields() {
		pseudo[hf.Name] = true
	}
	method := f.PseudoValue("method")
	switch {
	case !pseudo[":method"]:
		return "no :method"
	case pseudo[":status"]:
		return ":status in a request"
	case method == http.MethodConnect && !pseudo[":protocol"]:
		if !pseudo[":authority"] {
			return "CONNECT without :authority"
		}
		if pseudo[":scheme"] || pseudo[":path"] {
			return "CONNECT with :scheme or :path"
		}
	default:
		if !pseudo[":scheme"] || f.PseudoValue("path") == "" {
			return method + " without :scheme or :path"
		}
	}
	for _, hf := range f.RegularFields() {
		if connectionSpecific[hf.Name] && hf.Name != "host" {
			return "connection-specific header " + hf.Name
		}
		if hf.Name == "te" && hf.Value != "trailers" {
			return "te other than trailers"
		}
	}
	return ""
}

// refuse answers a request the handler never sees.
func (s *Server) refuse(st *h2Stream, status int, why string, req *Request) {
	s.log.Debug("hbone request refused", "src.identity", req.Peer.String(), "error", why)
	st.respond(status, nil)
}

// serveStream runs the handler for one CONNECT stream and, on 200, relays it.
func (s *Server) serveStream(ctx context.Context, st *h2Stream, req *Request) {
	resp := s.handler.ServeHBONE(ctx, req)
	done := resp.Done
	if done == nil {
		done = func(Result) {}
	}
	if resp.Status == http.StatusOK && resp.Upstream == nil {
		s.log.Error("hbone handler answered 200 without an upstream connection", "authority", req.Authority.String())
		resp.Status = http.StatusServiceUnavailable
	}
	if resp.Status != http.StatusOK {
		if resp.Upstream != nil {
			resp.Upstream.Close()
		}
		var err error
		if errors.Is(st.respond(resp.Status, resp.Header), ErrEarlyReset) {
			err = ErrEarlyReset
		}
		done(Result{Status: resp.Status, Err: err})
		return
	}
	if err := st.respond(http.StatusOK, resp.Header); err != nil {
		resp.Upstream.Close()
		st.Close()
		done(Result{Status: http.StatusOK, Err: err})
		return
	}
	// Both ways, half-close carried: the client's END_STREAM becomes CloseWrite on the
	// upstream and the upstream's EOF becomes END_STREAM; an error either way resets the
	// stream and closes the upstream.
	received, sent, err := Relay(&serverStream{h2Stream: st, req: req}, resp.Upstream)
	done(Result{Status: http.StatusOK, Received: received, Sent: sent, Err: err})
}

// respond sends the response HEADERS. Any status but 200 ends the stream; if the client has
// not ended its side, the stream is then reset with NO_ERROR (RFC 9113 §8.1). A stream the
// client already reset gets nothing (ErrEarlyReset).
func (st *h2Stream) respond(status int, h http.Header) error {
	fields := make([]hpack.HeaderField, 0, 1+len(h))
	fields = append(fields, hpack.HeaderField{Name: ":status", Value: strconv.Itoa(status)})
	for k, vs := range h {
		name := strings.ToLower(k)
		if !httpguts.ValidHeaderFieldName(name) || connectionSpecific[name] {
			continue
		}
		for _, v := range vs {
			fields = append(fields, hpack.HeaderField{Name: name, Value: v})
		}
	}
	if status == http.StatusOK {
		return st.writeResponse(fields, false)
	}
	err := st.writeResponse(fields, true)
	if errors.Is(err, ErrEarlyReset) {
		return err
	}
	st.c.mu.Lock()
	finished := st.recvEnd
	st.c.mu.Unlock()
	if !finished {
		st.c.queue(h2Ctrl{typ: http2.FrameRSTStream, id: st.id, val: uint32(http2.ErrCodeNo)})
		st.abort(errStreamReset)
	}
	return err
}

// serverStream is an accepted stream as the relay sees it: a net.Conn whose Read is the
// request body and whose Write is the response body.
type serverStream struct {
	*h2Stream
	req *Request
}

func (s *serverStream) LocalAddr() net.Addr              { return net.TCPAddrFromAddrPort(s.req.LocalAddr) }
func (s *serverStream) RemoteAddr() net.Addr             { return net.TCPAddrFromAddrPort(s.req.RemoteAddr) }
func (s *serverStream) SetDeadline(time.Time) error      { return errDeadline }
func (s *serverStream) SetReadDeadline(time.Time) error  { return errDeadline }
func (s *serverStream) SetWriteDeadline(time.Time) error { return errDeadline }

var _ net.Conn = (*serverStream)(nil)

// Shutdown stops accepting, sends GOAWAY on every connection, and waits for their streams to
// end; when ctx ends first it closes what is left and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeListeners()
	s.mu.Lock()
	for c := range s.h2conns {
		go c.shutdown() // GOAWAY; each closes after its last stream
	}
	s.mu.Unlock()
	idle := make(chan struct{})
	go func() { s.wg.Wait(); close(idle) }()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		s.Close()
		return ctx.Err()
	}
}

// Close closes the listeners and every connection at once.
func (s *Server) Close() error {
	s.closeListeners()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	return nil
}

func (s *Server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
}
