package hbone

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
)

// A stream carries bytes both ways, including more than the HTTP/2 windows at once, and the
// server's Handler sees the client's identity, addresses and headers.
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	up := newUpstream(t, echo)
	c, _ := e.client(ClientConfig{})
	conn := e.dial(c, e.target(up.addr))

	// 6 MiB: more than the stream window (4 MiB), written while it is read back.
	payload := make([]byte, 6<<20)
	rand.Read(payload)
	if got := echoThrough(t, conn, payload); !bytes.Equal(got, payload) {
		t.Fatalf("echoed %d bytes, differ from the %d sent", len(got), len(payload))
	}
	if conn.BytesSent() != int64(len(payload)) || conn.BytesReceived() != int64(len(payload)) {
		t.Errorf("client counted sent=%d received=%d, want %d both", conn.BytesSent(), conn.BytesReceived(), len(payload))
	}
	r := e.result()
	if r.Status != 200 || r.Err != nil || r.Received != int64(len(payload)) || r.Sent != int64(len(payload)) {
		t.Errorf("server Result = %+v, want 200, no error, %d bytes both ways", r, len(payload))
	}

	req := <-e.requests
	if req.Peer != e.clientSVID.ID {
		t.Errorf("Peer = %s, want %s", req.Peer, e.clientSVID.ID)
	}
	if req.LocalAddr != e.addr || req.RemoteAddr.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("LocalAddr = %s, RemoteAddr = %s", req.LocalAddr, req.RemoteAddr)
	}
	if req.Authority.Addr != up.addr || req.Authority.Port != up.addr.Port() {
		t.Errorf("Authority = %+v, want %s", req.Authority, up.addr)
	}
	if want := `for="10.0.0.1:41234";host=echo.default.svc.cluster.local`; req.Forwarded != want {
		t.Errorf("forwarded = %q, want %q", req.Forwarded, want)
	}
	if fa, host := ParseForwarded(req.Forwarded); fa.String() != "10.0.0.1:41234" || host != "echo.default.svc.cluster.local" {
		t.Errorf("ParseForwarded = %s, %q", fa, host)
	}
	if want := "k8s.namespace.name=client,service.name=client%20app"; req.Baggage != want {
		t.Errorf("baggage = %q, want %q", req.Baggage, want)
	}
	if !regexp.MustCompile(`^00-[0-9a-f]{32}-[0-9a-f]{16}-00$`).MatchString(req.Traceparent) {
		t.Errorf("traceparent = %q", req.Traceparent)
	}
	if ua := req.Header.Get("User-Agent"); ua != "" {
		t.Errorf("user-agent %q sent", ua)
	}
	if got := conn.ResponseHeader().Get("Baggage"); got != "k8s.namespace.name=server" {
		t.Errorf("response baggage = %q", got)
	}
	if conn.PeerID() != e.serverSVID.ID {
		t.Errorf("PeerID = %s, want %s", conn.PeerID(), e.serverSVID.ID)
	}
}

// The client's CloseWrite reaches the upstream as EOF, the upstream still answers, and its
// close ends the client's reads with EOF.
func TestHalfCloseFromClient(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	up := newUpstream(t, upperAfterEOF)
	c, _ := e.client(ClientConfig{})
	conn := e.dial(c, e.target(up.addr))
	if _, err := io.WriteString(conn, "hello, "); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, "half-close"); err != nil {
		t.Fatal(err)
	}
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("x")); err == nil {
		t.Error("Write after CloseWrite succeeded")
	}
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "HELLO, HALF-CLOSE" {
		t.Fatalf("read %q, %v; want HELLO, HALF-CLOSE and EOF", got, err)
	}
	if r := e.result(); r.Err != nil || r.Received != 17 || r.Sent != 17 {
		t.Errorf("Result = %+v", r)
	}
}

