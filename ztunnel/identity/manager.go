package identity

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Defaults of ManagerOptions.
const (
	DefaultRotateAt       = 0.5  // of the lifetime
	DefaultJitter         = 0.05 // of the lifetime, subtracted at random from the rotation time
	DefaultRetryInterval  = 5 * time.Second
	DefaultFetchTimeout   = 10 * time.Second
	maxRetryIntervalFloor = 5 * time.Minute
)

// ErrClosed is returned by a Manager after Close.
var ErrClosed = errors.New("identity: manager closed")

// ManagerOptions configure a Manager. Only Source is required.
type ManagerOptions struct {
	Source Source
	Logger *slog.Logger // nil: no logs
	Clock  Clock        // nil: RealClock

	// RotateAt is when an SVID is replaced, as a fraction of its lifetime after NotBefore
	// (DefaultRotateAt when 0).
	RotateAt float64
	// Jitter is a fraction of the lifetime by which rotation happens earlier, at random, so
	// identities issued together are not renewed together. 0 means DefaultJitter; a negative
	// value turns jitter off (tests).
	Jitter float64
	// RefreshInterval, when positive, also fetches every interval and adopts an SVID that
	// changed: for a DirSource, whose files can be rewritten at any time. Leave it 0 for a
	// source that issues a new SVID on every fetch.
	RefreshInterval time.Duration
	// RetryInterval is the first wait after a failed rotation, doubled on each failure up to
	// max(5m, RetryInterval) (DefaultRetryInterval when 0).
	RetryInterval time.Duration
	// FetchTimeout bounds each fetch from the source (DefaultFetchTimeout when 0).
	FetchTimeout time.Duration
	// OnUpdate, when set, is called after an SVID is installed (first fetch and each rotation),
	// from the Manager's goroutine: it must not block.
	OnUpdate func(id spiffeid.ID, svid *x509svid.SVID)
}

// Manager holds one SVID per workload identity in memory: it fetches an identity's SVID on first
// use, rotates it in the background before it expires, and serves the current one to TLS. A new
// handshake picks up a rotated SVID; open connections keep the one they were made with.
type Manager struct {
	o      ManagerOptions
	log    *slog.Logger
	clock  Clock
	rand   func() float64
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	bundle atomic.Pointer[x509bundle.Bundle]

	mu      sync.RWMutex
	entries map[spiffeid.ID]*entry
	closed  bool
}

// entry is one identity: its first fetch, then its current SVID swapped atomically.
type entry struct {
	id     spiffeid.ID
	ready  chan struct{} // closed once the first fetch is done
	err    error         // the first fetch's error, read after ready
	cur    atomic.Pointer[current]
	cancel context.CancelFunc
}

// current is an installed SVID with what TLS needs precomputed.
type current struct {
	svid     *x509svid.SVID
	tls      *tls.Certificate
	rotateAt time.Time
}

func (c *current) leaf() *x509.Certificate { return c.svid.Certificates[0] }

// NewManager fetches the trust bundle (bounded by ctx) and returns a Manager serving SVIDs from
// o.Source. Close it to stop its goroutines.
func NewManager(ctx context.Context, o ManagerOptions) (*Manager, error) {
	if o.Source == nil {
		return nil, errors.New("identity: ManagerOptions.Source is required")
	}
	if o.RotateAt == 0 {
		o.RotateAt = DefaultRotateAt
	}
	if o.RotateAt <= 0 || o.RotateAt >= 1 {
		return nil, fmt.Errorf("identity: ManagerOptions.RotateAt must be in (0, 1), got %v", o.RotateAt)
	}
	switch {
	case o.Jitter == 0:
		o.Jitter = DefaultJitter
	case o.Jitter < 0:
		o.Jitter = 0
	case o.Jitter >= o.RotateAt:
		return nil, fmt.Errorf("identity: ManagerOptions.Jitter %v must be below RotateAt %v", o.Jitter, o.RotateAt)
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = DefaultRetryInterval
	}
	if o.FetchTimeout <= 0 {
		o.FetchTimeout = DefaultFetchTimeout
	}
	m := &Manager{o: o, log: o.Logger, clock: o.Clock, rand: rand.Float64, entries: map[spiffeid.ID]*entry{}}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.clock == nil {
		m.clock = RealClock{}
	}
	fctx, cancel := context.WithTimeout(ctx, o.FetchTimeout)
	b, err := o.Source.FetchBundle(fctx)
	cancel()
	if err != nil {
		return nil, err
	}
	if b == nil || b.Empty() {
		return nil, errors.New("identity: the source returned an empty trust bundle")
	}
	m.bundle.Store(b)
	m.ctx, m.cancel = context.WithCancel(context.Background())
	return m, nil
}

