package hbone

import (
	"crypto/tls"
	"net"
	"sync"
)

// crypto/tls writes each record (≤ 16 KiB) with its own write(2): a 64 KiB DATA frame costs
// four syscalls, and on loopback those dominate the CPU. corkedTLS gathers the records of one
// Write into one buffer and sends them together; it is the connection x/net is given.

const maxCork = 256 << 10 // flushed earlier when this much is gathered

var corkPool = sync.Pool{New: func() any { b := make([]byte, 0, maxCork); return &b }}

// corkConn is the TCP connection under the TLS one: while corked, writes are gathered.
type corkConn struct {
	net.Conn
	mu     sync.Mutex
	corked int
	buf    *[]byte
}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.corked == 0 {
		return c.Conn.Write(p)
	}
	if c.buf == nil {
		c.buf = corkPool.Get().(*[]byte)
	}
	if len(*c.buf)+len(p) > maxCork {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > maxCork {
			return c.Conn.Write(p)
		}
	}
	*c.buf = append(*c.buf, p...)
	return len(p), nil
}

func (c *corkConn) cork() {
	c.mu.Lock()
	c.corked++
	c.mu.Unlock()
}

func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked--
	if c.corked > 0 || c.buf == nil {
		return nil
	}
	err := c.flushLocked()
	corkPool.Put(c.buf)
	c.buf = nil
	return err
}

func (c *corkConn) flushLocked() error {
	if len(*c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(*c.buf)
	*c.buf = (*c.buf)[:0]
	return err
}

// corkedTLS is a TLS connection whose every Write leaves in as few syscalls as possible.
type corkedTLS struct {
	*tls.Conn
	raw *corkConn
}

func newCorkedTLS(raw net.Conn, wrap func(net.Conn) *tls.Conn) *corkedTLS {
	cc := &corkConn{Conn: raw}
	return &corkedTLS{Conn: wrap(cc), raw: cc}
}

var NoCork bool

func (c *corkedTLS) Write(p []byte) (int, error) {
	if NoCork {
		return c.Conn.Write(p)
	}
	c.raw.cork()
	n, err := c.Conn.Write(p)
	if ferr := c.raw.uncork(); err == nil && ferr != nil {
		return 0, ferr
	}
	return n, err
}
