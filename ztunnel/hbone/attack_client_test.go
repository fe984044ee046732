package hbone

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The Client (a ztunnel's outbound, a waypoint's) against a hostile HBONE server: one with a
// valid certificate that misbehaves at the HTTP/2 level. The server is hand-driven (x/net's
// Framer over real TLS with this package's ServerTLSConfig); each misbehaviour is bounded by a
// client limit, and the client's goroutines and memory come back once it is closed.

// hostileConn is one client connection as the hostile server sees it, after the client's
// preface, with the server's SETTINGS sent.
type hostileConn struct {
	tc *tls.Conn
	bw *bufio.Writer
	fr *http2.Framer // writes to bw, reads from tc
}

func (h *hostileConn) flush() error {
	h.tc.SetWriteDeadline(time.Now().Add(wait))
	return h.bw.Flush()
}

// readConnect reads frames until the client's CONNECT and returns its stream ID.
func (h *hostileConn) readConnect() (uint32, error) {
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			return 0, err
		}
		if hf, ok := f.(*http2.MetaHeadersFrame); ok {
			return hf.StreamID, nil
		}
	}
}

// headers encodes fields for a HEADERS or CONTINUATION frame.
func (h *hostileConn) headers(fields ...hpack.HeaderField) []byte {
	var b byteBuffer
	enc := hpack.NewEncoder(&b)
	for _, f := range fields {
		enc.WriteField(f)
	}
	return b.b
}

type byteBuffer struct{ b []byte }

func (b *byteBuffer) Write(p []byte) (int, error) { b.b = append(b.b, p...); return len(p), nil }

// answer200 answers stream id with 200.
func (h *hostileConn) answer200(id uint32) {
	h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.headers(hpack.HeaderField{Name: ":status", Value: "200"}), EndHeaders: true})
	h.flush()
}

// hostileServer serves each HBONE client with behave (in its own goroutine), after the TLS
// handshake, the client's preface and the server's SETTINGS (settings). Its connections are
// closed when the test ends.
func hostileServer(t testing.TB, e *env, settings []http2.Setting, behave func(h *hostileConn)) netip.AddrPort {
	t.Helper()
	conf, err := ServerTLSConfig(e.bundle, nil, func(netip.Addr) (*x509svid.SVID, error) { return e.serverSVID, nil })
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t)
	ln.onAccept = func(c net.Conn) { c.(*net.TCPConn).SetReadBuffer(4 << 10) }
	t.Cleanup(ln.closeAll)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := tls.Server(c, conf)
				tc.SetDeadline(time.Now().Add(wait))
				preface := make([]byte, len(http2.ClientPreface))
				if _, err := io.ReadFull(tc, preface); err != nil {
					c.Close()
					return
				}
				h := &hostileConn{tc: tc, bw: bufio.NewWriterSize(tc, 16<<10)}
				h.fr = http2.NewFramer(h.bw, tc)
				h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
				h.fr.WriteSettings(settings...)
				h.flush()
				behave(h)
			}()
		}
	}()
	return addrOf(ln)
}

// hostileClient is a Client for e's trust bundle whose socket send buffer is small (so that a
// server that does not read blocks its writes soon), with the test's limits.
func hostileClient(t testing.TB, e *env, cfg ClientConfig) *Client {
	cfg.Logger = testLogger()
	cfg.Bundle = e.bundle
	cfg.PingInterval = -1 // the limits under test must act, not the keep-alive
	cfg.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err == nil {
			c.(*net.TCPConn).SetWriteBuffer(4 << 10)
		}
		return c, err
	}
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func hostileTarget(e *env, addr netip.AddrPort) Target {
	return Target{Source: e.clientSVID, Address: addr, Identities: []spiffeid.ID{e.serverSVID.ID}, Authority: "10.0.0.1:80"}
}

// dialAsync runs Dial in a goroutine; the result comes on the channel.
func dialAsync(c *Client, ctx context.Context, tg Target) <-chan error {
	res := make(chan error, 1)
	go func() {
		conn, err := c.Dial(ctx, tg)
		if err == nil {
			conn.Close()
		}
		res <- err
	}()
	return res
}

