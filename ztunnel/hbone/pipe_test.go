package hbone

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
)

func TestBodyPipe(t *testing.T) {
	t.Run("bytes then EOF after a clean close", func(t *testing.T) {
		p := newBodyPipe()
		want := bytes.Repeat([]byte("0123456789"), 30000) // several times pipeMax
		go func() {
			for b := want; len(b) > 0; b = b[min(len(b), 7000):] {
				if _, err := p.Write(b[:min(len(b), 7000)]); err != nil {
					t.Error(err)
					return
				}
			}
			p.CloseWithError(nil)
		}()
		got, err := io.ReadAll(p)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %d bytes (equal: %v), %v", len(got), bytes.Equal(got, want), err)
		}
		if _, err := p.Write([]byte("x")); !errors.Is(err, io.ErrClosedPipe) {
			t.Errorf("write after close: %v", err)
		}
	})
	t.Run("abort drops what is buffered", func(t *testing.T) {
		p := newBodyPipe()
		if _, err := p.Write([]byte("abc")); err != nil {
			t.Fatal(err)
		}
		p.CloseWithError(net.ErrClosed)
		if n, err := p.Read(make([]byte, 10)); n != 0 || !errors.Is(err, net.ErrClosed) {
			t.Errorf("read %d, %v; want 0, net.ErrClosed", n, err)
		}
	})
	t.Run("reader close fails a blocked writer", func(t *testing.T) {
		p := newBodyPipe()
		errc := make(chan error, 1)
		go func() {
			_, err := p.Write(make([]byte, 3*pipeMax)) // blocks once the buffer is full
			errc <- err
		}()
		if _, err := io.ReadFull(p, make([]byte, 10)); err != nil { // the writer has started
			t.Fatal(err)
		}
		p.Close()
		if err := <-errc; !errors.Is(err, io.ErrClosedPipe) {
			t.Errorf("blocked write: %v, want io.ErrClosedPipe", err)
		}
		if _, err := p.Read(make([]byte, 1)); !errors.Is(err, io.ErrClosedPipe) {
			t.Errorf("read after close: %v", err)
		}
	})
}
