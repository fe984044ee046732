//go:build !linux

package netns

import (
	"context"
	"errors"
	"net"
	"os"
)

var errNotLinux = errors.New("netns: network namespaces exist only on Linux")

// NS is a network namespace; on this OS none can be opened.
type NS struct{}

// Open fails: network namespaces are Linux-only.
func Open(string) (*NS, error) { return nil, errNotLinux }

// FromFD closes fd and fails.
func FromFD(fd int, name string) (*NS, error) {
	if f := os.NewFile(uintptr(fd), name); f != nil {
		f.Close()
	}
	return nil, errNotLinux
}

// ID is empty.
func (*NS) ID() string { return "" }

// Path is empty.
func (*NS) Path() string { return "" }

// Close does nothing.
func (*NS) Close() error { return nil }

// Do fails.
func (*NS) Do(func() error) error { return errNotLinux }

// Listen fails.
func (*NS) Listen(context.Context, string, string) (net.Listener, error) { return nil, errNotLinux }

// DialContext fails.
func (*NS) DialContext(context.Context, string, string) (net.Conn, error) { return nil, errNotLinux }

// Dialer returns a dial function that fails.
func (*NS) Dialer(int) func(context.Context, string, string) (net.Conn, error) {
	return func(context.Context, string, string) (net.Conn, error) { return nil, errNotLinux }
}
