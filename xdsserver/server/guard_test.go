package server

import (
	"strings"
	"testing"
	"time"
)

// stalls returns a stallWatch whose stall reasons arrive on the channel.
func stalls(send, ack time.Duration) (*stallWatch, chan string) {
	ch := make(chan string, 4)
	return newStallWatch(send, ack, func(r string) { ch <- r }), ch
}

func waitStall(t *testing.T, ch chan string, want string) {
	t.Helper()
	select {
	case r := <-ch:
		if !strings.Contains(r, want) {
			t.Errorf("stall %q, want one about %q", r, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no stall (want one about %q)", want)
	}
}

// TestStallWatch: an ACK (or a later one of the same type) clears a response; a response left
// unacknowledged, a Send that does not return, or too many responses in flight, stall once.
func TestStallWatch(t *testing.T) {
	t.Run("acknowledged", func(t *testing.T) {
		w, _ := stalls(time.Hour, time.Hour)
		defer w.stop()
		w.sending("1", "A")
		w.sent()
		w.sending("2", "B")
		w.sent()
		w.sending("3", "A")
		w.sent()
		w.acked("3", "A") // the client moved past 1 too
		w.acked("unknown", "B")
		w.mu.Lock()
		defer w.mu.Unlock()
		if _, ok := w.unacked["2"]; len(w.unacked) != 1 || !ok || !w.since.IsZero() {
			t.Errorf("unacked %v, sending since %v: want only 2, no send", w.unacked, w.since)
		}
	})
	t.Run("not acknowledged", func(t *testing.T) {
		w, ch := stalls(time.Hour, 50*time.Millisecond)
		defer w.stop()
		w.sending("1", "type.googleapis.com/istio.workload.Address")
		w.sent()
		waitStall(t, ch, "istio.workload.Address response was not acknowledged")
		w.acked("1", "type.googleapis.com/istio.workload.Address")
		w.sending("2", "A") // after the stall: nothing more
		select {
		case r := <-ch:
			t.Errorf("a second stall: %q", r)
		default:
		}
	})
	t.Run("send blocked", func(t *testing.T) {
		w, ch := stalls(50*time.Millisecond, time.Hour)
		defer w.stop()
		w.sending("1", "A")
		waitStall(t, ch, "could not be sent")
	})
	t.Run("too many in flight", func(t *testing.T) {
		w, ch := stalls(time.Hour, time.Hour)
		defer w.stop()
		for i := range maxUnacked + 1 {
			w.sending(string(rune('a'+i%26))+string(rune('0'+i/26)), "A")
			w.sent()
		}
		waitStall(t, ch, "not acknowledged")
	})
}
