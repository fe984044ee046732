package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawPeer is a hand-driven HTTP/2 client on a TLS connection to e's server, for frames the
// Client never sends.
type rawPeer struct {
	t    *testing.T
	fr   *http2.Framer
	henc *hpack.Encoder
	hbuf bytes.Buffer
}

// newRawPeer connects with a valid client certificate, exchanges the prefaces and settings.
func newRawPeer(t *testing.T, e *env, settings ...http2.Setting) *rawPeer {
	t.Helper()
	tc := dialPreface(t, e)
	p := &rawPeer{t: t, fr: http2.NewFramer(tc, tc)}
	p.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	p.henc = hpack.NewEncoder(&p.hbuf)
	p.fr.WriteSettings(settings...)
	p.expect(func(f http2.Frame) bool {
		sf, ok := f.(*http2.SettingsFrame)
		return ok && !sf.IsAck()
	})
	p.fr.WriteSettingsAck()
	return p
}

// connect opens stream id with a CONNECT to authority and the extra fields.
func (p *rawPeer) connect(id uint32, authority string, end bool, extra ...hpack.HeaderField) {
	p.t.Helper()
	p.hbuf.Reset()
	p.henc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	p.henc.WriteField(hpack.HeaderField{Name: ":authority", Value: authority})
	for _, f := range extra {
		p.henc.WriteField(f)
	}
	if err := p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.hbuf.Bytes(), EndHeaders: true, EndStream: end}); err != nil {
		p.t.Fatal(err)
	}
}

// expect reads frames until match accepts one and returns it; the connection's deadline
// bounds the wait.
func (p *rawPeer) expect(match func(http2.Frame) bool) http2.Frame {
	p.t.Helper()
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			p.t.Fatalf("reading frames: %v", err)
		}
		if match(f) {
			return f
		}
	}
}

func (p *rawPeer) expectReset(id uint32) http2.ErrCode {
	p.t.Helper()
	return p.expect(func(f http2.Frame) bool {
		r, ok := f.(*http2.RSTStreamFrame)
		return ok && r.StreamID == id
	}).(*http2.RSTStreamFrame).ErrCode
}

func (p *rawPeer) expectGoAway() *http2.GoAwayFrame {
	p.t.Helper()
	return p.expect(func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok }).(*http2.GoAwayFrame)
}

func (p *rawPeer) expectStatus(id uint32) string {
	p.t.Helper()
	return p.expect(func(f http2.Frame) bool {
		h, ok := f.(*http2.MetaHeadersFrame)
		return ok && h.StreamID == id
	}).(*http2.MetaHeadersFrame).PseudoValue("status")
}

