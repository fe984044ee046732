package identity

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeClock moves only when told; its timers fire on Advance (or at once if already due).
type fakeClock struct {
	mu     sync.Mutex
	cond   *sync.Cond
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	clk *fakeClock
	at  time.Time
	c   chan time.Time
}

func newFakeClock(now time.Time) *fakeClock {
	c := &fakeClock{now: now}
	c.cond = sync.NewCond(&c.mu)
	return c
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) TimerAt(at time.Time) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{clk: c, at: at, c: make(chan time.Time, 1)}
	if !at.After(c.now) {
		t.c <- c.now
	} else {
		c.timers = append(c.timers, t)
	}
	c.cond.Broadcast()
	return t
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	c := t.clk
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.Index(c.timers, t)
	if i < 0 {
		return false
	}
	c.timers = slices.Delete(c.timers, i, i+1)
	c.cond.Broadcast()
	return true
}

// Advance moves the clock and fires the timers that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.timers = slices.DeleteFunc(c.timers, func(t *fakeTimer) bool {
		if t.at.After(c.now) {
			return false
		}
		t.c <- c.now
		return true
	})
}

// waitTimers blocks until n timers are pending and returns their deadlines, sorted; it fails the
// test after 10s (a safety net for a broken test, not a wait for time to pass).
func (c *fakeClock) waitTimers(t *testing.T, n int) []time.Time {
	t.Helper()
	done := make(chan []time.Time, 1)
	go func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for len(c.timers) < n {
			c.cond.Wait()
		}
		var at []time.Time
		for _, tm := range c.timers {
			at = append(at, tm.at)
		}
		slices.SortFunc(at, time.Time.Compare)
		done <- at
	}()
	select {
	case at := <-done:
		return at
	case <-time.After(10 * time.Second):
		t.Fatalf("waited 10s for %d pending timers", n)
		return nil
	}
}
