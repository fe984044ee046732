package socks5

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/proxy"
)

// testTimeout bounds every blocking step of a test so that a bug fails it instead of hanging it.
const testTimeout = 5 * time.Second

// startServer serves srv on 127.0.0.1:0 and returns its address; the server is closed at cleanup.
func startServer(t *testing.T, srv *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return ln.Addr().String()
}

// startEcho runs a TCP echo server on 127.0.0.1:0.
func startEcho(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// dialHandler is the proxy's shape with a plain TCP dial in place of HBONE: dial → reply → copy.
// Each request it serves is sent on reqs.
type dialHandler struct {
	reqs chan Request
}

func (h *dialHandler) ServeSOCKS5(ctx context.Context, req *Request) error {
	if h.reqs != nil {
		h.reqs <- *req
	}
	d := net.Dialer{Timeout: testTimeout}
	up, err := d.DialContext(ctx, "tcp", req.Dest.String())
	if err != nil {
		return err
	}
	defer up.Close()
	client, err := req.Accept(up.LocalAddr().(*net.TCPAddr).AddrPort())
	if err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		io.Copy(up, client)
		up.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(client, up)
	<-done
	return nil
}

// socksDial connects to target through the SOCKS5 server at addr with golang.org/x/net/proxy.
func socksDial(t *testing.T, addr, target string) (net.Conn, error) {
	t.Helper()
	d, err := proxy.SOCKS5("tcp", addr, nil, &net.Dialer{Timeout: testTimeout})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	return d.(proxy.ContextDialer).DialContext(ctx, "tcp", target)
}

// roundTrip writes msg and reads the same number of bytes back.
func roundTrip(t *testing.T, c net.Conn, msg string) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(testTimeout))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	return string(buf)
}

func TestConnectIPv4(t *testing.T) {
	echo := startEcho(t)
	h := &dialHandler{reqs: make(chan Request, 1)}
	addr := startServer(t, &Server{Handler: h})

	c, err := socksDial(t, addr, echo.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := roundTrip(t, c, "hello through socks"); got != "hello through socks" {
		t.Fatalf("echo = %q", got)
	}
	req := <-h.reqs
	if req.Dest != echo || req.Hostname != "" {
		t.Errorf("request = dest %v hostname %q, want %v and no hostname", req.Dest, req.Hostname, echo)
	}
	// The client's address the handler sees is the client's end of the TCP connection.
	if want := c.LocalAddr().(*net.TCPAddr).AddrPort(); req.Client != want {
		t.Errorf("request client = %v, want %v", req.Client, want)
	}
}

type fakeResolver struct {
	mu    sync.Mutex
	names map[string]netip.Addr
	asked []string
}

func (f *fakeResolver) Resolve(_ context.Context, name string) (netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, name)
	if a, ok := f.names[name]; ok {
		return a, nil
	}
	return netip.Addr{}, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

func TestConnectDomainThroughResolver(t *testing.T) {
	echo := startEcho(t)
	const name = "handson.handson.svc.cluster.local"
	res := &fakeResolver{names: map[string]netip.Addr{name: echo.Addr(), "handson": echo.Addr()}}
	h := &dialHandler{reqs: make(chan Request, 2)}
	addr := startServer(t, &Server{Handler: h, Resolver: res})

	for _, host := range []string{name, "handson"} {
		target := net.JoinHostPort(host, fmt.Sprint(echo.Port()))
		c, err := socksDial(t, addr, target)
		if err != nil {
			t.Fatalf("%s: %v", target, err)
		}
		if got := roundTrip(t, c, "ping "+host); got != "ping "+host {
			t.Fatalf("%s: echo = %q", target, got)
		}
		c.Close()
		req := <-h.reqs
		if req.Dest != echo || req.Hostname != host {
			t.Errorf("%s: request = dest %v hostname %q, want %v and %q", target, req.Dest, req.Hostname, echo, host)
		}
	}
	if strings.Join(res.asked, ",") != name+",handson" {
		t.Errorf("resolver was asked %q", res.asked)
	}
}

func TestUnknownDomainFails(t *testing.T) {
	called := make(chan struct{}, 1)
	h := HandlerFunc(func(context.Context, *Request) error { called <- struct{}{}; return nil })
	addr := startServer(t, &Server{Handler: h, Resolver: &fakeResolver{}})

	c, err := socksDial(t, addr, "nowhere.invalid:80")
	if err == nil {
		c.Close()
		t.Fatal("dial through socks succeeded for an unknown name")
	}
	if !strings.Contains(err.Error(), ReplyHostUnreachable.String()) {
		t.Errorf("error = %v, want it to say %q", err, ReplyHostUnreachable)
	}
	select {
	case <-called:
		t.Error("handler was called for a name that did not resolve")
	default:
	}
}

// rawClient speaks the protocol byte by byte, for what golang.org/x/net/proxy never sends.
type rawClient struct {
	t *testing.T
	net.Conn
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(testTimeout))
	t.Cleanup(func() { c.Close() })
	return &rawClient{t, c}
}

