package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"

	"github.com/goambient/goambient/ztunnel/hbone"
)

// startAnswerApp serves, on the private address of pod:port, an app that reads a line first
// when readLine, then writes answer and closes (a server that answers and hangs up), until the
// test ends.
func startAnswerApp(t *testing.T, pod string, port int, readLine bool, answer string) {
	t.Helper()
	app := AppOffsetRule(DefaultAppOffset)(netip.AddrPortFrom(netip.MustParseAddr(pod), uint16(port)))
	ln, err := net.Listen("tcp", app.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if readLine {
				bufio.NewReader(c).ReadString('\n')
			}
			io.WriteString(c, answer)
			c.Close()
		}
	}()
}

// xnetClient is Go's x/net HTTP/2 client speaking HBONE to tp's inbound with the SVID of
// spiffe://cluster.local/ns/ns/sa/client.
func xnetClient(t *testing.T, tp *testProxy) *http2.Transport {
	t.Helper()
	src, err := tp.ca.IssueSVID(spiffeid.RequireFromString("spiffe://cluster.local/ns/ns/sa/client"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := hbone.ClientTLSConfig(src, tp.ca.Bundle(), []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/ns/sa/default")})
	if err != nil {
		t.Fatal(err)
	}
	tr := &http2.Transport{DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
		d := tls.Dialer{Config: conf}
		return d.DialContext(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// completeLine waits for the access log's "connection complete" line and returns it.
func completeLine(t *testing.T, logs *logBuf) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, "connection complete") {
				return l
			}
		}
		time.Sleep(20 * time.Millisecond) // polling for the line, not synchronisation
	}
	t.Fatalf("no connection complete line in:\n%s", logs)
	return ""
}

// TestCleanCloseLogsInfo: Go's x/net HTTP/2 client (the peer) opens a CONNECT whose request
// body stays open, reads the app's whole answer up to END_STREAM, closes it and, as x/net does
// for a request whose body it has not finished, resets the stream (RST_STREAM(NO_ERROR)); or
// it sends a whole request, reads the whole answer and hangs up. Both are a normal end (RFC
// 9113 §8.1): the ztunnel logs "connection complete" at INFO, without error. A peer that
// cancels the stream before the answer ended (RST_STREAM(CANCEL)) is a failure and keeps its
// ERROR line, with the reset as its error.
func TestCleanCloseLogsInfo(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cancelMid bool
		fullBody  bool // the request body ends (END_STREAM) and the client hangs up after reading
		wantError string
	}{
		{name: "NO_ERROR after END_STREAM"},
		{name: "EOF after a complete exchange", fullBody: true},
		{name: "CANCEL before the end", cancelMid: true, wantError: "reset"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := randomNet() + ".9"
			if tc.cancelMid {
				startEcho(t, pod, 7079) // answers only what it gets: the stream stays open
			} else {
				startAnswerApp(t, pod, 7079, tc.fullBody, "the whole answer\n")
			}
			st := parseState(t, fmt.Sprintf(`workloads:
- uid: Kubernetes//Pod/ns/app
  name: app
  namespace: ns
  addresses: [%q]
  node: n1
  tunnelProtocol: HBONE
`, pod))
			tp := startProxy(t, st, nil)
			tr := xnetClient(t, tp)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			body, bodyW := io.Pipe()
			defer bodyW.Close()
			var reqBody io.Reader = body
			if tc.fullBody {
				reqBody = strings.NewReader("request\n")
			}
			authority := pod + ":7079"
			req, err := http.NewRequestWithContext(ctx, http.MethodConnect, "https://"+net.JoinHostPort(pod, "15008"), reqBody)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = authority
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("CONNECT %s: %s", authority, resp.Status)
			}
			if tc.cancelMid {
				io.WriteString(bodyW, "ping\n")
				buf := make([]byte, 5)
				if _, err := io.ReadFull(resp.Body, buf); err != nil {
					t.Fatalf("echo: %v", err)
				}
				cancel() // RST_STREAM(CANCEL) while both sides are open
			} else {
				got, err := io.ReadAll(resp.Body)
				if err != nil || string(got) != "the whole answer\n" {
					t.Fatalf("answer %q, %v", got, err)
				}
			}
			// x/net resets the stream whose body is still open with NO_ERROR or CANCEL (at random:
			// ztunnel/hbone's TestPeerResetAfterEnd sends each); both are a normal end there.
			resp.Body.Close()
			tr.CloseIdleConnections()
			line := completeLine(t, tp.logs)
			if tc.wantError == "" {
				if !strings.Contains(line, "\tinfo\t") || strings.Contains(line, "error=") {
					t.Errorf("a clean close is logged as a failure:\n%s", line)
				}
				return
			}
			if !strings.Contains(line, "\terror\t") || !strings.Contains(line, "error=") || !strings.Contains(line, tc.wantError) {
				t.Errorf("a reset stream is not logged as a failure (want ERROR with %q):\n%s", tc.wantError, line)
			}
		})
	}
}
