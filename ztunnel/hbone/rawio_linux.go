package hbone

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// Every read(2) and write(2) Go's net package makes goes through the scheduler's syscall
// entry, which wakes the runtime's monitor thread (sysmon) when the process was idle. A proxy
// at a moderate request rate is idle between requests, so each request woke it two or more
// times, and those wake-ups and context switches were half of the ztunnel's context switches
// and the largest part of its CPU. The sockets are non-blocking, so their reads and writes
// never wait in the kernel: rawTCP makes them with RawSyscall, through the connection's
// RawConn, whose poller still does all the waiting (and honours deadlines).

// rawTCP is a TCP connection whose Read and Write are raw non-blocking system calls.
type rawTCP struct {
	*net.TCPConn
	rc syscall.RawConn
	// writeTimeout, when set, fails a Write whose socket takes no byte for this long. The
	// deadline is only set once the socket is full (a write that does not wait costs nothing),
	// moved on each time bytes went out since, and cleared after.
	writeTimeout time.Duration
}

// setWriteTimeout sets writeTimeout; it is called before the connection is used.
func (c *rawTCP) setWriteTimeout(d time.Duration) { c.writeTimeout = d }

// rawConn returns c with raw reads and writes when it is a TCP connection, else c.
func rawConn(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &rawTCP{TCPConn: tc, rc: rc}
}

func (c *rawTCP) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var res rawResult
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			switch e {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // wait for the poller to say it is readable
			}
			res = rawResult{int(r), e}
			return true
		}
	})
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case res.errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", res.errno))
	case res.n == 0:
		return 0, io.EOF
	}
	raceRead(p[:res.n])
	return res.n, nil
}

// rawResult is what a RawConn callback learnt: one variable, as each variable a closure
// captures and sets is an allocation of its own.
type rawResult struct {
	n     int
	errno syscall.Errno
}

func (c *rawTCP) Write(p []byte) (int, error) {
	raceWrote(p)
	// The callback's state in one variable (see rawResult).
	var w struct {
		n     int // written
		armed int // n when the deadline was last set; -1: not set
		errno syscall.Errno
	}
	w.armed = -1
	err := c.rc.Write(func(fd uintptr) bool {
		for w.n < len(p) {
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[w.n])), uintptr(len(p)-w.n))
			switch e {
			case 0:
				w.n += int(r)
			case syscall.EINTR:
			case syscall.EAGAIN:
				if c.writeTimeout > 0 && w.n != w.armed {
					// The poller's wait below honours a deadline set now.
					c.TCPConn.SetWriteDeadline(time.Now().Add(c.writeTimeout))
					w.armed = w.n
				}
				return false // wait for the poller to say it is writable
			default:
				w.errno = e
				return true
			}
		}
		return true
	})
	if w.armed >= 0 && err == nil {
		c.TCPConn.SetWriteDeadline(time.Time{})
	}
	switch {
	case err != nil && w.armed >= 0 && errors.Is(err, os.ErrDeadlineExceeded):
		return w.n, c.opError("write", fmt.Errorf("%w: the peer took no byte for %v", unwrapOp(err), c.writeTimeout))
	case err != nil:
		return w.n, c.opError("write", err)
	case w.errno != 0:
		return w.n, c.opError("write", os.NewSyscallError("write", w.errno))
	}
	return w.n, nil
}

func (c *rawTCP) opError(op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && !strings.HasPrefix(oe.Op, "raw-") {
		return err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: unwrapOp(err)}
}

// unwrapOp is what a RawConn's *net.OpError ("raw-read", "raw-write") says, without it.
func unwrapOp(err error) error {
	if oe, ok := err.(*net.OpError); ok {
		return oe.Err
	}
	return err
}

// writeNonblocking writes what the socket takes now, without waiting: a full send buffer is
// not an error, only a shorter count.
func writeNonblocking(rc syscall.RawConn, p []byte) (int, error) {
	raceWrote(p)
	var res rawResult
	if err := rc.Write(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			if e == syscall.EINTR {
				continue
			}
			res = rawResult{int(r), e}
			return true // never wait for the socket to become writable
		}
	}); err != nil {
		return 0, err
	}
	switch res.errno {
	case 0:
		return res.n, nil
	case syscall.EAGAIN:
		return 0, nil
	}
	return 0, os.NewSyscallError("write", res.errno)
}
