package hbone

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Streams with the same {source identity, destination identities, address} share one TCP
// connection; another source identity gets its own.
func TestPoolSharesConnectionPerKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	up := newUpstream(t, echo)
	c, dt := e.client(ClientConfig{})
	a := e.dial(c, e.target(up.addr))
	tg := e.target(up.addr)
	tg.Authority = up.addr.String() // another stream, same key
	b := e.dial(c, tg)
	roundTrip(t, a, "a")
	roundTrip(t, b, "b")
	if n := e.ln.accepted(); n != 1 {
		t.Fatalf("%d TCP connections for two streams of one key, want 1", n)
	}
	// The destination identities are a set: their order does not matter.
	tg.Identities = []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/x/sa/x"), e.serverSVID.ID}
	tg2 := tg
	tg2.Identities = []spiffeid.ID{e.serverSVID.ID, spiffeid.RequireFromString("spiffe://cluster.local/ns/x/sa/x")}
	roundTrip(t, e.dial(c, tg), "c")
	roundTrip(t, e.dial(c, tg2), "d")
	if n := e.ln.accepted(); n != 2 {
		t.Fatalf("%d TCP connections, want 2 (one per identity set)", n)
	}

	other := e.target(up.addr)
	other.Source = e.ca.svid(t, "cluster.local/ns/client/sa/other", leafOpts{})
	o := e.dial(c, other)
	roundTrip(t, o, "o")
	if n := e.ln.accepted(); n != 3 {
		t.Fatalf("%d TCP connections, want 3 (one more for another source identity)", n)
	}
	if got := (<-e.requests).Peer; got != e.clientSVID.ID {
		t.Errorf("first stream's peer %s", got)
	}
	if c.Conns() != 3 || dt.dialed.Load() != 3 {
		t.Errorf("Conns() = %d, dialed %d, want 3", c.Conns(), dt.dialed.Load())
	}
}

// Past MaxStreamsPerConn open streams a second connection is opened; a freed slot is reused.
func TestPoolMaxStreams(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	up := newUpstream(t, echo)
	c, _ := e.client(ClientConfig{MaxStreamsPerConn: 2})
	s1 := e.dial(c, e.target(up.addr))
	s2 := e.dial(c, e.target(up.addr))
	if n := e.ln.accepted(); n != 1 {
		t.Fatalf("%d connections for 2 streams, want 1", n)
	}
	s3 := e.dial(c, e.target(up.addr))
	if n := e.ln.accepted(); n != 2 {
		t.Fatalf("%d connections for 3 streams with 2 per connection, want 2", n)
	}
	for i, s := range []*Conn{s1, s2, s3} {
		roundTrip(t, s, string(rune('a'+i)))
	}
	s1.Close()
	s4 := e.dial(c, e.target(up.addr))
	roundTrip(t, s4, "d")
	if n := e.ln.accepted(); n != 2 {
		t.Fatalf("%d connections after a slot was freed, want still 2", n)
	}
}

// A connection without streams for IdleTimeout is closed and leaves the pool.
func TestPoolIdleTimeout(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	up := newUpstream(t, echo)
	c, dt := e.client(ClientConfig{IdleTimeout: 20 * time.Millisecond})
	s := e.dial(c, e.target(up.addr))
	roundTrip(t, s, "x")
	s.CloseWrite()
	io.ReadAll(s)
	s.Close()
	dt.waitClosed(t) // the idle timer closed it
	if c.Conns() != 0 {
		t.Fatalf("Conns() = %d after the idle close, want 0", c.Conns())
	}
	roundTrip(t, e.dial(c, e.target(up.addr)), "y")
	if n := e.ln.accepted(); n != 2 {
		t.Fatalf("%d connections, want 2 (a new one after the idle close)", n)
	}
}

// A connection the server drops leaves the pool; the next stream gets a new one.
func TestPoolEvictsDeadConnection(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	up := newUpstream(t, echo)
	c, dt := e.client(ClientConfig{})
	s := e.dial(c, e.target(up.addr))
	roundTrip(t, s, "x")
	e.ln.closeAll() // the server side of every accepted connection
	if _, err := io.ReadAll(s); err == nil {
		t.Error("the stream ended cleanly on a dropped connection")
	}
	dt.waitClosed(t)
	roundTrip(t, e.dial(c, e.target(up.addr)), "y")
	if n := e.ln.accepted(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}

// Closing the Client aborts its streams and refuses new ones.
func TestClientClose(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	up := newUpstream(t, echo)
	c, dt := e.client(ClientConfig{})
	s := e.dial(c, e.target(up.addr))
	c.Close()
	dt.waitClosed(t)
	if _, err := io.ReadAll(s); err == nil {
		t.Error("stream ended cleanly after Client.Close")
	}
	dialErr(t, c, e.target(up.addr))
}

// roundTrip writes msg on an echo stream and reads it back.
func roundTrip(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("read %q, %v; want %q", buf, err, msg)
	}
}

// Concurrent dials for one key wait for the connection being opened instead of each opening
// their own.
func TestPoolConcurrentDialsShareConnection(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	up := newUpstream(t, echo)
	c, _ := e.client(ClientConfig{})
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			conn, err := c.Dial(ctx, e.target(up.addr))
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			msg := string(rune('a' + i))
			io.WriteString(conn, msg)
			buf := make([]byte, 1)
			if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != msg {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := e.ln.accepted(); got != 1 {
		t.Errorf("%d connections for %d concurrent streams, want 1", got, n)
	}
}

// A peer that stops answering is found by the PING keep-alive and its connection evicted.
func TestPoolPingTimeoutEvicts(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	up := newUpstream(t, echo)
	// A TCP relay to the server that can be frozen: it then drops everything, as a dead peer.
	relay := listen(t)
	var frozen atomic.Bool
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if err != nil {
				dst.Close()
				return
			}
			if !frozen.Load() {
				dst.Write(buf[:n])
			}
		}
	}
	go func() {
		for {
			c, err := relay.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", e.addr.String())
			if err != nil {
				c.Close()
				continue
			}
			go pipe(s, c)
			go pipe(c, s)
		}
	}()
	c, dt := e.client(ClientConfig{PingInterval: 50 * time.Millisecond, PingTimeout: time.Second})
	tg := e.target(up.addr)
	tg.Address = addrOf(relay)
	s := e.dial(c, tg)
	roundTrip(t, s, "x")
	frozen.Store(true)
	dt.waitClosed(t) // PING unanswered: the connection is closed
	if _, err := s.Read(make([]byte, 1)); err == nil {
		t.Error("the stream survived its connection")
	}
	if c.Conns() != 0 {
		t.Errorf("Conns() = %d, want 0", c.Conns())
	}
	frozen.Store(false)
	roundTrip(t, e.dial(c, tg), "y")
}
