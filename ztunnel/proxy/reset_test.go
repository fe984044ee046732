package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/lograte"
)

// Streams opened and reset at once (Rapid Reset) on the ztunnel's inbound HBONE, by a client
// with a valid certificate: the access-log lines of those streams (Istio writes "connection
// complete" at ERROR per connection) are a few a second plus a count of the suppressed ones,
// not one per stream. The attacker writes raw frames (x/net's Framer) over real TLS.
func TestRapidResetAccessLog(t *testing.T) {
	pod := randomNet() + ".7"
	startEcho(t, pod, 7072)
	st := parseState(t, fmt.Sprintf(`workloads:
- uid: Kubernetes//Pod/ns/app
  name: app
  namespace: ns
  addresses: [%q]
  node: n1
  tunnelProtocol: HBONE
`, pod))
	const perSecond = 5
	tp := startProxy(t, st, func(c *Config) { c.HBONEServer.FailureLogsPerSecond = perSecond })
	src, err := tp.ca.IssueSVID(spiffeid.RequireFromString("spiffe://cluster.local/ns/ns/sa/attacker"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := hbone.ClientTLSConfig(src, tp.ca.Bundle(), []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/ns/sa/default")})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	tc, err := tls.Dial("tcp", netip.AddrPortFrom(netip.MustParseAddr(pod), PortInboundHBONE).String(), conf)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	bw := bufio.NewWriterSize(tc, 64<<10)
	fr := http2.NewFramer(bw, tc)
	var hbuf bytes.Buffer
	henc := hpack.NewEncoder(&hbuf)
	bw.WriteString(http2.ClientPreface)
	fr.WriteSettings()
	const streams = 3000
	for id := uint32(1); id < 2*streams; id += 2 {
		hbuf.Reset()
		henc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
		henc.WriteField(hpack.HeaderField{Name: ":authority", Value: pod + ":7072"})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hbuf.Bytes(), EndHeaders: true})
		fr.WriteRSTStream(id, http2.ErrCodeCancel)
		if id%200 == 199 {
			bw.Flush()
		}
	}
	fr.WritePing(false, [8]byte{1})
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	for { // until the PING's answer, or the server closing the connection (ENHANCE_YOUR_CALM)
		f, err := fr.ReadFrame()
		if err == io.EOF || err != nil && strings.Contains(err.Error(), "reset") {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if pf, ok := f.(*http2.PingFrame); ok && pf.IsAck() {
			break
		}
	}
	tc.Close()
	// The handlers that did run end at once (their context is cancelled); their lines, and the
	// summary of the suppressed ones, follow within a second.
	count := func() (lines, summaries int) {
		for _, l := range strings.Split(tp.logs.String(), "\n") {
			switch {
			case strings.Contains(l, lograte.SummaryMsg):
				summaries++
			case strings.Contains(l, "connection complete"):
				lines++
			}
		}
		return lines, summaries
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, s := count(); s == 0 && time.Now().Before(deadline); _, s = count() {
		time.Sleep(50 * time.Millisecond) // polling for the summary, not synchronisation
	}
	lines, summaries := count()
	elapsed := time.Since(start)
	limit := int(perSecond + perSecond*elapsed.Seconds())
	t.Logf("%d streams opened and reset: %d access-log lines and %d summaries in %v", streams, lines, summaries, elapsed.Round(time.Millisecond))
	if lines > limit {
		t.Errorf("%d access-log lines for %d reset streams in %v, want ≤ %d", lines, streams, elapsed, limit)
	}
}
