package upstream

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"time"
)

// Connection pool limits besides the clusters' circuit breakers.
const (
	maxIdlePerHost = 16
	idleTimeout    = 60 * time.Second
)

// Conn is an upstream HTTP/1.1 connection to one host (an HBONE stream, or TCP to a pod
// outside the mesh).
type Conn struct {
	net.Conn
	BR       *bufio.Reader
	Reused   bool // taken from the idle pool (it may have been closed by the peer meanwhile)
	budget   *budgetReader
	h        *Host
	key      string // who may reuse it (the downstream the tunnel was opened for)
	requests uint32
	idleAt   time.Time
}

// ErrOverflow: a circuit breaker refused the request (Envoy's overflow, flag UO).
var ErrOverflow = errors.New("overflow")

// ErrReadLimit: BR has read as much from the connection as LimitRead allowed.
var ErrReadLimit = errors.New("response headers over the limit")

// LimitRead bounds what BR reads from the connection from now on to n bytes (an answer's
// headers); n < 0 removes the bound. Past it, BR's reads fail with ErrReadLimit.
func (c *Conn) LimitRead(n int) { c.budget.n = n }

// budgetReader is a reader with an adjustable bound.
type budgetReader struct {
	r io.Reader
	n int // < 0: none
}

func (b *budgetReader) Read(p []byte) (int, error) {
	if b.n == 0 {
		return 0, ErrReadLimit
	}
	if b.n > 0 && len(p) > b.n {
		p = p[:b.n]
	}
	n, err := b.r.Read(p)
	if b.n > 0 {
		b.n -= n
	}
	return n, err
}

// Dialer opens a connection to a host.
type Dialer func(ctx context.Context, h *Host) (net.Conn, error)

// Acquire gives a connection to h for key (an idle one opened for the same key), else a new
// one when the cluster's max_connections allows, else it waits as a pending request
// (max_pending_requests, else ErrOverflow) until a connection is released or ctx ends. A dial
// is bounded by the cluster's connect timeout.
func (c *Cluster) Acquire(ctx context.Context, h *Host, key string, dial Dialer) (*Conn, error) {
	for {
		conn, expired := h.takeIdle(key, time.Now())
		for _, e := range expired {
			e.Conn.Close()
			c.st.closed()
		}
		if conn != nil {
			conn.Reused = true
			return conn, nil
		}
		if c.st.conns.Add(1) <= c.Limits.MaxConnections {
			break
		}
		c.st.conns.Add(-1)
		if c.st.pending.Add(1) > c.Limits.MaxPendingRequests {
			c.st.pending.Add(-1)
			return nil, ErrOverflow
		}
		select {
		case <-c.st.released:
			c.st.pending.Add(-1)
		case <-ctx.Done():
			c.st.pending.Add(-1)
			return nil, ctx.Err()
		}
	}
	dctx, cancel := context.WithTimeout(ctx, c.ConnectTimeout)
	defer cancel()
	nc, err := dial(dctx, h)
	if err != nil {
		c.st.closed()
		return nil, err
	}
	br := &budgetReader{r: nc, n: -1}
	return &Conn{Conn: nc, BR: bufio.NewReaderSize(br, 16<<10), budget: br, h: h, key: key}, nil
}

// takeIdle takes the most recent idle connection for key, and the expired ones to close.
func (h *hostState) takeIdle(key string, now time.Time) (*Conn, []*Conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var expired []*Conn
	found := -1
	for i := len(h.idle) - 1; i >= 0; i-- {
		if h.idle[i].key == key && now.Sub(h.idle[i].idleAt) < idleTimeout {
			found = i
			break
		}
	}
	if len(h.idle) == 0 || now.Sub(h.idle[0].idleAt) < idleTimeout {
		// Nothing expired (the oldest is first): take the one found, if any, in place.
		if found < 0 {
			return nil, nil
		}
		conn := h.idle[found]
		h.idle = append(h.idle[:found], h.idle[found+1:]...)
		return conn, nil
	}
	var conn *Conn
	kept := make([]*Conn, 0, len(h.idle))
	for i, c := range h.idle {
		switch {
		case i == found:
			conn = c
		case now.Sub(c.idleAt) >= idleTimeout:
			expired = append(expired, c)
		default:
			kept = append(kept, c)
		}
	}
	h.idle = kept
	return conn, expired
}

// Release returns a connection after a request: kept idle when reusable (the answer was read
// whole, both sides keep alive, under max_requests_per_connection), else closed.
func (c *Cluster) Release(conn *Conn, reusable bool) {
	conn.requests++
	if reusable && (c.MaxRequestsPer == 0 || conn.requests < c.MaxRequestsPer) {
		conn.idleAt = time.Now()
		h := conn.h
		h.mu.Lock()
		if len(h.idle) < maxIdlePerHost {
			h.idle = append(h.idle, conn)
			h.mu.Unlock()
			return
		}
		// Full: the oldest idle connection makes room.
		oldest := h.idle[0]
		h.idle = append(h.idle[1:], conn)
		h.mu.Unlock()
		oldest.Conn.Close()
		c.st.closed()
		return
	}
	conn.Conn.Close()
	c.st.closed()
}

// closed releases a connection's place in max_connections and wakes a pending request.
func (st *clusterState) closed() {
	st.conns.Add(-1)
	select {
	case st.released <- struct{}{}:
	default:
	}
}
