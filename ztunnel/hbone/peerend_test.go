package hbone

import (
	"io"
	"net"
	"testing"

	"golang.org/x/net/http2"
)

// How a stream the peer resets ends, by the reset's code and when it comes (raw frames from a
// client with a valid certificate): after the server's END_STREAM, NO_ERROR (RFC 9113 §8.1, what
// Go's x/net client sends for a request whose answer ended before its body) and CANCEL (what
// x/net sends instead when the caller closes the answer's body at that moment: its writeRequest
// picks either at random) end the stream cleanly, Result.Err nil; before the server's end, any
// code is a failure.
func TestPeerResetAfterEnd(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		code    http2.ErrCode
		early   bool // reset while the answer is still open
		wantErr bool
	}{
		{name: "NO_ERROR after END_STREAM", code: http2.ErrCodeNo},
		{name: "CANCEL after END_STREAM", code: http2.ErrCodeCancel},
		{name: "NO_ERROR before the end", code: http2.ErrCodeNo, early: true, wantErr: true},
		{name: "CANCEL before the end", code: http2.ErrCodeCancel, early: true, wantErr: true},
		{name: "INTERNAL_ERROR after END_STREAM", code: http2.ErrCodeInternal, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := newUpstream(t, func(c *net.TCPConn) {
				io.WriteString(c, "answer")
				if tc.early {
					io.Copy(io.Discard, c) // the answer stays open until the relay ends
				}
			})
			e := newEnv(t, envOpts{})
			p := newRawPeer(t, e)
			p.connect(1, up.addr.String(), false)
			if s := p.expectStatus(1); s != "200" {
				t.Fatalf("status %s", s)
			}
			got := 0
			p.expect(func(f http2.Frame) bool {
				d, ok := f.(*http2.DataFrame)
				if !ok || d.StreamID != 1 {
					return false
				}
				got += len(d.Data())
				return tc.early && got == len("answer") || d.StreamEnded()
			})
			if err := p.fr.WriteRSTStream(1, tc.code); err != nil {
				t.Fatal(err)
			}
			r := e.result()
			if (r.Err != nil) != tc.wantErr {
				t.Errorf("Result.Err = %v, want an error: %v", r.Err, tc.wantErr)
			}
			if r.Sent != int64(len("answer")) {
				t.Errorf("Result.Sent = %d, want %d", r.Sent, len("answer"))
			}
		})
	}
}
