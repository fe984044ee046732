// Package zdstest is a fake istio-cni node agent for tests: it listens on a ZDS socket, takes a ztunnel's hello, and sends the requests a test drives, returning the ztunnel's acks.
package zdstest

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

// Wait bounds every wait of the fake: a ztunnel connecting, a read, a write (the node agent's
// own deadline is 5 s too).
const Wait = 5 * time.Second

// Agent is the node agent's listening socket (SOCK_SEQPACKET, as istio-cni's).
type Agent struct {
	t     testing.TB
	Path  string
	ln    *net.UnixListener
	conns chan *net.UnixConn
}

// Listen listens on path; the listener and every accepted connection are closed when the test
// ends. An error means the system has no SOCK_SEQPACKET unix sockets (the caller may skip).
func Listen(t testing.TB, path string) (*Agent, error) {
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	a := &Agent{t: t, Path: path, ln: ln, conns: make(chan *net.UnixConn, 4)}
	go func() {
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			a.conns <- c
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return a, nil
}

// Accept waits for a ztunnel to connect and checks its hello (version V1).
func (a *Agent) Accept() *Conn {
	a.t.Helper()
	select {
	case c := <-a.conns:
		a.t.Cleanup(func() { c.Close() })
		conn := &Conn{t: a.t, c: c}
		var hello zdsapi.ZdsHello
		conn.read(&hello)
		if hello.GetVersion() != zdsapi.Version_V1 {
			a.t.Fatalf("hello %v, want version V1", &hello)
		}
		return conn
	case <-time.After(Wait):
		a.t.Fatalf("no ztunnel connected to %s", a.Path)
		return nil
	}
}

// Conn is the node agent's side of one ztunnel's connection.
type Conn struct {
	t testing.TB
	c *net.UnixConn
}

// For returns the connection reporting failures to t (a subtest) instead.
func (c *Conn) For(t testing.TB) *Conn { return &Conn{t: t, c: c.c} }

// Close closes the connection (the ztunnel then reconnects).
func (c *Conn) Close() error { return c.c.Close() }

func (c *Conn) read(m proto.Message) {
	c.t.Helper()
	buf := make([]byte, 1024) // the node agent reads responses into 1 KiB
	c.c.SetReadDeadline(time.Now().Add(Wait))
	n, err := c.c.Read(buf)
	if err != nil {
		c.t.Fatalf("read from the ztunnel: %v", err)
	}
	if err := proto.Unmarshal(buf[:n], m); err != nil {
		c.t.Fatalf("decode %T: %v", m, err)
	}
}

// Send sends req with fds (SCM_RIGHTS) and returns the error text of the ztunnel's ack ("" for
// success). The caller keeps its copies of fds.
func (c *Conn) Send(req *zdsapi.WorkloadRequest, fds ...int) string {
	c.t.Helper()
	b, err := proto.Marshal(req)
	if err != nil {
		c.t.Fatal(err)
	}
	return c.SendRaw(b, fds...)
}

// SendRaw is Send for bytes that need not be a valid request.
func (c *Conn) SendRaw(b []byte, fds ...int) string {
	c.t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	c.c.SetWriteDeadline(time.Now().Add(Wait))
	if _, _, err := c.c.WriteMsgUnix(b, oob, nil); err != nil {
		c.t.Fatalf("send: %v", err)
	}
	var resp zdsapi.WorkloadResponse
	c.read(&resp)
	if resp.GetAck() == nil {
		c.t.Fatalf("response is not an ack: %v", &resp)
	}
	return resp.GetAck().GetError()
}

// Add is the request that adds pod uid (Kubernetes namespace, name, service account); send it
// with the pod's network namespace fd.
func Add(uid, namespace, name, serviceAccount string) *zdsapi.WorkloadRequest {
	return &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{
		Uid: uid, WorkloadInfo: &zdsapi.WorkloadInfo{Namespace: namespace, Name: name, ServiceAccount: serviceAccount},
	}}}
}

// Del is the request that removes pod uid.
func Del(uid string) *zdsapi.WorkloadRequest {
	return &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Del{Del: &zdsapi.DelWorkload{Uid: uid}}}
}

// Keep is the request that keeps pod uid during a snapshot.
func Keep(uid string) *zdsapi.WorkloadRequest {
	return &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Keep{Keep: &zdsapi.KeepWorkload{Uid: uid}}}
}

// SnapshotSent is the request that ends the initial snapshot.
func SnapshotSent() *zdsapi.WorkloadRequest {
	return &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_SnapshotSent{SnapshotSent: &zdsapi.SnapshotSent{}}}
}
