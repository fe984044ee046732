package hbone

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// countingConn counts the Write calls that reach the TCP connection.
type countingConn struct {
	net.Conn
	mu     sync.Mutex
	writes int
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes++
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *countingConn) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes
}

// TestGatheredWrite: a write of several TLS records reaches the socket in one write, and the
// peer reads exactly what was written, before and after small (ungathered) writes.
func TestGatheredWrite(t *testing.T) {
	ca := newTestCA(t, "cluster.local")
	cli := ca.svid(t, "cluster.local/ns/a/sa/client", leafOpts{})
	srv := ca.svid(t, "cluster.local/ns/b/sa/server", leafOpts{})
	cconf, err := ClientTLSConfig(cli, ca.bundle(), []spiffeid.ID{srv.ID})
	if err != nil {
		t.Fatal(err)
	}
	sconf, err := ServerTLSConfig(ca.bundle(), nil, func(netip.Addr) (*x509svid.SVID, error) { return srv, nil })
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t)
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(tls.Server(c, sconf))
		got <- b
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	counted := &countingConn{Conn: raw}
	g := &gatherConn{Conn: counted}
	tc := tls.Client(g, cconf)
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	c := newGatheringTLS(tc, g)
	want := bytes.Repeat([]byte("0123456789abcdef"), 20000) // 320,000 bytes: 20 records
	before := counted.count()
	if _, err := c.Write(want[:100]); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(want[100:]); err != nil {
		t.Fatal(err)
	}
	if n := counted.count() - before; n != 2 {
		t.Errorf("%d socket writes for one small and one 20-record write, want 2", n)
	}
	c.Close()
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("peer read %d bytes (equal: %v), want %d", len(b), bytes.Equal(b, want), len(want))
	}
}