// An upstream that closes ends the response side: the client reads what it sent, then EOF,
// without having closed its own side; the stream is over once the client ends its side too
// (half-close is carried both ways, as Istio's ztunnel does).
func TestUpstreamCloseEndsStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	up := newUpstream(t, func(c *net.TCPConn) { io.WriteString(c, "banner\n") })
	c, _ := e.client(ClientConfig{})
	conn := e.dial(c, e.target(up.addr))
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "banner\n" {
		t.Fatalf("read %q, %v", got, err)
	}
	select {
	case r := <-e.results:
		t.Fatalf("stream over before the client ended its side: %+v", r)
	default:
	}
	conn.CloseWrite()
	if r := e.result(); r.Err != nil || r.Sent != 7 {
		t.Errorf("Result = %+v", r)
	}
}

// Closing the client stream closes the server's upstream connection.
func TestClientCloseClosesUpstream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	upClosed := make(chan error, 1)
	up := newUpstream(t, func(c *net.TCPConn) {
		_, err := io.Copy(io.Discard, c)
		upClosed <- err
	})
	c, _ := e.client(ClientConfig{})
	conn := e.dial(c, e.target(up.addr))
	io.WriteString(conn, "partial")
	conn.Close()
	select {
	case <-upClosed:
	case <-time.After(wait):
		t.Fatal("upstream not closed after the client closed its stream")
	}
	if r := e.result(); r.Err == nil {
		t.Errorf("Result = %+v, want an error (the stream was reset)", r)
	}
}

// TLS 1.3 with one of CipherSuites, ALPN h2, and no SNI from the client, seen from both sides.
func TestTLSParameters(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	up := newUpstream(t, echo)
	c, _ := e.client(ClientConfig{})
	conn := e.dial(c, e.target(up.addr))
	srvSide := (<-e.requests).TLS
	for side, cs := range map[string]tls.ConnectionState{"server": *srvSide, "client": conn.ConnectionState()} {
		if cs.Version != tls.VersionTLS13 {
			t.Errorf("%s: version %s", side, tls.VersionName(cs.Version))
		}
		if cs.NegotiatedProtocol != "h2" {
			t.Errorf("%s: ALPN %q", side, cs.NegotiatedProtocol)
		}
		if !slices.Contains(CipherSuites, cs.CipherSuite) {
			t.Errorf("%s: cipher suite %s", side, tls.CipherSuiteName(cs.CipherSuite))
		}
		if cs.DidResume {
			t.Errorf("%s: session resumed", side)
		}
	}
	// On the server, ServerName is the SNI the client sent.
	if srvSide.ServerName != "" {
		t.Errorf("client sent SNI %q", srvSide.ServerName)
	}
}

