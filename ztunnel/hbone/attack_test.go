package hbone

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// The server under attack by one client with a valid mesh certificate (and by clients
// without one), as issue 11 describes: each attack is bounded and checks that the server stays
// within its limits while it lasts (goroutines, memory, fds, log lines), that legitimate tunnels
// are still answered, and that everything comes back to the baseline once the attacker leaves.
// The peer under attack is this package's Server; the attackers write raw frames (x/net's
// Framer) over real TLS.

// Rapid Reset (CVE-2023-44487): streams opened and reset at once, by a client that reads what
// the server sends and by one that never does. A reset does not free its handler's slot, so
// running handlers stay under MaxConcurrentStreams per connection, and a connection with too
// many reset streams waiting is closed (ENHANCE_YOUR_CALM; the attacker reconnects); a server
// whose writes stall closes the connection after WriteTimeout, even while the client keeps
// sending.
func TestAttackRapidReset(t *testing.T) {
	for _, reads := range []bool{true, false} {
		name := map[bool]string{true: "client reads", false: "client never reads"}[reads]
		t.Run(name, func(t *testing.T) {
			const maxStreams = 50
			o := envOpts{server: func(c *ServerConfig) {
				c.MaxConcurrentStreams = maxStreams
				c.WriteTimeout = time.Second
			}}
			ao := attackOpts{}
			if !reads {
				o.onAccept, ao.rcvBuf = smallSendBuffer, 4<<10
			}
			e := newEnv(t, o)
			up := newUpstream(t, echo)
			base := measure()
			peak := peakGoroutines()
			stop := make(chan struct{})
			legit := legitTraffic(t, e, up, stop)
			streams, conns := 0, 0
			var all []*attacker
			var last *attacker
			for deadline := time.Now().Add(attackFor); time.Now().Before(deadline); {
				a, err := dialAttacker(t, e, ao)
				if err != nil {
					t.Fatalf("attacker connection %d: %v", conns, err)
				}
				conns++
				if reads {
					a.drain()
				}
				last = a
				all = append(all, a)
				for time.Now().Before(deadline) {
					for range 100 {
						a.fr.WriteRSTStream(a.connect(up.addr.String()), http2.ErrCodeCancel)
					}
					streams += 100
					if err := a.flush(); err != nil {
						break // closed by the server: reconnect
					}
				}
			}
			if !reads {
				// The client kept its connection (and the goroutines on it) alive by
				// sending a frame every few seconds: the server closes it all the same.
				if !eventually(wait, last.closedByServer) {
					t.Error("the server kept a connection whose writes stall, while the client sent frames")
				}
			}
			close(stop)
			ok, lerr, p50, p99 := legit()
			pk := peak()
			during := measure()
			t.Logf("%d streams sent (HEADERS + RST_STREAM) on %d connections in %v; peak %d goroutines (baseline %v); %d legitimate tunnels, p50 %v, p99 %v (first error %v)",
				streams, conns, attackFor, pk, base, ok, p50.Round(time.Microsecond), p99.Round(time.Microsecond), lerr)
			// Per connection: maxStreams handlers, each with its relay and the test's echo
			// upstream, and the legitimate client's few.
			if limit := base.goroutines + 4*maxStreams + 50; pk > limit {
				t.Errorf("peak %d goroutines under attack, want ≤ %d", pk, limit)
			}
			if during.heap > base.heap+32<<20 {
				t.Errorf("heap %v under attack, baseline %v", during, base)
			}
			if ok == 0 {
				t.Errorf("no legitimate tunnel worked during the attack (first error %v)", lerr)
			}
			for _, a := range all {
				a.tcp.Close()
			}
			// The legitimate client's pooled connection stays: its goroutines and fds.
			settle(t, base, 10, 4<<20, 5)
			if err := tunnel(e.clientFor(t), e.target(up.addr), []byte("after")); err != nil {
				t.Errorf("a tunnel after the attack: %v", err)
			}
		})
	}
}

// clientFor is a fresh Client for e's server.
func (e *env) clientFor(t testing.TB) *Client {
	c, _ := e.client(ClientConfig{})
	return c
}

// blockingHandler answers 503 once release is closed, counting its calls and their streams'
// authorities.
type blockingHandler struct {
	release chan struct{}
	calls   atomic.Int32
	mu      sync.Mutex
	seen    []string
}

func (h *blockingHandler) ServeHBONE(ctx context.Context, req *Request) Response {
	h.calls.Add(1)
	h.mu.Lock()
	h.seen = append(h.seen, req.Authority.String())
	h.mu.Unlock()
	<-h.release
	return Response{Status: http.StatusServiceUnavailable}
}

