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
	var n int
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			switch e {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // wait for the poller to say it is readable
			}
			n, errno = int(r), e
			return true
		}
	})
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	raceRead(p[:n])
	return n, nil
}

func (c *rawTCP) Write(p []byte) (int, error) {
	raceWrote(p)
	written, armed := 0, -1 // armed: written when the deadline was last set
	var errno syscall.Errno
	err := c.rc.Write(func(fd uintptr) bool {
		for written < len(p) {
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[written])), uintptr(len(p)-written))
			switch e {
			case 0:
				written += int(r)
			case syscall.EINTR:
			case syscall.EAGAIN:
				if c.writeTimeout > 0 && written != armed {
					// The poller's wait below honours a deadline set now.
					c.TCPConn.SetWriteDeadline(time.Now().Add(c.writeTimeout))
					armed = written
				}
				return false // wait for the poller to say it is writable
			default:
				errno = e
				return true
			}
		}
		return true
	})
	if armed >= 0 && err == nil {
		c.TCPConn.SetWriteDeadline(time.Time{})
	}
	switch {
	case err != nil && armed >= 0 && errors.Is(err, os.ErrDeadlineExceeded):
		return written, c.opError("write", fmt.Errorf("%w: the peer took no byte for %v", unwrapOp(err), c.writeTimeout))
	case err != nil:
		return written, c.opError("write", err)
	case errno != 0:
		return written, c.opError("write", os.NewSyscallError("write", errno))
	}
	return written, nil
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
	var n int
	var errno syscall.Errno
	if err := rc.Write(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			if e == syscall.EINTR {
				continue
			}
			n, errno = int(r), e
			return true // never wait for the socket to become writable
		}
	}); err != nil {
		return 0, err
	}
	switch errno {
	case 0:
		return n, nil
	case syscall.EAGAIN:
		return 0, nil
	}
	return 0, os.NewSyscallError("write", errno)
}
