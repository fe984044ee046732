package server

import (
	"io"
	"net"
	"sync/atomic"
	"time"
)

// guard is a stream's downstream connection with the stream's one timer and its header-size
// budget. The HTTP loop arms the timer for each phase (waiting for a request, reading its
// headers); while perOp is set, every Read and Write arms it for their own duration (the
// stream idle timeout). When the timer fires, the connection is aborted (closed: whatever
// read or write is blocked on it ends, and the HBONE stream is reset). Only the stream's HTTP loop reads and writes a guard.
type guard struct {
	net.Conn
	t       *time.Timer
	expired atomic.Bool
	perOp   time.Duration // > 0: the timeout armed around each Read and Write
	budget  int           // bytes Read may still return; < 0: no budget
	spent   bool          // Read refused for want of budget
}

func newGuard(c net.Conn) *guard {
	g := &guard{Conn: c, budget: -1}
	g.t = time.AfterFunc(time.Hour, func() {
		g.expired.Store(true)
		if a, ok := c.(interface{ Abort() }); ok {
			a.Abort()
			return
		}
		c.Close()
	})
	g.t.Stop()
	return g
}

// arm (re)starts the timer; d <= 0 stops it.
func (g *guard) arm(d time.Duration) {
	if d <= 0 {
		g.t.Stop()
		return
	}
	g.t.Reset(d)
}

// setBudget limits what Read returns to n bytes from now on (n < 0: no limit).
func (g *guard) setBudget(n int) { g.budget, g.spent = n, false }

func (g *guard) Read(p []byte) (int, error) {
	if g.budget == 0 {
		g.spent = true
		return 0, io.EOF
	}
	if g.budget > 0 && len(p) > g.budget {
		p = p[:g.budget]
	}
	if g.perOp > 0 {
		g.t.Reset(g.perOp)
		defer g.t.Stop()
	}
	n, err := g.Conn.Read(p)
	if g.budget > 0 {
		g.budget -= n
	}
	return n, err
}

func (g *guard) Write(p []byte) (int, error) {
	if g.perOp > 0 {
		g.t.Reset(g.perOp)
		defer g.t.Stop()
	}
	return g.Conn.Write(p)
}

// Close stops the timer and closes the connection.
func (g *guard) Close() error {
	g.t.Stop()
	return g.Conn.Close()
}
