package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
	istiohbone "istio.io/istio/pkg/hbone"
	istiolog "istio.io/istio/pkg/log"
)

// Interoperation with Istio's own Go HBONE (istio.io/istio/pkg/hbone: its dialer on x/net's
// HTTP/2 transport, its CONNECT handler on x/net's HTTP/2 server), over this package's TLS
// configurations: bytes go both ways, in both directions.
func TestIstioGoHBONE(t *testing.T) {
	t.Parallel()
	istiolog.FindScope("hbone").SetOutputLevel(istiolog.NoneLevel)
	up := newUpstream(t, echo)
	payload := bytes.Repeat([]byte("istio "), 100_000)

	t.Run("Istio's dialer to this server", func(t *testing.T) {
		e := newEnv(t, envOpts{})
		conf, err := ClientTLSConfig(e.clientSVID, e.bundle, []spiffeid.ID{e.serverSVID.ID})
		if err != nil {
			t.Fatal(err)
		}
		d := istiohbone.NewDialer(istiohbone.Config{ProxyAddress: e.addr.String(), TLS: conf})
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		conn, err := d.DialContext(ctx, "tcp", up.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		req := <-e.requests
		if req.Peer != e.clientSVID.ID || req.Authority.Addr != up.addr {
			t.Errorf("request from %s to %s, want %s to %s", req.Peer, req.Authority, e.clientSVID.ID, up.addr)
		}
		// The dialer's net.Conn is a net.Pipe end, without half-close: the echo is read by length.
		errc := make(chan error, 1)
		go func() {
			_, err := conn.Write(payload)
			errc <- err
		}()
		conn.SetReadDeadline(time.Now().Add(wait))
		got := make([]byte, len(payload))
		n, err := io.ReadFull(conn, got)
		if err != nil || <-errc != nil || !bytes.Equal(got, payload) {
			t.Errorf("echoed %d of %d bytes (%v)", n, len(payload), err)
		}
	})

	t.Run("this client to Istio's server", func(t *testing.T) {
		e := newEnv(t, envOpts{})
		conf, err := ServerTLSConfig(e.bundle, nil, func(netip.Addr) (*x509svid.SVID, error) { return e.serverSVID, nil })
		if err != nil {
			t.Fatal(err)
		}
		ln := listen(t)
		h := istiohbone.NewServer().Handler
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					tc := tls.Server(c, conf)
					if tc.Handshake() != nil {
						c.Close()
						return
					}
					(&http2.Server{}).ServeConn(tc, &http2.ServeConnOpts{Handler: h})
				}()
			}
		}()
		t.Cleanup(ln.closeAll)
		c, _ := e.client(ClientConfig{})
		tg := e.target(up.addr)
		tg.Address = addrOf(ln)
		conn := e.dial(c, tg)
		if got := echoThrough(t, conn, payload); !bytes.Equal(got, payload) {
			t.Errorf("echoed %d of %d bytes", len(got), len(payload))
		}
	})
}
