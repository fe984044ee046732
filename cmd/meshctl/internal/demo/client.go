package demo

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/net/proxy"
)

// callTimeout bounds one call (connect, request and response).
const callTimeout = 5 * time.Second

// Result is what a curl saw: an HTTP response, or none and why.
type Result struct {
	Status int    // 0: no HTTP response
	Body   string // the response body
	Err    error  // why there was no response
	Took   time.Duration
}

// Closed says whether the connection ended without an HTTP response the way a denial ends it
// (reset, refused, closed, or a SOCKS5 failure reply): not a timeout.
func (r Result) Closed() bool {
	if r.Status != 0 || r.Err == nil {
		return false
	}
	var ne net.Error
	if errors.As(r.Err, &ne) && ne.Timeout() || errors.Is(r.Err, context.DeadlineExceeded) || errors.Is(r.Err, os.ErrDeadlineExceeded) {
		return false
	}
	return true
}

// String is the result as curl's user sees it.
func (r Result) String() string {
	if r.Status != 0 {
		s := fmt.Sprintf("%d %s", r.Status, http.StatusText(r.Status))
		if b := oneLine(r.Body, 70); b != "" {
			s += "  " + fmt.Sprintf("%q", b)
		}
		return s
	}
	switch {
	case r.Err == nil:
		return "no result"
	case errors.Is(r.Err, syscall.ECONNRESET):
		return "000, connection reset by peer (curl exit 56)"
	case errors.Is(r.Err, syscall.ECONNREFUSED):
		return "000, connection refused (curl exit 7)"
	case errors.Is(r.Err, io.EOF) || errors.Is(r.Err, io.ErrUnexpectedEOF) || strings.Contains(r.Err.Error(), "EOF") ||
		strings.Contains(r.Err.Error(), "server closed idle connection"):
		return "000, connection closed, empty reply (curl exit 52)"
	case !r.Closed():
		return "000, timed out: " + r.Err.Error()
	}
	return "000, no HTTP response: " + r.Err.Error()
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n] + "..."
	}
	return s
}

// curl does one request from the pod address from: through the SOCKS5 listener socks (the
// pod's ztunnel) when socks is not empty, else straight to dial (a pod outside the mesh; dial
// replaces the URL's host:port, as kube-proxy would). reqID, when set, is sent as
// x-request-id (the waypoint's access log carries it).
func curl(ctx context.Context, socks, from, dial, method, url, data, reqID string, hdr ...[2]string) Result {
	fwd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: callTimeout}
	tr := &http.Transport{DisableKeepAlives: true}
	if socks != "" {
		d, err := proxy.SOCKS5("tcp", socks, nil, fwd)
		if err != nil {
			return Result{Err: err}
		}
		tr.DialContext = d.(proxy.ContextDialer).DialContext
	} else {
		tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return fwd.DialContext(ctx, network, dial)
		}
	}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var body io.Reader
	if data != "" {
		body = strings.NewReader(data)
	}
	if method == "" {
		method = http.MethodGet
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return Result{Err: err}
	}
	req.Header.Set("User-Agent", "meshctl-demo") // a Go client; the demo prints the curl command it stands for
	if data != "" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if reqID != "" {
		req.Header.Set("X-Request-Id", reqID)
	}
	for _, h := range hdr {
		req.Header.Set(h[0], h[1])
	}
	start := time.Now()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return Result{Err: err, Took: time.Since(start)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return Result{Status: resp.StatusCode, Body: string(b), Err: err, Took: time.Since(start)}
}

// probeTLS connects to addr as a plaintext HTTP client and as a TLS client: it must get no
// HTTP answer in plaintext, and a TLS 1.3 handshake whose certificate names identity.
func probeTLS(addr, identity string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, callTimeout)
	if err != nil {
		return "", err
	}
	c.SetDeadline(time.Now().Add(callTimeout))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	buf := make([]byte, 5)
	n, _ := io.ReadFull(c, buf)
	c.Close()
	if string(buf[:n]) == "HTTP/" {
		return "", fmt.Errorf("%s answered plaintext HTTP", addr)
	}
	var got []string
	var version uint16
	cfg := &tls.Config{
		InsecureSkipVerify: true, // the probe only looks at what the server presents
		NextProtos:         []string{"h2"},
		VerifyConnection: func(cs tls.ConnectionState) error {
			version = cs.Version
			if len(cs.PeerCertificates) > 0 {
				for _, u := range cs.PeerCertificates[0].URIs {
					got = append(got, u.String())
				}
			}
			return nil
		},
	}
	tc, err := tls.DialWithDialer(&net.Dialer{Timeout: callTimeout}, "tcp", addr, cfg)
	if err == nil {
		tc.Close()
	}
	if version == 0 {
		return "", fmt.Errorf("no TLS handshake with %s: %v", addr, err)
	}
	desc := fmt.Sprintf("%s: plaintext HTTP gets no answer; TLS %s, certificate %s", addr, tls.VersionName(version), strings.Join(got, ","))
	if version != tls.VersionTLS13 {
		return desc, fmt.Errorf("want TLS 1.3")
	}
	for _, g := range got {
		if g == identity {
			return desc, nil
		}
	}
	return desc, fmt.Errorf("want certificate %s", identity)
}
