package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goambient/goambient/xdsserver/ca/pki"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

type update struct {
	id   spiffeid.ID
	svid *x509svid.SVID
}

// newTestManager starts a Manager with jitter off, a fake clock and updates sent to a channel.
func newTestManager(t *testing.T, clk *fakeClock, src Source, o ManagerOptions) (*Manager, chan update) {
	t.Helper()
	updates := make(chan update, 64)
	o.Source, o.Clock, o.Jitter = src, clk, -1
	o.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	o.OnUpdate = func(id spiffeid.ID, svid *x509svid.SVID) { updates <- update{id, svid} }
	m, err := NewManager(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, updates
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// recv returns the next update, failing after 10s (a safety net, not a wait for time to pass).
func recv(t *testing.T, ch <-chan update) update {
	t.Helper()
	select {
	case u := <-ch:
		return u
	case <-time.After(10 * time.Second):
		t.Fatal("no SVID update within 10s")
		return update{}
	}
}

func noUpdate(t *testing.T, ch <-chan update) {
	t.Helper()
	select {
	case u := <-ch:
		t.Fatalf("unexpected update of %s (serial %s)", u.id, serial(u.svid))
	default:
	}
}

func serial(s *x509svid.SVID) *big.Int { return s.Certificates[0].SerialNumber }

func mustGet(t *testing.T, m *Manager, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	s, err := m.GetSVID(id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestManagerRotatesWithoutDroppingConnections: past half-life the SVID is replaced; a TLS
// connection made with the old one keeps working and a new handshake presents the new one.
func TestManagerRotatesWithoutDroppingConnections(t *testing.T) {
	clk := newFakeClock(t0)
	ca := newTestCA(t, clk)
	m, updates := newTestManager(t, clk, pki.NewSource(ca, time.Hour), ManagerOptions{})
	serverID := spiffeid.RequireFromString("spiffe://cluster.local/ns/handson/sa/handson")
	clientID := spiffeid.RequireFromString("spiffe://cluster.local/ns/handson/sa/curl")

	// verify checks a peer as HBONE does: the chain against the bundle, then the exact identity.
	verify := func(want spiffeid.ID) func([][]byte, [][]*x509.Certificate) error {
		return func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, _, err := x509svid.ParseAndVerify(raw, m, x509svid.WithTime(clk.Now()))
			if err != nil {
				return err
			}
			if id != want {
				return fmt.Errorf("peer is %s, want %s", id, want)
			}
			return nil
		}
	}
	serverCfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"h2"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			svid, err := m.GetSVID(serverID)
			if err != nil {
				return nil, err
			}
			return &tls.Certificate{Certificate: [][]byte{svid.Certificates[0].Raw}, PrivateKey: svid.PrivateKey}, nil
		},
		ClientAuth:            tls.RequireAnyClientCert,
		VerifyPeerCertificate: verify(clientID),
	}
	clientCfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"h2"},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return m.GetTLSCertificate(clientID)
		},
		InsecureSkipVerify:    true, // verified by VerifyPeerCertificate, with the fake clock
		VerifyPeerCertificate: verify(serverID),
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() { // a TLS echo server
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := tls.Server(c, serverCfg)
				defer s.Close()
				io.Copy(s, s)
			}()
		}
	}()
	dial := func() *tls.Conn {
		t.Helper()
		c, err := tls.Dial("tcp", ln.Addr().String(), clientCfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	exchange := func(c *tls.Conn, msg string) {
		t.Helper()
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo of %q: %q, %v", msg, buf, err)
		}
	}
	peerSerial := func(c *tls.Conn) *big.Int { return c.ConnectionState().PeerCertificates[0].SerialNumber }

	oldServer := mustGet(t, m, serverID)
	oldClient := mustGet(t, m, clientID)
	recv(t, updates)
	recv(t, updates)

	conn := dial()
	if st := conn.ConnectionState(); st.NegotiatedProtocol != "h2" || st.Version != tls.VersionTLS13 {
		t.Fatalf("negotiated %q, TLS %x", st.NegotiatedProtocol, st.Version)
	}
	exchange(conn, "before rotation")
	if peerSerial(conn).Cmp(serial(oldServer)) != 0 {
		t.Fatalf("the server presented serial %s, want %s", peerSerial(conn), serial(oldServer))
	}

	// Just before half-life nothing happens; just past it, both identities rotate.
	clk.Advance(30*time.Minute - time.Second)
	clk.waitTimers(t, 2)
	noUpdate(t, updates)
	clk.Advance(time.Second)
	rotated := map[spiffeid.ID]*x509svid.SVID{}
	for range 2 {
		u := recv(t, updates)
		rotated[u.id] = u.svid
	}
	newServer := mustGet(t, m, serverID)
	if newServer != rotated[serverID] || serial(newServer).Cmp(serial(oldServer)) == 0 {
		t.Fatalf("GetSVID after rotation: serial %s, old %s", serial(newServer), serial(oldServer))
	}
	if c := mustGet(t, m, clientID); c != rotated[clientID] || serial(c).Cmp(serial(oldClient)) == 0 {
		t.Fatalf("the client identity did not rotate")
	}
	if nb := newServer.Certificates[0].NotBefore; !nb.Equal(t0.Add(30 * time.Minute)) {
		t.Errorf("the new SVID starts at %v, want the rotation time", nb)
	}

	// The open connection is untouched: same peer certificate, bytes still flow both ways.
	exchange(conn, "after rotation, same connection")
	if peerSerial(conn).Cmp(serial(oldServer)) != 0 {
		t.Error("the open connection's peer certificate changed")
	}
	// A new handshake presents the new SVID.
	conn2 := dial()
	exchange(conn2, "new connection")
	if peerSerial(conn2).Cmp(serial(newServer)) != 0 {
		t.Errorf("a new handshake presented serial %s, want the rotated %s", peerSerial(conn2), serial(newServer))
	}
	exchange(conn, "old connection still open")
}