// VerifyConnection refuses what Go could negotiate but HBONE does not allow.
func TestCheckConnectionState(t *testing.T) {
	ok := tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256, NegotiatedProtocol: "h2"}
	for _, suite := range []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256} {
		cs := ok
		cs.CipherSuite = suite
		if err := checkConnectionState(cs); err != nil {
			t.Errorf("%s: %v", tls.CipherSuiteName(suite), err)
		}
	}
	bad := map[string]func(*tls.ConnectionState){
		"TLS_AES_128_CCM_SHA256": func(cs *tls.ConnectionState) { cs.CipherSuite = 0x1304 },
		"tls1.2":                 func(cs *tls.ConnectionState) { cs.Version = tls.VersionTLS12 },
		"no alpn":                func(cs *tls.ConnectionState) { cs.NegotiatedProtocol = "" },
		"http/1.1":               func(cs *tls.ConnectionState) { cs.NegotiatedProtocol = "http/1.1" },
	}
	for name, mod := range bad {
		cs := ok
		mod(&cs)
		if err := checkConnectionState(cs); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// A server presenting an identity the client did not ask for is refused by the client.
func TestClientRefusesWrongServerIdentity(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	up := newUpstream(t, echo)
	c, _ := e.client(ClientConfig{})
	tg := e.target(up.addr)
	tg.Identities = []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/other/sa/other")}
	err := dialErr(t, c, tg)
	if statusOf(err) != 0 || !strings.Contains(err.Error(), "unexpected ID") {
		t.Errorf("error %v, want a TLS verification failure", err)
	}
	if e.handled.Load() != 0 || up.ln.accepted() != 0 {
		t.Error("the stream reached the server's handler or the upstream")
	}
	// A server whose certificate does not chain to the client's bundle is refused too.
	other := newTestCA(t, "cluster.local")
	c2, _ := e.client(ClientConfig{Bundle: other.bundle()})
	if err := dialErr(t, c2, e.target(up.addr)); statusOf(err) != 0 {
		t.Errorf("error %v", err)
	}
}

// The server refuses client certificates that are not valid SPIFFE SVIDs of an allowed trust
// domain: the handshake fails, no Handler runs, no upstream is dialled.
func TestServerRefusesClientCertificate(t *testing.T) {
	t.Parallel()
	mesh := newTestCA(t, "cluster.local")
	foreign := newTestCA(t, "other.domain")
	cases := []struct {
		name   string
		svid   func(t *testing.T) *x509svid.SVID
		bundle x509bundle.Source // server's bundle; mesh's when nil
		want   string            // in the server's log of the failure
	}{
		{name: "other trust domain, other CA",
			svid: func(t *testing.T) *x509svid.SVID { return foreign.svid(t, "other.domain/ns/a/sa/a", leafOpts{}) },
			want: `no X.509 bundle found for trust domain: "other.domain"`},
		{name: "other trust domain, bundle known but not allowed",
			svid:   func(t *testing.T) *x509svid.SVID { return foreign.svid(t, "other.domain/ns/a/sa/a", leafOpts{}) },
			bundle: x509bundle.NewSet(mesh.bundle(), foreign.bundle()),
			want:   `trust domain "other.domain" of spiffe://other.domain/ns/a/sa/a is not allowed`},
		{name: "expired",
			svid: func(t *testing.T) *x509svid.SVID {
				return mesh.svid(t, "cluster.local/ns/a/sa/a", leafOpts{notBefore: time.Now().Add(-2 * time.Hour), notAfter: time.Now().Add(-time.Hour)})
			},
			want: "certificate has expired"},
		{name: "not yet valid",
			svid: func(t *testing.T) *x509svid.SVID {
				return mesh.svid(t, "cluster.local/ns/a/sa/a", leafOpts{notBefore: time.Now().Add(time.Hour), notAfter: time.Now().Add(2 * time.Hour)})
			},
			want: "not yet valid"},
		{name: "no SPIFFE ID",
			svid: func(t *testing.T) *x509svid.SVID {
				return mesh.svid(t, "cluster.local/ns/a/sa/a", leafOpts{noURI: true})
			}},
		{name: "self-signed by the mesh's trust domain name",
			svid: func(t *testing.T) *x509svid.SVID {
				return newTestCA(t, "cluster.local").svid(t, "cluster.local/ns/a/sa/a", leafOpts{})
			},
			want: "certificate signed by unknown authority"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, envOpts{ca: mesh, server: func(cfg *ServerConfig) {
				if tc.bundle != nil {
					cfg.Bundle = tc.bundle
				}
			}})
			up := newUpstream(t, echo)
			c, _ := e.client(ClientConfig{Bundle: mesh.bundle()})
			tg := e.target(up.addr)
			tg.Source = tc.svid(t)
			tg.Identities = []spiffeid.ID{e.serverSVID.ID}
			err := dialErr(t, c, tg)
			if statusOf(err) != 0 {
				t.Errorf("got HTTP status %d, want a TLS failure: %v", statusOf(err), err)
			}
			e.serverLog.await(t, "connection failed", tc.want)
			if e.handled.Load() != 0 || up.ln.accepted() != 0 {
				t.Error("the stream reached the server's handler or the upstream")
			}
		})
	}
}

