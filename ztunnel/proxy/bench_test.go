package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goambient/goambient/xdsserver/ca/pki"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/goambient/goambient/ztunnel/accesslog"
	"github.com/goambient/goambient/ztunnel/identity"
	"github.com/goambient/goambient/ztunnel/state"
)

// The benchmarks of this file run two whole proxies in one process, in loopback mode, with
// the real state, identity (a CA issuing SVIDs), mutual TLS and access log formatting (to
// io.Discard): the source ztunnel (node n1, pod "client") takes SOCKS5 connections from the
// client pod's address and opens HBONE streams to the destination ztunnel (node n2, pod
// "server"), which relays them to the server's application, an echo server. Each benchmark
// measures the same work over direct loopback TCP to the same echo server in the same run and
// reports both and their ratio (run: go test -run '^$' -bench . -benchtime 2s ./ztunnel/proxy/).

// benchEnv is the two-ztunnel loopback scenario shared by the benchmarks of one `go test` run.
type benchEnv struct {
	client netip.Addr     // the client pod's address: SOCKS5 connections are made from it
	pod    netip.AddrPort // the server pod's address and port: the proxied destination
	app    netip.AddrPort // where its echo application listens: the direct destination
	socks  string         // the source ztunnel's SOCKS5 listener
	err    error
	// noBaggage starts the proxies with Config.DisableBaggage (BenchmarkNewConnBaggage).
	noBaggage bool
}

var (
	benchOnce sync.Once
	benchE    benchEnv
)

// env returns the shared scenario, building it on first use. It is never torn down (the test
// process ends after the benchmarks).
func env(b *testing.B) *benchEnv {
	b.Helper()
	benchOnce.Do(func() { benchE.err = benchE.start() })
	if benchE.err != nil {
		b.Fatal(benchE.err)
	}
	return &benchE
}

func (e *benchEnv) start() error {
	a, c := 10+rand.IntN(90), 1+rand.IntN(250)
	e.client = netip.MustParseAddr(fmt.Sprintf("127.%d.%d.2", a, c))
	e.pod = netip.MustParseAddrPort(fmt.Sprintf("127.%d.%d.5:7070", a, c))
	e.app = AppOffsetRule(DefaultAppOffset)(e.pod)

	ln, err := net.Listen("tcp", e.app.String())
	if err != nil {
		return err
	}
	go func() { // echo, as a plain TCP application would
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); bufio.NewReader(c).WriteTo(c) }()
		}
	}()

	st, err := state.Parse([]byte(fmt.Sprintf(`workloads:
- uid: Kubernetes//Pod/ns/client
  name: client
  namespace: ns
  serviceAccount: client
  addresses: [%q]
  node: n1
  tunnelProtocol: HBONE
- uid: Kubernetes//Pod/ns/server
  name: server
  namespace: ns
  serviceAccount: server
  addresses: [%q]
  node: n2
  tunnelProtocol: HBONE
  services: {ns/server.ns.svc.cluster.local: {ports: [{servicePort: 7070, targetPort: 7070}]}}
services:
- name: server
  namespace: ns
  hostname: server.ns.svc.cluster.local
  ports: [{servicePort: 7070, targetPort: 7070}]
`, e.client, e.pod.Addr())), "bench")
	if err != nil {
		return err
	}
	ca, err := pki.NewCA(spiffeid.RequireTrustDomainFromString("cluster.local"))
	if err != nil {
		return err
	}
	var proxies []*Proxy
	for _, node := range []string{"n1", "n2"} {
		// One identity manager per ztunnel, both issued by the same CA, as two nodes would be.
		idm, err := identity.NewManager(context.Background(), identity.ManagerOptions{Source: pki.NewSource(ca, time.Hour)})
		if err != nil {
			return err
		}
		p, err := New(Config{
			Logger: slog.New(accesslog.NewHandler(io.Discard, nil)), Node: node,
			Store: state.NewStore(st), Identity: idm, Loopback: true,
			Listen: Listen{SOCKS5: "127.0.0.1:0"}, DrainGrace: time.Second, DisableBaggage: e.noBaggage,
		})
		if err != nil {
			return err
		}
		if err := p.Start(); err != nil {
			return err
		}
		if !p.Ready() {
			return fmt.Errorf("ztunnel %s not ready after Start", node)
		}
		proxies = append(proxies, p)
	}
	e.socks = proxies[0].Addr("socks5").String()
	// One exchange through the proxies: the pooled HBONE connection exists before any timing.
	conn, err := e.dialProxied()
	if err != nil {
		return err
	}
	defer conn.Close()
	return pingPong(conn, make([]byte, 64), make([]byte, 64))
}