// countingSource counts fetches, can be made to fail, and can hold fetches until released.
type countingSource struct {
	Source
	calls   atomic.Int32
	fail    atomic.Bool
	gate    chan struct{} // when set, FetchSVID waits for it to be closed
	fetched chan struct{} // when set, receives after each FetchSVID call starts
}

func (s *countingSource) FetchSVID(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	s.calls.Add(1)
	if s.fetched != nil {
		s.fetched <- struct{}{}
	}
	if s.gate != nil {
		<-s.gate
	}
	if s.fail.Load() {
		return nil, fmt.Errorf("CA unavailable for %s", id)
	}
	return s.Source.FetchSVID(ctx, id)
}

func TestManagerFetchesOnceOnFirstUse(t *testing.T) {
	clk := newFakeClock(t0)
	src := &countingSource{Source: pki.NewSource(newTestCA(t, clk), time.Hour), gate: make(chan struct{}), fetched: make(chan struct{}, 1)}
	m, _ := newTestManager(t, clk, src, ManagerOptions{})
	results := make(chan *x509svid.SVID, 32)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			s, err := m.GetSVID(idFoo)
			if err != nil {
				t.Error(err)
			}
			results <- s
		})
	}
	<-src.fetched // the one fetch has started; the callers wait for it
	close(src.gate)
	wg.Wait()
	close(results)
	first := <-results
	for s := range results {
		if s != first {
			t.Fatal("callers got different SVIDs")
		}
	}
	if n := src.calls.Load(); n != 1 {
		t.Errorf("%d fetches, want 1", n)
	}
	if u := first.Certificates[0].URIs; len(u) != 1 || u[0].String() != idFoo.String() {
		t.Errorf("URI SANs %v, want %s", u, idFoo)
	}
}

