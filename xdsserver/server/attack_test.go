package server_test

// Attacks on the ADS listeners, over loopback: each checks that the attack is bounded or
// refused, that the server's goroutines and heap come back to their baseline once the attacker
// leaves, and that a real ztunnel client (ztunnel/xds, the peer of every test here) is still
// served.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/goambient/goambient/xdsserver/meshgen"
	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/server"
	"github.com/goambient/goambient/xdsserver/wds"
	"github.com/goambient/goambient/ztunnel/state"
)

// serverGoroutines counts the goroutines of the gRPC server side and go-control-plane's
// stream handlers (the attackers' client goroutines, in the same process, are not counted).
func serverGoroutines() int {
	buf := make([]byte, 64<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		s := string(g)
		if strings.Contains(s, "http2Server") || strings.Contains(s, "grpc.(*Server)") || strings.Contains(s, "go-control-plane/pkg/server") {
			n++
		}
	}
	return n
}

func heapAlloc() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// eventually waits until cond holds, polling; it fails the test with what() after limit.
func eventually(t *testing.T, limit time.Duration, cond func() bool, what func() string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(what())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// baseline is the server's state before an attack.
type baseline struct {
	goroutines int
	heap       uint64
}

func measure() baseline { return baseline{goroutines: serverGoroutines(), heap: heapAlloc()} }

// recovered checks that the server's goroutines come back to the baseline (two of slack for
// a legitimate client reconnecting) and its heap to within slack of it, and that a new
// legitimate ztunnel is served.
func (b baseline) recovered(t *testing.T, addr string, slack uint64) {
	t.Helper()
	eventually(t, timeout, func() bool { return serverGoroutines() <= b.goroutines+2 }, func() string {
		return fmt.Sprintf("server goroutines: %d after the attack, %d before", serverGoroutines(), b.goroutines)
	})
	var heap uint64
	eventually(t, timeout, func() bool { heap = heapAlloc(); return heap <= b.heap+slack }, func() string {
		return fmt.Sprintf("heap: %d MiB after the attack, %d MiB before", heap>>20, b.heap>>20)
	})
	_, store := startClient(t, addr)
	waitState(t, store, "a legitimate ztunnel served after the attack", func(s *state.State) bool { return len(s.Resources().Workloads) > 0 })
}

// rawConn is an HTTP/2 client written frame by frame, which obeys none of the server's
// settings: it opens as many streams as it likes and pings as often as it likes.
type rawConn struct {
	conn net.Conn
	mu   sync.Mutex // guards w and enc
	w    *http2.Framer
	hbuf bytes.Buffer
	enc  *hpack.Encoder

	ackPings  bool
	refused   atomic.Int64    // RST_STREAM REFUSED_STREAM received
	ended     atomic.Int64    // streams ended by the server (RST_STREAM, or trailers), once each
	endedIDs  map[uint32]bool // read's own
	goaway    chan *http2.GoAwayFrame
	settings  chan struct{} // the server's first SETTINGS arrived: gRPC serves the connection
	closed    chan struct{} // the server closed the connection
	serverPng atomic.Int64  // PINGs the server sent
}

func dialRaw(t *testing.T, addr string, ackPings bool) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := &rawConn{conn: c, w: http2.NewFramer(c, nil), ackPings: ackPings, goaway: make(chan *http2.GoAwayFrame, 1), closed: make(chan struct{}), settings: make(chan struct{}), endedIDs: map[uint32]bool{}}
	r.enc = hpack.NewEncoder(&r.hbuf)
	// A server that refuses the connection may close it before these are written: the reader
	// then sees it closed.
	if _, err := io.WriteString(c, http2.ClientPreface); err == nil {
		_ = r.w.WriteSettings()
	}
	go r.read()
	return r
}

