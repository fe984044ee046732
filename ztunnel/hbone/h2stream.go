package hbone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Stream is one CONNECT stream: its receive buffer, its send window and its state.
type h2Stream struct {
	c  *h2Conn
	id uint32

	// Under c.mu:
	sendWindow int64
	sentEnd    bool // END_STREAM sent
	recvEnd    bool // END_STREAM received
	reset      bool // RST_STREAM sent or received, or the connection closed
	answered   bool // server: the response HEADERS were written

	wmu sync.Mutex // one writer of DATA at a time (Write, CloseWrite)

	mu        sync.Mutex
	readable  sync.Cond // on mu: bytes arrived, the stream ended, or the response came
	buf       recvBuf
	eof       bool  // END_STREAM received and delivered
	rerr      error // the stream was reset or its connection closed
	recvAvail int64 // what the peer may still send on the stream
	pending   int64 // bytes read and not yet given back with WINDOW_UPDATE
	received  int64 // bytes taken by Read or written to the sink

	// sink, while a relay runs (relayStreamTo), is the connection the stream's bytes go to:
	// the read loop writes DATA to it directly, without blocking, when nothing is buffered
	// and the relay goroutine is not writing (draining); what the socket does not take is
	// buffered for that goroutine.
	sink     syscall.RawConn
	draining bool
	sinkErr  error // a direct write failed: the relay ends with it

	// The response (client side): ready is closed when it, or an error, is in.
	ready   chan struct{}
	status  int
	header  []hpack.HeaderField
	gotResp bool

	cancel context.CancelCauseFunc // server: ends the handler's context; under mu
	// stop, while a Relay runs the stream, ends the relay (closes both its connections); abort
	// calls it, as nothing more can go either way once the stream is reset. Under mu.
	stop func()
}

// setStop gives the stream the function that ends its relay (see stop).
func (s *h2Stream) setStop(stop func()) {
	s.mu.Lock()
	s.stop = stop
	s.mu.Unlock()
}

// setCancel gives the stream the function that ends its handler's context; a stream already
// reset calls it at once.
func (s *h2Stream) setCancel(cancel context.CancelCauseFunc) {
	s.mu.Lock()
	s.cancel = cancel
	aborted := s.rerr != nil
	s.mu.Unlock()
	if aborted {
		cancel(ErrEarlyReset)
	}
}

// isReset reports whether the stream was reset or its connection closed.
func (s *h2Stream) isReset() bool {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.reset
}

// newStream makes stream id's state; c.mu held.
func (c *h2Conn) newStream(id uint32) *h2Stream {
	s := &h2Stream{c: c, id: id, sendWindow: int64(c.peer.window), recvAvail: int64(c.local.streamWindow)}
	s.readable.L = &s.mu
	if c.client {
		s.ready = make(chan struct{})
	}
	return s
}

// admit takes a DATA frame of size bytes (padding included) against the stream's window: ok
// when its payload is to be delivered; otherwise the payload is dropped, and code, when not 0,
// is what to reset the stream with. It runs on the read loop.
func (s *h2Stream) admit(size int64) (ok bool, code http2.ErrCode) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.rerr != nil: // reset here, and the peer has not seen it yet
		return false, 0
	case s.eof:
		return false, http2.ErrCodeStreamClosed
	case size > s.recvAvail:
		return false, http2.ErrCodeFlowControl
	}
	s.recvAvail -= size
	return true, 0
}

// receive reads the n data bytes of an admitted DATA frame from r and delivers them, through
// a pooled buffer of at most dataPiece bytes. It runs on the read loop.
func (s *h2Stream) receive(r io.Reader, n int64) error {
	if n == 0 {
		return nil
	}
	pool := &smallBufs
	if n > smallBufSize {
		pool = &pieceBufs
	}
	bp := pool.Get().(*[]byte)
	defer pool.Put(bp)
	buf := *bp
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := io.ReadFull(r, buf[:k]); err != nil {
			return err
		}
		s.deliver(buf[:k])
		n -= k
	}
	return nil
}

