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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"
)

// Istio ztunnel's HTTP/2 and pool settings (reference/istio-ambient.md §1.1, §1.6).
const (
	DefaultMaxStreamsPerConn = 100              // POOL_MAX_STREAMS_PER_CONNECTION
	DefaultIdleTimeout       = 5 * time.Minute  // POOL_UNUSED_RELEASE_TIMEOUT
	DefaultPingInterval      = 10 * time.Second // PING after this long without a frame received
	DefaultPingTimeout       = 20 * time.Second // close the connection when the PING is not answered
	StreamWindow             = 4 << 20          // HTTP2_STREAM_WINDOW_SIZE
	ConnWindow               = 16 << 20         // HTTP2_CONNECTION_WINDOW_SIZE
	MaxFrameSize             = 1 << 20          // HTTP2_FRAME_SIZE
)

// ClientConfig configures a Client. Bundle is required; zero values mean Istio's defaults.
type ClientConfig struct {
	Logger *slog.Logger // nil: no logs
	// Bundle holds the roots that servers' certificates must chain to.
	Bundle x509bundle.Source
	// DialContext opens the TCP connections (a net.Dialer when nil).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// MaxStreamsPerConn is how many streams a pooled connection carries before another
	// connection to the same key is opened (DefaultMaxStreamsPerConn when ≤ 0).
	MaxStreamsPerConn int
	// IdleTimeout closes a connection that has had no stream for this long (DefaultIdleTimeout
	// when 0; negative: never).
	IdleTimeout time.Duration
	// PingInterval and PingTimeout: a PING is sent after PingInterval without any frame
	// received, and the connection is closed when it is not answered within PingTimeout
	// (DefaultPingInterval and DefaultPingTimeout when 0; a negative PingInterval: no PINGs).
	PingInterval, PingTimeout time.Duration

	// Limits against a hostile server (README "Limits"); 0 means the default.

	// ConnectTimeout bounds a Dial when its context has no earlier deadline: the TCP and TLS
	// handshakes and the wait for the CONNECT's answer (DefaultConnectTimeout; negative: only
	// the context).
	ConnectTimeout time.Duration
	// WriteTimeout: a socket write that makes no progress for this long fails, which closes
	// the connection (DefaultWriteTimeout; negative: none).
	WriteTimeout time.Duration
	// MaxQueuedControlFrames: control frames waiting to be written beyond this close the
	// connection (DefaultMaxQueuedControlFrames).
	MaxQueuedControlFrames int
	// MaxHeaderListSize is the SETTINGS_MAX_HEADER_LIST_SIZE: a response whose header list is
	// larger resets its stream (DefaultMaxHeaderList).
	MaxHeaderListSize int
}

// Client opens HBONE streams over pooled mutual-TLS HTTP/2 connections. It is safe for
// concurrent use.
type Client struct {
	bundle    x509bundle.Source
	dial      func(ctx context.Context, network, addr string) (net.Conn, error)
	pool      *pool
	connectTO time.Duration // 0: none
	writeTO   time.Duration // 0: none
}

// NewClient returns a Client; Close it to close its connections.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.Bundle == nil {
		return nil, errors.New("hbone: ClientConfig.Bundle is required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dial := cfg.DialContext
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	maxStreams := cfg.MaxStreamsPerConn
	if maxStreams <= 0 {
		maxStreams = DefaultMaxStreamsPerConn
	}
	return &Client{
		bundle:    cfg.Bundle,
		dial:      dial,
		connectTO: max(orDefault(cfg.ConnectTimeout, DefaultConnectTimeout), 0),
		writeTO:   max(orDefault(cfg.WriteTimeout, DefaultWriteTimeout), 0),
		pool: &pool{
			log:        log,
			maxStreams: maxStreams,
			settings: h2Settings{
				streamWindow:  StreamWindow,
				connWindow:    ConnWindow,
				maxFrame:      MaxFrameSize,
				maxHeaderList: uint32(positiveOr(cfg.MaxHeaderListSize, DefaultMaxHeaderList)),
				pingEvery:     orDefault(cfg.PingInterval, DefaultPingInterval),
				pingTimeout:   orDefault(cfg.PingTimeout, DefaultPingTimeout),
				idle:          orDefault(cfg.IdleTimeout, DefaultIdleTimeout),
				maxCtrl:       positiveOr(cfg.MaxQueuedControlFrames, DefaultMaxQueuedControlFrames),
			},
			conns:   make(map[poolKey][]*poolConn),
			dialing: make(map[poolKey]chan struct{}),
		},
	}, nil
}

