package dnsproxy

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// TestResolverCachesByTTL: a hostname workload's name is asked once (A and AAAA) while its
// answer lives, again after its TTL; TTLs are clamped; a failure is cached for MinTTL; the
// peer is a miekg/dns server on loopback.
func TestResolverCachesByTTL(t *testing.T) {
	up := startUpstream(t)
	clock := &fakeClock{now: time.Unix(1_000_000, 0)}
	r, err := NewResolver(ResolverConfig{Upstreams: []netip.AddrPort{up.addr}, MinTTL: 5 * time.Second, MaxTTL: time.Minute, Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	up.ttl.Store(30)
	addrs, err := r.Resolve(ctx, "origin.mirror.example.net")
	if err != nil || !slices.Equal(addrs, []netip.Addr{netip.MustParseAddr("192.0.2.80"), netip.MustParseAddr("2001:db8::80")}) {
		t.Fatalf("Resolve = %v, %v", addrs, err)
	}
	if n := up.queries.Load(); n != 2 {
		t.Errorf("%d queries for the first lookup, want 2 (A and AAAA)", n)
	}
	clock.Add(29 * time.Second)
	r.Resolve(ctx, "ORIGIN.mirror.example.net.")
	if n := up.queries.Load(); n != 2 {
		t.Errorf("asked again within the TTL (%d queries)", n)
	}
	clock.Add(2 * time.Second)
	r.Resolve(ctx, "origin.mirror.example.net")
	if n := up.queries.Load(); n != 4 {
		t.Errorf("%d queries after the TTL, want 4", n)
	}
	// A TTL of 1 h is cached for MaxTTL (1 min), one of 0 for MinTTL (5 s).
	for _, tc := range []struct {
		ttl       uint32
		keep, ask time.Duration
	}{{3600, 59 * time.Second, 2 * time.Second}, {0, 4 * time.Second, 2 * time.Second}} {
		up.ttl.Store(tc.ttl)
		clock.Add(2 * time.Minute)
		r.Resolve(ctx, "outside.example.com")
		n := up.queries.Load()
		clock.Add(tc.keep)
		r.Resolve(ctx, "outside.example.com")
		if up.queries.Load() != n {
			t.Errorf("TTL %d: asked again after %v", tc.ttl, tc.keep)
		}
		clock.Add(tc.ask)
		r.Resolve(ctx, "outside.example.com")
		if up.queries.Load() == n {
			t.Errorf("TTL %d: not asked again after %v", tc.ttl, tc.keep+tc.ask)
		}
	}
	// NXDOMAIN is an error, cached for MinTTL.
	if _, err := r.Resolve(ctx, "nowhere.example.com"); err == nil {
		t.Error("a name that does not exist resolved")
	}
	n := up.queries.Load()
	r.Resolve(ctx, "nowhere.example.com")
	if up.queries.Load() != n {
		t.Errorf("the failure was not cached: %d more queries", up.queries.Load()-n)
	}
	clock.Add(6 * time.Second)
	r.Resolve(ctx, "nowhere.example.com")
	if up.queries.Load() == n {
		t.Error("the failure was cached beyond MinTTL")
	}
	if _, err := r.Resolve(ctx, "not a name!"); err == nil {
		t.Error("an invalid name was looked up")
	}
}

// TestResolverBounds: the cache holds at most MaxEntries names, and a lookup of an upstream
// that never answers fails within Timeout.
func TestResolverBounds(t *testing.T) {
	up := startUpstream(t)
	r, err := NewResolver(ResolverConfig{Upstreams: []netip.AddrPort{up.addr}, MaxEntries: 8})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		r.Resolve(context.Background(), "n"+string(rune('a'+i%26))+string(rune('a'+i/26))+".example.com")
	}
	if r.Len() > 8 {
		t.Errorf("%d names cached, limit 8", r.Len())
	}
	slow, err := NewResolver(ResolverConfig{Upstreams: []netip.AddrPort{blackhole(t)}, Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := slow.Resolve(context.Background(), "outside.example.com"); err == nil {
		t.Error("a silent upstream gave an answer")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the lookup took %v with a timeout of 300ms", d)
	}
}

func TestReadResolvConf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(path, []byte("search svc.cluster.local cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\n"), 0o644)
	got, err := ReadResolvConf(path)
	if err != nil || !slices.Equal(got, []netip.AddrPort{netip.MustParseAddrPort("10.96.0.10:53"), netip.MustParseAddrPort("[fd00::a]:53")}) {
		t.Errorf("ReadResolvConf = %v, %v", got, err)
	}
	os.WriteFile(path, []byte("search x\n"), 0o644)
	if _, err := ReadResolvConf(path); err == nil {
		t.Error("a resolv.conf without nameserver was accepted")
	}
}