// dialProxied opens a connection to the server pod through the source ztunnel's SOCKS5
// listener, from the client pod's address.
func (e *benchEnv) dialProxied() (net.Conn, error) {
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(e.client, 0)), Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", e.socks)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	var buf [10]byte
	if _, err := c.Write([]byte{5, 1, 0}); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := io.ReadFull(c, buf[:2]); err != nil || buf[0] != 5 || buf[1] != 0 {
		c.Close()
		return nil, fmt.Errorf("socks5 method reply %v: %v", buf[:2], err)
	}
	ip, port := e.pod.Addr().As4(), e.pod.Port()
	if _, err := c.Write([]byte{5, 1, 0, 1, ip[0], ip[1], ip[2], ip[3], byte(port >> 8), byte(port)}); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := io.ReadFull(c, buf[:10]); err != nil || buf[1] != 0 || buf[3] != 1 {
		c.Close()
		return nil, fmt.Errorf("socks5 connect reply %v: %v", buf, err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// dialDirect opens a TCP connection from the client pod's address straight to the echo app.
func (e *benchEnv) dialDirect() (net.Conn, error) {
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(e.client, 0)), Timeout: 5 * time.Second}
	return d.Dial("tcp", e.app.String())
}

func pingPong(c net.Conn, msg, buf []byte) error {
	if _, err := c.Write(msg); err != nil {
		return err
	}
	_, err := io.ReadFull(c, buf)
	return err
}

// stream writes n chunks of size len(buf) on c while reading the echo back, then half-closes
// and checks that everything came back.
func stream(c net.Conn, n int, buf []byte) error {
	werr := make(chan error, 1)
	go func() {
		for range n {
			if _, err := c.Write(buf); err != nil {
				werr <- err
				return
			}
		}
		werr <- c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	got, err := io.CopyBuffer(io.Discard, c, make([]byte, len(buf)))
	if err != nil {
		return err
	}
	if err := <-werr; err != nil {
		return err
	}
	if want := int64(n) * int64(len(buf)); got != want {
		return fmt.Errorf("read back %d bytes, want %d", got, want)
	}
	return nil
}

// BenchmarkBulkThroughput: b.N chunks of 64 KiB from the client through SOCKS5 → source
// ztunnel → HBONE (mTLS, HTTP/2) → destination ztunnel → echo app and back (the timed part),
// and the same bytes over one direct loopback TCP connection to the same echo app (timed
// apart, in the same run). MB/s counts the payload once, as b.SetBytes does; it crosses each
// hop in both directions.
func BenchmarkBulkThroughput(b *testing.B) {
	e := env(b)
	const chunk = 64 << 10
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	b.StopTimer()

	dc, err := e.dialDirect()
	if err != nil {
		b.Fatal(err)
	}
	cpu0, cpuOK := processCPU()
	start := time.Now()
	if err := stream(dc, b.N, buf); err != nil {
		b.Fatal(err)
	}
	direct := time.Since(start)
	cpu1, cpuOK1 := processCPU()
	dc.Close()

	pc, err := e.dialProxied()
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	b.StartTimer()
	start = time.Now()
	if err := stream(pc, b.N, buf); err != nil {
		b.Fatal(err)
	}
	proxied := time.Since(start)
	cpu2, cpuOK2 := processCPU()
	b.StopTimer()

	mb := float64(b.N) * chunk / 1e6
	if cpuOK && cpuOK1 && cpuOK2 {
		// CPU time of the whole process (client, both ztunnels, echo app) per 64 KiB chunk: a busy
		// machine disturbs it far less than the wall-time rates.
		dcpu, pcpu := float64(cpu1-cpu0)/float64(b.N), float64(cpu2-cpu1)/float64(b.N)
		b.ReportMetric(dcpu/1e3, "direct-cpu-µs/op")
		b.ReportMetric(pcpu/1e3, "hbone-cpu-µs/op")
		b.ReportMetric(pcpu/dcpu, "hbone/direct-cpu")
	}
	b.ReportMetric(mb/direct.Seconds(), "direct-MB/s")
	b.ReportMetric(mb/proxied.Seconds(), "hbone-MB/s")
	b.ReportMetric(direct.Seconds()/proxied.Seconds(), "hbone/direct")
}

// latencies runs b.N rounds of one direct and one proxied operation, interleaved so both see
// the same machine state, and reports p50 and p99 of each and what the proxies add.
func latencies(b *testing.B, direct, proxied func() error) {
	dl := make([]time.Duration, 0, b.N)
	pl := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if err := direct(); err != nil {
			b.Fatal(err)
		}
		mid := time.Now()
		if err := proxied(); err != nil {
			b.Fatal(err)
		}
		dl = append(dl, mid.Sub(start))
		pl = append(pl, time.Since(mid))
	}
	b.StopTimer()
	slices.Sort(dl)
	slices.Sort(pl)
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	p := func(l []time.Duration, q int) time.Duration { return l[min(len(l)-1, len(l)*q/100)] }
	b.ReportMetric(us(p(dl, 50)), "direct-p50-µs")
	b.ReportMetric(us(p(dl, 99)), "direct-p99-µs")
	b.ReportMetric(us(p(pl, 50)), "hbone-p50-µs")
	b.ReportMetric(us(p(pl, 99)), "hbone-p99-µs")
	b.ReportMetric(us(p(pl, 50)-p(dl, 50)), "added-p50-µs")
	b.ReportMetric(us(p(pl, 99)-p(dl, 99)), "added-p99-µs")
}