func TestManagerRetriesFailedRotationThenExpires(t *testing.T) {
	clk := newFakeClock(t0)
	src := &countingSource{Source: pki.NewSource(newTestCA(t, clk), time.Hour)}
	m, updates := newTestManager(t, clk, src, ManagerOptions{RetryInterval: time.Minute})
	first := mustGet(t, m, idFoo)
	recv(t, updates)

	src.fail.Store(true)
	clk.Advance(30 * time.Minute)
	if at := clk.waitTimers(t, 1); !at[0].Equal(t0.Add(31 * time.Minute)) {
		t.Fatalf("retry at %v, want one RetryInterval later", at[0])
	}
	if s := mustGet(t, m, idFoo); s != first {
		t.Fatal("a failed rotation replaced the SVID")
	}
	clk.Advance(time.Minute)
	if at := clk.waitTimers(t, 1); !at[0].Equal(t0.Add(33 * time.Minute)) {
		t.Fatalf("second retry at %v, want the interval doubled", at[0])
	}
	src.fail.Store(false)
	clk.Advance(2 * time.Minute)
	u := recv(t, updates)
	if serial(u.svid).Cmp(serial(first)) == 0 || mustGet(t, m, idFoo) != u.svid {
		t.Fatal("the rotation after recovery did not install a new SVID")
	}

	// The source fails until the SVID expires: GetSVID says so.
	src.fail.Store(true)
	clk.Advance(time.Hour)
	_, err := m.GetSVID(idFoo)
	if err == nil || !strings.Contains(err.Error(), idFoo.String()) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("GetSVID of an expired SVID: %v", err)
	}
}

func TestManagerMissingIdentity(t *testing.T) {
	clk := newFakeClock(t0)
	ca := newTestCA(t, clk)
	dir := t.TempDir()
	writeDir(t, ca, dir)
	m, updates := newTestManager(t, clk, NewDirSource(dir, td), ManagerOptions{})
	_, err := m.GetSVID(idFoo)
	for _, want := range []string{idFoo.String(), filepath.Join(dir, "foo", "bar", CertChainFile), filepath.Join(dir, "foo", "bar", KeyFile)} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("GetSVID of a missing identity: %v; want it to name %s", err, want)
		}
	}
	// A failure is not remembered: once the files exist, the next use finds them.
	writeDir(t, ca, dir, idFoo)
	mustGet(t, m, idFoo)
	recv(t, updates)
}

// TestManagerDirSourceRefresh: with RefreshInterval, a rewritten file is picked up before the
// rotation time; files that are not renewed in time are retried, not spun on.
func TestManagerDirSourceRefresh(t *testing.T) {
	clk := newFakeClock(t0)
	ca := newTestCA(t, clk)
	dir := t.TempDir()
	first := writeDir(t, ca, dir, idFoo)[idFoo]
	m, updates := newTestManager(t, clk, NewDirSource(dir, td), ManagerOptions{RefreshInterval: time.Minute, RetryInterval: 10 * time.Second})
	if got := mustGet(t, m, idFoo); !got.Certificates[0].Equal(first.Certificates[0]) {
		t.Fatal("not the SVID on disk")
	}
	recv(t, updates)

	clk.Advance(time.Minute) // unchanged files: no update
	clk.waitTimers(t, 1)
	noUpdate(t, updates)

	second, _ := ca.IssueSVID(idFoo, time.Hour)
	if _, err := WriteSVID(dir, second); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Minute)
	if u := recv(t, updates); !u.svid.Certificates[0].Equal(second.Certificates[0]) {
		t.Fatal("the rewritten SVID was not installed")
	}

	// Nobody renews the files: past the rotation time the same SVID comes back, and the next
	// try is RetryInterval later (no busy loop).
	clk.Advance(30 * time.Minute)
	at := clk.waitTimers(t, 1)
	if want := clk.Now().Add(10 * time.Second); !at[0].Equal(want) {
		t.Errorf("next try at %v, want %v", at[0], want)
	}
	noUpdate(t, updates)
	if got := mustGet(t, m, idFoo); !got.Certificates[0].Equal(second.Certificates[0]) {
		t.Error("the SVID changed")
	}
}

// otherBundleSource issues from one CA and hands out the bundle of another.
type otherBundleSource struct {
	*pki.Source
	bundle *x509bundle.Bundle
}

func (s otherBundleSource) FetchBundle(context.Context) (*x509bundle.Bundle, error) {
	return s.bundle, nil
}