// A handler keeps its slot until it returns, even when its stream is reset: streams opened
// then wait for a slot, and one reset while it waits never gets a handler nor an answer. Too
// many of them waiting closes the connection with GOAWAY ENHANCE_YOUR_CALM (x/net's
// "too_many_early_resets"). (The handler here ignores its context, as a slow one would.)
func TestRapidResetQueuedHandlers(t *testing.T) {
	h := &blockingHandler{release: make(chan struct{})}
	e := newEnv(t, envOpts{handler: h, server: func(c *ServerConfig) { c.MaxConcurrentStreams = 2 }})
	p := newRawPeer(t, e)
	p.connect(1, "10.0.0.1:1", false)
	p.connect(3, "10.0.0.3:3", false)
	if !eventually(wait, func() bool { return h.calls.Load() == 2 }) {
		t.Fatal("the first two handlers did not start")
	}
	p.fr.WriteRSTStream(1, http2.ErrCodeCancel) // their handlers go on
	p.fr.WriteRSTStream(3, http2.ErrCodeCancel)
	p.connect(5, "10.0.0.5:5", false) // waits for a slot...
	p.fr.WriteRSTStream(5, http2.ErrCodeCancel)
	p.connect(7, "10.0.0.7:7", false) // waits, and gets a slot
	p.fr.WritePing(false, [8]byte{5})
	p.expect(func(f http2.Frame) bool { pf, ok := f.(*http2.PingFrame); return ok && pf.IsAck() })
	if n := h.calls.Load(); n != 2 {
		t.Errorf("%d handlers running, want the 2 of MaxConcurrentStreams", n)
	}
	close(h.release)
	f := p.expect(func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok }).(*http2.MetaHeadersFrame)
	if f.StreamID != 7 {
		t.Errorf("stream %d answered (%s), want only stream 7", f.StreamID, f.PseudoValue("status"))
	}
	p.fr.WritePing(false, [8]byte{7}) // every answer is out before the PING's
	p.expect(func(f http2.Frame) bool {
		if hf, ok := f.(*http2.MetaHeadersFrame); ok {
			t.Errorf("stream %d answered (%s), want only stream 7", hf.StreamID, hf.PseudoValue("status"))
		}
		pf, ok := f.(*http2.PingFrame)
		return ok && pf.IsAck() && pf.Data == [8]byte{7}
	})
	h.mu.Lock()
	if len(h.seen) != 3 || h.seen[2] != "10.0.0.7:7" {
		t.Errorf("handlers ran for %v, want streams 1, 3 and 7", h.seen)
	}
	h.mu.Unlock()

	h2 := &blockingHandler{release: make(chan struct{})}
	defer close(h2.release)
	e2 := newEnv(t, envOpts{handler: h2, server: func(c *ServerConfig) { c.MaxConcurrentStreams = 1 }})
	p2 := newRawPeer(t, e2)
	for id := uint32(1); id < 1+2*(handlerQueueFactor+2); id += 2 {
		p2.connect(id, "10.0.0.1:1", false)
		p2.fr.WriteRSTStream(id, http2.ErrCodeCancel)
	}
	if ga := p2.expectGoAway(); ga.ErrCode != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("GOAWAY %s, want ENHANCE_YOUR_CALM", ga.ErrCode)
	}
}

// Floods of frames the server must answer (PING, SETTINGS, DATA on a closed stream), from a
// client that never reads: the answers wait in a bounded queue, and the server closes the
// connection when it is full, instead of growing it (and a goroutine per frame).
func TestAttackControlFlood(t *testing.T) {
	floods := []struct {
		name  string
		frame func(a *attacker)
	}{
		{"PING", func(a *attacker) { a.fr.WritePing(false, [8]byte{1}) }},
		{"SETTINGS", func(a *attacker) { a.fr.WriteSettings() }},
		{"empty DATA on a closed stream", func(a *attacker) { a.fr.WriteData(1, false, nil) }},
	}
	for _, fl := range floods {
		t.Run(fl.name, func(t *testing.T) {
			e := newEnv(t, envOpts{
				server:   func(c *ServerConfig) { c.MaxQueuedControlFrames = 100; c.WriteTimeout = time.Minute },
				status:   func(*Request) int { return http.StatusBadRequest },
				onAccept: smallSendBuffer,
			})
			base := measure()
			peak := peakGoroutines()
			a, err := dialAttacker(t, e, attackOpts{rcvBuf: 4 << 10})
			if err != nil {
				t.Fatal(err)
			}
			a.connect("10.0.0.1:80") // answered 400 and reset: stream 1 is closed
			a.fr.WriteData(1, true, nil)
			frames, closed := 0, false
			for deadline := time.Now().Add(attackFor); time.Now().Before(deadline) && !closed; {
				for range 500 {
					fl.frame(a)
				}
				frames += 500
				closed = a.flush() != nil
			}
			closed = closed || eventually(time.Second, a.closedByServer)
			pk := peak()
			during := measure()
			t.Logf("%d frames sent; closed by the server: %v; peak %d goroutines, %v (baseline %v)", frames, closed, pk, during, base)
			if !closed {
				t.Errorf("the server kept reading %d frames whose answers it could not send", frames)
			}
			if pk > base.goroutines+20 {
				t.Errorf("peak %d goroutines, baseline %d", pk, base.goroutines)
			}
			if during.heap > base.heap+16<<20 {
				t.Errorf("heap %v, baseline %v", during, base)
			}
			a.tcp.Close()
			settle(t, base, 5, 2<<20, 5)
		})
	}
}

