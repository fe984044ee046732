package hbone

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	istiohbone "istio.io/istio/pkg/hbone"
	istiolog "istio.io/istio/pkg/log"
)

// chachaPeerEnv makes TestChaChaPeerProcess play a role for TestChaCha20 (in a process of its
// own, started with GODEBUG=cpu.aes=off: a host without AES hardware).
const chachaPeerEnv = "HBONE_CHACHA_PEER"

// On a host without AES hardware, Go prefers TLS_CHACHA20_POLY1305_SHA256, as client and as
// server, and crypto/tls cannot be told otherwise for TLS 1.3: HBONE accepts the suite (as
// Istio's Go HBONE does) rather than refusing every connection to or from such a host. The
// AES-less peer is this test binary run again with GODEBUG=cpu.aes=off; the other side is
// this process (with AES hardware): this package's server and client, and Istio's dialer as the
// AES-less client.
func TestChaCha20(t *testing.T) {
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skip("GODEBUG=cpu.aes=off simulates a host without AES on amd64 and arm64")
	}
	t.Parallel()
	e := newEnv(t, envOpts{server: func(c *ServerConfig) {
		h := c.Handler
		c.Handler = HandlerFunc(func(ctx context.Context, req *Request) Response {
			r := h.ServeHBONE(ctx, req)
			r.Header = http.Header{"X-Suite": {tls.CipherSuiteName(req.TLS.CipherSuite)}}
			return r
		})
	}})
	up := newUpstream(t, echo)
	dir := writeChaChaFiles(t, e)
	const chacha = "TLS_CHACHA20_POLY1305_SHA256"

	for _, role := range []string{"client", "istio-client"} {
		t.Run(role+" without AES to this server", func(t *testing.T) {
			out := runChaChaPeer(t, role, dir, "addr="+e.addr.String(), "upstream="+up.addr.String())
			here := "no request"
			select {
			case req := <-e.requests:
				here = tls.CipherSuiteName(req.TLS.CipherSuite)
			default:
			}
			t.Logf("peer: %v; here: %s", out, here)
			if out["echo"] != "ok" || out["suite"] != chacha {
				t.Errorf("peer said %v, want echo=ok suite=%s", out, chacha)
			}
		})
	}
	t.Run("this client to a server without AES", func(t *testing.T) {
		peer := startChaChaPeer(t, "server", dir)
		addr := netip.MustParseAddrPort(peer.line(t, "addr"))
		c, _ := e.client(ClientConfig{})
		tg := e.target(up.addr)
		tg.Address = addr
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		conn, err := c.Dial(ctx, tg)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if got := echoThrough(t, conn, []byte("chacha")); string(got) != "chacha" {
			t.Errorf("echo %q", got)
		}
		t.Logf("here: %s; peer: %s", tls.CipherSuiteName(conn.ConnectionState().CipherSuite), conn.ResponseHeader().Get("X-Suite"))
		if cs := conn.ConnectionState().CipherSuite; tls.CipherSuiteName(cs) != chacha || conn.ResponseHeader().Get("X-Suite") != chacha {
			t.Errorf("suite %s here, %s on the server; want %s", tls.CipherSuiteName(cs), conn.ResponseHeader().Get("X-Suite"), chacha)
		}
	})
}

// writeChaChaFiles writes e's trust bundle and both SVIDs as PEM files for a peer process.
func writeChaChaFiles(t *testing.T, e *env) string {
	dir := t.TempDir()
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("bundle.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.ca.cert.Raw}))
	for name, svid := range map[string]*x509svid.SVID{"server": e.serverSVID, "client": e.clientSVID} {
		certs, key, err := svid.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		write(name+".pem", certs)
		write(name+"-key.pem", key)
	}
	write("td", []byte(e.ca.td.Name()))
	return dir
}

// chachaPeer is a running peer process and what it printed.
type chachaPeer struct {
	lines chan string
}

// line waits for the peer's "key=value" line and returns the value.
func (p *chachaPeer) line(t *testing.T, key string) string {
	t.Helper()
	timeout := time.After(wait)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("the peer ended before printing %s=", key)
			}
			if v, found := strings.CutPrefix(l, key+"="); found {
				return v
			}
		case <-timeout:
			t.Fatalf("the peer printed no %s=", key)
		}
	}
}

