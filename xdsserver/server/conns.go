package server

import (
	"net"
	"sync"
	"sync/atomic"
)

// connKey names a connection by its two ends, as gRPC's peer information gives them.
func connKey(remote, local net.Addr) string {
	if remote == nil || local == nil {
		return ""
	}
	return remote.String() + "|" + local.String()
}

// conns are the open connections of the listeners returned by Listener, by connKey, so that
// the connection of a client that does not read can be closed.
type conns struct {
	mu sync.Mutex
	m  map[string]net.Conn
}

func (c *conns) add(k string, conn net.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]net.Conn{}
	}
	c.m[k] = conn
}

func (c *conns) remove(k string, conn net.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m[k] == conn {
		delete(c.m, k)
	}
}

// close closes the connection of key k; it reports false when there is none.
func (c *conns) close(k string) bool {
	c.mu.Lock()
	conn := c.m[k]
	c.mu.Unlock()
	if conn == nil {
		return false
	}
	_ = conn.Close()
	return true
}

func (c *conns) has(k string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[k] != nil
}

// Listener wraps l for a gRPC server that carries the ADS service: at most
// Limits.MaxConnections connections are open at once (one more is closed when accepted), and
// the connection of a client that does not read its responses can be closed (Limits.SendTimeout,
// AckTimeout). Serve uses it.
func (s *Server) Listener(l net.Listener) net.Listener {
	return &limitListener{Listener: l, s: s}
}

type limitListener struct {
	net.Listener
	s    *Server
	open atomic.Int64
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > int64(l.s.limits.MaxConnections) {
			l.open.Add(-1)
			_ = c.Close()
			l.s.refuse(refusedConnections, "connection refused: too many connections", "remote", c.RemoteAddr().String(), "limit", l.s.limits.MaxConnections)
			continue
		}
		tc := &trackedConn{Conn: c, l: l, key: connKey(c.RemoteAddr(), c.LocalAddr())}
		l.s.conns.add(tc.key, tc)
		return tc, nil
	}
}

// trackedConn is a connection of a limitListener: closing it frees its place.
type trackedConn struct {
	net.Conn
	l    *limitListener
	key  string
	once sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.open.Add(-1)
		c.l.s.conns.remove(c.key, c)
	})
	return err
}