// The server's answers to frames and streams a well-behaved client does not send.
func TestServerProtocolEdges(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, echo)
	t.Run("PING is answered with its data", func(t *testing.T) {
		p := newRawPeer(t, newEnv(t, envOpts{}))
		data := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
		p.fr.WritePing(false, data)
		ack := p.expect(func(f http2.Frame) bool { pf, ok := f.(*http2.PingFrame); return ok && pf.IsAck() }).(*http2.PingFrame)
		if ack.Data != data {
			t.Errorf("PING ack %x, want %x", ack.Data, data)
		}
	})
	t.Run("streams past MAX_CONCURRENT_STREAMS are refused", func(t *testing.T) {
		e := newEnv(t, envOpts{server: func(c *ServerConfig) { c.MaxConcurrentStreams = 1 }})
		p := newRawPeer(t, e)
		p.connect(1, up.addr.String(), false)
		if s := p.expectStatus(1); s != "200" {
			t.Fatalf("first stream: status %s", s)
		}
		p.connect(3, up.addr.String(), false)
		if code := p.expectReset(3); code != http2.ErrCodeRefusedStream {
			t.Errorf("second stream reset with %s, want REFUSED_STREAM", code)
		}
	})
	t.Run("headers over the limit get 431", func(t *testing.T) {
		e := newEnv(t, envOpts{server: func(c *ServerConfig) { c.MaxHeaderListSize = 1024 }})
		p := newRawPeer(t, e)
		// Each field fits; together they are over the limit. (One value longer than the whole
		// limit fails HPACK decoding: a connection error, as with x/net's server.)
		var big []hpack.HeaderField
		for _, name := range []string{"x-a", "x-b", "x-c", "x-d", "x-e"} {
			big = append(big, hpack.HeaderField{Name: name, Value: strings.Repeat("v", 300)})
		}
		p.connect(1, up.addr.String(), true, big...)
		if s := p.expectStatus(1); s != "431" {
			t.Errorf("status %s, want 431", s)
		}
		if e.handled.Load() != 0 {
			t.Error("the handler ran")
		}
	})
	for _, tc := range []struct {
		name  string
		extra []hpack.HeaderField
	}{
		{"CONNECT with :path", []hpack.HeaderField{{Name: ":path", Value: "/"}}},
		{"CONNECT with :scheme", []hpack.HeaderField{{Name: ":scheme", Value: "https"}}},
		{"connection-specific header", []hpack.HeaderField{{Name: "connection", Value: "close"}}},
		{"te other than trailers", []hpack.HeaderField{{Name: "te", Value: "gzip"}}},
	} {
		t.Run("malformed: "+tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{})
			p := newRawPeer(t, e)
			p.connect(1, up.addr.String(), true, tc.extra...)
			if code := p.expectReset(1); code != http2.ErrCodeProtocol {
				t.Errorf("reset with %s, want PROTOCOL_ERROR", code)
			}
			if e.handled.Load() != 0 {
				t.Error("the handler ran")
			}
		})
	}
	t.Run("RST_STREAM on an idle stream is a connection error", func(t *testing.T) {
		p := newRawPeer(t, newEnv(t, envOpts{}))
		p.fr.WriteRSTStream(7, http2.ErrCodeCancel)
		if ga := p.expectGoAway(); ga.ErrCode != http2.ErrCodeProtocol {
			t.Errorf("GOAWAY %s, want PROTOCOL_ERROR", ga.ErrCode)
		}
	})
	t.Run("a client's GOAWAY leaves the connection serving", func(t *testing.T) {
		p := newRawPeer(t, newEnv(t, envOpts{}))
		p.connect(1, up.addr.String(), false)
		p.expectStatus(1)
		p.fr.WriteGoAway(1, http2.ErrCodeNo, nil)
		p.fr.WritePing(false, [8]byte{9})
		p.expect(func(f http2.Frame) bool { pf, ok := f.(*http2.PingFrame); return ok && pf.IsAck() })
		p.fr.WriteData(1, true, []byte("still"))
		d := p.expect(func(f http2.Frame) bool { d, ok := f.(*http2.DataFrame); return ok && len(d.Data()) > 0 }).(*http2.DataFrame)
		if string(d.Data()) != "still" {
			t.Errorf("echo %q after GOAWAY", d.Data())
		}
	})
	t.Run("a non-200 answer resets a request side still open", func(t *testing.T) {
		e := newEnv(t, envOpts{status: func(*Request) int { return http.StatusUnauthorized }})
		p := newRawPeer(t, e)
		p.connect(1, up.addr.String(), false)
		h := p.expect(func(f http2.Frame) bool { h, ok := f.(*http2.MetaHeadersFrame); return ok && h.StreamID == 1 }).(*http2.MetaHeadersFrame)
		if h.PseudoValue("status") != "401" || !h.StreamEnded() {
			t.Errorf("status %s, END_STREAM %v; want 401 ending the stream", h.PseudoValue("status"), h.StreamEnded())
		}
		if code := p.expectReset(1); code != http2.ErrCodeNo {
			t.Errorf("reset with %s, want NO_ERROR", code)
		}
	})
	t.Run("DATA on a stream never opened is a connection error", func(t *testing.T) {
		p := newRawPeer(t, newEnv(t, envOpts{}))
		p.fr.WriteData(5, false, []byte("x"))
		if ga := p.expectGoAway(); ga.ErrCode != http2.ErrCodeProtocol {
			t.Errorf("GOAWAY %s, want PROTOCOL_ERROR", ga.ErrCode)
		}
	})
	t.Run("stream IDs must increase", func(t *testing.T) {
		p := newRawPeer(t, newEnv(t, envOpts{}))
		p.connect(5, up.addr.String(), false)
		p.expectStatus(5)
		p.connect(3, up.addr.String(), false) // below 5: a closed stream
		if ga := p.expectGoAway(); ga.ErrCode != http2.ErrCodeStreamClosed || ga.LastStreamID != 5 {
			t.Errorf("GOAWAY %s last %d, want STREAM_CLOSED last 5", ga.ErrCode, ga.LastStreamID)
		}
	})
	t.Run("DATA past the stream window is a stream error", func(t *testing.T) {
		// The handler holds the stream without reading it, so no window comes back.
		hold := make(chan struct{})
		t.Cleanup(func() { close(hold) })
		e := newEnv(t, envOpts{handler: HandlerFunc(func(ctx context.Context, _ *Request) Response {
			a, b := net.Pipe()
			go func() { <-hold; b.Close() }()
			return Response{Status: http.StatusOK, Upstream: a}
		})})
		p := newRawPeer(t, e)
		p.connect(1, up.addr.String(), false)
		p.expectStatus(1)
		chunk := make([]byte, 16384) // the peer's default max frame before our SETTINGS count
		for sent := 0; sent <= StreamWindow; sent += len(chunk) {
			if err := p.fr.WriteData(1, false, chunk); err != nil {
				t.Fatal(err)
			}
		}
		if code := p.expectReset(1); code != http2.ErrCodeFlowControl {
			t.Errorf("reset with %s, want FLOW_CONTROL_ERROR", code)
		}
	})
	t.Run("first frame must be SETTINGS", func(t *testing.T) {
		tc := dialPreface(t, newEnv(t, envOpts{}))
		fr := http2.NewFramer(tc, tc)
		fr.WritePing(false, [8]byte{})
		p := &rawPeer{t: t, fr: fr}
		if ga := p.expectGoAway(); ga.ErrCode != http2.ErrCodeProtocol {
			t.Errorf("GOAWAY %s, want PROTOCOL_ERROR", ga.ErrCode)
		}
	})
}