func TestAttackHostileServer(t *testing.T) {
	// A CONNECT never answered: Dial gives up after ConnectTimeout, even with a context
	// without deadline.
	t.Run("never answers", func(t *testing.T) {
		e := newEnv(t, envOpts{})
		addr := hostileServer(t, e, nil, func(h *hostileConn) { io.Copy(io.Discard, h.tc) })
		base := measure()
		c := hostileClient(t, e, ClientConfig{ConnectTimeout: 300 * time.Millisecond})
		select {
		case err := <-dialAsync(c, context.Background(), hostileTarget(e, addr)):
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Dial: %v, want the connect timeout", err)
			}
		case <-time.After(wait):
			t.Fatal("Dial without a deadline still waits for an answer that never comes")
		}
		c.Close()
		settle(t, base, 5, 2<<20, 5)
	})

	// Floods of frames the client must answer, from a server that does not read the answers:
	// the client closes the connection once MaxQueuedControlFrames wait.
	for _, fl := range []struct {
		name  string
		frame func(h *hostileConn)
	}{
		{"PING flood", func(h *hostileConn) { h.fr.WritePing(false, [8]byte{1}) }},
		{"SETTINGS flood", func(h *hostileConn) { h.fr.WriteSettings() }},
	} {
		t.Run(fl.name, func(t *testing.T) {
			e := newEnv(t, envOpts{})
			stopped := make(chan int, 1)
			addr := hostileServer(t, e, nil, func(h *hostileConn) {
				id, err := h.readConnect()
				if err != nil {
					return
				}
				h.answer200(id)
				n := 0
				for deadline := time.Now().Add(attackFor); time.Now().Before(deadline); n += 500 {
					for range 500 {
						fl.frame(h)
					}
					if h.flush() != nil {
						break // the client closed the connection
					}
				}
				stopped <- n
			})
			base := measure()
			c := hostileClient(t, e, ClientConfig{MaxQueuedControlFrames: 100, WriteTimeout: time.Minute})
			defer c.Close()
			if err := <-dialAsync(c, context.Background(), hostileTarget(e, addr)); err != nil {
				t.Fatal(err)
			}
			n := <-stopped
			closed := eventually(time.Second, func() bool { return c.Conns() == 0 })
			t.Logf("%d frames; the client closed the connection: %v", n, closed)
			if !closed {
				t.Errorf("the client kept a connection that sent %d frames without reading the answers", n)
			}
			c.Close()
			settle(t, base, 5, 4<<20, 5)
		})
	}

	// A server that grants windows and then stops reading: the client's write stalls, and
	// fails after WriteTimeout (closing the connection) instead of blocking forever.
	t.Run("stops reading", func(t *testing.T) {
		e := newEnv(t, envOpts{})
		settings := []http2.Setting{{ID: http2.SettingInitialWindowSize, Val: 1 << 30}}
		addr := hostileServer(t, e, settings, func(h *hostileConn) {
			id, err := h.readConnect()
			if err != nil {
				return
			}
			h.fr.WriteWindowUpdate(0, 1<<30)
			h.answer200(id)
			h.tc.SetReadDeadline(time.Now().Add(2 * wait)) // and reads no more
			<-time.After(2 * wait)
		})
		base := measure()
		c := hostileClient(t, e, ClientConfig{WriteTimeout: 500 * time.Millisecond})
		defer c.Close()
		conn, err := c.Dial(context.Background(), hostileTarget(e, addr))
		if err != nil {
			t.Fatal(err)
		}
		werr := make(chan error, 1)
		go func() {
			_, err := conn.Write(make([]byte, 64<<20))
			werr <- err
		}()
		select {
		case err := <-werr:
			t.Logf("Write: %v", err)
			if err == nil {
				t.Error("64 MiB written to a server that reads nothing")
			}
		case <-time.After(wait):
			t.Fatal("Write to a server that stopped reading still blocked")
		}
		conn.Close()
		c.Close()
		settle(t, base, 5, 4<<20, 5)
	})

	// An answer whose header block never ends (empty CONTINUATION frames forever): the client
	// gives up after a bounded number of bytes (ENHANCE_YOUR_CALM) instead of spinning until the
	// keep-alive gives up.
	t.Run("endless CONTINUATION", func(t *testing.T) {
		e := newEnv(t, envOpts{})
		addr := hostileServer(t, e, nil, func(h *hostileConn) {
			id, err := h.readConnect()
			if err != nil {
				return
			}
			h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.headers(hpack.HeaderField{Name: ":status", Value: "200"})})
			for deadline := time.Now().Add(wait); time.Now().Before(deadline); {
				for range 1000 {
					h.fr.WriteContinuation(id, false, nil)
				}
				if h.flush() != nil {
					return
				}
			}
		})
		base := measure()
		c := hostileClient(t, e, ClientConfig{})
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		err := <-dialAsync(c, ctx, hostileTarget(e, addr))
		t.Logf("Dial after %v: %v", time.Since(start).Round(time.Millisecond), err)
		if err == nil || errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Dial: %v, want the connection closed by the client", err)
		}
		if !eventually(time.Second, func() bool { return c.Conns() == 0 }) {
			t.Error("the client kept the connection")
		}
		c.Close()
		settle(t, base, 5, 4<<20, 5)
	})

	// A response header list over MaxHeaderListSize: its stream is reset, nothing more is held.
	t.Run("headers bomb", func(t *testing.T) {
		e := newEnv(t, envOpts{})
		big := strings.Repeat("x", 8<<10)
		addr := hostileServer(t, e, nil, func(h *hostileConn) {
			id, err := h.readConnect()
			if err != nil {
				return
			}
			fields := []hpack.HeaderField{{Name: ":status", Value: "200"}}
			for i := range 64 { // 512 KiB of header values, in 16 KiB fragments
				fields = append(fields, hpack.HeaderField{Name: "x-bomb-" + string(rune('a'+i%26)), Value: big})
			}
			block := h.headers(fields...)
			for first := true; len(block) > 0; first = false {
				frag := block[:min(len(block), 16<<10)]
				block = block[len(frag):]
				if first {
					h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndHeaders: len(block) == 0})
				} else {
					h.fr.WriteContinuation(id, len(block) == 0, frag)
				}
			}
			h.flush()
			io.Copy(io.Discard, h.tc)
		})
		base := measure()
		c := hostileClient(t, e, ClientConfig{MaxHeaderListSize: 16 << 10})
		err := <-dialAsync(c, context.Background(), hostileTarget(e, addr))
		t.Logf("Dial: %v", err)
		if err == nil {
			t.Error("a 512 KiB response header list was accepted")
		}
		c.Close()
		settle(t, base, 5, 4<<20, 5)
	})

	// One frame of the largest size from each of many servers: no client connection keeps a
	// buffer of that size once the frame is read.
	t.Run("large frames", func(t *testing.T) {
		e := newEnv(t, envOpts{})
		const n = 20
		payload := make([]byte, MaxFrameSize)
		var mu sync.Mutex
		var sent []chan struct{}
		trigger := make(chan struct{})
		addr := hostileServer(t, e, nil, func(h *hostileConn) {
			id, err := h.readConnect()
			if err != nil {
				return
			}
			h.answer200(id)
			<-trigger
			mu.Lock()
			read := make(chan struct{})
			sent = append(sent, read)
			mu.Unlock()
			h.bw.Write([]byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), 0xfa, 0, 0, 0, 0, 0})
			h.bw.Write(payload)
			h.fr.WritePing(false, [8]byte{9})
			h.flush()
			for { // the client answers the PING once it has read the frame
				f, err := h.fr.ReadFrame()
				if err != nil {
					return
				}
				if pf, ok := f.(*http2.PingFrame); ok && pf.IsAck() {
					close(read)
					io.Copy(io.Discard, h.tc)
					return
				}
			}
		})
		for range n {
			c := hostileClient(t, e, ClientConfig{})
			defer c.Close()
			conn, err := c.Dial(context.Background(), hostileTarget(e, addr))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
		}
		idle := measure()
		close(trigger)
		if !eventually(wait, func() bool { mu.Lock(); defer mu.Unlock(); return len(sent) == n }) {
			t.Fatal("not every server connection sent its frame")
		}
		mu.Lock()
		all := sent
		mu.Unlock()
		for _, read := range all {
			select {
			case <-read:
			case <-time.After(wait):
				t.Fatal("a client did not answer the PING after the large frame")
			}
		}
		held := measure()
		perConn := (int64(held.heap) - int64(idle.heap)) / n
		t.Logf("%d client connections: %v; after a %d-byte frame on each: %v: %d KiB more per connection", n, idle, MaxFrameSize, held, perConn>>10)
		// Both ends' TLS record buffers grow by a record (16 KiB each); a kept frame buffer is 1 MiB.
		if perConn > 128<<10 {
			t.Errorf("%d KiB more heap per client connection after one large frame, want ≤ 128 KiB", perConn>>10)
		}
	})
}