// BenchmarkLatencyPingPong: a 64-byte request and its echo on one long-lived connection,
// direct to the app and through both ztunnels (one HBONE stream on the pooled connection).
// ns/op is one direct plus one proxied exchange.
func BenchmarkLatencyPingPong(b *testing.B) {
	e := env(b)
	msg, buf := make([]byte, 64), make([]byte, 64)
	dc, err := e.dialDirect()
	if err != nil {
		b.Fatal(err)
	}
	defer dc.Close()
	pc, err := e.dialProxied()
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	latencies(b,
		func() error { return pingPong(dc, msg, buf) },
		func() error { return pingPong(pc, msg, buf) })
}

// BenchmarkLatencyNewConn: a new connection per 64-byte request and its echo, then close:
// direct (TCP connect to the app) against proxied (TCP connect and SOCKS5 handshake to the
// source ztunnel, a new HBONE stream on the pooled mTLS connection, the destination ztunnel's
// policy check and dial to the app). ns/op is one of each.
func BenchmarkLatencyNewConn(b *testing.B) {
	e := env(b)
	msg, buf := make([]byte, 64), make([]byte, 64)
	once := func(dial func() (net.Conn, error)) func() error {
		return func() error {
			c, err := dial()
			if err != nil {
				return err
			}
			defer c.Close()
			return pingPong(c, msg, buf)
		}
	}
	latencies(b, once(e.dialDirect), once(e.dialProxied))
}

// idleConns is how many idle connections BenchmarkIdleConnMemory holds open.
const idleConns = 1000

var idleMem struct {
	once                  sync.Once
	direct, proxied       float64 // heap bytes per connection
	directGor, proxiedGor float64 // goroutines per connection
	err                   error
}

// heapInuse returns HeapInuse and the goroutine count after a GC, once open connections'
// goroutines have settled.
func heapInuse() (uint64, int) {
	time.Sleep(100 * time.Millisecond)
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse, runtime.NumGoroutine()
}

// holdIdle opens n connections with dial, makes one exchange on each (so every hop is set
// up), and returns the HeapInuse and goroutine growth per connection while they are open.
func holdIdle(n int, dial func() (net.Conn, error)) (bytes, gor float64, err error) {
	msg, buf := make([]byte, 64), make([]byte, 64)
	h0, g0 := heapInuse()
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		time.Sleep(200 * time.Millisecond) // let the relays and the echo goroutines end
	}()
	for range n {
		c, err := dial()
		if err != nil {
			return 0, 0, err
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := pingPong(c, msg, buf); err != nil {
			return 0, 0, err
		}
		c.SetDeadline(time.Time{})
	}
	h1, g1 := heapInuse()
	return (float64(h1) - float64(h0)) / float64(n), float64(g1-g0) / float64(n), nil
}

// BenchmarkIdleConnMemory: HeapInuse growth (after GC) per idle connection with 1000 open,
// direct to the echo app and through both ztunnels. Both figures include the client's socket
// and the echo app's goroutine and 4 KiB reader; "added" is the two ztunnels' share (SOCKS5
// side, HBONE stream on both ends, app-side socket and relay goroutines). The measurement is
// made once per process; the loop itself does nothing, so ns/op means nothing here.
func BenchmarkIdleConnMemory(b *testing.B) {
	e := env(b)
	idleMem.once.Do(func() {
		m := &idleMem
		if m.direct, m.directGor, m.err = holdIdle(idleConns, e.dialDirect); m.err != nil {
			return
		}
		m.proxied, m.proxiedGor, m.err = holdIdle(idleConns, e.dialProxied)
	})
	if idleMem.err != nil {
		b.Fatal(idleMem.err)
	}
	for range b.N {
	}
	b.ReportMetric(idleMem.direct, "direct-B/conn")
	b.ReportMetric(idleMem.proxied, "hbone-B/conn")
	b.ReportMetric(idleMem.proxied-idleMem.direct, "added-B/conn")
	b.ReportMetric(idleMem.proxied/idleMem.direct, "hbone/direct")
	b.ReportMetric(idleMem.directGor, "direct-goroutines/conn")
	b.ReportMetric(idleMem.proxiedGor, "hbone-goroutines/conn")
}

// processCPU is the process's user+system CPU time from /proc/self/stat (Linux; ok is false
// elsewhere), in clock ticks converted at the usual USER_HZ of 100.
func processCPU() (d time.Duration, ok bool) {
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, false
	}
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, false
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, true
}