// Plaintext (an HTTP/1.1 CONNECT) to the HBONE port gets no tunnel.
func TestPlaintextRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	up := newUpstream(t, echo)
	conn, err := net.Dial("tcp", e.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(wait)) // a bound, not a pace: the server closes first
	io.WriteString(conn, "CONNECT "+up.addr.String()+" HTTP/1.1\r\nHost: "+up.addr.String()+"\r\n\r\nhello")
	got, _ := io.ReadAll(conn)
	if bytes.Contains(got, []byte("200")) || bytes.Contains(got, []byte("hello")) {
		t.Errorf("server answered %q", got)
	}
	e.serverLog.await(t, "connection failed", "does not look like a TLS handshake")
	if e.handled.Load() != 0 || up.ln.accepted() != 0 {
		t.Error("a plaintext request reached the handler or the upstream")
	}
}

// rawH2 is an HTTP/2 client connection to e's server with a valid client certificate, for
// requests the Client would not send.
func rawH2(t *testing.T, e *env) *http2.ClientConn {
	t.Helper()
	tc := dialTLS(t, e)
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// A method other than CONNECT, and a CONNECT whose authority is not host:port, get 400.
func TestBadRequest400(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	cc := rawH2(t, e)
	req, _ := http.NewRequest(http.MethodGet, "https://"+e.addr.String()+"/", nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("GET: status %d, want 400", resp.StatusCode)
	}
	e.serverLog.await(t, "expected method CONNECT, got GET")

	c, _ := e.client(ClientConfig{})
	for _, auth := range []string{"no-port", "10.0.0.1", "10.0.0.1:0", "10.0.0.1:http", ":8080"} {
		tg := e.target(netip.AddrPort{})
		tg.Authority = auth
		if err := dialErr(t, c, tg); statusOf(err) != http.StatusBadRequest {
			t.Errorf("authority %q: %v, want status 400", auth, err)
		}
	}
	if e.handled.Load() != 0 {
		t.Error("the handler ran")
	}
}

// The handler's refusals reach the client as StatusError with the code, and nothing is
// relayed.
func TestHandlerStatus(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, echo)
	for _, code := range []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusServiceUnavailable} {
		e := newEnv(t, envOpts{status: func(*Request) int { return code }})
		c, _ := e.client(ClientConfig{})
		err := dialErr(t, c, e.target(up.addr))
		if statusOf(err) != code {
			t.Errorf("error %v, want status %d", err, code)
		}
		if want := fmt.Sprintf("http status: %d %s", code, http.StatusText(code)); !strings.HasSuffix(err.Error(), want) {
			t.Errorf("error %q", err)
		}
		if r := e.result(); r.Status != code || r.Sent != 0 || r.Received != 0 {
			t.Errorf("Result = %+v", r)
		}
	}
	if err := (StatusError{Code: 401}).Error(); err != "http status: 401 Unauthorized" {
		t.Errorf("StatusError = %q", err)
	}
	if up.ln.accepted() != 0 {
		t.Error("the upstream was dialled")
	}
	// The default handler's 503: nothing listens at the authority.
	e := newEnv(t, envOpts{})
	dead := listen(t)
	deadAddr := addrOf(dead)
	dead.Close()
	c, _ := e.client(ClientConfig{})
	if err := dialErr(t, c, e.target(deadAddr)); statusOf(err) != http.StatusServiceUnavailable {
		t.Errorf("error %v, want 503", err)
	}
}

// What crosses the wire between client and server is TLS: the proxied HTTP request is not
// visible in it.
func TestWireIsEncrypted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	up := newUpstream(t, echo)

	// A TCP relay between the client and the server that records both directions.
	relayLn := listen(t)
	var wire lockedBuffer
	go func() {
		c, err := relayLn.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", e.addr.String())
		if err != nil {
			c.Close()
			return
		}
		go func() { io.Copy(io.MultiWriter(s, &wire), c); s.(*net.TCPConn).CloseWrite() }()
		io.Copy(io.MultiWriter(c, &wire), s)
		c.Close()
	}()

	c, _ := e.client(ClientConfig{})
	tg := e.target(up.addr)
	tg.Address = addrOf(relayLn)
	conn := e.dial(c, tg)
	const httpReq = "GET / HTTP/1.1\r\nHost: echo.default.svc.cluster.local\r\nUser-Agent: secret-agent\r\n\r\n"
	io.WriteString(conn, httpReq)
	conn.CloseWrite()
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != httpReq {
		t.Fatalf("read %q, %v", got, err)
	}
	conn.Close()
	c.Close() // ends the relay's copies
	b := wire.bytes()
	if len(b) < len(httpReq) {
		t.Fatalf("captured only %d bytes", len(b))
	}
	if b[0] != 0x16 { // a TLS handshake record opens the connection
		t.Errorf("first byte on the wire %#x, want a TLS handshake record (0x16)", b[0])
	}
	for _, s := range []string{"GET /", "secret-agent", "echo.default", "CONNECT", "traceparent"} {
		if bytes.Contains(b, []byte(s)) {
			t.Errorf("plaintext %q seen on the wire", s)
		}
	}
}

