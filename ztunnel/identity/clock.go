package identity

import "time"

// Clock is the time the Manager schedules rotations by; tests inject a fake one.
type Clock interface {
	Now() time.Time
	// TimerAt returns a timer that fires once the clock reaches deadline (at once if it has).
	TimerAt(deadline time.Time) Timer
}

// Timer is a one-shot timer of a Clock.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

// RealClock is the wall clock.
type RealClock struct{}

// Now is time.Now.
func (RealClock) Now() time.Time { return time.Now() }

// TimerAt is a time.Timer for the time left until deadline.
func (RealClock) TimerAt(deadline time.Time) Timer {
	return realTimer{time.NewTimer(time.Until(deadline))}
}

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }
func (t realTimer) Stop() bool          { return t.t.Stop() }