func (r *rawConn) read() {
	defer close(r.closed)
	fr := http2.NewFramer(io.Discard, r.conn)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				select {
				case <-r.settings:
				default:
					close(r.settings)
				}
				r.write(func(w *http2.Framer) error { return w.WriteSettingsAck() })
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				r.serverPng.Add(1)
				if r.ackPings {
					r.write(func(w *http2.Framer) error { return w.WritePing(true, f.Data) })
				}
			}
		case *http2.RSTStreamFrame:
			r.end(f.StreamID)
			if f.ErrCode == http2.ErrCodeRefusedStream {
				r.refused.Add(1)
			}
		case *http2.MetaHeadersFrame:
			if f.StreamEnded() {
				r.end(f.StreamID)
			}
		case *http2.GoAwayFrame:
			select {
			case r.goaway <- f:
			default:
			}
		}
	}
}

func (r *rawConn) end(id uint32) {
	if !r.endedIDs[id] {
		r.endedIDs[id] = true
		r.ended.Add(1)
	}
}

func (r *rawConn) write(f func(*http2.Framer) error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return f(r.w)
}

// open starts a delta ADS stream (HEADERS only: the request never comes).
func (r *rawConn) open(id uint32) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hbuf.Reset()
	for _, h := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":authority", "xds"},
		{":path", "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"},
		{"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		if err := r.enc.WriteField(hpack.HeaderField{Name: h[0], Value: h[1]}); err != nil {
			return err
		}
	}
	return r.w.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.hbuf.Bytes(), EndHeaders: true})
}

// TestAttackManyStreamsOneConnection: 1,000 streams opened at once on one connection by a
// client that ignores SETTINGS_MAX_CONCURRENT_STREAMS. The server refuses those beyond the
// limit (REFUSED_STREAM) and ends those the rate limit does not admit in time
// (ResourceExhausted), so its goroutines stay within a few per allowed stream.
func TestAttackManyStreamsOneConnection(t *testing.T) {
	_, addr := startServer(t, "127.0.0.1:0", server.Options{Registerer: prometheus.NewRegistry()}, resources(t, false))
	base := measure()
	const streams = 1000
	perConn := int(server.DefaultLimits().MaxConcurrentStreams)
	a := dialRaw(t, addr, true)
	for i := range streams {
		if err := a.open(uint32(2*i + 1)); err != nil {
			t.Fatal(err)
		}
	}
	peak := 0
	eventually(t, timeout, func() bool {
		peak = max(peak, serverGoroutines())
		return a.ended.Load() >= streams-int64(perConn)
	}, func() string {
		return fmt.Sprintf("%d of %d streams ended by the server (%d refused); server goroutines %d, %d before", a.ended.Load(), streams, a.refused.Load(), peak, base.goroutines)
	})
	if a.refused.Load() == 0 {
		t.Error("no stream refused (REFUSED_STREAM) beyond the connection's limit")
	}
	if limit := base.goroutines + 3*perConn + 10; peak > limit {
		t.Errorf("server goroutines peaked at %d (%d before): want at most %d", peak, base.goroutines, limit)
	}
	t.Logf("%d streams: %d refused, %d ended; server goroutines peak %d (baseline %d)", streams, a.refused.Load(), a.ended.Load(), peak, base.goroutines)
	a.conn.Close()
	base.recovered(t, addr, 4<<20)
}

