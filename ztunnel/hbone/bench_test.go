package hbone

import (
	"io"
	"net"
	"slices"
	"testing"
	"time"
)

// reportCPU adds cpu-ns/op: the CPU time of the whole process (client, server, echo) per op,
// which a busy machine disturbs far less than wall time.
func reportCPU(b *testing.B) func() {
	start, ok := processCPU()
	return func() {
		if end, ok2 := processCPU(); ok && ok2 {
			b.ReportMetric(float64((end-start).Nanoseconds())/float64(b.N), "cpu-ns/op")
		}
	}
}

// BenchmarkThroughput: bulk bytes through client → HBONE server → echo and back, against the
// same bytes over direct loopback TCP to the same echo. MB/s counts the payload once.
func BenchmarkThroughput(b *testing.B) {
	e := newEnv(b, envOpts{})
	up := newUpstream(b, echo)
	c, _ := e.client(ClientConfig{})
	const chunk = 64 << 10
	run := func(b *testing.B, dial func() net.Conn) {
		conn := dial()
		defer conn.Close()
		buf := make([]byte, chunk)
		b.SetBytes(chunk)
		b.ReportAllocs()
		b.ResetTimer()
		defer reportCPU(b)()
		werr := make(chan error, 1)
		go func() {
			for range b.N {
				if _, err := conn.Write(buf); err != nil {
					werr <- err
					return
				}
			}
			werr <- conn.(interface{ CloseWrite() error }).CloseWrite()
		}()
		n, err := io.CopyBuffer(io.Discard, conn, make([]byte, chunk))
		if err != nil {
			b.Fatal(err)
		}
		if err := <-werr; err != nil {
			b.Fatal(err)
		}
		if n != int64(b.N)*chunk {
			b.Fatalf("read back %d bytes, want %d", n, int64(b.N)*chunk)
		}
	}
	b.Run("direct", func(b *testing.B) {
		run(b, func() net.Conn {
			conn, err := net.Dial("tcp", up.addr.String())
			if err != nil {
				b.Fatal(err)
			}
			return conn
		})
	})
	b.Run("hbone", func(b *testing.B) {
		run(b, func() net.Conn { return e.dial(c, e.target(up.addr)) })
	})
}

// BenchmarkRoundTrip: latency of a 64-byte request and its echo on an open stream of a pooled
// connection, against direct loopback TCP; and of a whole new stream on the pooled connection
// (CONNECT, one exchange, close). p50 and p99 are reported next to the mean.
func BenchmarkRoundTrip(b *testing.B) {
	e := newEnv(b, envOpts{})
	up := newUpstream(b, echo)
	c, _ := e.client(ClientConfig{})
	msg := make([]byte, 64)
	exchange := func(b *testing.B, conn net.Conn, buf []byte) {
		if _, err := conn.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(conn, buf); err != nil {
			b.Fatal(err)
		}
	}
	timed := func(b *testing.B, op func(buf []byte)) {
		buf := make([]byte, len(msg))
		lat := make([]time.Duration, 0, b.N)
		b.ReportAllocs()
		b.ResetTimer()
		cpu := reportCPU(b)
		for range b.N {
			start := time.Now()
			op(buf)
			lat = append(lat, time.Since(start))
		}
		b.StopTimer()
		cpu()
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
		b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
	}
	b.Run("direct", func(b *testing.B) {
		conn, err := net.Dial("tcp", up.addr.String())
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		timed(b, func(buf []byte) { exchange(b, conn, buf) })
	})
	b.Run("hbone", func(b *testing.B) {
		conn := e.dial(c, e.target(up.addr))
		defer conn.Close()
		timed(b, func(buf []byte) { exchange(b, conn, buf) })
	})
	b.Run("hbone-new-stream", func(b *testing.B) {
		e.dial(c, e.target(up.addr)).Close() // the pooled connection exists before timing
		timed(b, func(buf []byte) {
			conn, err := c.Dial(b.Context(), e.target(up.addr))
			if err != nil {
				b.Fatal(err)
			}
			exchange(b, conn, buf)
			conn.Close()
		})
	})
}
