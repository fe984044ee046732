package hbone

import (
	"io"
	"net"
	"testing"
)

// tcpPair is two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln := listen(t)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// Relay carries half-closes both ways and counts the bytes of each direction.
func TestRelayHalfClose(t *testing.T) {
	t.Parallel()
	app, a := tcpPair(t)  // the application and the proxy's end of its connection
	b, dest := tcpPair(t) // the proxy's end towards the destination, and the destination
	type res struct {
		aToB, bToA int64
		err        error
	}
	done := make(chan res, 1)
	go func() {
		x, y, err := Relay(a, b)
		done <- res{x, y, err}
	}()
	io.WriteString(app, "request")
	app.CloseWrite()
	got, err := io.ReadAll(dest) // EOF arrives: the half-close went through
	if err != nil || string(got) != "request" {
		t.Fatalf("destination read %q, %v", got, err)
	}
	io.WriteString(dest, "response, after the client's EOF")
	dest.Close()
	got, err = io.ReadAll(app)
	if err != nil || string(got) != "response, after the client's EOF" {
		t.Fatalf("application read %q, %v", got, err)
	}
	r := <-done
	if r.err != nil || r.aToB != 7 || r.bToA != 32 {
		t.Errorf("Relay = %+v", r)
	}
}

// An error in one direction ends both.
func TestRelayAbort(t *testing.T) {
	t.Parallel()
	app, a := tcpPair(t)
	b, dest := tcpPair(t)
	done := make(chan error, 1)
	go func() {
		_, _, err := Relay(a, b)
		done <- err
	}()
	io.WriteString(app, "x")
	buf := make([]byte, 1)
	io.ReadFull(dest, buf)
	dest.SetLinger(0)
	dest.Close() // RST towards b: b's read fails
	if _, err := io.ReadAll(app); err != nil {
		t.Logf("application read error %v", err)
	}
	if err := <-done; err == nil {
		t.Error("Relay returned no error after a reset")
	}
}