// TestAttackStreamFlood: 200 new streams at once over 10 connections. Beyond the rate of
// new streams (DefaultStreamsPerSecond, a bucket of one, at most 1s of wait) they end with
// ResourceExhausted, as istiod's do.
func TestAttackStreamFlood(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, addr := startServer(t, "127.0.0.1:0", server.Options{Registerer: reg}, resources(t, false))
	base := measure()
	const conns, perConn = 10, 20
	var ok, exhausted, other atomic.Int64
	var otherErr atomic.Value
	start := time.Now()
	var wg sync.WaitGroup
	var ccs []*grpc.ClientConn
	for range conns {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		ccs = append(ccs, cc)
		c := discovery.NewAggregatedDiscoveryServiceClient(cc)
		for range perConn {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				defer cancel()
				err := func() error {
					s, err := c.DeltaAggregatedResources(ctx)
					if err != nil {
						return err
					}
					if err := s.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "flood"}, TypeUrl: wds.AddressType, ResourceNamesSubscribe: []string{"*"}}); err != nil && !errors.Is(err, io.EOF) {
						return err
					}
					_, err = s.Recv()
					return err
				}()
				switch status.Code(err) {
				case codes.OK:
					ok.Add(1)
				case codes.ResourceExhausted:
					exhausted.Add(1)
				default:
					other.Add(1)
					otherErr.Store(err)
				}
			})
		}
		t.Cleanup(func() { cc.Close() })
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, cc := range ccs {
		cc.Close()
	}
	t.Logf("%d streams in %v: %d served, %d ResourceExhausted, %d other", conns*perConn, elapsed, ok.Load(), exhausted.Load(), other.Load())
	if other.Load() > 0 {
		t.Errorf("%d streams ended otherwise, e.g. %v", other.Load(), otherErr.Load())
	}
	if exhausted.Load() == 0 {
		t.Error("no stream was refused with ResourceExhausted")
	}
	// The bucket holds one; each second lets the rate more in, and a stream waits at most 1s.
	if limit := 2 + int64(server.DefaultStreamsPerSecond()*(elapsed.Seconds()+1)); ok.Load() > limit {
		t.Errorf("%d streams served in %v, want at most %d", ok.Load(), elapsed, limit)
	}
	if got := counter(t, reg, "goambient_xds_refused_total", "rate"); got != float64(exhausted.Load()) {
		t.Errorf("goambient_xds_refused_total{reason=rate} = %v, want %d", got, exhausted.Load())
	}
	base.recovered(t, addr, 4<<20)
}