// GetSVID returns the current SVID of id, fetching it first if id has not been used yet. It
// fails if the fetch fails, or if rotation has failed until the SVID expired.
func (m *Manager) GetSVID(id spiffeid.ID) (*x509svid.SVID, error) {
	c, err := m.get(context.Background(), id)
	if err != nil {
		return nil, err
	}
	return c.svid, nil
}

// GetTLSCertificate is GetSVID as a tls.Certificate (built once per SVID), for
// tls.Config.GetCertificate and GetClientCertificate.
func (m *Manager) GetTLSCertificate(id spiffeid.ID) (*tls.Certificate, error) {
	c, err := m.get(context.Background(), id)
	if err != nil {
		return nil, err
	}
	return c.tls, nil
}

// FetchSVID is GetSVID that stops waiting for a first fetch when ctx is done; with FetchBundle it
// makes a Manager a Source.
func (m *Manager) FetchSVID(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	c, err := m.get(ctx, id)
	if err != nil {
		return nil, err
	}
	return c.svid, nil
}

// FetchBundle returns Bundle().
func (m *Manager) FetchBundle(context.Context) (*x509bundle.Bundle, error) { return m.Bundle(), nil }

// Bundle is the current trust bundle, refreshed from the source with every SVID fetch.
func (m *Manager) Bundle() *x509bundle.Bundle { return m.bundle.Load() }

// GetX509BundleForTrustDomain makes the Manager an x509bundle.Source for go-spiffe's
// verification helpers.
func (m *Manager) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return m.Bundle().GetX509BundleForTrustDomain(td)
}

// SVIDSource is an x509svid.Source serving id's current SVID, for go-spiffe's tlsconfig.
func (m *Manager) SVIDSource(id spiffeid.ID) x509svid.Source { return svidSource{m, id} }

type svidSource struct {
	m  *Manager
	id spiffeid.ID
}

func (s svidSource) GetX509SVID() (*x509svid.SVID, error) { return s.m.GetSVID(s.id) }

// Remove forgets id and stops rotating it (its workloads left the node). The next use fetches
// it again.
func (m *Manager) Remove(id spiffeid.ID) {
	m.mu.Lock()
	e := m.entries[id]
	delete(m.entries, id)
	m.mu.Unlock()
	if e != nil {
		e.cancel()
	}
}

// Close stops rotations and waits for the Manager's goroutines. Later calls fail with ErrClosed.
func (m *Manager) Close() error {
	m.mu.Lock()
	m.closed = true
	m.entries = map[spiffeid.ID]*entry{}
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
	return nil
}

func (m *Manager) get(ctx context.Context, id spiffeid.ID) (*current, error) {
	m.mu.RLock()
	e, closed := m.entries[id], m.closed
	m.mu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	if e == nil {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return nil, ErrClosed
		}
		if e = m.entries[id]; e == nil {
			ectx, cancel := context.WithCancel(m.ctx)
			e = &entry{id: id, ready: make(chan struct{}), cancel: cancel}
			m.entries[id] = e
			m.wg.Add(1)
			go m.run(ectx, e)
		}
		m.mu.Unlock()
	}
	select {
	case <-e.ready:
	case <-ctx.Done():
		return nil, fmt.Errorf("identity: waiting for the SVID of %s: %w", id, ctx.Err())
	}
	if e.err != nil {
		return nil, e.err
	}
	c := e.cur.Load()
	if exp := c.leaf().NotAfter; !m.clock.Now().Before(exp) {
		return nil, fmt.Errorf("identity: the SVID of %s expired at %s and could not be renewed", id, exp.UTC().Format(time.RFC3339))
	}
	return c, nil
}