// Many TCP connections that never start their TLS handshake, from one address: beyond
// MaxHandshakesPerSource they are closed as soon as accepted, so they cannot take the server's
// file descriptors, and a client from another address is served meanwhile. (All loopback
// addresses are local: the attacker dials from 127.0.0.2.)
func TestAttackIdleHandshakes(t *testing.T) {
	const perSource, conns = 10, 100
	e := newEnv(t, envOpts{server: func(c *ServerConfig) {
		c.MaxHandshakes, c.MaxHandshakesPerSource = 4*perSource, perSource
		c.HandshakeTimeout = 5 * time.Second
	}})
	up := newUpstream(t, echo)
	client := e.clientFor(t)
	base := measure()
	var open []*net.TCPConn
	for range conns {
		c, err := dialTCP(e.addr, attackOpts{from: "127.0.0.2"})
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	// Each connection the server closed reads EOF (or a reset) at once; the others time out.
	var closed atomic.Int32
	var wg sync.WaitGroup
	for _, c := range open {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
				closed.Add(1)
			}
		}()
	}
	wg.Wait()
	during := measure()
	t.Logf("%d of %d idle connections closed by the server; %v (baseline %v)", closed.Load(), conns, during, base)
	if closed.Load() < conns-perSource {
		t.Errorf("%d idle connections closed, want ≥ %d (all but the per-source handshake limit)", closed.Load(), conns-perSource)
	}
	if base.fds >= 0 && during.fds > base.fds+conns+perSource+5 {
		t.Errorf("%d fds held: %d by the attacker, the rest by the server (baseline %d)", during.fds, conns, base.fds)
	}
	if err := tunnel(client, e.target(up.addr), []byte("legit")); err != nil {
		t.Errorf("a client from another address during the attack: %v", err)
	}
	for _, c := range open {
		c.Close()
	}
	settle(t, base, 10, 2<<20, 8) // the legitimate client's pooled connection stays
}

// Authenticated connections beyond MaxConnectionsPerSource, or MaxConnections, are closed as
// soon as accepted (their TLS handshake fails); another address keeps being served while one
// address is at its limit.
func TestAttackConnectionLimits(t *testing.T) {
	e := newEnv(t, envOpts{server: func(c *ServerConfig) { c.MaxConnectionsPerSource, c.MaxConnections = 5, 8 }})
	up := newUpstream(t, echo)
	count := func(from string, n int) (ok int) {
		for range n {
			if _, err := dialAttacker(t, e, attackOpts{from: from}); err == nil {
				ok++
			}
		}
		return ok
	}
	if ok := count("127.0.0.3", 20); ok != 5 {
		t.Errorf("%d connections from one address, want the 5 of MaxConnectionsPerSource", ok)
	}
	if err := tunnel(e.clientFor(t), e.target(up.addr), []byte("legit")); err != nil {
		t.Errorf("a client from another address: %v", err)
	}
	if ok := count("127.0.0.4", 5); ok != 2 {
		t.Errorf("%d more connections from a third address, want 2 (MaxConnections 8: 5 + 1 + 2)", ok)
	}
}

