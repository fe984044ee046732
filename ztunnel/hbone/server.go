package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
)

// Istio ztunnel's server limits (reference/istio-ambient.md §1.1).
const (
	DefaultServerMaxStreams = 200      // max_concurrent_streams
	DefaultMaxHeaderList    = 64 << 10 // max_header_list_size

	// serverMaxFrameSize is the largest frame the server accepts. Istio's ztunnel says 1 MiB,
	// but Go's HTTP/2 client sizes each stream's request-body buffer from it (up to 512 KiB,
	// held while the stream lives), which made an idle proxied connection cost ~800 KB of
	// heap. Frame size is a local tuning, not part of the HBONE contract: peers must accept
	// whatever the other side advertises.
	serverMaxFrameSize      = 64 << 10
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
	hs      *http.Server // configuration and graceful shutdown for h2; never serves itself
	h2      *http2.Server
	hsTO    time.Duration

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
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
	pingEvery := orDefault(cfg.PingInterval, DefaultPingInterval)
	h2 := &http2.Server{
		MaxConcurrentStreams:         uint32(orDefault(int(cfg.MaxConcurrentStreams), DefaultServerMaxStreams)),
		MaxReadFrameSize:             serverMaxFrameSize,
		MaxUploadBufferPerConnection: ConnWindow,
		MaxUploadBufferPerStream:     StreamWindow,
		ReadIdleTimeout:              max(pingEvery, 0),
		PingTimeout:                  orDefault(cfg.PingTimeout, DefaultPingTimeout),
	}
	// x/net advertises MaxHeaderBytes plus 320 bytes of per-field overhead as
	// SETTINGS_MAX_HEADER_LIST_SIZE; take it off so the advertised value is the configured one.
	hs := &http.Server{
		MaxHeaderBytes: orDefault(cfg.MaxHeaderListSize, DefaultMaxHeaderList) - 320,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelDebug), // x/net's own messages
	}
	if err := http2.ConfigureServer(hs, h2); err != nil {
		return nil, fmt.Errorf("hbone: %w", err)
	}
	return &Server{
		log:       log,
		handler:   cfg.Handler,
		tls:       tlsConf,
		hs:        hs,
		h2:        h2,
		hsTO:      orDefault(cfg.HandshakeTimeout, DefaultHandshakeTimeout),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[net.Conn]struct{}),
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
	raw := &gatherConn{Conn: c}
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
	s.h2.ServeConn(newGatheringTLS(tc, raw), &http2.ServeConnOpts{
		Context:    ctx,
		BaseConfig: s.hs,
		Handler:    http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.serveStream(w, r, info) }),
	})
}

// serveStream answers one stream. x/net runs it in its own goroutine per stream.
func (s *Server) serveStream(w http.ResponseWriter, r *http.Request, conn *Request) {
	w.Header()["Date"] = nil // no Date header
	if r.Method != http.MethodConnect {
		s.log.Debug("hbone request refused", "src.identity", conn.Peer.String(), "error", "expected method CONNECT, got "+r.Method)
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	auth, ok := ParseAuthority(r.Host)
	if !ok {
		s.log.Debug("hbone request refused", "src.identity", conn.Peer.String(), "error", fmt.Sprintf("invalid authority %q", r.Host))
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	req := *conn
	req.Authority = auth
	req.Header = r.Header
	req.Forwarded = r.Header.Get(HeaderForwarded)
	req.Baggage = r.Header.Get(HeaderBaggage)
	req.Traceparent = r.Header.Get(HeaderTraceparent)

	resp := s.handler.ServeHBONE(r.Context(), &req)
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	done := resp.Done
	if done == nil {
		done = func(Result) {}
	}
	if resp.Status == http.StatusOK && resp.Upstream == nil {
		s.log.Error("hbone handler answered 200 without an upstream connection", "authority", r.Host)
		resp.Status = http.StatusServiceUnavailable
	}
	if resp.Status != http.StatusOK {
		if resp.Upstream != nil {
			resp.Upstream.Close()
		}
		w.WriteHeader(resp.Status)
		done(Result{Status: resp.Status})
		return
	}
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if err := rc.Flush(); err != nil {
		resp.Upstream.Close()
		done(Result{Status: http.StatusOK, Err: err})
		return
	}
	if abort := relayStream(&flushWriter{w: w, rc: rc}, r.Body, resp.Upstream, done); abort {
		panic(http.ErrAbortHandler) // RST_STREAM: the client sees an error, not a clean end
	}
}

// relayStream relays between an accepted stream and the upstream connection. The upstream to
// client direction runs here, in the handler's goroutine, because the response stream ends
// (END_STREAM) only when the handler returns; the client to upstream direction runs in its own
// goroutine. abort reports that the stream must be reset rather than ended cleanly.
//
// Half-close: the client's END_STREAM (EOF on body) becomes CloseWrite on up, and the response
// goes on until up reaches EOF. The other way round is limited by x/net's server: up's EOF
// ends the response, and as the handler returns x/net resets the request side
// (RST_STREAM NO_ERROR, RFC 9113 §8.1) if the client has not finished sending, so request
// bytes sent after that are dropped. A fully closed upstream (the common case) loses nothing.
func relayStream(down io.Writer, body io.ReadCloser, up net.Conn, done func(Result)) (abort bool) {
	recvDone := make(chan struct{})
	var received int64
	var recvErr error
	go func() {
		defer close(recvDone)
		received, recvErr = copyBuffer(up, body)
		if recvErr != nil {
			up.Close() // the client went away: stop the upstream to client direction too
			return
		}
		closeWrite(up)
	}()
	sent, sendErr := copyBuffer(down, up)
	if sendErr != nil {
		up.Close() // stop the client to upstream direction
	}
	// If the client to upstream direction already ended, its error (if any) came first.
	recvFirst := false
	select {
	case <-recvDone:
		recvFirst = true
	default:
	}
	go func() {
		<-recvDone // ends once the handler returns at the latest (x/net closes body then)
		up.Close()
		err := sendErr
		if recvFirst && recvErr != nil {
			err = recvErr
		}
		done(Result{Status: http.StatusOK, Received: received, Sent: sent, Err: err})
	}()
	return sendErr != nil
}

// flushWriter sends each write to the client at once.
type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f *flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = f.rc.Flush()
	}
	return n, err
}

// Shutdown stops accepting, sends GOAWAY on every connection, and waits for their streams to
// end; when ctx ends first it closes what is left and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeListeners()
	s.hs.Shutdown(ctx) // runs x/net's graceful shutdown of the connections it serves
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
