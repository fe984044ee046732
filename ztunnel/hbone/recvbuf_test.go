package hbone

import (
	"bytes"
	"testing"
)

// recvBuf returns what was written, in order, across chunk boundaries, and holds no chunk
// once drained.
func TestRecvBuf(t *testing.T) {
	for _, tc := range []struct {
		name          string
		writes, reads []int // sizes, used in turn until all bytes are read
	}{
		{"small", []int{1, 7, 1024}, []int{3}},
		{"one chunk exactly", []int{recvChunk}, []int{recvChunk}},
		{"frames larger than chunks", []int{64 << 10, 100 << 10}, []int{256 << 10}},
		{"reads smaller than writes", []int{recvChunk + 1, 5}, []int{1000}},
		{"reads larger than writes", []int{10, recvChunk - 10, 1}, []int{recvChunk * 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r recvBuf
			var want, got bytes.Buffer
			b := byte(0)
			for i, n := range tc.writes {
				p := make([]byte, n)
				for j := range p {
					p[j] = b
					b++
				}
				r.write(p)
				want.Write(p)
				if i%2 == 1 { // interleave reads with writes
					buf := make([]byte, tc.reads[0])
					got.Write(buf[:r.read(buf)])
				}
			}
			for i := 0; r.len() > 0; i++ {
				buf := make([]byte, tc.reads[i%len(tc.reads)])
				n := r.read(buf)
				if n == 0 {
					t.Fatalf("read 0 bytes with %d unread", r.len())
				}
				got.Write(buf[:n])
			}
			if !bytes.Equal(got.Bytes(), want.Bytes()) {
				t.Fatalf("read %d bytes, not the %d written in order", got.Len(), want.Len())
			}
			if len(r.chunks) != 0 {
				t.Errorf("%d chunks held after draining", len(r.chunks))
			}
		})
	}
}
