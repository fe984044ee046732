package hbone

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The attack tests run the server (or the client) under attack and the attacker in this
// process, one test at a time (none is parallel): what they measure is the whole process.
// Each attack is bounded (attackFor, or a count), with configured small limits so it is short.

// attackFor is how long a flood runs.
const attackFor = 2 * time.Second

// usage is what the process holds: goroutines, heap in use after a GC, open fds (-1 where
// /proc/self/fd is not there).
type usage struct {
	goroutines int
	heap       uint64
	fds        int
}

func (u usage) String() string {
	return fmt.Sprintf("%d goroutines, %.1f MiB heap, %d fds", u.goroutines, float64(u.heap)/(1<<20), u.fds)
}

func measure() usage {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return usage{goroutines: runtime.NumGoroutine(), heap: m.HeapInuse, fds: countFDs()}
}

func countFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

// peakGoroutines samples the goroutine count every 10 ms until the returned function is
// called; that function returns the highest count seen.
func peakGoroutines() (stop func() int) {
	var peak atomic.Int64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			if n := int64(runtime.NumGoroutine()); n > peak.Load() {
				peak.Store(n)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() int {
		close(done)
		<-finished
		return int(peak.Load())
	}
}

// settle waits (polling, up to wait) for the process to be back within slack of base, and
// fails with what it last saw otherwise.
func settle(t testing.TB, base usage, goSlack int, heapSlack uint64, fdSlack int) usage {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		u := measure()
		ok := u.goroutines <= base.goroutines+goSlack && u.heap <= base.heap+heapSlack &&
			(base.fds < 0 || u.fds <= base.fds+fdSlack)
		if ok {
			return u
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("not back to the baseline after the attack: %v, baseline %v\n%s", u, base, buf[:n])
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}

// eventually polls cond (up to limit); it reports whether cond became true.
func eventually(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
	return true
}

// attacker is a hand-driven HTTP/2 client on its own TLS connection with a valid client
// certificate, built for floods: its frames are buffered and leave on flush, and it reads only
// when the test reads (a "never reads" attacker never does).
type attacker struct {
	t    testing.TB
	tcp  *net.TCPConn
	tc   *tls.Conn
	bw   *bufio.Writer
	fr   *http2.Framer // writes to bw, reads from tc
	henc *hpack.Encoder
	hbuf bytes.Buffer
	next uint32 // the next stream ID
}

type attackOpts struct {
	from   string // source IP ("127.0.0.2"); "" for the default
	rcvBuf int    // SO_RCVBUF set before connecting; 0 for the kernel's
}

// dialAttacker connects to e's server and sends the preface and an empty SETTINGS; it does not
// read the server's.
func dialAttacker(t testing.TB, e *env, o attackOpts) (*attacker, error) {
	tcp, err := dialTCP(e.addr, o)
	if err != nil {
		return nil, err
	}
	conf, err := ClientTLSConfig(e.clientSVID, e.bundle, []spiffeid.ID{e.serverSVID.ID})
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(tcp, conf)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		tcp.Close()
		return nil, err
	}
	a := &attacker{t: t, tcp: tcp, tc: tc, bw: bufio.NewWriterSize(tc, 64<<10), next: 1}
	t.Cleanup(func() { tcp.Close() })
	a.fr = http2.NewFramer(a.bw, tc)
	a.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	a.henc = hpack.NewEncoder(&a.hbuf)
	a.bw.WriteString(http2.ClientPreface)
	a.fr.WriteSettings()
	return a, a.flush()
}

// dialTCP opens a TCP connection to addr as o says.
func dialTCP(addr netip.AddrPort, o attackOpts) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: wait}
	if o.from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(o.from)}
	}
	if o.rcvBuf > 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error { return setRcvBuf(rc, o.rcvBuf) }
	}
	c, err := d.Dial("tcp", addr.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

func (a *attacker) flush() error {
	// A write deadline keeps an attacker whose peer stopped reading from blocking the test.
	a.tc.SetWriteDeadline(time.Now().Add(wait))
	return a.bw.Flush()
}

// connect writes a CONNECT to authority on a new stream and returns its ID.
func (a *attacker) connect(authority string) uint32 {
	id := a.next
	a.next += 2
	a.hbuf.Reset()
	a.henc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	a.henc.WriteField(hpack.HeaderField{Name: ":authority", Value: authority})
	a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: a.hbuf.Bytes(), EndHeaders: true})
	return id
}

// drain reads and drops what the server sends until the connection ends, in its own goroutine.
func (a *attacker) drain() { go io.Copy(io.Discard, a.tc) }

// closedByServer reports whether the server has closed the connection, by writing a PING: a
// closed peer resets the connection, which fails this write or the next.
func (a *attacker) closedByServer() bool {
	a.fr.WritePing(false, [8]byte{})
	a.tc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	err := a.bw.Flush()
	return err != nil && !isTimeout(err)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// legitTraffic opens tunnels to up through e's server one after the other, each echoing a few
// bytes, until stop is closed; it returns how many worked, the first error, and the median
// and 99th percentile time of a tunnel (dial, echo, close).
func legitTraffic(t testing.TB, e *env, up *upstream, stop <-chan struct{}) (result func() (ok int, err error, p50, p99 time.Duration)) {
	c, _ := e.client(ClientConfig{})
	var lat []time.Duration
	var first error
	done := make(chan struct{})
	go func() {
		defer close(done)
		msg := []byte("legit")
		for {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			if err := tunnel(c, e.target(up.addr), msg); err != nil {
				if first == nil {
					first = err
				}
				continue
			}
			lat = append(lat, time.Since(start))
		}
	}()
	return func() (int, error, time.Duration, time.Duration) {
		<-done
		if len(lat) == 0 {
			return 0, first, 0, 0
		}
		slices.Sort(lat)
		return len(lat), first, lat[len(lat)/2], lat[len(lat)*99/100]
	}
}

// tunnel opens one tunnel and echoes msg through it.
func tunnel(c *Client, tg Target, msg []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	conn, err := c.Dial(ctx, tg)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// countingLog counts the records at WARN or above and keeps the last messages.
type countingLog struct {
	n atomic.Int64
}

func (l *countingLog) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelWarn }
func (l *countingLog) Handle(context.Context, slog.Record) error {
	l.n.Add(1)
	return nil
}
func (l *countingLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *countingLog) WithGroup(string) slog.Handler      { return l }