// The client respects the server's MAX_CONCURRENT_STREAMS: past it, the pool opens another
// connection instead of having streams refused.
func TestClientRespectsServerStreamLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{server: func(c *ServerConfig) { c.MaxConcurrentStreams = 1 }})
	up := newUpstream(t, echo)
	c, _ := e.client(ClientConfig{})
	a := e.dial(c, e.target(up.addr))
	roundTrip(t, a, "a") // the server's SETTINGS have arrived
	b := e.dial(c, e.target(up.addr))
	roundTrip(t, b, "b")
	if n := e.ln.accepted(); n != 2 {
		t.Errorf("%d connections for 2 streams with a server limit of 1, want 2", n)
	}
}

// xnetServer is x/net's HTTP/2 server as an HBONE peer: it answers CONNECT with 200 and echoes
// the request body until it ends, then ends the response.
func xnetServer(t *testing.T, e *env) netip.AddrPort {
	t.Helper()
	conf, err := ServerTLSConfig(e.bundle, nil, func(netip.Addr) (*x509svid.SVID, error) { return e.serverSVID, nil })
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t)
	srv := &http2.Server{MaxUploadBufferPerStream: 1 << 20}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		rc.Flush()
		buf := make([]byte, 32<<10)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
				rc.Flush()
			}
			if err != nil {
				return
			}
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := tls.Server(c, conf)
				if tc.Handshake() != nil {
					c.Close()
					return
				}
				srv.ServeConn(tc, &http2.ServeConnOpts{Handler: handler})
			}()
		}
	}()
	return addrOf(ln)
}

// Our client against x/net's HTTP/2 server, an independent implementation: a transfer much
// larger than both flow-control windows (WINDOW_UPDATEs both ways), echoed back in order,
// and half-close: CloseWrite ends the server's read, whose end ends the response.
func TestClientInteropXNet(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	addr := xnetServer(t, e)
	c, _ := e.client(ClientConfig{})
	tg := e.target(netip.MustParseAddrPort("10.0.0.1:80"))
	tg.Address = addr
	conn := e.dial(c, tg)
	const size = 24 << 20 // 6× the stream window, 1.5× the connection window
	want := make([]byte, size)
	for i := range want {
		want[i] = byte(i * 7)
	}
	if got := echoThrough(t, conn, want); !bytes.Equal(got, want) {
		t.Fatalf("echoed %d bytes, not the %d sent in order", len(got), size)
	}
	if conn.BytesSent() != size || conn.BytesReceived() != size {
		t.Errorf("counted %d sent, %d received; want %d each", conn.BytesSent(), conn.BytesReceived(), size)
	}
}
