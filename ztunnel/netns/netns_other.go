//go:build !linux

package netns

import (
	"context"
	"errors"
	"net"
)

var errNotLinux = errors.New("netns: network namespaces exist only on Linux")

// NS is a network namespace; on this OS none can be opened.
type NS struct{}

// Open fails: network namespaces are Linux-only.
func Open(string) (*NS, error) { return nil, errNotLinux }

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