// Authenticated connections that open no stream and answer every PING are closed after
// IdleTimeout, with GOAWAY first.
func TestAttackIdleConnections(t *testing.T) {
	e := newEnv(t, envOpts{server: func(c *ServerConfig) {
		c.IdleTimeout = 300 * time.Millisecond
		c.PingInterval, c.PingTimeout = 50*time.Millisecond, time.Second
	}})
	base := measure()
	const n = 10
	var wg sync.WaitGroup
	var goaway, pongs atomic.Int32
	for range n {
		a, err := dialAttacker(t, e, attackOpts{})
		if err != nil {
			t.Fatal(err)
		}
		defer a.tcp.Close()
		wg.Add(1)
		go func() { // answers PINGs until the connection ends
			defer wg.Done()
			a.tc.SetReadDeadline(time.Now().Add(wait))
			for {
				f, err := a.fr.ReadFrame()
				if err != nil {
					return
				}
				switch f := f.(type) {
				case *http2.PingFrame:
					if !f.IsAck() {
						pongs.Add(1)
						a.fr.WritePing(true, f.Data)
						a.flush()
					}
				case *http2.GoAwayFrame:
					goaway.Add(1)
				}
			}
		}()
	}
	wg.Wait() // every connection ended, or the read deadline failed the test below
	t.Logf("%d PINGs answered; %d GOAWAYs", pongs.Load(), goaway.Load())
	if goaway.Load() != n {
		t.Errorf("%d of %d idle connections got GOAWAY and were closed within %v", goaway.Load(), n, wait)
	}
	settle(t, base, 5, 2<<20, n+5) // the attacker's own sockets are closed when the test ends
}

// One frame of the largest size (of a type nobody knows) on each of many connections: the
// server keeps no buffer of that size once the frame is read.
func TestAttackLargeFrames(t *testing.T) {
	e := newEnv(t, envOpts{})
	const n = 40
	var open []*attacker
	base := measure()
	payload := make([]byte, MaxFrameSize)
	for range n {
		a, err := dialAttacker(t, e, attackOpts{})
		if err != nil {
			t.Fatal(err)
		}
		ping(t, a, 1)
		open = append(open, a)
	}
	idle := measure() // n connections, before their large frame
	for _, a := range open {
		// Written by hand: the Framer would build (and keep) a frame-sized buffer here too.
		a.bw.Write([]byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), 0xfa, 0, 0, 0, 0, 0})
		a.bw.Write(payload)
		ping(t, a, 2) // its answer comes once the server has read the frame
	}
	held := measure()
	perConn := (int64(held.heap) - int64(idle.heap)) / n
	t.Logf("%d connections: %v; after a %d-byte frame on each: %v: %d KiB more per connection", n, idle, MaxFrameSize, held, perConn>>10)
	// Both ends' TLS record buffers grow by a record (16 KiB each); a kept frame buffer is 1 MiB.
	if perConn > 128<<10 {
		t.Errorf("%d KiB more heap per connection after one large frame, want ≤ 128 KiB", perConn>>10)
	}
	for _, a := range open {
		a.tcp.Close()
	}
	settle(t, base, 5, 2<<20, 5)
}

// ping sends a PING and reads frames until its answer.
func ping(t testing.TB, a *attacker, v byte) {
	t.Helper()
	a.fr.WritePing(false, [8]byte{v})
	if err := a.flush(); err != nil {
		t.Fatal(err)
	}
	a.tc.SetReadDeadline(time.Now().Add(wait))
	for {
		f, err := a.fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if pf, ok := f.(*http2.PingFrame); ok && pf.IsAck() && pf.Data == [8]byte{v} {
			return
		}
	}
}

// Failed handshakes are logged at WARN, a few per second: a client that fails handshakes in a
// loop does not write the server's logs.
func TestAttackHandshakeFailureLogs(t *testing.T) {
	logs := &countingLog{}
	const perSecond = 5
	e := newEnv(t, envOpts{server: func(c *ServerConfig) {
		c.Logger = slog.New(logs)
		c.FailureLogsPerSecond = perSecond
	}})
	start := time.Now()
	const n = 300
	for range n {
		c, err := dialTCP(e.addr, attackOpts{})
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n") // not TLS: the handshake fails
		c.SetReadDeadline(time.Now().Add(wait))
		io.Copy(io.Discard, c) // until the server closes it
		c.Close()
	}
	elapsed := time.Since(start)
	lines := logs.n.Load()
	limit := int64(perSecond + perSecond*elapsed.Seconds() + 2)
	t.Logf("%d failed handshakes in %v: %d WARN lines (limit %d)", n, elapsed.Round(time.Millisecond), lines, limit)
	if lines > limit {
		t.Errorf("%d WARN lines for %d failed handshakes in %v, want ≤ %d", lines, n, elapsed, limit)
	}
	if lines == 0 {
		t.Error("no failed handshake was logged")
	}
}

// The handshake failure lines that are logged still say what failed.
func TestHandshakeFailureLogged(t *testing.T) {
	e := newEnv(t, envOpts{})
	c, err := dialTCP(e.addr, attackOpts{})
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\n\r\n")
	c.Close()
	if got := e.serverLog.await(t, "connection failed"); !strings.Contains(got, "tls") {
		t.Errorf("log %q", got)
	}
}
