package app

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/goambient/goambient/filters/embedded/config"
	"github.com/goambient/goambient/ztunnel/hbone"
)

// TestStreamEdges: a CONNECT to an address that is no service is refused with 503, a stream
// that does not carry HTTP/1.1 is answered 400 and closed, an HTTP/2 preface is closed
// without an answer, and a peer from another trust domain's root cannot connect at all.
func TestStreamEdges(t *testing.T) {
	f := setup(t)
	f.configure(t, true)
	eventually(t, "readiness 200", func() bool { return f.ready() == http.StatusOK })
	wpID := spiffeid.RequireFromString("spiffe://cluster.local/ns/handson/sa/" + waypointSA)
	dial := func(authority string) (*hbone.Conn, error) {
		return f.client.Dial(context.Background(), hbone.Target{
			Source: f.p.svid(t, "handson", "curl"), Address: netip.MustParseAddrPort(f.wp.Addr().String()),
			Identities: []spiffeid.ID{wpID}, Authority: authority,
		})
	}
	var se hbone.StatusError
	if _, err := dial(netip.AddrPortFrom(f.a.of("blue"), 8080).String()); !errors.As(err, &se) || se.Code != 503 {
		t.Errorf("CONNECT to a pod address: %v, want 503", err)
	}

	c, err := dial(f.vip().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "\x16\x03\x01 not http\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 400 {
		t.Fatalf("garbage on the stream: %v %v, want 400", resp, err)
	}

	c2, err := dial(f.vip().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := io.WriteString(c2, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(c2); err != nil || len(b) != 0 {
		t.Fatalf("HTTP/2 on the stream: read %q %v, want a clean end without an answer", b, err)
	}

	other := newPKI(t)
	oc, err := hbone.NewClient(hbone.ClientConfig{Bundle: other.ca.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	defer oc.Close()
	if _, err := oc.Dial(context.Background(), hbone.Target{
		Source: other.svid(t, "handson", "curl"), Address: netip.MustParseAddrPort(f.wp.Addr().String()),
		Identities: []spiffeid.ID{wpID}, Authority: f.vip().String(),
	}); err == nil {
		t.Error("a client of another root connected")
	}
}

func TestParseNodeID(t *testing.T) {
	n, err := config.ParseNodeID("waypoint~10.244.0.9~handson-istio-waypoint.handson~handson.svc.cluster.local")
	if err != nil || n.IP.String() != "10.244.0.9" || n.Pod != "handson-istio-waypoint" || n.Namespace != "handson" {
		t.Fatalf("got %+v %v", n, err)
	}
	for _, bad := range []string{"", "ztunnel~1.2.3.4~a.b~b.svc.cluster.local", "waypoint~x~a.b~b.svc", "waypoint~1.2.3.4~ab~b.svc"} {
		if _, err := config.ParseNodeID(bad); err == nil || !strings.Contains(err.Error(), "node id") {
			t.Errorf("ParseNodeID(%q) = %v, want an error", bad, err)
		}
	}
}

// TestConcurrentStreams: streams from several clients at once, each with keep-alive requests
// that the filter allows or denies; every request is answered and logged once.
func TestConcurrentStreams(t *testing.T) {
	f := setup(t)
	f.configure(t, true)
	eventually(t, "readiness 200", func() bool { return f.ready() == http.StatusOK })
	const streams, reqs = 6, 15
	errs := make(chan error, streams)
	for i := range streams {
		sa := []string{"curl", "curl-allow"}[i%2]
		s := f.connect(t, sa)
		go func() {
			for j := range reqs {
				method, want := "GET", 200
				if j%3 == 0 {
					method = "POST"
					if sa == "curl" {
						want = 403
					}
				}
				req, _ := http.NewRequest(method, "http://handson:8080/", strings.NewReader("x"))
				if err := req.Write(s.c); err != nil {
					errs <- err
					return
				}
				resp, err := http.ReadResponse(s.br, req)
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				if resp.StatusCode != want {
					errs <- errors.New(sa + " " + method + ": " + resp.Status)
					return
				}
			}
			errs <- nil
		}()
	}
	for range streams {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := len(f.log.entries(t)); n != streams*reqs {
		t.Errorf("%d access-log lines, want %d", n, streams*reqs)
	}
	if st := f.wp.Server.Stats(); st.Requests != streams*reqs || st.LocalReplies != 3*reqs/3 {
		t.Errorf("stats %+v, want %d requests and %d local replies", st, streams*reqs, 3*reqs/3)
	}
}

// TestExpectContinue: a client that waits for 100 Continue before its body (curl does above
// 1 KiB) gets it from the waypoint, and the body reaches the app.
func TestExpectContinue(t *testing.T) {
	f := setup(t)
	f.configure(t, true)
	eventually(t, "readiness 200", func() bool { return f.ready() == http.StatusOK })
	s := f.connect(t, "curl-allow")
	body := strings.Repeat("x", 2000)
	if _, err := io.WriteString(s.c, "POST /upload HTTP/1.1\r\nHost: handson:8080\r\nContent-Length: 2000\r\nExpect: 100-continue\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	line, err := s.br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 ") {
		t.Fatalf("first line %q %v, want 100 Continue", line, err)
	}
	if blank, _ := s.br.ReadString('\n'); blank != "\r\n" {
		t.Fatalf("after 100 Continue: %q", blank)
	}
	if _, err := io.WriteString(s.c, body); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(s.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "handson-blue POST /upload 2000" {
		t.Fatalf("got %d %q", resp.StatusCode, b)
	}
}
