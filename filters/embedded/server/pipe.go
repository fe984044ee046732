package server

import (
	"errors"
	"io"
	"net"
	"os"
	"time"
)

// pipe returns two connected in-memory net.Conns whose CloseWrite ends the other side's reads
// with EOF (net.Pipe cannot half-close): the HBONE server relays the CONNECT stream into one
// end, the HTTP loop serves the other, and a client's END_STREAM reaches the loop as EOF.
func pipe() (a, b net.Conn) {
	ar, bw := io.Pipe()
	br, aw := io.Pipe()
	return &pipeConn{r: ar, w: aw}, &pipeConn{r: br, w: bw}
}

type pipeConn struct {
	r *io.PipeReader
	w *io.PipeWriter
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

func (c *pipeConn) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if errors.Is(err, io.ErrClosedPipe) {
		err = net.ErrClosed
	}
	return n, err
}

func (c *pipeConn) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if errors.Is(err, io.ErrClosedPipe) {
		err = net.ErrClosed
	}
	return n, err
}

// CloseWrite ends what the other side reads (EOF) and keeps reading.
func (c *pipeConn) CloseWrite() error { return c.w.Close() }

// Close ends both directions: the other side's reads see EOF, its writes fail.
func (c *pipeConn) Close() error {
	c.w.Close()
	c.r.CloseWithError(io.ErrClosedPipe)
	return nil
}

// errAborted is what the relay reads from a stream the waypoint aborted (a timeout).
var errAborted = errors.New("stream aborted by the waypoint")

// Abort ends both directions with an error, not EOF: the HBONE relay reading the other end
// resets the CONNECT stream rather than ending it cleanly, and stops relaying.
func (c *pipeConn) Abort() {
	c.w.CloseWithError(errAborted)
	c.r.CloseWithError(io.ErrClosedPipe)
}

func (c *pipeConn) LocalAddr() net.Addr                { return pipeAddr{} }
func (c *pipeConn) RemoteAddr() net.Addr               { return pipeAddr{} }
func (c *pipeConn) SetDeadline(t time.Time) error      { return os.ErrNoDeadline }
func (c *pipeConn) SetReadDeadline(t time.Time) error  { return os.ErrNoDeadline }
func (c *pipeConn) SetWriteDeadline(t time.Time) error { return os.ErrNoDeadline }