func (r *rawClient) send(b ...byte) {
	r.t.Helper()
	if _, err := r.Write(b); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rawClient) expect(want ...byte) {
	r.t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(r, got); err != nil {
		r.t.Fatalf("reading %d bytes: %v", len(want), err)
	}
	if !bytes.Equal(got, want) {
		r.t.Fatalf("read % x, want % x", got, want)
	}
}

// expectClosed waits for the server to close the connection (EOF), not for a deadline.
func (r *rawClient) expectClosed() {
	r.t.Helper()
	n, err := r.Read(make([]byte, 1))
	if n != 0 || !errors.Is(err, io.EOF) {
		r.t.Fatalf("read %d bytes, error %v; want EOF (server closed the connection)", n, err)
	}
}

func TestIPv6Request(t *testing.T) {
	reqs := make(chan Request, 1)
	h := HandlerFunc(func(_ context.Context, req *Request) error {
		reqs <- *req
		c, err := req.Accept(netip.MustParseAddrPort("[2001:db8::1]:15008"))
		if err != nil {
			return err
		}
		_, err = c.Write([]byte("ok"))
		return err
	})
	addr := startServer(t, &Server{Handler: h})

	c := dialRaw(t, addr)
	c.send(5, 1, 0)
	c.expect(5, 0)
	dst := netip.MustParseAddr("2001:db8::2").As16()
	c.send(append(append([]byte{5, 1, 0, 4}, dst[:]...), 0x1f, 0x90)...)
	bound := netip.MustParseAddr("2001:db8::1").As16()
	c.expect(append(append([]byte{5, 0, 0, 4}, bound[:]...), 0x3a, 0xa0)...) // port 15008
	c.expect('o', 'k')
	c.expectClosed()
	if req := <-reqs; req.Dest != netip.MustParseAddrPort("[2001:db8::2]:8080") || req.Hostname != "" {
		t.Errorf("request = dest %v hostname %q", req.Dest, req.Hostname)
	}
}

func TestUnsupportedCommand(t *testing.T) {
	h := HandlerFunc(func(context.Context, *Request) error { t.Error("handler called for BIND"); return nil })
	addr := startServer(t, &Server{Handler: h})

	for _, cmd := range []byte{0x02 /* BIND */, 0x03 /* UDP ASSOCIATE */} {
		c := dialRaw(t, addr)
		c.send(5, 1, 0)
		c.expect(5, 0)
		c.send(5, cmd, 0, 1, 127, 0, 0, 1, 0, 80)
		c.expect(5, byte(ReplyCommandNotSupported), 0, 1, 0, 0, 0, 0, 0, 0)
		c.expectClosed()
	}
}

