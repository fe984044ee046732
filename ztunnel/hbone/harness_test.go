package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
)

// wait is how long a test waits for an event before failing; it never paces a test.
const wait = 10 * time.Second

func testLogger() *slog.Logger {
	if os.Getenv("HBONE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// logRecorder is a slog.Handler that passes each record on as "message: error".
type logRecorder struct {
	ch   chan string
	next slog.Handler
}

func newLogRecorder() *logRecorder {
	return &logRecorder{ch: make(chan string, 256), next: testLogger().Handler()}
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (l *logRecorder) Handle(ctx context.Context, r slog.Record) error {
	s := r.Message
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "error" {
			s += ": " + a.Value.String()
		}
		return true
	})
	select {
	case l.ch <- s:
	default:
	}
	return l.next.Handle(ctx, r)
}

func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

// await waits for a record that contains all of parts.
func (l *logRecorder) await(t testing.TB, parts ...string) string {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case s := <-l.ch:
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(s, p)
			}
			if ok {
				return s
			}
		case <-deadline:
			t.Fatalf("no log record with %q", parts)
		}
	}
}

// countingListener counts and keeps the connections it accepts.
type countingListener struct {
	net.Listener
	onAccept func(net.Conn) // when set, called with each accepted connection (socket options)
	mu       sync.Mutex
	conns    []net.Conn
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		if l.onAccept != nil {
			l.onAccept(c)
		}
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *countingListener) accepted() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

func (l *countingListener) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
}

func listen(t testing.TB) *countingListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return &countingListener{Listener: ln}
}

func addrOf(l net.Listener) netip.AddrPort { return l.Addr().(*net.TCPAddr).AddrPort() }

// upstream is a loopback TCP server standing for the destination application.
type upstream struct {
	ln   *countingListener
	addr netip.AddrPort
}

// newUpstream serves each connection with serve, in its own goroutine.
func newUpstream(t testing.TB, serve func(c *net.TCPConn)) *upstream {
	ln := listen(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c.(*net.TCPConn))
			}()
		}
	}()
	return &upstream{ln: ln, addr: addrOf(ln)}
}

// echo copies back what it reads, and half-closes when the client does. (Through a buffer:
// io.Copy would splice the socket into itself.)
func echo(c *net.TCPConn) {
	copyBuffer(c, c)
	c.CloseWrite()
}

// upperAfterEOF reads everything, then answers it in upper case and closes.
func upperAfterEOF(c *net.TCPConn) {
	b, _ := io.ReadAll(c)
	for i, x := range b {
		if 'a' <= x && x <= 'z' {
			b[i] = x - 'a' + 'A'
		}
	}
	c.Write(b)
}

// env is an HBONE server in front of upstreams, a CA, and SVIDs for both sides.
type env struct {
	t          testing.TB
	ca         *testCA
	bundle     *x509bundle.Bundle
	serverSVID *x509svid.SVID
	clientSVID *x509svid.SVID
	srv        *Server
	ln         *countingListener
	addr       netip.AddrPort

	serverLog *logRecorder
	handled   atomic.Int32 // Handler calls
	requests  chan *Request
	results   chan Result
	// status, when set, makes the default handler answer it without dialling.
	status func(*Request) int
}