// startChaChaPeer starts this test binary as a peer without AES; it runs until the test ends.
func startChaChaPeer(t *testing.T, role, dir string, args ...string) *chachaPeer {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestChaChaPeerProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "GODEBUG=cpu.aes=off", chachaPeerEnv+"="+role, "HBONE_CHACHA_DIR="+dir,
		"HBONE_CHACHA_ARGS="+strings.Join(args, " "))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe() // the peer runs until its stdin closes
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &chachaPeer{lines: make(chan string, 16)}
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(wait):
			cmd.Process.Kill()
			<-done
		}
	})
	return p
}

// runChaChaPeer runs a client peer to its end and returns its key=value lines.
func runChaChaPeer(t *testing.T, role, dir string, args ...string) map[string]string {
	t.Helper()
	p := startChaChaPeer(t, role, dir, args...)
	out := map[string]string{}
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				return out
			}
			if k, v, found := strings.Cut(l, "="); found {
				out[k] = v
			}
		case <-time.After(wait):
			t.Fatal("the peer did not finish")
		}
	}
}

// TestChaChaPeerProcess is the AES-less peer of TestChaCha20, run only by it.
func TestChaChaPeerProcess(t *testing.T) {
	role := os.Getenv(chachaPeerEnv)
	if role == "" {
		t.Skip("a peer process of TestChaCha20")
	}
	dir := os.Getenv("HBONE_CHACHA_DIR")
	args := map[string]string{}
	for _, a := range strings.Fields(os.Getenv("HBONE_CHACHA_ARGS")) {
		k, v, _ := strings.Cut(a, "=")
		args[k] = v
	}
	td, err := os.ReadFile(filepath.Join(dir, "td"))
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := x509bundle.Load(spiffeid.RequireTrustDomainFromString(string(td)), filepath.Join(dir, "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	load := func(name string) *x509svid.SVID {
		s, err := x509svid.Load(filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	server, client := load("server"), load("client")
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	switch role {
	case "server":
		ln := listen(t)
		srv, err := NewServer(ServerConfig{
			Bundle: bundle, GetCertificate: func(netip.Addr) (*x509svid.SVID, error) { return server, nil },
			Handler: HandlerFunc(func(ctx context.Context, req *Request) Response {
				up, err := dialUpstream(ctx, req.Authority.String())
				if err != nil {
					return Response{Status: http.StatusServiceUnavailable}
				}
				return Response{Status: http.StatusOK, Upstream: up, Header: http.Header{"X-Suite": {tls.CipherSuiteName(req.TLS.CipherSuite)}}}
			}),
		})
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
		fmt.Printf("addr=%s\n", addrOf(ln))
		io.Copy(io.Discard, os.Stdin) // until the test is done with this peer
		srv.Close()
	case "client":
		c, err := NewClient(ClientConfig{Bundle: bundle})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conn, err := c.Dial(ctx, Target{Source: client, Address: netip.MustParseAddrPort(args["addr"]),
			Identities: []spiffeid.ID{server.ID}, Authority: args["upstream"]})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Printf("suite=%s\n", tls.CipherSuiteName(conn.ConnectionState().CipherSuite))
		if got := echoThrough(t, conn, []byte("chacha")); string(got) == "chacha" {
			fmt.Println("echo=ok")
		}
	case "istio-client":
		istiolog.FindScope("hbone").SetOutputLevel(istiolog.NoneLevel)
		conf, err := ClientTLSConfig(client, bundle, []spiffeid.ID{server.ID})
		if err != nil {
			t.Fatal(err)
		}
		var suite uint16
		verify := conf.VerifyConnection
		conf.VerifyConnection = func(cs tls.ConnectionState) error { suite = cs.CipherSuite; return verify(cs) }
		d := istiohbone.NewDialer(istiohbone.Config{ProxyAddress: args["addr"], TLS: conf})
		conn, err := d.DialContext(ctx, "tcp", args["upstream"])
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Printf("suite=%s\n", tls.CipherSuiteName(suite))
		conn.SetDeadline(time.Now().Add(wait))
		got := make([]byte, 6)
		if _, err := conn.Write([]byte("chacha")); err == nil {
			if _, err := io.ReadFull(conn, got); err == nil && string(got) == "chacha" {
				fmt.Println("echo=ok")
			}
		}
	default:
		t.Fatalf("unknown role %q", role)
	}
}

func dialUpstream(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}
