package hbone

import (
	"errors"
	"io"
	"net"
	"sync"
)

// A relay reads through a small buffer while little is flowing and switches to a large one
// when a read fills the small one: an idle or interactive connection holds smallBufSize per
// direction, a bulk transfer moves bigBufSize per read, write, HTTP/2 DATA frame and goroutine
// hand-off. Either is a bound on the bytes in flight per direction inside this process; the
// rest of the back-pressure is TCP's and HTTP/2's flow control.
const (
	smallBufSize = 16 << 10
	bigBufSize   = 256 << 10
)

var (
	smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBufSize); return &b }}
	bigBufs   = sync.Pool{New: func() any { b := make([]byte, bigBufSize); return &b }}
)

// Relay copies bytes both ways between a and b until both directions are done, then closes
// both. When one side reaches EOF, the other side's write half is closed (CloseWrite, for
// *net.TCPConn, *tls.Conn, *Conn, ...) and the other direction keeps going: half-close is
// carried through. An error in either direction closes both connections at once, which ends
// the other direction; closing a or b from outside is how a caller aborts a relay.
// It returns the bytes copied from a to b and from b to a, and the first error (nil when both
// directions ended with EOF).
func Relay(a, b net.Conn) (aToB, bToA int64, err error) {
	a, b = rawConn(a), rawConn(b)
	for _, c := range []net.Conn{a, b} {
		if st := streamOf(c); st != nil {
			st.setStop(func() { a.Close(); b.Close() })
		}
	}
	var first firstError
	done := make(chan struct{})
	go func() {
		defer close(done)
		aToB = halfRelay(b, a, &first)
	}()
	bToA = halfRelay(a, b, &first)
	<-done
	a.Close()
	b.Close()
	err = first.get()
	if errors.Is(err, net.ErrClosed) {
		// The relay was stopped because a stream was reset: why it was reset says more than
		// the closed connection the other direction then failed on.
		for _, c := range []net.Conn{a, b} {
			if st := streamOf(c); st != nil {
				if rerr := st.resetErr(); rerr != nil && !errors.Is(rerr, net.ErrClosed) {
					err = rerr
				}
			}
		}
	}
	return aToB, bToA, err
}

func halfRelay(dst, src net.Conn, first *firstError) int64 {
	var n int64
	var err error
	if st := streamOf(src); st != nil {
		n, err = st.relayTo(dst)
	} else {
		n, err = copyBuffer(dst, src)
	}
	if err != nil {
		first.set(err)
		src.Close()
		dst.Close()
		return n
	}
	if st := streamOf(src); st != nil && st.isReset() {
		// The stream ended this way and cannot be written the other way: the relay is over
		// (without this, the other direction waits for its source, an application that may
		// never close, after the HBONE connection is gone).
		src.Close()
		dst.Close()
		return n
	}
	closeWrite(dst)
	return n
}

// copyBuffer copies src to dst until EOF through pooled buffers (small, or big while reads
// fill the small one); unlike io.Copy it never hands the copy to a ReaderFrom/WriterTo, so the
// buffers and the counts stay in our hands.
func copyBuffer(dst io.Writer, src io.Reader) (n int64, err error) {
	bp, big := smallBufs.Get().(*[]byte), false
	defer func() {
		if big {
			bigBufs.Put(bp)
		} else {
			smallBufs.Put(bp)
		}
	}()
	for {
		buf := *bp
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				return n, werr
			}
			if nw != nr {
				return n, io.ErrShortWrite
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
		switch {
		case !big && nr == len(buf): // more was waiting: go large
			smallBufs.Put(bp)
			bp, big = bigBufs.Get().(*[]byte), true
		case big && nr <= smallBufSize: // the flow has slowed: give the large one back
			bigBufs.Put(bp)
			bp, big = smallBufs.Get().(*[]byte), false
		}
	}
}

// streamOf is the HBONE stream under c, when c is one.
func streamOf(c net.Conn) *h2Stream {
	switch c := c.(type) {
	case *Conn:
		return c.s
	case *serverStream:
		return c.h2Stream
	}
	return nil
}

// closeWrite half-closes c when it can; a connection without CloseWrite is left open (its
// peer will not see EOF until the relay ends).
func closeWrite(c any) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// firstError keeps the first error set: the later ones are usually caused by the closing
// that the first one triggered.
type firstError struct {
	mu  sync.Mutex
	err error
}

func (f *firstError) set(err error) {
	f.mu.Lock()
	if f.err == nil {
		f.err = err
	}
	f.mu.Unlock()
}

func (f *firstError) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}
