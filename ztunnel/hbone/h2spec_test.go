package hbone

import (
	"context"
	"encoding/xml"
	"flag"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

var h2specBin = flag.String("h2spec", "", "TestH2Spec: path of an h2spec binary (github.com/summerwind/h2spec) to run against the server's HTTP/2")

// h2specExpected are the h2spec cases the HBONE server fails by design, with why: it answers
// every request that is not a CONNECT at once with 400 and no body, reads no request body of
// such a request, and advertises Istio's 1 MiB frame size where h2spec assumes the default
// 16 KiB. Any other failing case fails TestH2Spec.
var h2specExpected = map[[2]string]string{
	{"generic/2", "Sends a WINDOW_UPDATE frame on half-closed (remote) stream"}:                                                                               "expects a DATA frame: a GET gets 400 without a body",
	{"generic/2", "Sends a PRIORITY frame on half-closed (remote) stream"}:                                                                                    "expects a DATA frame: a GET gets 400 without a body",
	{"http2/6.9.1", "Sends multiple WINDOW_UPDATE frames increasing the flow control window to above 2^31-1 on a stream"}:                                     "races the GET's immediate 400 and RST_STREAM(NO_ERROR): when the answer wins, the WINDOW_UPDATEs find a closed stream (passed in 16 of 18 runs)",
	{"http2/4.2", "Sends a large size DATA frame that exceeds the SETTINGS_MAX_FRAME_SIZE"}:                                                                   "its frame is within the 1 MiB HBONE advertises (run alone, the case passes)",
	{"http2/4.2", "Sends a large size HEADERS frame that exceeds the SETTINGS_MAX_FRAME_SIZE"}:                                                                "sends 16 KiB + 1 where 1 MiB is advertised",
	{"http2/5.1.2", "Sends HEADERS frames that causes their advertised concurrent stream limit to be exceeded"}:                                               "each GET is answered and closed at once, so the limit is never reached",
	{"http2/8.1.2.6", `Sends a HEADERS frame with the "content-length" header field which does not equal the DATA frame payload length`}:                      "the body of a request answered 400 is not read",
	{"http2/8.1.2.6", `Sends a HEADERS frame with the "content-length" header field which does not equal the sum of the multiple DATA frames payload length`}: "the body of a request answered 400 is not read",
}

// TestH2Spec runs h2spec's HTTP/2 conformance suite against the server's HTTP/2 layer over
// plaintext (h2spec cannot present a client certificate, so TLS is left out) and fails on any
// failing case not in h2specExpected. Run by hand, not in CI (h2spec is not a module
// dependency):
//
//	go install github.com/summerwind/h2spec/cmd/h2spec@latest
//	go test -run TestH2Spec -v ./ztunnel/hbone/ -h2spec $(go env GOPATH)/bin/h2spec
//
// Arguments after the flags go to h2spec (e.g. http2/4.2/2 runs one case). Last runs (18, after
// issue 11's hardening): 134 to 136 of 145 cases passed, 4 skipped, the others among the
// expected ones.
func TestH2Spec(t *testing.T) {
	if *h2specBin == "" {
		t.Skip("run by hand: pass -h2spec PATH")
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
			info := &Request{RemoteAddr: c.RemoteAddr().(*net.TCPAddr).AddrPort(), LocalAddr: c.LocalAddr().(*net.TCPAddr).AddrPort()}
			go e.srv.serveHTTP2(context.Background(), c, c, info, nil)
		}
	}()
	report := filepath.Join(t.TempDir(), "junit.xml")
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	args := append([]string{"-h", "127.0.0.1", "-p", port, "-o", "2", "-j", report}, flag.Args()...)
	out, err := exec.Command(*h2specBin, args...).CombinedOutput()
	t.Logf("h2spec (exit %v):\n%s", err, out)
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatalf("h2spec wrote no report: %v", err)
	}
	var r struct {
		Cases []struct {
			Package   string  `xml:"package,attr"`
			Classname string  `xml:"classname,attr"`
			Error     *string `xml:"error"`
			Failure   *string `xml:"failure"`
		} `xml:"testsuite>testcase"`
	}
	if err := xml.Unmarshal(b, &r); err != nil {
		t.Fatalf("h2spec report: %v", err)
	}
	if len(r.Cases) == 0 {
		t.Fatal("h2spec report has no cases")
	}
	for _, c := range r.Cases {
		if c.Error == nil && c.Failure == nil {
			continue
		}
		if why, ok := h2specExpected[[2]string{c.Package, c.Classname}]; ok {
			t.Logf("expected failure: %s %q (%s)", c.Package, c.Classname, why)
			continue
		}
		t.Errorf("h2spec %s %q failed", c.Package, c.Classname)
	}
}
