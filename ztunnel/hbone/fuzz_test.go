package hbone

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The HTTP/2 layer as hostile input: arbitrary bytes as the frames of the peer, after the
// preface, on both sides. Over net.Pipe without TLS (the server as TestH2Spec runs it): no
// panic, and every goroutine of the connection (read loop, handlers, relays, writers) ends once
// the peer is gone. Memory is bounded by the limits the attack tests check.

// fuzzFrames are seeds: frame sequences a peer sends, written by x/net's Framer.
func fuzzFrames(client bool) [][]byte {
	frames := func(write func(fr *http2.Framer, enc func(...hpack.HeaderField) []byte)) []byte {
		var b bytes.Buffer
		fr := http2.NewFramer(&b, nil)
		fr.AllowIllegalWrites = true
		var hb bytes.Buffer
		henc := hpack.NewEncoder(&hb)
		enc := func(fs ...hpack.HeaderField) []byte {
			hb.Reset()
			for _, f := range fs {
				henc.WriteField(f)
			}
			return bytes.Clone(hb.Bytes())
		}
		write(fr, enc)
		return b.Bytes()
	}
	connect := []hpack.HeaderField{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: "10.0.0.1:80"}}
	status := []hpack.HeaderField{{Name: ":status", Value: "200"}}
	first := connect
	if client {
		first = status
	}
	return [][]byte{
		frames(func(fr *http2.Framer, enc func(...hpack.HeaderField) []byte) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(first...), EndHeaders: true})
			fr.WriteData(1, false, []byte("hello"))
			fr.WriteData(1, true, nil)
		}),
		frames(func(fr *http2.Framer, enc func(...hpack.HeaderField) []byte) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(first...), EndHeaders: true})
			fr.WriteRSTStream(1, http2.ErrCodeCancel)
			fr.WriteData(1, false, nil)
			fr.WritePing(false, [8]byte{1})
			fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
			fr.WriteWindowUpdate(0, 1000)
		}),
		frames(func(fr *http2.Framer, enc func(...hpack.HeaderField) []byte) {
			block := enc(append(first, hpack.HeaderField{Name: "x-long", Value: string(bytes.Repeat([]byte("v"), 100))})...)
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:10]})
			fr.WriteContinuation(1, false, block[10:20])
			fr.WriteContinuation(1, true, block[20:])
			fr.WriteDataPadded(1, false, []byte("padded"), make([]byte, 7))
			fr.WritePriority(1, http2.PriorityParam{StreamDep: 1})
			fr.WriteGoAway(1, http2.ErrCodeNo, []byte("bye"))
		}),
		frames(func(fr *http2.Framer, enc func(...hpack.HeaderField) []byte) {
			fr.WriteRawFrame(0xfa, 0, 0, []byte("unknown"))
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: enc(first...), EndHeaders: true, EndStream: true})
			fr.WritePushPromise(http2.PushPromiseParam{StreamID: 3, PromiseID: 2, BlockFragment: enc(first...), EndHeaders: true})
		}),
	}
}

// settled waits for the goroutine count to come back to base; it fails the fuzz case after
// wait otherwise.
func settled(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines left over (baseline %d):\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(time.Millisecond) // polling, not synchronisation
	}
}

// echoPipe is an upstream for a handler: one end of a net.Pipe whose other end echoes until
// closed.
func echoPipe() net.Conn {
	a, b := net.Pipe()
	go func() { io.Copy(b, b); b.Close() }()
	return a
}

func FuzzServerFrames(f *testing.F) {
	for _, s := range fuzzFrames(false) {
		f.Add(s)
	}
	srv, err := newFuzzServer(f)
	if err != nil {
		f.Fatal(err)
	}
	info := &Request{Peer: spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b"), RemoteAddr: netip.MustParseAddrPort("10.0.0.2:1234"), LocalAddr: netip.MustParseAddrPort("10.0.0.1:15008")}
	var preface bytes.Buffer
	preface.WriteString(http2.ClientPreface)
	http2.NewFramer(&preface, nil).WriteSettings()
	f.Fuzz(func(t *testing.T, data []byte) {
		base := runtime.NumGoroutine()
		c, s := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.serveHTTP2(context.Background(), s, s, info, nil)
		}()
		go io.Copy(io.Discard, c) // what the server writes
		c.SetWriteDeadline(time.Now().Add(wait))
		c.Write(preface.Bytes())
		c.Write(data)
		c.Close()
		select {
		case <-done:
		case <-time.After(wait):
			t.Fatal("the connection did not end after its peer closed")
		}
		settled(t, base)
	})
}

// newFuzzServer is a Server (never listening: its connections are served by the fuzz target)
// with small limits and a handler that answers 200 with an echo upstream for even ports.
func newFuzzServer(f *testing.F) (*Server, error) {
	ca := newTestCA(f, "cluster.local")
	svid := ca.svid(f, "cluster.local/ns/s/sa/s", leafOpts{})
	return NewServer(ServerConfig{
		Logger: slog.New(slog.DiscardHandler),
		Bundle: ca.bundle(),
		GetCertificate: func(netip.Addr) (*x509svid.SVID, error) {
			return svid, nil
		},
		Handler: HandlerFunc(func(_ context.Context, req *Request) Response {
			if req.Authority.Port%2 == 0 {
				return Response{Status: http.StatusOK, Upstream: echoPipe()}
			}
			return Response{Status: http.StatusServiceUnavailable}
		}),
		MaxConcurrentStreams: 4, MaxQueuedControlFrames: 16,
	})
}

func FuzzClientFrames(f *testing.F) {
	for _, s := range fuzzFrames(true) {
		f.Add(s)
	}
	settings := h2Settings{
		streamWindow: StreamWindow, connWindow: ConnWindow, maxFrame: MaxFrameSize, maxHeaderList: 4 << 10,
		maxCtrl: 16,
	}
	var first bytes.Buffer
	http2.NewFramer(&first, nil).WriteSettings()
	fields := []hpack.HeaderField{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: "10.0.0.1:80"}}
	log := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, data []byte) {
		base := runtime.NumGoroutine()
		c, s := net.Pipe()
		go io.Copy(io.Discard, s) // what the client writes
		h2 := newH2Conn(log, c, c, true, settings)
		if err := h2.start(); err != nil {
			t.Fatal(err)
		}
		loop := make(chan struct{})
		go func() { defer close(loop); h2.readLoop() }()
		// Two streams, read by the application until they end.
		var readers []chan struct{}
		for range 2 {
			if !h2.reserve() {
				break
			}
			st, err := h2.openStream(fields)
			if err != nil {
				break
			}
			r := make(chan struct{})
			readers = append(readers, r)
			go func() { defer close(r); io.Copy(io.Discard, st); st.Close() }()
		}
		s.SetWriteDeadline(time.Now().Add(wait))
		s.Write(first.Bytes())
		s.Write(data)
		s.Close()
		for _, ch := range append(readers, loop) {
			select {
			case <-ch:
			case <-time.After(wait):
				t.Fatal("a stream or the read loop did not end after the server closed")
			}
		}
		settled(t, base)
	})
}