// dataPiece is the most of a DATA frame read before it is delivered: the buffer a connection
// holds while it reads a frame, given back after it.
const dataPiece = 64 << 10

var pieceBufs = sync.Pool{New: func() any { b := make([]byte, dataPiece); return &b }}

// deliver adds received bytes: written to the sink at once when a relay runs and nothing is
// buffered, else buffered for the reader. It runs on the read loop.
func (s *h2Stream) deliver(data []byte) {
	s.mu.Lock()
	if s.rerr != nil { // reset while the frame was read: dropped
		s.mu.Unlock()
		s.c.giveBack(int64(len(data)), true)
		return
	}
	direct, inc := 0, int64(0)
	if s.sink != nil && !s.draining && s.sinkErr == nil && s.buf.len() == 0 {
		direct, s.sinkErr = writeNonblocking(s.sink, data)
		inc = s.consumedLocked(direct)
		data = data[direct:]
	}
	if len(data) > 0 {
		s.buf.write(data)
	}
	if len(data) > 0 || s.sinkErr != nil {
		s.readable.Signal()
	}
	s.mu.Unlock()
	if direct > 0 {
		s.windowBack(inc, direct, true)
	}
}

// endRecv records the peer's END_STREAM on DATA. It runs on the read loop.
func (s *h2Stream) endRecv() {
	s.mu.Lock()
	s.eof = true
	s.readable.Signal()
	s.mu.Unlock()
	s.recvEnded()
}

// consumedLocked records n bytes taken from the stream and returns the stream window to
// give back now (0 until half the window is pending); s.mu held.
func (s *h2Stream) consumedLocked(n int) int64 {
	s.received += int64(n)
	s.pending += int64(n)
	if s.eof || s.pending < int64(s.c.local.streamWindow)/2 {
		return 0
	}
	inc := s.pending
	s.recvAvail += inc
	s.pending = 0
	return inc
}

// windowBack sends the stream's WINDOW_UPDATE (inc > 0) and returns n bytes to the
// connection window.
func (s *h2Stream) windowBack(inc int64, n int, fromLoop bool) {
	if inc > 0 {
		s.c.send(h2Ctrl{typ: http2.FrameWindowUpdate, id: s.id, val: uint32(inc)}, fromLoop)
	}
	s.c.giveBack(int64(n), fromLoop)
}

// recvEnded records END_STREAM; a stream ended both ways leaves the connection.
func (s *h2Stream) recvEnded() {
	s.c.mu.Lock()
	s.recvEnd = true
	done := s.sentEnd
	s.c.mu.Unlock()
	if done {
		s.c.removeStream(s)
	}
}

// onHeaders takes the response (client) or trailers.
func (s *h2Stream) onHeaders(f *http2.MetaHeadersFrame) {
	s.mu.Lock()
	if s.c.client && !s.gotResp {
		status := 0
		fmt.Sscan(f.PseudoValue("status"), &status)
		if status >= 100 && status < 200 {
			s.mu.Unlock()
			return // informational: the final answer follows
		}
		if status == 0 || f.Truncated {
			s.mu.Unlock()
			s.c.resetStream(s.id, http2.ErrCodeProtocol, errors.New("hbone: malformed response headers"))
			return
		}
		s.gotResp = true
		s.status = status
		s.header = append([]hpack.HeaderField(nil), f.RegularFields()...)
		close(s.ready)
	} else if s.eof { // the peer already ended its side (RFC 9113 §5.1, half-closed (remote))
		s.mu.Unlock()
		s.c.resetStream(s.id, http2.ErrCodeStreamClosed, errStreamReset)
		return
	} else if !f.StreamEnded() { // trailers must end the stream
		s.mu.Unlock()
		s.c.resetStream(s.id, http2.ErrCodeProtocol, errStreamReset)
		return
	}
	ended := f.StreamEnded() && !s.eof
	if ended {
		s.eof = true
		s.readable.Signal()
	}
	s.mu.Unlock()
	if ended {
		s.recvEnded()
	}
}