// counter is the value of a counter of reg with the label value lv.
func counter(t *testing.T, reg *prometheus.Registry, name, lv string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == lv {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestAttackNonReadingClients: on a generated mesh of 2,000 pods, 200 services and 200
// policies, 10 clients subscribe to the workload API and never read: each would pin a whole
// response in the server's gRPC buffers for as long as it stays. Their responses stay
// unacknowledged, so each connection is closed after the ACK timeout; the memory comes back,
// and a ztunnel that reads keeps getting updates throughout.
func TestAttackNonReadingClients(t *testing.T) {
	start := time.Now()
	set, err := meshgen.Generate(meshgen.Default.Scaled(5))
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Build(set, model.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	mesh := wds.Translate(m, wds.Options{}).ByType()
	t.Logf("mesh generated and translated in %v", time.Since(start))
	// The update after the attack: one workload less.
	next := map[string]map[string]proto.Message{}
	for typ, byName := range mesh {
		next[typ] = maps.Clone(byName)
	}
	for name := range next[wds.AddressType] {
		delete(next[wds.AddressType], name)
		break
	}
	var addressResponses atomic.Int64
	reg := prometheus.NewRegistry()
	srv, addr := startServer(t, "127.0.0.1:0", server.Options{
		Registerer: reg,
		Limits:     server.Limits{AckTimeout: 2 * time.Second, SendTimeout: time.Second, StreamsPerSecond: -1},
		OnDeltaResponse: func(_ int64, r *discovery.DeltaDiscoveryResponse) {
			if r.GetTypeUrl() == wds.AddressType && len(r.GetResources()) > 1000 {
				addressResponses.Add(1)
			}
		},
	}, mesh)
	legit, store := startClient(t, addr)
	waitState(t, store, "the legitimate ztunnel's first state", func(s *state.State) bool { return len(s.Resources().Workloads) >= 2000 })
	base := measure()
	connects := legit.Stats().Connects

	const attackers = 10
	var ccs []*grpc.ClientConn
	for range attackers {
		// A fixed window turns off gRPC's window growth: the server can send 64 KiB, no more.
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
		if err != nil {
			t.Fatal(err)
		}
		ccs = append(ccs, cc)
		t.Cleanup(func() { cc.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 2*timeout)
		t.Cleanup(cancel)
		s, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "slow"}, TypeUrl: wds.AddressType, ResourceNamesSubscribe: []string{"*"}}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, timeout, func() bool { return addressResponses.Load() >= attackers+1 }, func() string {
		return fmt.Sprintf("%d full responses sent, want %d", addressResponses.Load(), attackers+1)
	})
	peak := heapAlloc()
	t.Logf("heap with %d non-reading clients: +%d MiB (%d KiB each)", attackers, (peak-base.heap)>>20, (peak-base.heap)/attackers>>10)

	// Every attacker's connection is closed by the server.
	eventually(t, timeout, func() bool {
		for _, cc := range ccs {
			if cc.GetState() == connectivity.Ready {
				return false
			}
		}
		return true
	}, func() string {
		n := 0
		for _, cc := range ccs {
			if cc.GetState() == connectivity.Ready {
				n++
			}
		}
		return fmt.Sprintf("%d of %d non-reading clients still connected", n, attackers)
	})
	if got := counter(t, reg, "goambient_xds_refused_total", "stalled"); got < attackers {
		t.Errorf("goambient_xds_refused_total{reason=stalled} = %v, want at least %d", got, attackers)
	}
	for _, cc := range ccs {
		cc.Close()
	}
	// The ztunnel that reads was never cut off, and gets the next update.
	acks := legit.Stats().ACKs
	srv.Set(next)
	eventually(t, timeout, func() bool { return legit.Stats().ACKs > acks }, func() string { return "the legitimate ztunnel got no update" })
	if n := legit.Stats().Connects; n != connects {
		t.Errorf("the legitimate ztunnel was cut off: %d connections during the attack", n-connects)
	}
	base.recovered(t, addr, 8<<20)
}

// TestAttackKeepalive: a client pinging far more often than KeepaliveMinTime gets a GOAWAY
// ENHANCE_YOUR_CALM (too_many_pings), as istiod's enforcement policy does; one pinging at
// the allowed pace with a stream open does not; one that never answers the server's pings is
// disconnected after KeepaliveTime + KeepaliveTimeout.
func TestAttackKeepalive(t *testing.T) {
	_, addr := startServer(t, "127.0.0.1:0", server.Options{
		Registerer: prometheus.NewRegistry(),
		Limits:     server.Limits{KeepaliveMinTime: 20 * time.Millisecond, KeepaliveTime: 200 * time.Millisecond, KeepaliveTimeout: 200 * time.Millisecond},
	}, resources(t, false))
	base := measure()

	t.Run("ping flood", func(t *testing.T) {
		a := dialRaw(t, addr, true)
		if err := a.open(1); err != nil {
			t.Fatal(err)
		}
		for i := range 20 {
			if err := a.write(func(w *http2.Framer) error { return w.WritePing(false, [8]byte{byte(i)}) }); err != nil {
				break // the server closed the connection
			}
		}
		select {
		case g := <-a.goaway:
			if g.ErrCode != http2.ErrCodeEnhanceYourCalm || string(g.DebugData()) != "too_many_pings" {
				t.Errorf("GOAWAY %v %q, want ENHANCE_YOUR_CALM too_many_pings", g.ErrCode, g.DebugData())
			}
		case <-time.After(timeout):
			t.Fatal("no GOAWAY after 20 pings at once")
		}
		a.conn.Close()
	})
	t.Run("polite pings", func(t *testing.T) {
		a := dialRaw(t, addr, true)
		if err := a.open(1); err != nil {
			t.Fatal(err)
		}
		// 50 times the minimum interval: three strikes would need three pings closer than it.
		for i := range 4 {
			if err := a.write(func(w *http2.Framer) error { return w.WritePing(false, [8]byte{byte(i)}) }); err != nil {
				t.Fatal(err)
			}
			select {
			case g := <-a.goaway:
				t.Fatalf("GOAWAY %v %q after %d pings at 1s intervals", g.ErrCode, g.DebugData(), i+1)
			case <-time.After(time.Second):
			}
		}
		a.conn.Close()
	})
	t.Run("silent client", func(t *testing.T) {
		a := dialRaw(t, addr, false)
		select {
		case <-a.closed:
		case <-time.After(timeout):
			t.Fatalf("a client that answers no ping is still connected (%d pings sent)", a.serverPng.Load())
		}
		if a.serverPng.Load() == 0 {
			t.Error("closed without a keepalive ping")
		}
	})
	base.recovered(t, addr, 4<<20)
}

// TestAttackNonReadingOwnGRPCServer: on a gRPC server of the caller's (Register, not served on
// Server.Listener), a client that leaves its response unacknowledged has its stream ended
// (DeadlineExceeded) after the ACK timeout, and the stream's goroutines go.
func TestAttackNonReadingOwnGRPCServer(t *testing.T) {
	reg := prometheus.NewRegistry()
	srv, err := server.New(server.Options{Registerer: reg, Limits: server.Limits{AckTimeout: 500 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	srv.Set(resources(t, false))
	g := grpc.NewServer()
	srv.Register(g)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- g.Serve(l) }()
	t.Cleanup(func() {
		srv.Stop()
		g.Stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	base := measure()
	cc, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	s, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "slow"}, TypeUrl: wds.AddressType, ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil { // read, but never acknowledged
		t.Fatal(err)
	}
	if _, err := s.Recv(); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("stream ended with %v, want DeadlineExceeded", err)
	}
	if got := counter(t, reg, "goambient_xds_refused_total", "stalled"); got != 1 {
		t.Errorf("goambient_xds_refused_total{reason=stalled} = %v, want 1", got)
	}
	// The connection stays (it is not the Server's to close: its reader, writer and keepalive
	// goroutines remain); the stream's go.
	eventually(t, timeout, func() bool { return serverGoroutines() <= base.goroutines+3 }, func() string {
		return fmt.Sprintf("server goroutines: %d, %d before the connection", serverGoroutines(), base.goroutines)
	})
}

// TestAttackCaps: a connection beyond MaxConnections is closed when accepted, a stream beyond
// MaxStreams and a request beyond MaxRecvMsgSize end with ResourceExhausted; what is freed is
// usable again.
func TestAttackCaps(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, addr := startServer(t, "127.0.0.1:0", server.Options{
		Registerer: reg,
		Limits:     server.Limits{MaxConnections: 3, MaxStreams: 2, MaxRecvMsgSize: 4 << 10, StreamsPerSecond: -1},
	}, resources(t, false))
	base := measure()

	t.Run("connections", func(t *testing.T) {
		served := func(c *rawConn) bool {
			select {
			case <-c.settings:
				return true
			case <-c.closed:
				return false
			case <-time.After(timeout):
				t.Fatal("a connection neither served nor closed")
				return false
			}
		}
		var held []*rawConn
		for range 3 {
			c := dialRaw(t, addr, true)
			if !served(c) {
				t.Fatal("one of the first three connections was closed")
			}
			held = append(held, c)
		}
		if served(dialRaw(t, addr, true)) {
			t.Fatal("a fourth connection was served")
		}
		held[0].conn.Close()
		eventually(t, timeout, func() bool {
			c := dialRaw(t, addr, true)
			defer c.conn.Close()
			return served(c)
		}, func() string { return "no connection served after one closed" })
		for _, h := range held {
			h.conn.Close()
		}
		if got := counter(t, reg, "goambient_xds_refused_total", "connections"); got < 1 {
			t.Errorf("goambient_xds_refused_total{reason=connections} = %v", got)
		}
	})
	eventually(t, timeout, func() bool { return serverGoroutines() <= base.goroutines+2 }, func() string {
		return fmt.Sprintf("server goroutines: %d, %d before", serverGoroutines(), base.goroutines)
	})

	t.Run("streams and message size", func(t *testing.T) {
		c := dial(t, addr)
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		var open []discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
		for range 2 {
			s, err := c.DeltaAggregatedResources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "n"}, TypeUrl: wds.AddressType, ResourceNamesSubscribe: []string{"*"}}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Recv(); err != nil {
				t.Fatal(err)
			}
			open = append(open, s)
		}
		s, err := c.DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); status.Code(err) != codes.ResourceExhausted {
			t.Errorf("a third stream: %v, want ResourceExhausted", err)
		}
		for _, s := range open {
			if err := s.CloseSend(); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Recv(); err != io.EOF {
				t.Fatalf("stream end: %v", err)
			}
		}
		// Under the cap again; a request bigger than the limit ends its stream.
		s, err = c.DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: strings.Repeat("n", 8<<10)}, TypeUrl: wds.AddressType})
		if _, err := s.Recv(); status.Code(err) != codes.ResourceExhausted {
			t.Errorf("an 8 KiB request: %v, want ResourceExhausted", err)
		}
		if got := counter(t, reg, "goambient_xds_refused_total", "streams"); got != 1 {
			t.Errorf("goambient_xds_refused_total{reason=streams} = %v, want 1", got)
		}
	})
	base.recovered(t, addr, 4<<20)
}