func TestManagerRejectsSVIDOutsideTheBundle(t *testing.T) {
	clk := newFakeClock(t0)
	src := otherBundleSource{pki.NewSource(newTestCA(t, clk), 0), newTestCA(t, clk).Bundle()}
	m, _ := newTestManager(t, clk, src, ManagerOptions{})
	if _, err := m.GetSVID(idFoo); err == nil || !strings.Contains(err.Error(), "does not verify against the trust bundle") {
		t.Errorf("GetSVID: %v", err)
	}
}

func TestManagerBundleAndSources(t *testing.T) {
	clk := newFakeClock(t0)
	ca := newTestCA(t, clk)
	m, _ := newTestManager(t, clk, pki.NewSource(ca, 0), ManagerOptions{})
	if !m.Bundle().Equal(ca.Bundle()) {
		t.Error("Bundle is not the CA's")
	}
	if _, err := m.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("example.org")); err == nil {
		t.Error("a bundle for a foreign trust domain")
	}
	a, err := m.SVIDSource(idFoo).GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.FetchSVID(context.Background(), idFoo)
	if err != nil || a != b {
		t.Errorf("FetchSVID = %v, %v; want GetSVID's", b, err)
	}
	// A Manager over a Manager: the outer one is served the inner one's SVIDs.
	outer, _ := newTestManager(t, clk, m, ManagerOptions{})
	if c := mustGet(t, outer, idFoo); c != a {
		t.Error("stacked Manager returned another SVID")
	}
}

func TestManagerRemoveAndClose(t *testing.T) {
	clk := newFakeClock(t0)
	src := &countingSource{Source: pki.NewSource(newTestCA(t, clk), time.Hour)}
	m, updates := newTestManager(t, clk, src, ManagerOptions{})
	a := mustGet(t, m, idFoo)
	recv(t, updates)
	clk.waitTimers(t, 1)
	m.Remove(idFoo)
	b := mustGet(t, m, idFoo)
	recv(t, updates)
	if serial(a).Cmp(serial(b)) == 0 || src.calls.Load() != 2 {
		t.Errorf("after Remove, GetSVID did not fetch again (%d fetches)", src.calls.Load())
	}
	m.Close()
	if _, err := m.GetSVID(idFoo); !errors.Is(err, ErrClosed) {
		t.Errorf("GetSVID after Close: %v", err)
	}
}

func TestManagerRotationTime(t *testing.T) {
	clk := newFakeClock(t0)
	ca := newTestCA(t, clk)
	for _, tc := range []struct {
		o    ManagerOptions
		rand float64
		want time.Duration
	}{
		{ManagerOptions{}, 0.99, 30 * time.Minute}, // jitter off (newTestManager)
		{ManagerOptions{RotateAt: 0.8}, 0, 48 * time.Minute},
	} {
		m, _ := newTestManager(t, clk, pki.NewSource(ca, time.Hour), tc.o)
		m.rand = func() float64 { return tc.rand }
		mustGet(t, m, idFoo)
		if at := clk.waitTimers(t, 1); !at[0].Equal(t0.Add(tc.want)) {
			t.Errorf("%+v: rotation at +%v, want +%v", tc.o, at[0].Sub(t0), tc.want)
		}
		m.Close()
	}

	// With jitter: up to Jitter of the lifetime earlier.
	m, err := NewManager(context.Background(), ManagerOptions{Source: pki.NewSource(ca, time.Hour), Clock: clk, Jitter: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.rand = func() float64 { return 0.5 }
	mustGet(t, m, idFoo)
	if at := clk.waitTimers(t, 1); !at[0].Equal(t0.Add(27 * time.Minute)) {
		t.Errorf("jittered rotation at +%v, want +27m", at[0].Sub(t0))
	}

	for _, o := range []ManagerOptions{{}, {Source: pki.NewSource(ca, 0), RotateAt: 1.5}, {Source: pki.NewSource(ca, 0), Jitter: 0.6}} {
		if _, err := NewManager(context.Background(), o); err == nil {
			t.Errorf("NewManager(%+v) accepted bad options", o)
		}
	}
}