// abort ends the stream with err: reads and writes fail, and it leaves the connection.
func (s *h2Stream) abort(err error) {
	s.c.mu.Lock()
	already := s.reset
	s.reset = true
	answered := s.answered
	sentEnd := s.sentEnd
	s.c.sendable.Broadcast()
	s.c.mu.Unlock()
	if already {
		return
	}
	s.mu.Lock()
	unread := int64(0)
	switch {
	case err == errPeerDone && (s.eof || sentEnd), err == errPeerCancel && sentEnd:
		// A normal end (RFC 9113 §8.1): the peer's side was complete, or ours was and the peer
		// wants no more. Go's x/net client resets a request whose answer ended before its body
		// with NO_ERROR, or with CANCEL when its caller closes the read answer at that moment
		// (its writeRequest selects between the two at random). What was received stays
		// readable, then reads see EOF.
		s.eof = true
	default:
		if s.rerr == nil {
			s.rerr = err
		}
		unread = int64(s.buf.len())
		s.buf.release()
	}
	if s.ready != nil && !s.gotResp {
		s.gotResp = true
		close(s.ready)
	}
	s.readable.Broadcast()
	cancel := s.cancel
	// A relay whose reading side already ended (END_STREAM) would otherwise wait for its other
	// side's source for good; when received bytes are still to be written, the relay stops
	// once it has written them (halfRelay).
	stop := s.stop
	if s.buf.len() > 0 {
		stop = nil
	}
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
	if cancel != nil {
		cause := err
		if !answered {
			cause = ErrEarlyReset
		}
		cancel(cause)
	}
	if unread > 0 {
		s.c.giveBack(unread, true)
	}
	s.c.removeStream(s)
}

// resetErr is why the stream was reset, nil when it was not (or ended normally).
func (s *h2Stream) resetErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rerr
}

// Read reads the stream's body; io.EOF after the peer's END_STREAM.
func (s *h2Stream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.mu.Lock()
	for s.buf.len() == 0 && !s.eof && s.rerr == nil {
		s.readable.Wait()
	}
	if s.buf.len() == 0 {
		err := s.rerr
		if err == nil {
			err = io.EOF
		}
		s.mu.Unlock()
		return 0, err
	}
	n := s.buf.read(p)
	inc := s.consumedLocked(n)
	s.mu.Unlock()
	s.windowBack(inc, n, false)
	return n, nil
}

// Write sends p as DATA frames, waiting for flow-control window.
func (s *h2Stream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	c := s.c
	written := 0
	for len(p) > 0 {
		c.mu.Lock()
		for !s.reset && !s.sentEnd && !c.closed && (s.sendWindow <= 0 || c.sendWindow <= 0) {
			c.sendable.Wait()
		}
		if s.reset || s.sentEnd || c.closed {
			c.mu.Unlock()
			return written, net.ErrClosed
		}
		n := int64(len(p))
		n = min(n, s.sendWindow, c.sendWindow, int64(c.peer.maxFrame))
		s.sendWindow -= n
		c.sendWindow -= n
		c.mu.Unlock()

		c.wmu.Lock()
		err := c.fw.WriteData(s.id, false, p[:n])
		c.unlockWrite()
		if err != nil {
			c.closeWithError(err)
			return written, err
		}
		written += int(n)
		p = p[n:]
	}
	return written, nil
}

// CloseWrite ends the stream's send side (END_STREAM).
func (s *h2Stream) CloseWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	c := s.c
	c.mu.Lock()
	if s.reset || s.sentEnd || c.closed {
		c.mu.Unlock()
		return nil
	}
	s.sentEnd = true
	done := s.recvEnd
	c.mu.Unlock()
	c.wmu.Lock()
	err := c.fw.WriteData(s.id, true, nil)
	c.unlockWrite()
	if done {
		c.removeStream(s)
	}
	return err
}

