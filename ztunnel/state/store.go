package state

import (
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/goambient/goambient/policies/l4"
)

// Store holds the current State: readers Load it without locking, a writer swaps in a new one
// and subscribers hear of it.
type Store struct {
	cur     atomic.Pointer[State]
	storeMu sync.Mutex // serialises Store calls, so subscribers see states in order
	subsMu  sync.Mutex
	subs    map[uint64]func(*State)
	next    uint64
}

// NewStore returns a Store holding initial (an empty State when nil).
func NewStore(initial *State) *Store {
	if initial == nil {
		initial = Empty()
	}
	s := &Store{subs: map[uint64]func(*State){}}
	s.cur.Store(initial)
	return s
}

// Load returns the current State.
func (s *Store) Load() *State { return s.cur.Load() }

// Store makes st the current State (nil is ignored) and then calls every subscriber with it, in
// the order they subscribed, on the caller's goroutine. A subscriber must not call Store.
func (s *Store) Store(st *State) {
	if st == nil {
		return
	}
	s.storeMu.Lock()
	defer s.storeMu.Unlock()
	s.cur.Store(st)
	s.subsMu.Lock()
	ids := slices.Sorted(maps.Keys(s.subs))
	fns := make([]func(*State), 0, len(ids))
	for _, id := range ids {
		fns = append(fns, s.subs[id])
	}
	s.subsMu.Unlock()
	for _, f := range fns {
		f(st)
	}
}

// Subscribe calls f with every State stored from now on; the returned function unsubscribes.
func (s *Store) Subscribe(f func(*State)) (cancel func()) {
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	id := s.next
	s.next++
	s.subs[id] = f
	return func() {
		s.subsMu.Lock()
		defer s.subsMu.Unlock()
		delete(s.subs, id)
	}
}

// OpenConn is a connection the inbound proxy accepted, to be re-checked when policies change.
type OpenConn struct {
	WorkloadUID string  // the destination workload
	Conn        l4.Conn // as authorized when it was opened
	Handle      any     // the caller's own reference (to close it), returned unchanged
	Result      l4.Result
}

// Recheck authorizes each open connection again against this State and returns those now
// denied, with Result set to the denial (a destination workload that is gone is denied too),
// as ztunnel does after a policy update: the caller closes them ("connection closed due to
// policy change").
func (s *State) Recheck(conns []OpenConn) []OpenConn {
	var denied []OpenConn
	for _, c := range conns {
		r := s.Authorize(s.Workload(c.WorkloadUID), c.Conn)
		if !r.Allowed {
			c.Result = r
			denied = append(denied, c)
		}
	}
	return denied
}
