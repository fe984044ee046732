package state

import (
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/goambient/goambient/policies/l4"
)

// TestRecheckAfterPolicyChange: handson step 1 → step 2 → step 1. When the L4 policy arrives,
// the subscriber's re-check finds curl-deny's open connection to 8080 no longer allowed (and
// only it); when the policy goes, nothing is denied.
func TestRecheckAfterPolicyChange(t *testing.T) {
	step2 := load(t, "handson.yaml")
	res := step2.Resources()
	res.Authorizations = nil
	step1, err := New(res)
	if err != nil {
		t.Fatal(err)
	}
	const blue = "Kubernetes//Pod/handson/handson-blue"
	conn := func(sa string, port uint16) l4.Conn {
		return l4.Conn{SrcIdentity: "spiffe://cluster.local/ns/handson/sa/" + sa, SrcIP: netip.MustParseAddr("10.244.1.4"), DstIP: netip.MustParseAddr("10.244.2.5"), DstPort: port}
	}
	open := []OpenConn{
		{WorkloadUID: blue, Conn: conn("curl-allow", 8080), Handle: "allow-8080"},
		{WorkloadUID: blue, Conn: conn("curl-deny", 8080), Handle: "deny-8080"},
		{WorkloadUID: blue, Conn: conn("curl-deny", 9090), Handle: "deny-9090"},
	}
	store := NewStore(step1)
	var denied [][]OpenConn
	cancel := store.Subscribe(func(s *State) { denied = append(denied, s.Recheck(open)) })
	store.Store(step2)
	store.Store(step1)
	cancel()
	store.Store(step2) // no longer subscribed
	if len(denied) != 2 {
		t.Fatalf("%d notifications, want 2", len(denied))
	}
	if len(denied[0]) != 1 || denied[0][0].Handle != "deny-8080" || denied[0][0].Result.Policy != "handson/layer4-authz" ||
		denied[0][0].Result.Reason != "explicitly denied by: handson/layer4-authz" {
		t.Errorf("after the policy: %+v", denied[0])
	}
	if len(denied[1]) != 0 {
		t.Errorf("after removing the policy: %+v", denied[1])
	}
	// A destination that has gone is denied.
	gone := step1.Recheck([]OpenConn{{WorkloadUID: "Kubernetes//Pod/handson/gone", Conn: conn("curl", 8080)}})
	if len(gone) != 1 || gone[0].Result.Reason != "destination workload not found" {
		t.Errorf("gone: %+v", gone)
	}
}

// TestStoreOrderAndConcurrency: subscribers are called in order with each stored state; readers
// never see a torn state while a writer swaps (run with -race).
func TestStoreOrderAndConcurrency(t *testing.T) {
	a := load(t, "handson.yaml")
	b := load(t, "handson-waypoint.yaml")
	store := NewStore(nil)
	if store.Load() == nil || store.Load().WorkloadByIP(ip("10.244.2.5")) != nil {
		t.Fatal("a new store holds an empty state")
	}
	var order []string
	store.Subscribe(func(*State) { order = append(order, "first") })
	store.Subscribe(func(*State) { order = append(order, "second") })
	store.Store(nil) // ignored
	store.Store(a)
	if !slices.Equal(order, []string{"first", "second"}) || store.Load() != a {
		t.Errorf("order %v", order)
	}

	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				s := store.Load()
				r, err := s.Route(ap("10.96.0.10:8080"), s.WorkloadByIP(ip("10.244.1.5")))
				if err != nil || (r.Kind != Direct && r.Kind != ToServiceWaypoint) {
					t.Errorf("route %+v %v", r, err)
					return
				}
				_ = s.Authorize(s.WorkloadByIP(ip("10.244.2.5")), l4.Conn{DstPort: 8080})
			}
		})
	}
	for i := range 200 {
		store.Store([]*State{a, b}[i%2])
	}
	close(stop)
	wg.Wait()
}