func orDefault[T int | float64 | time.Duration](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// positiveOr is v, or def when v ≤ 0: for counts, which cannot be turned off.
func positiveOr(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// Target says where and how to open one HBONE stream.
type Target struct {
	// Source is the SVID of the source workload: the client certificate, and (its ID) part of
	// the pool key. Required.
	Source *x509svid.SVID
	// Address is where the TCP connection goes: the destination's HBONE address (podIP:15008,
	// or the waypoint's). Required.
	Address netip.AddrPort
	// Identities are the SPIFFE IDs the server may present; any one of them is accepted.
	// Required.
	Identities []spiffeid.ID
	// Authority is the :authority of the CONNECT: "podIP:port", "VIP:port" for a waypoint, or
	// "hostname:port". Required.
	Authority string
	// SourceAddr, when valid, is sent as forwarded: for="<SourceAddr>".
	SourceAddr netip.AddrPort
	// Host, when set with SourceAddr, is appended to forwarded as ;host=<Host> (the service
	// hostname when the connection was addressed to a service).
	Host string
	// Baggage, when set, is sent as the baggage header (k8s.namespace.name=..., ...).
	Baggage []KeyValue
	// Traceparent is sent as is; a random one (NewTraceparent) when empty.
	Traceparent string
	// Header holds extra request headers (e.g. X-Forwarded-Network), may be nil.
	Header http.Header
}

// StatusError is a CONNECT answered with a status other than 200.
type StatusError struct{ Code int }

func (e StatusError) Error() string {
	return fmt.Sprintf("http status: %d %s", e.Code, http.StatusText(e.Code))
}

// Dial opens an HBONE stream to t: it takes a pooled connection for t's key (or opens one:
// TCP, TLS 1.3 with t.Source's certificate, the server verified against t.Identities), sends
// the CONNECT and waits for the answer. A status other than 200 is returned as a StatusError
// (errors.As). ctx bounds the dial and the CONNECT only, not the stream's life; so does
// ClientConfig.ConnectTimeout.
func (c *Client) Dial(ctx context.Context, t Target) (*Conn, error) {
	if t.Source == nil || !t.Address.IsValid() || t.Authority == "" {
		return nil, errors.New("hbone: Target needs Source, Address and Authority")
	}
	if c.connectTO > 0 {
		if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > c.connectTO {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, c.connectTO)
			defer cancel()
		}
	}
	tlsConf, err := ClientTLSConfig(t.Source, c.bundle, t.Identities)
	if err != nil {
		return nil, err
	}
	addr := t.Address.String()
	dial := func(ctx context.Context) (*tls.Conn, error) {
		raw, err := c.dial(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		g := &gatherConn{Conn: rawConn(raw)}
		g.setWriteTimeout(c.writeTO)
		tc := tls.Client(g, tlsConf)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		return tc, nil
	}
	key := newPoolKey(t.Source.ID, t.Identities, t.Address)
	for attempt := 0; ; attempt++ {
		pc, reused, err := c.pool.get(ctx, key, dial)
		if err != nil {
			return nil, fmt.Errorf("hbone: dial %s: %w", addr, err)
		}
		conn, err := c.connect(ctx, pc, &t)
		if err == nil {
			return conn, nil
		}
		c.pool.put(pc)
		// A pooled connection may have died (GOAWAY, peer gone) just before this stream, or
		// the server may have refused it: try once more, on whatever the pool has then.
		if reused && attempt == 0 && ctx.Err() == nil && errors.Is(err, errRefused) {
			continue
		}
		return nil, fmt.Errorf("hbone: CONNECT %s via %s: %w", t.Authority, addr, err)
	}
}

func (c *Client) connect(ctx context.Context, pc *poolConn, t *Target) (*Conn, error) {
	fields := make([]hpack.HeaderField, 0, 5+len(t.Header))
	fields = append(fields,
		hpack.HeaderField{Name: ":method", Value: http.MethodConnect},
		hpack.HeaderField{Name: ":authority", Value: t.Authority})
	if t.SourceAddr.IsValid() {
		fields = append(fields, hpack.HeaderField{Name: "forwarded", Value: forwardedValue(t.SourceAddr, t.Host)})
	}
	if len(t.Baggage) > 0 {
		fields = append(fields, hpack.HeaderField{Name: "baggage", Value: BaggageValue(t.Baggage)})
	}
	tp := t.Traceparent
	if tp == "" {
		tp = NewTraceparent()
	}
	fields = append(fields, hpack.HeaderField{Name: "traceparent", Value: tp})
	for k, vs := range t.Header {
		name := strings.ToLower(k)
		if !httpguts.ValidHeaderFieldName(name) || connectionSpecific[name] || name == "forwarded" || name == "baggage" || name == "traceparent" {
			continue
		}
		for _, v := range vs {
			fields = append(fields, hpack.HeaderField{Name: name, Value: v})
		}
	}

	s, err := pc.h2.openStream(fields)
	if err != nil {
		return nil, err
	}
	select {
	case <-s.ready:
	case <-ctx.Done():
		s.Close() // RST_STREAM: the server's handler sees its context end
		return nil, context.Cause(ctx)
	}
	s.mu.Lock()
	status, rerr := s.status, s.rerr
	s.mu.Unlock()
	if status == 0 { // no answer: reset, or the connection went
		s.Close()
		return nil, rerr
	}
	if status != http.StatusOK {
		s.Close()
		return nil, StatusError{Code: status}
	}
	h := make(http.Header, len(s.header))
	for _, f := range s.header {
		k := http.CanonicalHeaderKey(f.Name)
		h[k] = append(h[k], f.Value)
	}
	return &Conn{pool: c.pool, pc: pc, s: s, header: h}, nil
}

// connectionSpecific are the headers HTTP/2 forbids (RFC 9113 §8.2.2); a Target's extra
// headers never carry them.
var connectionSpecific = map[string]bool{
	"connection": true, "proxy-connection": true, "keep-alive": true, "transfer-encoding": true,
	"upgrade": true, "te": true, "host": true,
}

// Close closes every pooled connection, aborting their streams; Dial fails afterwards.
func (c *Client) Close() error {
	c.pool.close()
	return nil
}

// Conns is the number of HTTP/2 connections in the pool.
func (c *Client) Conns() int { return c.pool.size() }

// Conn is one HBONE stream: what the client writes is the CONNECT's request body, what it
// reads is the response body. CloseWrite ends the request body (the server half-closes its
// upstream connection); Close aborts what is left of the stream and must always be called.
// Deadlines are not supported (the Set*Deadline methods return an error): to bound a stream,
// Close it. Reads and writes may run concurrently with each other.
type Conn struct {
	pool   *pool
	pc     *poolConn
	s      *h2Stream
	header http.Header

	sent      atomic.Int64
	closeOnce sync.Once
}

var errDeadline = fmt.Errorf("hbone: stream deadlines: %w", errors.ErrUnsupported)

func (c *Conn) Read(p []byte) (int, error) { return c.s.Read(p) }

func (c *Conn) Write(p []byte) (int, error) {
	n, err := c.s.Write(p)
	c.sent.Add(int64(n))
	return n, err
}

// CloseWrite ends the request body: END_STREAM, seen by the server as EOF.
func (c *Conn) CloseWrite() error { return c.s.CloseWrite() }

// Close ends the stream (RST_STREAM when it is not finished both ways) and gives its slot back
// to the pool. It does not close the pooled connection.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.s.Close()
		c.pool.put(c.pc)
	})
	return nil
}

