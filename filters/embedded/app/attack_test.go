package app

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goambient/goambient/filters/embedded/server"
)

// The attack tests: each limit of server.Limits attacked through the real HBONE listener by
// a client with a valid identity (the hbone Client, the peer a ztunnel would be), with the
// waypoint's goroutines and heap checked to come back, and a legitimate request answered
// during or after the attack. They do not run in parallel: goroutine counts are the process's.

// usage is the process's goroutines and live heap (after a GC).
type usage struct {
	goroutines int
	heap       uint64
}

func measure() usage {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return usage{runtime.NumGoroutine(), m.HeapAlloc}
}

// comesBack waits until goroutines and heap are back to base (a few goroutines and 4 MiB of
// slack: timers, pooled connections, the GC's own).
func comesBack(t *testing.T, base usage) {
	t.Helper()
	var last usage
	deadline := time.Now().Add(8 * time.Second)
	for {
		last = measure()
		if last.goroutines <= base.goroutines+3 && last.heap <= base.heap+4<<20 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("resources did not come back: %d goroutines (baseline %d), heap %d KiB (baseline %d KiB)\n%s",
				last.goroutines, base.goroutines, last.heap>>10, base.heap>>10, stacks())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stacks is every goroutine's stack, for a failure's message.
func stacks() string {
	var b strings.Builder
	pprof.Lookup("goroutine").WriteTo(&b, 1)
	return b.String()
}

// within waits up to 8 s for cond.
func within(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(8 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 8 s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// streamsEnd waits until the waypoint serves no stream.
func streamsEnd(t *testing.T, w *waypoint, what string) {
	t.Helper()
	deadline := time.Now().Add(8 * time.Second)
	for w.wp.Server.Stats().Streams != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d streams still served\n%s", what, w.wp.Server.Stats().Streams, stacks())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// answer reads one response from s within 8 s (the stream is closed if none comes).
func answer(t *testing.T, s *stream) (*http.Response, string, error) {
	t.Helper()
	type result struct {
		resp *http.Response
		body string
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		resp, err := http.ReadResponse(s.br, nil)
		if err != nil {
			ch <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		ch <- result{resp, string(b), err}
	}()
	select {
	case r := <-ch:
		return r.resp, r.body, r.err
	case <-time.After(8 * time.Second):
		s.c.Close()
		<-ch
		return nil, "", errors.New("no answer within 8 s")
	}
}

// ended waits (8 s at most) until the waypoint ends s: its reads return EOF or an error
// without an HTTP answer first.
func ended(t *testing.T, s *stream) error {
	t.Helper()
	ch := make(chan error, 1)
	go func() {
		n, err := io.Copy(io.Discard, s.br)
		if n > 0 {
			err = fmt.Errorf("%d bytes read before the end", n)
		} else {
			err = nil
		}
		ch <- err
	}()
	select {
	case err := <-ch:
		return err
	case <-time.After(8 * time.Second):
		s.c.Close()
		<-ch
		return errors.New("the stream was not closed within 8 s")
	}
}

// legit checks that a fresh stream is still served.
func (h *handson) legit(t *testing.T) {
	t.Helper()
	s := h.connect(t, "curl-allow")
	if code, body := s.do(t, "POST", "/ok", "{}"); code != 200 || body != "handson-blue POST /ok 2" {
		t.Fatalf("legitimate POST = %d %q, want 200 from handson-blue", code, body)
	}
	s.c.Close()
}

// readyHandson is the handson scenario with the limits, warmed by 10 concurrent requests (so
// that the client's, the waypoint's and the pod's HBONE connections and the waypoint's pool
// of upstream streams exist before the baseline is measured).
func readyHandson(t *testing.T, lim server.Limits) (*handson, usage) {
	t.Helper()
	f := setup(t, wpConfig{limits: lim})
	f.configure(t, true)
	eventually(t, "readiness 200", func() bool { return f.ready() == http.StatusOK })
	f.curlAddr() // allocated here: addrs is not safe for concurrent allocation
	parallel(t, 10, func(int) error {
		s := f.connect(t, "curl-allow")
		defer s.c.Close()
		if r, err := s.try("GET", "/", "", nil); err != nil || r.code != 200 {
			return fmt.Errorf("warm-up: %d %v", r.code, err)
		}
		return nil
	})
	streamsEnd(t, f.waypoint, "the warm-up streams to end")
	return f, measure()
}

// parallel runs n attacks at once and fails the test with the first error.
func parallel(t *testing.T, n int, attack func(i int) error) {
	t.Helper()
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- attack(i) }()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// TestAttackRequestBody: MaxRequestBody (64 KiB here). A Content-Length above it is answered
// 413 at once, its body never read (the client sends none); a chunked body is answered 413
// once it passes the limit; a body under it is served.
func TestAttackRequestBody(t *testing.T) {
	const limit = 64 << 10
	f, base := readyHandson(t, server.Limits{MaxRequestBody: limit})
	const n = 20
	parallel(t, n, func(i int) error {
		s := f.connect(t, "curl-allow")
		defer s.c.Close()
		if i%2 == 0 {
			if _, err := io.WriteString(s.c, "POST /big HTTP/1.1\r\nHost: handson:8080\r\nContent-Length: 1073741824\r\n\r\n"); err != nil {
				return err
			}
			resp, _, err := answer(t, s)
			if err != nil || resp.StatusCode != 413 {
				return fmt.Errorf("Content-Length 1 GiB without a body: %v %v, want 413", resp, err)
			}
			return ended(t, s)
		}
		// Chunked, 1 MiB in all: the waypoint answers once past 64 KiB.
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			bw := bufio.NewWriter(s.c)
			io.WriteString(bw, "POST /big HTTP/1.1\r\nHost: handson:8080\r\nTransfer-Encoding: chunked\r\n\r\n")
			chunk := strings.Repeat("x", 8<<10)
			for range 128 {
				fmt.Fprintf(bw, "%x\r\n%s\r\n", len(chunk), chunk)
				if bw.Flush() != nil {
					return
				}
			}
			io.WriteString(bw, "0\r\n\r\n")
			bw.Flush()
		}()
		resp, _, err := answer(t, s)
		if err != nil || resp.StatusCode != 413 {
			return fmt.Errorf("chunked body of 1 MiB: %v %v, want 413", resp, err)
		}
		<-wrote
		return nil
	})
	s := f.connect(t, "curl-allow")
	if code, body := s.do(t, "POST", "/upload", strings.Repeat("y", limit)); code != 200 || body != fmt.Sprintf("handson-blue POST /upload %d", limit) {
		t.Fatalf("a body of exactly the limit = %d %q, want 200", code, body)
	}
	s.c.Close()
	f.legit(t)
	if got := f.blue.requests(); len(got) != 12 {
		t.Errorf("handson-blue saw %v: no oversized request must reach it", got)
	}
	within(t, "the waypoint's streams to end", func() bool { return f.wp.Server.Stats().Streams == 0 })
	comesBack(t, base)
}

// TestAttackRequestHeaders: MaxRequestHeaderBytes (8 KiB here) against a header value that
// never ends (16 MiB sent in pieces), MaxRequestHeaders (100) against 150 small headers: 431,
// the stream closed; 50 headers and a 4 KiB header are served.
func TestAttackRequestHeaders(t *testing.T) {
	f, base := readyHandson(t, server.Limits{MaxRequestHeaderBytes: 8 << 10})
	const n = 8
	parallel(t, n, func(i int) error {
		s := f.connect(t, "curl-allow")
		defer s.c.Close()
		var sent atomic.Int64
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			if i%2 == 0 {
				io.WriteString(s.c, "GET / HTTP/1.1\r\nHost: handson:8080\r\nX-Endless: ")
				piece := strings.Repeat("a", 32<<10)
				for range 512 { // 16 MiB, unless the waypoint ends the stream first
					if _, err := io.WriteString(s.c, piece); err != nil {
						return
					}
					sent.Add(int64(len(piece)))
				}
				io.WriteString(s.c, "\r\n\r\n")
				return
			}
			var b strings.Builder
			b.WriteString("GET / HTTP/1.1\r\nHost: handson:8080\r\n")
			for j := range 150 {
				fmt.Fprintf(&b, "X-H%d: v\r\n", j)
			}
			b.WriteString("\r\n")
			io.WriteString(s.c, b.String())
		}()
		resp, _, err := answer(t, s)
		if i%2 == 0 {
			// The client is still sending when the waypoint gives up on it: the 431 may be
			// overtaken by the stream's reset once the waypoint stops reading.
			<-wrote
			if err == nil && resp.StatusCode != 431 || sent.Load() >= 16<<20 {
				return fmt.Errorf("endless header: %v %v after %d bytes sent, want 431 or a reset before 16 MiB", resp, err, sent.Load())
			}
			return nil
		}
		if err != nil || resp.StatusCode != 431 {
			return fmt.Errorf("150 headers: %v %v, want 431", resp, err)
		}
		if err := ended(t, s); err != nil {
			return err
		}
		<-wrote
		return nil
	})
	s := f.connect(t, "curl-allow")
	hdr := map[string]string{"X-Big": strings.Repeat("b", 4<<10)}
	for j := range 50 {
		hdr[fmt.Sprintf("X-H%d", j)] = "v"
	}
	if r := s.send(t, "GET", "/", "", hdr); r.code != 200 {
		t.Fatalf("50 headers and a 4 KiB one = %d, want 200", r.code)
	}
	s.c.Close()
	f.legit(t)
	within(t, "the waypoint's streams to end", func() bool { return f.wp.Server.Stats().Streams == 0 })
	comesBack(t, base)
}

// TestAttackUpstreamHeaders: MaxResponseHeaderBytes (8 KiB here) against a pod whose answers
// carry a 4 MiB header: each is refused as a connection termination (503 UC) instead of being
// read whole, on 10 streams at once; an answer with a 4 KiB header is served.
func TestAttackUpstreamHeaders(t *testing.T) {
	f, base := readyHandson(t, server.Limits{MaxResponseHeaderBytes: 8 << 10})
	parallel(t, 10, func(int) error {
		s := f.connect(t, "curl-allow")
		defer s.c.Close()
		r, err := s.try("GET", "/bigheader/4194304", "", nil)
		if err != nil || r.code != 503 || !strings.Contains(r.body, "response headers over the limit") {
			return fmt.Errorf("4 MiB answer header: %d %q %v, want 503", r.code, r.body, err)
		}
		return nil
	})
	s := f.connect(t, "curl-allow")
	if r := s.send(t, "GET", "/bigheader/4096", "", nil); r.code != 200 || len(r.header.Get("X-Big")) != 4096 {
		t.Fatalf("4 KiB answer header = %d, want 200 with the header", r.code)
	}
	s.c.Close()
	uc := 0
	for _, e := range f.log.entries(t) {
		if hasFlag(e, "UC") {
			uc++
		}
	}
	if uc != 10 {
		t.Errorf("%d access-log lines with UC, want 10", uc)
	}
	streamsEnd(t, f.waypoint, "the streams to end")
	comesBack(t, base)
}

// TestAttackSlowRequests: RequestHeadersTimeout (300 ms here) against clients that start a
// request and never finish its headers, IdleTimeout (600 ms) against streams that never send
// a request or stay open after one: each stream is closed by the waypoint while a legitimate
// request on another stream is served.
func TestAttackSlowRequests(t *testing.T) {
	f, base := readyHandson(t, server.Limits{RequestHeadersTimeout: 300 * time.Millisecond, IdleTimeout: 600 * time.Millisecond})
	before := f.wp.Server.Stats().Timeouts
	const n = 30
	var started sync.WaitGroup
	started.Add(n)
	done := make(chan struct{})
	go func() {
		defer close(done)
		parallel(t, n, func(i int) error {
			s := f.connect(t, "curl-allow")
			defer s.c.Close()
			switch i % 3 {
			case 0: // slow headers
				_, err := io.WriteString(s.c, "GET / HTTP/1.1\r\nHost: handson:8080\r\nX-Slow: ")
				started.Done()
				if err != nil {
					return err
				}
			case 1: // nothing at all
				started.Done()
			case 2: // one request, then idle
				r, err := s.try("GET", "/", "", nil)
				started.Done()
				if err != nil || r.code != 200 {
					return fmt.Errorf("first request: %d %v", r.code, err)
				}
			}
			if err := ended(t, s); err != nil {
				return fmt.Errorf("attack %d: %w", i, err)
			}
			return nil
		})
	}()
	started.Wait()
	f.legit(t) // while the attackers hold their streams
	<-done
	if t.Failed() {
		t.FailNow()
	}
	// The timer aborts a stream before its loop counts it: the client can see the end first.
	within(t, fmt.Sprintf("all %d streams counted as timed out", n), func() bool { return f.wp.Server.Stats().Timeouts-before >= n })
	within(t, "the waypoint's streams to end", func() bool { return f.wp.Server.Stats().Streams == 0 })
	comesBack(t, base)
}

// TestAttackClientNotReading: StreamIdleTimeout (500 ms here) against a client that
// pipelines requests for 48 KiB answers and never reads them: once the stream's HTTP/2 window
// is full the waypoint's writes stall, and the stream is aborted instead of
// holding its loop, buffers and upstream connection forever. SI in the access log when the
// stall came before the answer's last 16 KiB (the line is written before the final flush).
func TestAttackClientNotReading(t *testing.T) {
	f, base := readyHandson(t, server.Limits{StreamIdleTimeout: 500 * time.Millisecond})
	before := f.wp.Server.Stats().Timeouts
	s := f.connect(t, "curl-allow")
	req := "GET /headers HTTP/1.1\r\nHost: handson:8080\r\nX-Pad: " + strings.Repeat("p", 48<<10) + "\r\n\r\n"
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		for range 200 { // ~9.6 MiB of answers: more than the 4 MiB stream window and the buffers
			if _, err := io.WriteString(s.c, req); err != nil {
				return
			}
		}
	}()
	deadline := time.Now().Add(8 * time.Second)
	for f.wp.Server.Stats().Timeouts == before {
		if time.Now().After(deadline) {
			t.Fatalf("the stalled stream did not time out: %+v\n%s", f.wp.Server.Stats(), stacks())
		}
		time.Sleep(20 * time.Millisecond)
	}
	within(t, "the waypoint's stream loop to end", func() bool { return f.wp.Server.Stats().Streams == 0 })
	f.legit(t)
	si := 0
	for _, e := range f.log.entries(t) {
		if hasFlag(e, "SI") && logField(e, "response_code_details") == "stream_idle_timeout" {
			si++
		}
	}
	// SI is in the access log when the stall came before the answer's last 16 KiB (written
	// after the log line): the timeout itself is checked by the counter above.
	if si > 1 {
		t.Errorf("%d access-log lines with SI stream_idle_timeout, want at most 1", si)
	}
	t.Logf("%d access-log line with SI", si)
	s.c.Close()
	<-wrote
	comesBack(t, base)
}

// warmTraffic sends 10 concurrent requests to appb (see readyHandson).
func warmTraffic(t *testing.T, f *traffic) {
	t.Helper()
	f.a.of("appa") // allocated here: addrs is not safe for concurrent allocation
	parallel(t, 10, func(int) error {
		s := f.client(t, "")
		defer s.c.Close()
		if r, err := s.try("GET", "/", "", nil); err != nil || r.code != 200 {
			return fmt.Errorf("warm-up: %d %v", r.code, err)
		}
		return nil
	})
	streamsEnd(t, f.waypoint, "the warm-up streams to end")
}

// mirrorSink is the traffic scenario with a Service sink whose pod never answers, and a
// VirtualService sending appb to v1 with every request mirrored to sink.
const mirrorSink = `
apiVersion: v1
kind: Service
metadata: {name: sink}
spec: {clusterIP: "${sink-vip}", selector: {app: sink}, ports: [{name: http, port: 8000, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: sink, labels: {app: sink}}
spec: {serviceAccountName: sink, nodeName: worker2}
status: {podIP: "${sink}"}
---
` + "%s" + `
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: appb}
spec:
  hosts: [appb]
  http:
  - name: mirrored
    route: [{destination: {host: appb, subset: v1}}]
    mirror: {host: sink}
    mirrorPercentage: {value: 100}
`

// TestAttackMirrorFlood: MaxMirrors (4 here) and MirrorTimeout (500 ms) against a flood of
// requests mirrored to a pod that never answers: the client's answers are unaffected, the
// sink never has more than 4 mirrored requests at once, and they end after the timeout.
func TestAttackMirrorFlood(t *testing.T) {
	f := setupTraffic(t, 7, wpConfig{limits: server.Limits{MaxMirrors: 4, MirrorTimeout: 500 * time.Millisecond}})
	sink, _ := startPod(t, f.p, "sink", "default", "sink", f.a.of("sink"), 8080)
	sink.mu.Lock()
	sink.hang = true
	sink.mu.Unlock()
	f.apply(t, fmt.Sprintf(mirrorSink, subsets))
	warmTraffic(t, f)
	within(t, "the warm-up's mirrors to end", func() bool { return f.wp.Server.Stats().Mirrors == 0 })
	base := measure()
	const streams, reqs = 10, 8
	var maxMirrors atomic.Int64
	parallel(t, streams, func(int) error {
		s := f.client(t, "")
		defer s.c.Close()
		for range reqs {
			r, err := s.try("GET", "/", "", nil)
			if err != nil || r.code != 200 || !strings.HasPrefix(r.body, "appb-v1 ") {
				return fmt.Errorf("mirrored request: %d %q %v", r.code, r.body, err)
			}
			if m := f.wp.Server.Stats().Mirrors; m > maxMirrors.Load() {
				maxMirrors.Store(m)
			}
		}
		return nil
	})
	sink.mu.Lock()
	calls, most := sink.calls, sink.maxInflight
	sink.mu.Unlock()
	if most > 4 || maxMirrors.Load() > 4 {
		t.Errorf("mirrors in flight: %d at the sink, %d in the waypoint; want at most 4", most, maxMirrors.Load())
	}
	if calls < 2 || calls > 10+streams*reqs {
		t.Errorf("the sink got %d mirrored requests", calls)
	}
	within(t, "the mirrors to time out", func() bool {
		sink.mu.Lock()
		defer sink.mu.Unlock()
		return sink.inflight == 0 && f.wp.Server.Stats().Mirrors == 0
	})
	after := f.client(t, "")
	if code, _ := after.do(t, "GET", "/", ""); code != 200 {
		t.Fatalf("request after the flood = %d", code)
	}
	after.c.Close()
	within(t, "the last mirror to end", func() bool { return f.wp.Server.Stats().Mirrors == 0 })
	streamsEnd(t, f.waypoint, "the streams to end")
	comesBack(t, base)
	t.Logf("sink: %d mirrored requests of %d, at most %d at once", calls, 10+streams*reqs+1, most)
}

// TestAttackFaultDelayFlood: streams that send a request to a route delayed by 60 s and go
// away hold the waypoint only while they exist — one loop each, bounded by the HBONE stream
// limit — and free it when they end, not when the delay does; a request to another route is
// served meanwhile.
func TestAttackFaultDelayFlood(t *testing.T) {
	f := setupTraffic(t, 3)
	f.apply(t, subsets+`
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: appb}
spec:
  hosts: [appb]
  http:
  - name: slow
    match: [{uri: {prefix: /slow}}]
    fault: {delay: {fixedDelay: 60s, percentage: {value: 100}}}
    route: [{destination: {host: appb, subset: v1}}]
  - name: rest
    route: [{destination: {host: appb, subset: v1}}]
`)
	warmTraffic(t, f)
	base := measure()
	const n = 40
	var flood []*stream
	for range n {
		s := f.client(t, "")
		if _, err := io.WriteString(s.c, "GET /slow HTTP/1.1\r\nHost: appb:8000\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		flood = append(flood, s)
	}
	within(t, "the delayed requests to be held", func() bool { return f.wp.Server.Stats().Streams == n })
	during := f.client(t, "")
	if code, body := during.do(t, "GET", "/", ""); code != 200 || !strings.HasPrefix(body, "appb-v1 ") {
		t.Fatalf("request during the flood = %d %q", code, body)
	}
	during.c.Close()
	if g := runtime.NumGoroutine(); g > base.goroutines+n*8 {
		t.Errorf("%d goroutines for %d delayed streams (baseline %d)", g, n, base.goroutines)
	}
	for _, s := range flood {
		s.c.Close()
	}
	streamsEnd(t, f.waypoint, "the delayed streams to end with their clients")
	comesBack(t, base)
	if got := f.v1.requests(); len(got) != 11 {
		t.Errorf("appb-v1 saw %v: no delayed request must reach it", got)
	}
}

// TestAttackLogLines: FailureLogsPerSecond (5 here) against 150 streams of garbage, each
// answered 400 and logged by the waypoint: its own log lines stay within the rate (plus the
// "suppressed" summary), while each stream still gets its 400.
func TestAttackLogLines(t *testing.T) {
	var lines atomic.Int64
	logger := slog.New(countHandler{&lines})
	f := setup(t, wpConfig{limits: server.Limits{FailureLogsPerSecond: 5}, logger: logger})
	f.configure(t, true)
	eventually(t, "readiness 200", func() bool { return f.ready() == http.StatusOK })
	f.legit(t)
	start := time.Now()
	before := lines.Load()
	const n = 150
	parallel(t, 15, func(int) error {
		for range n / 15 {
			s := f.connect(t, "curl-allow")
			io.WriteString(s.c, "NOT HTTP AT ALL\r\n\r\n")
			resp, _, err := answer(t, s)
			s.c.Close()
			if err != nil || resp.StatusCode != 400 {
				return fmt.Errorf("garbage: %v %v, want 400", resp, err)
			}
		}
		return nil
	})
	elapsed := time.Since(start)
	got := lines.Load() - before
	// Other scopes (hbone, xds, config) log too; at the rate's bound of 5 a second with a burst
	// of 5, plus one summary line a second and a few lines from other scopes.
	if limit := int64(5+6*elapsed.Seconds()) + 10; got > limit {
		t.Errorf("%d log lines in %v for %d bad streams, want at most %d", got, elapsed, n, limit)
	}
	f.legit(t)
	t.Logf("%d log lines in %v for %d bad streams", got, elapsed, n)
}

// countHandler counts the records at Info and above.
type countHandler struct{ n *atomic.Int64 }

func (h countHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }
func (h countHandler) Handle(context.Context, slog.Record) error    { h.n.Add(1); return nil }
func (h countHandler) WithAttrs([]slog.Attr) slog.Handler           { return h }
func (h countHandler) WithGroup(string) slog.Handler                { return h }
