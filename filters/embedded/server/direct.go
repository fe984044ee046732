package server

import (
	"context"
	"crypto/tls"
	"net"

	"github.com/goambient/goambient/filters/embedded/upstream"
)

// dialDirect connects to an endpoint outside the mesh (an egress waypoint's ServiceEntry): plain
// TCP, or TLS originated as the cluster's transport socket says (the server verified by its CA
// and names, SNI sent), as Envoy's cluster does.
func dialDirect(ctx context.Context, c *upstream.Cluster, h *upstream.Host) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", h.Addr.String())
	if err != nil || c.TLS == nil {
		return conn, err
	}
	tc := tls.Client(conn, c.TLS.Clone())
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return tc, nil
}