// Shutdown lets open streams finish, refuses new ones, and returns when they are done.
func TestShutdown(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	up := newUpstream(t, echo)
	c, _ := e.client(ClientConfig{})
	conn := e.dial(c, e.target(up.addr))
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		shut <- e.srv.Shutdown(ctx)
	}()
	// The open stream still works while the server drains.
	io.WriteString(conn, "still here")
	buf := make([]byte, 10)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "still here" {
		t.Fatalf("read %q, %v", buf, err)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a stream open", err)
	default:
	}
	conn.CloseWrite()
	io.ReadAll(conn)
	conn.Close()
	select {
	case err := <-shut:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatal("Shutdown did not return after the last stream ended")
	}
	dialErr(t, c, e.target(up.addr))
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.b.Bytes())
}

// Dial's context bounds the dial and the wait for the answer, not the stream.
func TestDialContext(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	up := newUpstream(t, echo)
	c, _ := e.client(ClientConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := c.Dial(ctx, e.target(up.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cancel()
	roundTrip(t, conn, "after cancel")

	// A server that never answers: canceling ctx ends the Dial and resets the stream.
	handlerDone := make(chan struct{})
	slow := newEnv(t, envOpts{handler: HandlerFunc(func(ctx context.Context, _ *Request) Response {
		<-ctx.Done() // the stream's context ends with the client's reset
		close(handlerDone)
		return Response{Status: http.StatusServiceUnavailable}
	})})
	c2, _ := slow.client(ClientConfig{})
	ctx2, cancel2 := context.WithCancel(context.Background())
	dialed := make(chan error, 1)
	go func() {
		_, err := c2.Dial(ctx2, slow.target(up.addr))
		dialed <- err
	}()
	<-slow.requests // the CONNECT is at the handler
	cancel2()
	select {
	case err := <-dialed:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Dial error %v, want context.Canceled", err)
		}
	case <-time.After(wait):
		t.Fatal("Dial did not return after its context was canceled")
	}
	select {
	case <-handlerDone:
	case <-time.After(wait):
		t.Fatal("the handler's context did not end with the reset stream")
	}
}

// A client that ends its side of a tunnel and then goes away (its connection closes): the
// server's relay ends and closes the upstream, even though the application keeps its own side
// open after the FIN (found by FuzzServerFrames: the relay waited on the application for good,
// holding a goroutine and a socket per such stream).
func TestRelayEndsWhenTheClientGoesAway(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	sawEOF, end := make(chan struct{}), make(chan struct{})
	defer close(end)
	up := newUpstream(t, func(c *net.TCPConn) {
		io.Copy(io.Discard, c) // to the client's END_STREAM
		close(sawEOF)
		<-end // its own side stays open, and silent
	})
	c, _ := e.client(ClientConfig{})
	conn := e.dial(c, e.target(up.addr))
	if _, err := conn.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sawEOF:
	case <-time.After(wait):
		t.Fatal("the upstream did not see the client's END_STREAM")
	}
	c.Close() // the HBONE connection goes, the stream with it
	// Done comes once the relay is over and the upstream closed.
	if r := e.result(); r.Err == nil {
		t.Errorf("Result %+v, want the stream's error", r)
	}
}