// TestAttackBlindAcks: a client that acknowledges without reading (go-control-plane's nonces
// are predictable) is cut off at the next push, when sending to it blocks past SendTimeout.
func TestAttackBlindAcks(t *testing.T) {
	set, err := meshgen.Generate(meshgen.Default.Scaled(20)) // 500 pods: a response well over the 64 KiB window
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Build(set, model.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	mesh := wds.Translate(m, wds.Options{}).ByType()
	reg := prometheus.NewRegistry()
	var responses atomic.Int64 // to the attacker (the only client)
	srv, addr := startServer(t, "127.0.0.1:0", server.Options{
		Registerer:      reg,
		Limits:          server.Limits{SendTimeout: 500 * time.Millisecond, AckTimeout: time.Hour},
		OnDeltaResponse: func(int64, *discovery.DeltaDiscoveryResponse) { responses.Add(1) },
	}, mesh)
	base := measure()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	s, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "blind"}, TypeUrl: wds.AddressType, ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	// Each response is acknowledged unread, so the next push is sent to it, until gRPC's write
	// quota for the stream (64 KiB, which the client's window never gives back) is spent and
	// sending blocks.
	for i := 1; counter(t, reg, "goambient_xds_refused_total", "stalled") == 0; i++ {
		if i > 50 {
			t.Fatal("50 pushes, and sending never blocked")
		}
		eventually(t, timeout, func() bool { return responses.Load() >= int64(i) }, func() string {
			return fmt.Sprintf("response %d was not sent", i)
		})
		if err := s.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: wds.AddressType, ResponseNonce: fmt.Sprint(i)}); err != nil {
			break // cut off
		}
		next := map[string]map[string]proto.Message{}
		for typ, byName := range mesh {
			next[typ] = maps.Clone(byName)
		}
		for name := range next[wds.AddressType] {
			delete(next[wds.AddressType], name)
			break
		}
		mesh = next
		srv.Set(mesh)
		eventually(t, timeout, func() bool {
			return responses.Load() > int64(i) || counter(t, reg, "goambient_xds_refused_total", "stalled") > 0
		}, func() string { return fmt.Sprintf("push %d was not sent", i) })
	}
	eventually(t, timeout, func() bool { return cc.GetState() != connectivity.Ready }, func() string {
		return "the blind acknowledger is still connected"
	})
	cc.Close()
	base.recovered(t, addr, 4<<20)
}
