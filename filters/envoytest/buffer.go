package envoytest

import (
	"encoding/binary"

	"github.com/envoyproxy/envoy/contrib/golang/common/go/api"
)

// buffer is a request body as the SDK's BufferInstance presents it.
type buffer struct{ b []byte }

var _ api.BufferInstance = (*buffer)(nil)

func (b *buffer) Write(p []byte) (int, error)       { b.b = append(b.b, p...); return len(p), nil }
func (b *buffer) WriteString(s string) (int, error) { b.b = append(b.b, s...); return len(s), nil }
func (b *buffer) WriteByte(c byte) error            { b.b = append(b.b, c); return nil }
func (b *buffer) WriteUint16(v uint16) error        { b.b = binary.BigEndian.AppendUint16(b.b, v); return nil }
func (b *buffer) WriteUint32(v uint32) error        { b.b = binary.BigEndian.AppendUint32(b.b, v); return nil }
func (b *buffer) WriteUint64(v uint64) error        { b.b = binary.BigEndian.AppendUint64(b.b, v); return nil }
func (b *buffer) Bytes() []byte                     { return b.b }
func (b *buffer) Len() int                          { return len(b.b) }
func (b *buffer) Reset()                            { b.b = b.b[:0] }
func (b *buffer) String() string                    { return string(b.b) }
func (b *buffer) Append(p []byte) error             { b.b = append(b.b, p...); return nil }
func (b *buffer) AppendString(s string) error       { b.b = append(b.b, s...); return nil }
func (b *buffer) Set(p []byte) error                { b.b = append(b.b[:0], p...); return nil }
func (b *buffer) SetString(s string) error          { b.b = append(b.b[:0], s...); return nil }
func (b *buffer) Prepend(p []byte) error            { b.b = append(append([]byte{}, p...), b.b...); return nil }
func (b *buffer) PrependString(s string) error      { b.b = append([]byte(s), b.b...); return nil }

func (b *buffer) Drain(n int) {
	if n > len(b.b) {
		n = len(b.b)
	}
	b.b = b.b[n:]
}
