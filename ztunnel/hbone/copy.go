package hbone

import (
	"io"
	"net"
	"sync"
)

// bufSize is the size of each relay buffer: a bound on the bytes in flight per direction inside
// this process; the rest of the back-pressure is TCP's and HTTP/2's flow control.
const bufSize = 64 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// Relay copies bytes both ways between a and b until both directions are done, then closes
// both. When one side reaches EOF, the other side's write half is closed (CloseWrite, for
// *net.TCPConn, *tls.Conn, *Conn, ...) and the other direction keeps going: half-close is
// carried through. An error in either direction closes both connections at once, which ends
// the other direction; closing a or b from outside is how a caller aborts a relay.
// It returns the bytes copied from a to b and from b to a, and the first error (nil when both
// directions ended with EOF).
func Relay(a, b net.Conn) (aToB, bToA int64, err error) {
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
	return aToB, bToA, first.get()
}

func halfRelay(dst, src net.Conn, first *firstError) int64 {
	n, err := copyBuffer(dst, src)
	if err != nil {
		first.set(err)
		src.Close()
		dst.Close()
		return n
	}
	closeWrite(dst)
	return n
}

// copyBuffer copies src to dst until EOF through a pooled buffer; unlike io.Copy it never
// hands the copy to a ReaderFrom/WriterTo, so the buffer and the counts stay in our hands.
func copyBuffer(dst io.Writer, src io.Reader) (n int64, err error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
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
	}
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
