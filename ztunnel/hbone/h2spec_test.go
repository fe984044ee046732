package hbone

import (
	"context"
	"flag"
	"net"
	"os/exec"
	"strconv"
	"testing"
)

var h2specBin = flag.String("h2spec", "", "TestH2Spec: path of an h2spec binary (github.com/summerwind/h2spec) to run against the server's HTTP/2")

// TestH2Spec runs h2spec's HTTP/2 conformance suite against the server's HTTP/2 layer over
// plaintext (h2spec cannot present a client certificate, so TLS is left out): a measurement,
// run by hand, not in CI:
//
//	go install github.com/summerwind/h2spec/cmd/h2spec@latest
//	go test -run TestH2Spec -v ./ztunnel/hbone/ -h2spec $(go env GOPATH)/bin/h2spec
//
// Arguments after the flags go to h2spec (e.g. http2/4.2/2 runs one case). The server answers
// every request that is not a CONNECT with 400 and no body, at once, and h2spec sends GETs and
// POSTs, so the cases that need a response body, a request body read, or an answer held back
// are expected to fail; the output is logged for reading. Last run: 133 of 145 passed; the
// failures were those cases, plus two that assume the default 16 KiB frame limit where HBONE
// advertises 1 MiB.
func TestH2Spec(t *testing.T) {
	if *h2specBin == "" {
		t.Skip("a measurement: pass -h2spec PATH")
	}
	e := newEnv(t, envOpts{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			info := &Request{RemoteAddr: addrOf(listenerAddr{c.RemoteAddr()}), LocalAddr: addrOf(listenerAddr{c.LocalAddr()})}
			go e.srv.serveHTTP2(context.Background(), c, c, info)
		}
	}()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	args := append([]string{"-h", "127.0.0.1", "-p", port, "-o", "2"}, flag.Args()...)
	out, err := exec.Command(*h2specBin, args...).CombinedOutput()
	t.Logf("h2spec (exit %v):\n%s", err, out)
}

// listenerAddr lets addrOf read a connection's address.
type listenerAddr struct{ a net.Addr }

func (l listenerAddr) Accept() (net.Conn, error) { return nil, net.ErrClosed }
func (l listenerAddr) Close() error              { return nil }
func (l listenerAddr) Addr() net.Addr            { return l.a }