// run does an identity's first fetch, then rotates it until its context is cancelled.
func (m *Manager) run(ctx context.Context, e *entry) {
	defer m.wg.Done()
	c, err := m.fetch(ctx, e.id)
	if err != nil {
		e.err = err
		m.mu.Lock()
		if m.entries[e.id] == e {
			delete(m.entries, e.id) // the next use tries again
		}
		m.mu.Unlock()
		e.cancel()
		close(e.ready)
		return
	}
	e.cur.Store(c)
	close(e.ready)
	m.installed(e.id, c, "fetched SVID")
	m.rotate(ctx, e)
}

func (m *Manager) rotate(ctx context.Context, e *entry) {
	var retry time.Duration
	for {
		c := e.cur.Load()
		now := m.clock.Now()
		at := c.rotateAt
		if retry > 0 {
			at = now.Add(retry)
		} else if ri := m.o.RefreshInterval; ri > 0 && now.Add(ri).Before(at) {
			at = now.Add(ri)
		}
		t := m.clock.TimerAt(at)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		due := !m.clock.Now().Before(c.rotateAt)
		n, err := m.fetch(ctx, e.id)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			retry = m.backoff(retry)
			m.log.Warn("SVID rotation failed", "identity", e.id.String(), "error", err, "retry_in", retry,
				"expires", c.leaf().NotAfter)
		case bytes.Equal(n.leaf().Raw, c.leaf().Raw):
			if !due {
				retry = 0 // a refresh found nothing new
				continue
			}
			retry = m.backoff(retry)
			m.log.Warn("the source returned the SVID that is due for rotation", "identity", e.id.String(),
				"serial", c.leaf().SerialNumber.String(), "retry_in", retry, "expires", c.leaf().NotAfter)
		default:
			e.cur.Store(n)
			m.installed(e.id, n, "rotated SVID")
			retry = 0
			if !m.clock.Now().Before(n.rotateAt) {
				retry = m.backoff(retry) // already due: do not spin on a source that cannot do better
			}
		}
	}
}

func (m *Manager) installed(id spiffeid.ID, c *current, msg string) {
	m.log.Info(msg, "identity", id.String(), "serial", c.leaf().SerialNumber.String(),
		"expires", c.leaf().NotAfter, "rotate_at", c.rotateAt)
	if m.o.OnUpdate != nil {
		m.o.OnUpdate(id, c.svid)
	}
}

func (m *Manager) backoff(prev time.Duration) time.Duration {
	if prev == 0 {
		return m.o.RetryInterval
	}
	return min(2*prev, max(maxRetryIntervalFloor, m.o.RetryInterval))
}

// fetch gets id's SVID and the bundle from the source, and checks the SVID against the bundle.
func (m *Manager) fetch(ctx context.Context, id spiffeid.ID) (*current, error) {
	ctx, cancel := context.WithTimeout(ctx, m.o.FetchTimeout)
	defer cancel()
	svid, err := m.o.Source.FetchSVID(ctx, id)
	if err != nil {
		return nil, err
	}
	if svid.ID != id || len(svid.Certificates) == 0 || svid.PrivateKey == nil {
		return nil, fmt.Errorf("identity: the source returned an SVID for %q with %d certificates when asked for %s", svid.ID, len(svid.Certificates), id)
	}
	if b, err := m.o.Source.FetchBundle(ctx); err != nil || b == nil || b.Empty() {
		m.log.Warn("trust bundle refresh failed; keeping the current one", "error", err)
	} else if old := m.bundle.Swap(b); !old.Equal(b) {
		m.log.Info("trust bundle changed", "trust_domain", b.TrustDomain().Name(), "authorities", len(b.X509Authorities()))
	}
	now := m.clock.Now()
	if _, _, err := x509svid.Verify(svid.Certificates, m.Bundle(), x509svid.WithTime(now)); err != nil {
		return nil, fmt.Errorf("identity: the SVID of %s does not verify against the trust bundle: %w", id, err)
	}
	leaf := svid.Certificates[0]
	chain := make([][]byte, len(svid.Certificates))
	for i, c := range svid.Certificates {
		chain[i] = c.Raw
	}
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	early := time.Duration(m.o.Jitter * m.rand() * float64(life))
	return &current{
		svid:     svid,
		tls:      &tls.Certificate{Certificate: chain, PrivateKey: svid.PrivateKey, Leaf: leaf},
		rotateAt: leaf.NotBefore.Add(time.Duration(m.o.RotateAt*float64(life)) - early),
	}, nil
}
