package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// NS is an open network namespace (a file such as /var/run/netns/NAME or /proc/PID/ns/net).
// It is safe for concurrent use; Close it when done.
type NS struct {
	path string
	fd   int
}

// Open opens the network namespace file at path.
func Open(path string) (*NS, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("netns: open %s: %w", path, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil || st.Type != unix.NSFS_MAGIC {
		unix.Close(fd)
		return nil, fmt.Errorf("netns: %s is not a namespace file", path)
	}
	return &NS{path: path, fd: fd}, nil
}

// FromFD makes an NS of fd, an open network namespace file received from elsewhere (istio-cni's
// node agent passes one per pod over ZDS, see ztunnel/zds); name stands for the path in errors
// and logs. The NS owns fd from then on, and FromFD closes it when it is not a namespace.
func FromFD(fd int, name string) (*NS, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil || st.Type != unix.NSFS_MAGIC {
		unix.Close(fd)
		return nil, fmt.Errorf("netns: fd %d (%s) is not a namespace file", fd, name)
	}
	unix.CloseOnExec(fd)
	return &NS{path: name, fd: fd}, nil
}

// ID identifies the namespace itself (device and inode of its nsfs file), so that two files of
// the same namespace compare equal; "" when it cannot be read.
func (n *NS) ID() string {
	var st unix.Stat_t
	if err := unix.Fstat(n.fd, &st); err != nil {
		return ""
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// Path is the file the namespace was opened from.
func (n *NS) Path() string { return n.path }

// Close releases the namespace (the namespace itself lives on while sockets or mounts hold it).
func (n *NS) Close() error { return unix.Close(n.fd) }

// Do runs fn on an OS thread switched into the namespace, then switches the thread back.
// Sockets created by fn stay in the namespace for their whole life, whichever thread later
// uses them. fn must not start goroutines that expect to be in the namespace. When the thread
// cannot be switched back it is left locked, and the Go runtime discards it with the goroutine.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	// A fresh goroutine: if the switch back fails, it ends locked and takes the thread with it.
	go func() {
		runtime.LockOSThread()
		cur, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: current namespace: %w", err)
			return
		}
		defer unix.Close(cur)
		if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: enter %s: %w", n.path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(cur, unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("netns: leave %s: %w", n.path, err))
			return // still locked: the thread exits with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen opens a listener inside the namespace.
func (n *NS) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() error {
		var err error
		ln, err = (&net.ListenConfig{}).Listen(ctx, network, addr)
		return err
	})
	return ln, err
}

// DialContext dials from inside the namespace with the socket marked Mark, so that the pod's
// redirection rules let it through: ztunnel's own connections (HBONE out of the pod, to the
// application, passthrough).
func (n *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return n.Dialer(Mark)(ctx, network, addr)
}

// Dialer returns a dial function that connects from inside the namespace, marking its sockets
// with mark (0: none, as an application's own connections).
func (n *NS) Dialer(mark int) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{}
	if mark != 0 {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark)
			}); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("SO_MARK: %w", serr)
			}
			return nil
		}
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := n.Do(func() error {
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}
