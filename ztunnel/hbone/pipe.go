package hbone

import (
	"io"
	"sync"
)

// bodyPipe carries a client stream's writes to x/net, which reads them as the CONNECT's
// request body from its own goroutine. Unlike io.Pipe, a Write does not wait for that goroutine
// to take the bytes: it copies them into a buffer of at most pipeMax bytes (blocking only while
// the buffer is full, which is the back-pressure) and returns, so each write wakes one goroutine
// instead of two, and bytes written while x/net is busy sending a frame go out together in the
// next one. The buffer is pooled and held only while it has bytes, so an idle stream holds
// none.
type bodyPipe struct {
	mu       sync.Mutex
	readable sync.Cond // signalled when bytes arrive or the pipe closes
	writable sync.Cond // signalled when bytes are taken or the reader closes

	buf  *[]byte // nil when empty
	off  int     // start of the unread bytes in *buf
	werr error   // set by CloseWithError: io.EOF once the buffer is drained, or the abort error
	rerr bool    // the reader closed: writes fail with io.ErrClosedPipe
}

// pipeMax bounds the bytes buffered per stream: one frame's worth (the server's max frame).
const pipeMax = 64 << 10

var pipeBufs = sync.Pool{New: func() any { b := make([]byte, 0, pipeMax); return &b }}

func newBodyPipe() *bodyPipe {
	p := &bodyPipe{}
	p.readable.L = &p.mu
	p.writable.L = &p.mu
	return p
}

func (p *bodyPipe) buffered() int {
	if p.buf == nil {
		return 0
	}
	return len(*p.buf) - p.off
}

// Write copies b into the pipe, waiting for room while the buffer is full.
func (p *bodyPipe) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for len(b) > 0 {
		if p.rerr || p.werr != nil {
			return n, io.ErrClosedPipe
		}
		room := pipeMax - p.buffered()
		if room == 0 {
			p.writable.Wait()
			continue
		}
		if p.buf == nil {
			p.buf = pipeBufs.Get().(*[]byte)
			p.off = 0
		} else if p.off > 0 && len(*p.buf)+min(room, len(b)) > cap(*p.buf) {
			// Slide the unread bytes to the front to make room at the end.
			m := copy(*p.buf, (*p.buf)[p.off:])
			*p.buf = (*p.buf)[:m]
			p.off = 0
		}
		k := min(room, len(b))
		*p.buf = append(*p.buf, b[:k]...)
		b = b[k:]
		n += k
		p.readable.Signal()
	}
	return n, nil
}

// Read takes up to len(b) buffered bytes, waiting for some; after CloseWithError it returns
// what is left and then the close error (io.EOF for a clean close).
func (p *bodyPipe) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if p.rerr {
			return 0, io.ErrClosedPipe
		}
		if p.werr != nil && p.werr != io.EOF {
			return 0, p.werr // an abort: what is buffered is dropped
		}
		if p.buffered() > 0 {
			n := copy(b, (*p.buf)[p.off:])
			p.off += n
			if p.off == len(*p.buf) {
				p.release()
			}
			p.writable.Signal()
			return n, nil
		}
		if p.werr != nil {
			return 0, p.werr
		}
		if len(b) == 0 {
			return 0, nil
		}
		p.readable.Wait()
	}
}

func (p *bodyPipe) release() {
	*p.buf = (*p.buf)[:0]
	pipeBufs.Put(p.buf)
	p.buf = nil
	p.off = 0
}

// Close is the reader's close (x/net closes the request body when the stream ends): later and
// pending writes fail with io.ErrClosedPipe.
func (p *bodyPipe) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.rerr {
		p.rerr = true
		if p.buf != nil {
			p.release()
		}
		p.writable.Broadcast()
		p.readable.Broadcast()
	}
	return nil
}

// CloseWithError is the writer's close: io.EOF or nil ends the body once the reader has what
// was written; another error aborts it (the reader gets err at once). Only the first call
// counts. Pending and later writes fail with io.ErrClosedPipe.
func (p *bodyPipe) CloseWithError(err error) error {
	if err == nil {
		err = io.EOF
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.werr == nil {
		p.werr = err
		if err != io.EOF && p.buf != nil {
			p.release()
		}
		p.readable.Broadcast()
		p.writable.Broadcast()
	}
	return nil
}