func TestUnsupportedAddressType(t *testing.T) {
	addr := startServer(t, &Server{Handler: &dialHandler{}})
	c := dialRaw(t, addr)
	c.send(5, 1, 0)
	c.expect(5, 0)
	c.send(5, 1, 0, 9)
	c.expect(5, byte(ReplyAddressTypeNotSupported), 0, 1, 0, 0, 0, 0, 0, 0)
	c.expectClosed()
}

func TestNoAcceptableAuthMethod(t *testing.T) {
	addr := startServer(t, &Server{Handler: &dialHandler{}})
	for _, methods := range [][]byte{{0x02} /* username/password */, {0x01, 0x02} /* GSSAPI too */, {}} {
		c := dialRaw(t, addr)
		c.send(append([]byte{5, byte(len(methods))}, methods...)...)
		c.expect(5, 0xFF)
		c.expectClosed()
	}
}

func TestNotSOCKS5(t *testing.T) {
	addr := startServer(t, &Server{Handler: &dialHandler{}})
	c := dialRaw(t, addr)
	c.send(4, 1, 0, 80, 127, 0, 0, 1, 0) // SOCKS4 CONNECT
	// The server closes without answering; the bytes it did not read turn the close into a reset.
	n, err := c.Read(make([]byte, 1))
	if n != 0 || !(errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		t.Fatalf("read %d bytes, error %v; want the connection closed", n, err)
	}
}

func TestHandlerErrorMapping(t *testing.T) {
	// A port nobody listens on, for a real "connection refused".
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := ln.Addr().String()
	ln.Close()

	sysErr := func(e syscall.Errno) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: e}}
	}
	cases := []struct {
		name string
		err  func() error
		want Reply
	}{
		{"real connection refused", func() error {
			_, err := net.DialTimeout("tcp", closedPort, testTimeout)
			return err
		}, ReplyConnectionRefused},
		{"host unreachable", func() error { return sysErr(syscall.EHOSTUNREACH) }, ReplyHostUnreachable},
		{"network unreachable", func() error { return sysErr(syscall.ENETUNREACH) }, ReplyNetworkUnreachable},
		{"denied by policy", func() error {
			return fmt.Errorf("hbone: %w", WithReply(ReplyNotAllowed, errors.New("http status: 401 Unauthorized")))
		}, ReplyNotAllowed},
		{"sentinel not allowed", func() error { return ErrNotAllowed }, ReplyNotAllowed},
		{"timeout", func() error { return context.DeadlineExceeded }, ReplyHostUnreachable},
		{"anything else", func() error { return errors.New("boom") }, ReplyGeneralFailure},
		{"no answer at all", func() error { return nil }, ReplyGeneralFailure},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := HandlerFunc(func(context.Context, *Request) error { return tc.err() })
			addr := startServer(t, &Server{Handler: h})
			c, err := socksDial(t, addr, "127.0.0.1:9")
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			if want := "unknown error " + tc.want.String(); !strings.Contains(err.Error(), want) {
				t.Errorf("client error = %q, want %q", err, want)
			}
		})
	}
}