type envOpts struct {
	ca       *testCA             // issues the server's and the client's SVIDs (a new CA when nil)
	server   func(*ServerConfig) // adjusts the server's configuration
	handler  Handler             // replaces the default (dial the authority, 503 on failure)
	status   func(*Request) int
	onAccept func(net.Conn) // called with each connection the server's listener accepts
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	ca := o.ca
	if ca == nil {
		ca = newTestCA(t, "cluster.local")
	}
	e := &env{
		t:          t,
		ca:         ca,
		bundle:     ca.bundle(),
		serverSVID: ca.svid(t, "cluster.local/ns/server/sa/server", leafOpts{}),
		clientSVID: ca.svid(t, "cluster.local/ns/client/sa/client", leafOpts{}),
		serverLog:  newLogRecorder(),
		requests:   make(chan *Request, 64),
		results:    make(chan Result, 64),
		status:     o.status,
	}
	h := o.handler
	if h == nil {
		h = HandlerFunc(e.dialHandler)
	}
	cfg := ServerConfig{
		Logger:       slog.New(e.serverLog),
		Bundle:       e.bundle,
		TrustDomains: []spiffeid.TrustDomain{ca.td},
		GetCertificate: func(netip.Addr) (*x509svid.SVID, error) {
			return e.serverSVID, nil
		},
		Handler: HandlerFunc(func(ctx context.Context, req *Request) Response {
			e.handled.Add(1)
			select {
			case e.requests <- req:
			default:
			}
			return h.ServeHBONE(ctx, req)
		}),
	}
	if o.server != nil {
		o.server(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	e.ln = listen(t)
	e.ln.onAccept = o.onAccept
	e.addr = addrOf(e.ln)
	go srv.Serve(e.ln)
	t.Cleanup(func() { srv.Close() })
	return e
}

func (e *env) dialHandler(ctx context.Context, req *Request) Response {
	done := func(r Result) { // never blocks a handler: results nobody waits for are dropped
		select {
		case e.results <- r:
		default:
		}
	}
	if e.status != nil {
		if s := e.status(req); s != 0 {
			return Response{Status: s, Done: done}
		}
	}
	var d net.Dialer
	up, err := d.DialContext(ctx, "tcp", req.Authority.String())
	if err != nil {
		return Response{Status: http.StatusServiceUnavailable, Done: done}
	}
	return Response{Status: http.StatusOK, Upstream: up, Done: done,
		Header: http.Header{"Baggage": {"k8s.namespace.name=server"}}}
}

// dialTracker wraps the client's dialer: it counts dials and reports each client-side close.
type dialTracker struct {
	dialed atomic.Int32
	closed chan struct{} // one value per closed connection
}

type trackedNetConn struct {
	net.Conn
	once sync.Once
	dt   *dialTracker
}

func (c *trackedNetConn) Close() error {
	c.once.Do(func() { c.dt.closed <- struct{}{} })
	return c.Conn.Close()
}

func (dt *dialTracker) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	dt.dialed.Add(1)
	return &trackedNetConn{Conn: c, dt: dt}, nil
}

// waitClosed waits for one client-side connection close.
func (dt *dialTracker) waitClosed(t testing.TB) {
	t.Helper()
	select {
	case <-dt.closed:
	case <-time.After(wait):
		t.Fatal("timed out waiting for a pooled connection to close")
	}
}

// client is a Client trusting e's CA, with its dials tracked.
func (e *env) client(cfg ClientConfig) (*Client, *dialTracker) {
	e.t.Helper()
	dt := &dialTracker{closed: make(chan struct{}, 64)}
	cfg.Logger = testLogger()
	if cfg.Bundle == nil {
		cfg.Bundle = e.bundle
	}
	cfg.DialContext = dt.dial
	c, err := NewClient(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c, dt
}

// target is a stream from the client identity to up through e's server.
func (e *env) target(up netip.AddrPort) Target {
	return Target{
		Source:     e.clientSVID,
		Address:    e.addr,
		Identities: []spiffeid.ID{e.serverSVID.ID},
		Authority:  up.String(),
		SourceAddr: netip.MustParseAddrPort("10.0.0.1:41234"),
		Host:       "echo.default.svc.cluster.local",
		Baggage:    []KeyValue{{"k8s.namespace.name", "client"}, {"service.name", "client app"}},
	}
}

func (e *env) dial(c *Client, t Target) *Conn {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	conn, err := c.Dial(ctx, t)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	return conn
}

func (e *env) result() Result {
	e.t.Helper()
	select {
	case r := <-e.results:
		return r
	case <-time.After(wait):
		e.t.Fatal("timed out waiting for the stream's Result")
	}
	return Result{}
}

// dialTLS opens a TLS connection to e's server with the client's certificate, closed when the
// test ends.
func dialTLS(t *testing.T, e *env) *tls.Conn {
	t.Helper()
	conf, err := ClientTLSConfig(e.clientSVID, e.bundle, []spiffeid.ID{e.serverSVID.ID})
	if err != nil {
		t.Fatal(err)
	}
	tc, err := tls.Dial("tcp", e.addr.String(), conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	return tc
}

// dialPreface opens a TLS connection to e's server with the client's certificate, bounded by
// the test's wait, and sends the HTTP/2 client preface: the start of a hand-driven client.
func dialPreface(t *testing.T, e *env) *tls.Conn {
	t.Helper()
	tc := dialTLS(t, e)
	tc.SetDeadline(time.Now().Add(wait)) // bounds every read and write of the test
	if _, err := io.WriteString(tc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	return tc
}

// echoThrough writes payload to conn and ends its side, concurrently reading everything back
// until EOF, and returns what was read.
func echoThrough(t *testing.T, conn *Conn, payload []byte) []byte {
	t.Helper()
	werr := make(chan error, 1)
	go func() {
		_, err := conn.Write(payload)
		if err == nil {
			err = conn.CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read %d bytes, then %v", len(got), err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	return got
}

// dialErr dials and expects an error.
func dialErr(t testing.TB, c *Client, tg Target) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	conn, err := c.Dial(ctx, tg)
	if err == nil {
		conn.Close()
		t.Fatal("Dial succeeded, want an error")
	}
	return err
}

func statusOf(err error) int {
	var se StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}
