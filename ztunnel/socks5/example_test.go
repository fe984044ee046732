package socks5_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"

	"github.com/goambient/goambient/ztunnel/socks5"
)

// The ztunnel's loopback mode: accept → parse → dial → reply → copy. The dial here is plain
// TCP; the ztunnel dials HBONE and returns socks5.ErrNotAllowed (or WithReply) on a 401.
func Example() {
	mesh := socks5.ResolverFunc(func(ctx context.Context, name string) (netip.Addr, error) {
		if name == "handson" || name == "handson.handson" || name == "handson.handson.svc.cluster.local" {
			return netip.MustParseAddr("10.96.0.10"), nil // the Service VIP
		}
		return netip.Addr{}, &net.DNSError{Err: "not a mesh name", Name: name, IsNotFound: true}
	})
	srv := &socks5.Server{
		Resolver: socks5.Fallback(mesh, socks5.SystemResolver{}),
		Logger:   slog.Default(),
		Handler: socks5.HandlerFunc(func(ctx context.Context, req *socks5.Request) error {
			up, err := (&net.Dialer{}).DialContext(ctx, "tcp", req.Dest.String())
			if err != nil {
				return err // the client gets connection refused, host unreachable, ...
			}
			defer up.Close()
			client, err := req.Accept(netip.AddrPort{})
			if err != nil {
				return err
			}
			go io.Copy(up, client)
			_, err = io.Copy(client, up)
			return err
		}),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:15080")
	if err != nil {
		return
	}
	go srv.Serve(ln)
	defer srv.Close()
}