func TestReplyFor(t *testing.T) {
	cases := []struct {
		err  error
		want Reply
	}{
		{nil, ReplySucceeded},
		{syscall.ECONNREFUSED, ReplyConnectionRefused},
		{fmt.Errorf("dial: %w", syscall.EHOSTUNREACH), ReplyHostUnreachable},
		{syscall.ENETUNREACH, ReplyNetworkUnreachable},
		{os.ErrDeadlineExceeded, ReplyHostUnreachable},
		{&net.DNSError{Err: "no such host", Name: "x"}, ReplyHostUnreachable},
		{ErrConnectionRefused, ReplyConnectionRefused},
		{ErrNetworkUnreachable, ReplyNetworkUnreachable},
		{ErrHostUnreachable, ReplyHostUnreachable},
		{ErrGeneralFailure, ReplyGeneralFailure},
		// An explicit code beats what the cause would map to.
		{WithReply(ReplyNotAllowed, syscall.ECONNREFUSED), ReplyNotAllowed},
		{io.ErrUnexpectedEOF, ReplyGeneralFailure},
	}
	for _, tc := range cases {
		if got := ReplyFor(tc.err); got != tc.want {
			t.Errorf("ReplyFor(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestHandshakeTimeout(t *testing.T) {
	h := HandlerFunc(func(context.Context, *Request) error { t.Error("handler called"); return nil })
	addr := startServer(t, &Server{Handler: h, HandshakeTimeout: 20 * time.Millisecond})

	// A client that sends nothing at all.
	dialRaw(t, addr).expectClosed()

	// A client that stops after the greeting.
	c := dialRaw(t, addr)
	c.send(5, 1, 0)
	c.expect(5, 0)
	c.expectClosed()
}

func TestHandshakeTimeoutDoesNotCutTheCopy(t *testing.T) {
	echo := startEcho(t)
	const timeout = 20 * time.Millisecond
	h := &dialHandler{reqs: make(chan Request, 1)}
	addr := startServer(t, &Server{Handler: h, HandshakeTimeout: timeout})
	c, err := socksDial(t, addr, echo.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-h.reqs
	// Wait until well past the handshake deadline on a timer of our own, then use the connection:
	// it must still work because the server clears the deadline once the request is parsed.
	<-time.After(5 * timeout)
	if got := roundTrip(t, c, "still here"); got != "still here" {
		t.Fatalf("echo = %q", got)
	}
}

func TestCloseEndsOpenConnections(t *testing.T) {
	echo := startEcho(t)
	h := &dialHandler{reqs: make(chan Request, 1)}
	srv := &Server{Handler: h}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	c, err := socksDial(t, ln.Addr().String(), echo.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c, "x")

	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with an open connection = %v, want DeadlineExceeded", err)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve = %v, want ErrServerClosed", err)
	}
	c.SetDeadline(time.Now().Add(testTimeout))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("read after close = %d, %v; want the connection closed", n, err)
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), testTimeout); err == nil {
		t.Error("listener still accepts after Shutdown")
	}
	if err := srv.Serve(ln); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Shutdown = %v, want ErrServerClosed", err)
	}
}

func TestShutdownWaitsForIdle(t *testing.T) {
	srv := &Server{Handler: &dialHandler{}}
	startServer(t, srv)
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestSystemResolver(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var r SystemResolver
	if a, err := r.Resolve(ctx, "127.0.0.1"); err != nil || a != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("Resolve(127.0.0.1) = %v, %v", a, err)
	}
	a, err := r.Resolve(ctx, "localhost")
	if err != nil || !a.IsLoopback() {
		t.Errorf("Resolve(localhost) = %v, %v; want a loopback address", a, err)
	}
}

func TestFallback(t *testing.T) {
	mesh := &fakeResolver{names: map[string]netip.Addr{"handson": netip.MustParseAddr("10.96.0.10")}}
	other := &fakeResolver{names: map[string]netip.Addr{"example.com": netip.MustParseAddr("192.0.2.1")}}
	r := Fallback(mesh, other)
	ctx := context.Background()
	if a, err := r.Resolve(ctx, "handson"); err != nil || a != netip.MustParseAddr("10.96.0.10") {
		t.Errorf("handson = %v, %v", a, err)
	}
	if a, err := r.Resolve(ctx, "example.com"); err != nil || a != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("example.com = %v, %v", a, err)
	}
	if other.asked[0] != "example.com" || len(other.asked) != 1 {
		t.Errorf("fallback asked %q; want only the name the mesh did not know", other.asked)
	}
	_, err := r.Resolve(ctx, "nowhere")
	var dnsErr *net.DNSError
	if err == nil || !errors.As(err, &dnsErr) || ReplyFor(err) != ReplyHostUnreachable {
		t.Errorf("nowhere = %v; want a DNS error mapped to host unreachable", err)
	}
}
