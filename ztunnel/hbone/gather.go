package hbone

import (
	"crypto/tls"
	"net"
	"sync"
	"time"
)

// crypto/tls writes each TLS record of a Write with its own write(2): a 64 KiB HTTP/2 DATA
// frame is five records, so five system calls (and five wake-ups of the reader on the other
// end). gatherConn and gatheringTLS send the records of one tls.Conn.Write in a single write(2)
// instead, through a pooled buffer held only during that Write.

// gatherConn is the TCP connection under a tls.Conn. While gathering, what crypto/tls writes
// is appended to buf instead of being sent; flush sends it.
type gatherConn struct {
	net.Conn

	mu     sync.Mutex // orders gathered and direct writes; held across the write(2)
	gather bool
	buf    *[]byte
	wto    time.Duration // write timeout set on each write (when Conn cannot do it itself)
}

// setWriteTimeout makes every write to the socket fail once it has made no progress for d
// (d ≤ 0: never). A raw socket arms the deadline only when it is full; another connection gets
// a deadline before each write. It is called before the connection is used.
func (g *gatherConn) setWriteTimeout(d time.Duration) {
	if d <= 0 {
		return
	}
	if wt, ok := g.Conn.(interface{ setWriteTimeout(time.Duration) }); ok {
		wt.setWriteTimeout(d)
		return
	}
	g.wto = d
}

// write writes p to the socket; g.mu held.
func (g *gatherConn) write(p []byte) (int, error) {
	if g.wto > 0 {
		g.Conn.SetWriteDeadline(time.Now().Add(g.wto))
	}
	return g.Conn.Write(p)
}

// gatherMin is the smallest tls.Conn.Write worth gathering: anything that fits one record
// goes out in one write(2) anyway.
const gatherMin = 16 << 10

// gatherBufs holds the buffers of writes being gathered, sized for the largest write seen.
var gatherBufs = sync.Pool{New: func() any { b := make([]byte, 0, 66<<10); return &b }}

func (g *gatherConn) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.gather {
		*g.buf = append(*g.buf, p...)
		return len(p), nil
	}
	return g.write(p)
}

// start gathers until flush; n is the size of the plaintext about to be written.
func (g *gatherConn) start(n int) {
	b := gatherBufs.Get().(*[]byte)
	if need := n + (n/16384+1)*64; cap(*b) < need { // record header, tag and padding per record
		*b = make([]byte, 0, need)
	}
	g.mu.Lock()
	g.gather = true
	g.buf = b
	g.mu.Unlock()
}

// flush sends what was gathered since start. An error is crypto/tls's to see: the
// connection is broken, and the next Write (or Read) fails.
func (g *gatherConn) flush() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gather = false
	b := g.buf
	g.buf = nil
	var err error
	if len(*b) > 0 {
		_, err = g.write(*b)
	}
	if cap(*b) <= 1<<20 {
		*b = (*b)[:0]
		gatherBufs.Put(b)
	}
	return err
}

// gatheringTLS is a *tls.Conn whose large writes leave in one write(2). x/net's HTTP/2 code
// gets it in place of the *tls.Conn (it finds the TLS state through ConnectionState).
type gatheringTLS struct {
	*tls.Conn
	raw *gatherConn
	wmu sync.Mutex // one gathered Write at a time
}

// newGatheringTLS wraps tc, which must have been made over raw.
func newGatheringTLS(tc *tls.Conn, raw *gatherConn) *gatheringTLS {
	return &gatheringTLS{Conn: tc, raw: raw}
}

func (c *gatheringTLS) Write(p []byte) (int, error) {
	if len(p) < gatherMin || c.raw == nil {
		return c.Conn.Write(p)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.raw.start(len(p))
	n, err := c.Conn.Write(p)
	if ferr := c.raw.flush(); err == nil && ferr != nil {
		// crypto/tls believes these records were sent; they were not. The stream of records
		// is broken: close so nothing else is sent on it.
		c.raw.Conn.Close()
		return 0, ferr
	}
	return n, err
}
