package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/goambient/goambient/xdsserver/model"
)

// get sends one request with a Host header through a client and returns status, body, proto.
func get(t testing.TB, c *http.Client, url, host string, hdr ...string) (int, string, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s (Host %s): %v", url, host, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Proto
}

func plainClient() *http.Client {
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: false}}
}

func h2cClient() *http.Client {
	return &http.Client{Timeout: 20 * time.Second, Transport: &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}}
}

func tlsClient(t testing.TB, f *fixture, serverName string, protos ...string) *http.Client {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(f.caCerts) {
		t.Fatal("testdata/opssec-cert.pem holds no certificate")
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: serverName, NextProtos: protos}, ForceAttemptHTTP2: len(protos) == 0 || protos[0] == "h2"}
	if len(protos) == 1 && protos[0] == "http/1.1" {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Timeout: 20 * time.Second, Transport: tr}
}

// TestRouting: a client outside the mesh reaches appa straight at its pod's ztunnel and appb
// through its waypoint (the CONNECT's :authority is appb's VIP:port), both with the gateway's
// identity, routed by Host; an unknown host is 404, a Service without pods 503. Peers: HBONE
// servers of ztunnel/hbone with CA-issued SVIDs; the config is xdsserver's translation.
func TestRouting(t *testing.T) {
	f := setup(t, Limits{})
	c := plainClient()
	code, body, proto := get(t, c, f.url(t, 80, "http", "/hello?x=1"), "appa.opssec.in")
	if code != 200 || !strings.HasPrefix(body, "appa GET /hello?x=1 host=appa.opssec.in xff=127.0.0.1 proto=http") || proto != "HTTP/1.1" {
		t.Errorf("appa: %d %q %s", code, body, proto)
	}
	if got := f.appa.seen(); len(got) != 1 || got[0] != f.gwID+" "+f.a.of("appa").String()+":8080" {
		t.Errorf("appa's ztunnel saw %v, want the gateway's identity and the pod's ip:port", got)
	}
	code, body, _ = get(t, c, f.url(t, 80, "http", "/b"), "appb.opssec.in:80")
	if code != 200 || !strings.HasPrefix(body, "appb-via-waypoint GET /b") {
		t.Errorf("appb: %d %q", code, body)
	}
	if got := f.wp.seen(); len(got) != 1 || got[0] != f.gwID+" "+f.a.of("appb-vip").String()+":8000" {
		t.Errorf("the waypoint saw %v, want the gateway's identity and appb's VIP:port", got)
	}
	code, _, _ = get(t, c, f.url(t, 80, "http", "/"), "appa.opssec.in", "host-is", "b")
	if code != 200 || len(f.wp.seen()) != 2 {
		t.Errorf("a header match routes to appb: %d, waypoint calls %d", code, len(f.wp.seen()))
	}
	if code, body, _ = get(t, c, f.url(t, 80, "http", "/"), "www.example.org"); code != 404 || !strings.Contains(body, "route_not_found") {
		t.Errorf("unknown host: %d %q", code, body)
	}
	if code, body, _ = get(t, c, f.url(t, 80, "http", "/empty"), "appa.opssec.in"); code != 503 || !strings.Contains(body, "no_healthy_upstream") {
		t.Errorf("no endpoints: %d %q", code, body)
	}
	if code, _, _ = get(t, c, f.url(t, 80, "http", "/status/418"), "appa.opssec.in"); code != 418 {
		t.Errorf("the app's status passes through: %d", code)
	}
	log := f.log.String()
	for _, want := range []string{`"route_name":"default.routes.2"`, `"upstream_cluster":"outbound|8000||appa.default.svc.cluster.local"`, `"response_flags":"NR"`, `"response_flags":"UH"`} {
		if !strings.Contains(log, want) {
			t.Errorf("access log lacks %s:\n%s", want, log)
		}
	}
}

// TestHTTP2 : h2c (prior knowledge) on the plain listener, and TLS with ALPN h2 and http/1.1
// on the HTTPS listener, the certificate the Secret's.
func TestHTTP2(t *testing.T) {
	f := setup(t, Limits{})
	if code, body, proto := get(t, h2cClient(), f.url(t, 80, "http", "/h2c"), "appa.opssec.in"); code != 200 || proto != "HTTP/2.0" || !strings.Contains(body, "proto=http") {
		t.Errorf("h2c: %d %s %q", code, proto, body)
	}
	for _, tc := range []struct {
		protos []string
		want   string
	}{{[]string{"h2", "http/1.1"}, "HTTP/2.0"}, {[]string{"http/1.1"}, "HTTP/1.1"}} {
		code, body, proto := get(t, tlsClient(t, f, "appb.opssec.in", tc.protos...), f.url(t, 443, "https", "/tls"), "appb.opssec.in")
		if code != 200 || proto != tc.want || !strings.Contains(body, "appb-via-waypoint GET /tls") || !strings.Contains(body, "proto=https") {
			t.Errorf("TLS %v: %d %s %q", tc.protos, code, proto, body)
		}
	}
}

// TestSecretMissing: the listener whose Secret does not exist is not served, says why in its
// status, and the gateway's other listeners are.
func TestSecretMissing(t *testing.T) {
	f := setup(t, Limits{})
	if a := f.g.Addr(8443); a != nil {
		t.Errorf("the listener without its Secret is served at %s", a)
	}
	var l *model.IngressListener
	for _, x := range f.m.IngressGateway("default", "gateway").Listeners {
		if x.Name == "missing" {
			l = x
		}
	}
	if c := model.ConditionOf(l.Conditions, "ResolvedRefs"); c.Status != "False" || c.Reason != "InvalidCertificateRef" || !strings.Contains(c.Message, "default/no-such-secret") {
		t.Errorf("ResolvedRefs: %+v", c)
	}
	if code, _, _ := get(t, tlsClient(t, f, "appa.opssec.in"), f.url(t, 443, "https", "/"), "appa.opssec.in"); code != 200 {
		t.Errorf("the HTTPS listener with its certificate: %d", code)
	}
	// A server name no chain has: the handshake fails (no certificate for it).
	_, err := tlsClient(t, f, "other.example.com").Get(f.url(t, 443, "https", "/"))
	if err == nil {
		t.Errorf("a TLS handshake for a server name without a certificate succeeded")
	}
}
