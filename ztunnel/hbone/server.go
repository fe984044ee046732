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
	// HandshakeTimeout bounds the TLS handshake (DefaultHandshakeTimeout when 0).
	HandshakeTimeout time.Duration
	// PingInterval and PingTimeout as in ClientConfig.
	PingInterval, PingTimeout time.Duration
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("hbone: server closed")

// Server terminates HBONE: TLS 1.3 with a verified SPIFFE client certificate, HTTP/2, and a
// Handler per CONNECT stream.
type Server struct {
	log     *slog.Logger
	handler Handler
	tls     *tls.Config
	h2      h2Settings
	hsTO    time.Duration

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
	return &Server{
		log:     log,
		handler: cfg.Handler,
		tls:     tlsConf,
		h2: h2Settings{
			maxStreams:    uint32(orDefault(int(cfg.MaxConcurrentStreams), DefaultServerMaxStreams)),
			streamWindow:  StreamWindow,
			connWindow:    ConnWindow,
			maxFrame:      MaxFrameSize,
			maxHeaderList: uint32(orDefault(cfg.MaxHeaderListSize, DefaultMaxHeaderList)),
			pingEvery:     orDefault(cfg.PingInterval, DefaultPingInterval),
			pingTimeout:   orDefault(cfg.PingTimeout, DefaultPingTimeout),
		},
		hsTO:      orDefault(cfg.HandshakeTimeout, DefaultHandshakeTimeout),
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
				s.log.Warn("hbone accept error; retrying", "error", err, "delay", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		go s.ServeConn(context.Background(), c)
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// ServeConn serves one accepted TCP connection: the TLS handshake, then HTTP/2 until the
// connection ends. It closes c.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) {
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

	remote, local := addrPortOf(c.RemoteAddr()), addrPortOf(c.LocalAddr())
	raw := &gatherConn{Conn: rawConn(c)}
	tc := tls.Server(raw, s.tls)
	hctx, cancel := context.WithTimeout(ctx, s.hsTO)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		// Istio logs its early denials as "connection failed" too.
		s.log.Warn("connection failed", "src.addr", remote.String(), "dst.addr", local.String(), "error", err)
		c.Close()
		return
	}
	cs := tc.ConnectionState()
	peer, err := PeerID(&cs)
	if err != nil { // cannot happen after VerifyPeerCertificate; be safe
		s.log.Warn("connection failed", "src.addr", remote.String(), "error", err)
		c.Close()
		return
	}
	if s.isClosed() { // shut down during the handshake: the GOAWAY broadcast missed this one
		c.Close()
		return
	}
	s.log.Debug("hbone connection accepted", "src.addr", remote.String(), "dst.addr", local.String(), "src.identity", peer.String())
	info := &Request{Peer: peer, RemoteAddr: remote, LocalAddr: local, TLS: &cs}
	s.serveHTTP2(ctx, newGatheringTLS(tc, raw), c, info)
}

// serveHTTP2 serves HTTP/2 on nc (raw is the connection under it) until it ends; info is
// what every stream's Request starts from.
func (s *Server) serveHTTP2(ctx context.Context, nc, raw net.Conn, info *Request) {
	h2 := newH2Conn(s.log, nc, raw, false, s.h2)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	h2.onStream = func(st *h2Stream, f *http2.MetaHeadersFrame) { s.startStream(sctx, st, f, info) }
	nc.SetReadDeadline(time.Now().Add(s.hsTO))
	if err := h2.readPreface(); err != nil {
		s.log.Warn("connection failed", "src.addr", info.RemoteAddr.String(), "src.identity", info.Peer.String(), "error", err)
		h2.lingerClose(err)
		return
	}
	nc.SetReadDeadline(time.Time{})
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
// Framer reuses them), and the stream is answered in its own goroutine.
func (s *Server) startStream(ctx context.Context, st *h2Stream, f *http2.MetaHeadersFrame, conn *Request) {
	if why := malformedRequest(f); why != "" {
		s.log.Debug("hbone request refused", "src.identity", conn.Peer.String(), "error", "malformed request: "+why)
		st.c.queueAsync(h2Ctrl{typ: http2.FrameRSTStream, id: st.id, val: uint32(http2.ErrCodeProtocol)})
		st.abort(errStreamReset)
		return
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
	sctx, cancel := context.WithCancel(ctx)
	st.setCancel(cancel)
	go func() {
		defer cancel()
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
	}()
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
		st.respond(resp.Status, resp.Header)
		done(Result{Status: resp.Status})
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
// not ended its side, the stream is then reset with NO_ERROR (RFC 9113 §8.1).
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
