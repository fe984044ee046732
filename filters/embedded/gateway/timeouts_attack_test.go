package gateway

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// heapNow is the live heap after a collection.
func heapNow() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// heapBack waits until the live heap is back within 8 MiB of base.
func heapBack(t testing.TB, base uint64) {
	t.Helper()
	eventually(t, "the heap to come back", func() bool { return heapNow() <= base+8<<20 })
}

// closedByServer reads c until the gateway closes it, and fails t if it had to wait for the
// 20 s read deadline (the readiness bound) instead. It returns how many bytes were read and
// the first 64 of them.
func closedByServer(t *testing.T, what string, c net.Conn) (int64, string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	head := make([]byte, 64)
	k, _ := io.ReadFull(c, head)
	n, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Errorf("%s: the gateway did not close the connection", what)
	}
	return int64(k) + n, string(head[:k])
}

// closeUpstreamIdle closes the gateway's idle upstream connections.
func (f *fixture) closeUpstreamIdle() {
	f.g.up.mu.Lock()
	defer f.g.up.mu.Unlock()
	for _, tr := range f.g.up.m {
		tr.CloseIdleConnections()
	}
}

// TestAttackRequestTimeout: a request whose body never finishes, and a client that never
// reads a large answer, hold their connection only for RequestTimeout: the gateway closes it
// (and its upstream stream: the upstream's write of the answer fails), and goroutines and heap
// come back. The other limits are left long, so only this one can close them.
func TestAttackRequestTimeout(t *testing.T) {
	f := setup(t, Limits{RequestTimeout: 500 * time.Millisecond, HeaderTimeout: time.Minute, IdleTimeout: time.Minute})
	get(t, plainClient(), f.url(t, 80, "http", "/"), "appa.opssec.in") // the upstream's pooled connection exists from here on
	base, heap := runtime.NumGoroutine(), heapNow()

	// A body announced at 1 MB, 10 bytes of it sent: closed without an answer (before the
	// gateway aborted such a request, net/http answered an implicit 200 and kept the
	// connection open).
	var conns []net.Conn
	for range 10 {
		c, err := net.Dial("tcp", f.g.Addr(80).String())
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: appa.opssec.in\r\nContent-Length: 1000000\r\n\r\n0123456789")
		conns = append(conns, c)
	}
	for i, c := range conns {
		if _, head := closedByServer(t, fmt.Sprintf("stalled body %d", i), c); strings.HasPrefix(head, "HTTP/1.1 2") {
			t.Errorf("stalled body %d was answered %q", i, head)
		}
		c.Close()
	}

	// An answer of 64 MiB to a client that reads nothing until the upstream's write has failed.
	const size = 64 << 20
	c, err := net.Dial("tcp", f.g.Addr(80).String())
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, fmt.Sprintf("GET /big/%d HTTP/1.1\r\nHost: appa.opssec.in\r\n\r\n", size))
	eventually(t, "the upstream's answer cut off", func() bool { return f.appa.abortedBig() > 0 })
	if n, _ := closedByServer(t, "unread answer", c); n >= size {
		t.Errorf("the whole answer (%d bytes) was delivered past RequestTimeout", n)
	}
	c.Close()
	goroutinesBack(t, base)
	heapBack(t, heap)
}

// TestAttackIdleTimeout: a keep-alive connection that sends no further request (HTTP/1.1
// after one request; h2c after its preface, with no stream) is closed after IdleTimeout;
// goroutines and heap come back.
func TestAttackIdleTimeout(t *testing.T) {
	f := setup(t, Limits{IdleTimeout: 300 * time.Millisecond, HeaderTimeout: time.Minute, RequestTimeout: time.Minute})
	get(t, plainClient(), f.url(t, 80, "http", "/"), "appa.opssec.in") // the upstream's pooled connection exists from here on
	base, heap := runtime.NumGoroutine(), heapNow()
	var wg sync.WaitGroup
	for i := range 20 {
		c, err := net.Dial("tcp", f.g.Addr(80).String())
		if err != nil {
			t.Fatal(err)
		}
		what := fmt.Sprintf("idle HTTP/1.1 connection %d", i)
		if i%2 == 0 {
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: appa.opssec.in\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || resp.Close {
				t.Fatalf("the first request: %d, close %v", resp.StatusCode, resp.Close)
			}
		} else {
			what = fmt.Sprintf("idle h2c connection %d", i)
			io.WriteString(c, http2.ClientPreface)
			http2.NewFramer(c, c).WriteSettings()
		}
		wg.Go(func() {
			defer c.Close()
			closedByServer(t, what, c)
		})
	}
	wg.Wait()
	goroutinesBack(t, base)
	heapBack(t, heap)
}

// TestAttackUpstreamConnections: with MaxUpstreamPerHost 2, eight concurrent requests to one
// endpoint open two HBONE connections: two requests reach the upstream, the others wait;
// once the upstream answers, the waiting ones proceed over the same two connections and all
// are answered 200. Goroutines and heap come back.
func TestAttackUpstreamConnections(t *testing.T) {
	f := setup(t, Limits{MaxUpstreamPerHost: 2})
	base, heap := runtime.NumGoroutine(), heapNow()
	const n = 8
	codes := make(chan int, n)
	c := plainClient()
	for range n {
		go func() {
			req, _ := http.NewRequest("GET", f.url(t, 80, "http", "/hold"), nil)
			req.Host = "appa.opssec.in"
			resp, err := c.Do(req)
			if err != nil {
				codes <- 0
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	eventually(t, "two requests at the upstream", func() bool { now, _ := f.appa.held(); return now >= 2 })
	close(f.appa.release)
	for range n {
		if code := <-codes; code != 200 {
			t.Errorf("a request: %d, want 200", code)
		}
	}
	// (A missing limit could still pass if the other requests were slower than the release;
	// a working one can never fail here.)
	if _, most := f.appa.held(); most != 2 {
		t.Errorf("%d requests were at the upstream at once, want 2", most)
	}
	if calls := len(f.appa.seen()); calls != 2 {
		t.Errorf("%d HBONE connections to the endpoint, want 2", calls)
	}
	c.CloseIdleConnections()
	f.closeUpstreamIdle() // the two pooled HBONE connections, made after base was taken
	goroutinesBack(t, base)
	heapBack(t, heap)
}