// writeResponse sends the answer to a request stream (server); a final status other than 200
// ends the stream. A stream already reset gets no answer (ErrEarlyReset).
func (s *h2Stream) writeResponse(fields []hpack.HeaderField, end bool) error {
	c := s.c
	c.mu.Lock()
	if s.reset {
		c.mu.Unlock()
		return ErrEarlyReset
	}
	s.answered = true
	done := false
	if end {
		s.sentEnd = true
		done = s.recvEnd
	}
	c.mu.Unlock()
	if done {
		// Closed both ways once this frame leaves: it leaves the connection first, so a frame
		// the peer sends after reading it finds a closed stream, never this one.
		c.removeStream(s)
	}
	c.wmu.Lock()
	err := c.writeHeaders(s.id, fields, end)
	c.unlockWrite()
	return err
}

// Close resets the stream unless both sides have ended it.
func (s *h2Stream) Close() error {
	c := s.c
	c.mu.Lock()
	finished := s.reset || (s.sentEnd && s.recvEnd)
	c.mu.Unlock()
	if finished {
		c.removeStream(s)
		return nil
	}
	c.queue(h2Ctrl{typ: http2.FrameRSTStream, id: s.id, val: uint32(http2.ErrCodeCancel)})
	s.abort(net.ErrClosed)
	return nil
}

// recvBuf is a stream's received bytes not yet read: a queue of pooled fixed-size chunks,
// held only while they have bytes (an idle stream holds none), never copied to grow.
type recvBuf struct {
	chunks []*[recvChunk]byte
	off    int // read offset in chunks[0]
	end    int // write offset in the last chunk
	n      int // unread bytes
}

const recvChunk = 32 << 10

var recvChunks = sync.Pool{New: func() any { return new([recvChunk]byte) }}

func (r *recvBuf) len() int { return r.n }

func (r *recvBuf) write(p []byte) {
	for len(p) > 0 {
		if len(r.chunks) == 0 || r.end == recvChunk {
			r.chunks = append(r.chunks, recvChunks.Get().(*[recvChunk]byte))
			r.end = 0
		}
		n := copy(r.chunks[len(r.chunks)-1][r.end:], p)
		r.end += n
		r.n += n
		p = p[n:]
	}
}

func (r *recvBuf) read(p []byte) int {
	total := 0
	for len(p) > 0 && r.n > 0 {
		last := len(r.chunks) == 1
		limit := recvChunk
		if last {
			limit = r.end
		}
		n := copy(p, r.chunks[0][r.off:limit])
		r.off += n
		r.n -= n
		total += n
		p = p[n:]
		if r.off == limit { // chunk done
			recvChunks.Put(r.chunks[0])
			r.chunks[0] = nil
			r.chunks = r.chunks[1:]
			r.off = 0
			if last {
				r.chunks, r.end = r.chunks[:0], 0
			}
		}
	}
	return total
}

func (r *recvBuf) release() {
	for i, c := range r.chunks {
		recvChunks.Put(c)
		r.chunks[i] = nil
	}
	*r = recvBuf{}
}

// relayTo copies the stream's bytes to dst until the peer ends the stream (nil error) or it
// fails, as copyBuffer would; with a TCP dst, the read loop writes most bytes itself and this
// goroutine only finishes what the socket did not take at once. It returns the bytes copied.
func (s *h2Stream) relayTo(dst net.Conn) (int64, error) {
	sink := sinkOf(dst)
	if sink == nil {
		return copyBuffer(dst, s)
	}
	bp := smallBufs.Get().(*[]byte)
	defer smallBufs.Put(bp)
	buf := *bp
	s.mu.Lock()
	s.sink = sink
	start := s.received
	defer func() { s.sink = nil; s.mu.Unlock() }()
	for {
		for s.buf.len() == 0 && !s.eof && s.rerr == nil && s.sinkErr == nil {
			s.readable.Wait()
		}
		switch {
		case s.sinkErr != nil:
			return s.received - start, s.sinkErr
		case s.buf.len() > 0:
			n := s.buf.read(buf)
			inc := s.consumedLocked(n)
			s.draining = true
			s.mu.Unlock()
			s.windowBack(inc, n, false)
			_, err := dst.Write(buf[:n])
			s.mu.Lock()
			s.draining = false
			if err != nil {
				return s.received - start, err
			}
		case s.rerr != nil:
			return s.received - start, s.rerr
		default: // END_STREAM and everything written
			return s.received - start, nil
		}
	}
}