// BytesSent is the number of bytes written to the stream so far.
func (c *Conn) BytesSent() int64 { return c.sent.Load() }

// BytesReceived is the number of bytes read from the stream so far.
func (c *Conn) BytesReceived() int64 {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	return c.s.received
}

// PeerID is the verified SPIFFE ID of the server.
func (c *Conn) PeerID() spiffeid.ID { return c.pc.peer }

// ResponseHeader is the header of the CONNECT's 200 answer (e.g. the destination's baggage).
func (c *Conn) ResponseHeader() http.Header { return c.header }

// ConnectionState is the TLS state of the connection that carries the stream.
func (c *Conn) ConnectionState() tls.ConnectionState { return c.pc.tls.ConnectionState() }

// LocalAddr is the local address of the TCP connection that carries the stream.
func (c *Conn) LocalAddr() net.Addr { return c.pc.tls.LocalAddr() }

// RemoteAddr is the HBONE server's address.
func (c *Conn) RemoteAddr() net.Addr { return c.pc.tls.RemoteAddr() }

func (c *Conn) SetDeadline(time.Time) error      { return errDeadline }
func (c *Conn) SetReadDeadline(time.Time) error  { return errDeadline }
func (c *Conn) SetWriteDeadline(time.Time) error { return errDeadline }

var _ net.Conn = (*Conn)(nil)
