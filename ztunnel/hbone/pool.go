package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// poolKey is Istio's WorkloadKey without the source IP (this client does not bind to the
// workload's address): one set of connections per source identity, accepted destination
// identities and destination address.
type poolKey struct {
	src  spiffeid.ID
	dsts string // sorted SPIFFE IDs joined by ","
	addr netip.AddrPort
}

func newPoolKey(src spiffeid.ID, dsts []spiffeid.ID, addr netip.AddrPort) poolKey {
	ids := make([]string, len(dsts))
	for i, id := range dsts {
		ids[i] = id.String()
	}
	slices.Sort(ids)
	return poolKey{src: src, dsts: strings.Join(slices.Compact(ids), ","), addr: addr}
}

func (k poolKey) LogValue() slog.Value {
	return slog.GroupValue(slog.String("src", k.src.String()), slog.String("dst", k.dsts),
		slog.String("addr", k.addr.String()))
}

// poolConn is one HTTP/2 connection of the pool.
type poolConn struct {
	key     poolKey
	h2      *h2Conn
	tls     *tls.Conn
	peer    spiffeid.ID
	streams int  // streams handed out and not yet closed; under pool.mu
	closed  bool // its connection is closed; under pool.mu
}

// pool holds the client's HTTP/2 connections. A connection is taken for a new stream while it
// has fewer than maxStreams streams open and can reserve one (it is not closing, has not
// received GOAWAY, and the server's own limit allows it); otherwise one more connection is
// dialled, one dial at a time per key. A connection leaves the pool when it is closed for any
// reason: idle timeout, PING timeout, the end of its last stream after a GOAWAY, peer close,
// read or write error, Client.Close.
type pool struct {
	log        *slog.Logger
	settings   h2Settings
	maxStreams int

	mu      sync.Mutex
	conns   map[poolKey][]*poolConn
	dialing map[poolKey]chan struct{}
	closed  bool
}

var errClientClosed = errors.New("hbone: client closed")

// get returns a connection for key with one stream reserved for the caller (release it with
// put), dialling one with dial when none has room; reused reports a pooled connection.
func (p *pool) get(ctx context.Context, key poolKey, dial func(context.Context) (*tls.Conn, error)) (pc *poolConn, reused bool, err error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, false, errClientClosed
		}
		for _, pc := range p.conns[key] {
			if pc.streams < p.maxStreams && pc.h2.reserve() {
				pc.streams++
				p.mu.Unlock()
				return pc, true, nil
			}
		}
		wait := p.dialing[key]
		if wait == nil {
			break // this caller dials; p.mu still held
		}
		p.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	}
	done := make(chan struct{})
	p.dialing[key] = done
	p.mu.Unlock()

	pc, err = p.dial(ctx, key, dial)

	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.dialing, key)
	close(done)
	if err != nil {
		return nil, false, err
	}
	if p.closed || pc.closed || !pc.h2.reserve() {
		go pc.h2.closeWithError(nil)
		return nil, false, fmt.Errorf("hbone: new connection to %s unusable", key.addr)
	}
	pc.streams = 1
	p.conns[key] = append(p.conns[key], pc)
	return pc, false, nil
}

func (p *pool) dial(ctx context.Context, key poolKey, dial func(context.Context) (*tls.Conn, error)) (*poolConn, error) {
	tc, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	pc := &poolConn{key: key, tls: tc}
	cs := tc.ConnectionState()
	pc.peer, _ = PeerID(&cs)
	raw, _ := tc.NetConn().(*gatherConn)
	h2 := newH2Conn(p.log, newGatheringTLS(tc, raw), tc.NetConn(), true, p.settings)
	h2.onClose = func(error) { p.remove(pc) }
	pc.h2 = h2
	if err := h2.start(); err != nil {
		h2.closeWithError(err)
		return nil, fmt.Errorf("hbone: HTTP/2 to %s: %w", key.addr, err)
	}
	go h2.readLoop()
	p.log.Debug("hbone connection opened", "key", key, "local", tc.LocalAddr().String())
	return pc, nil
}

// put gives back the stream reserved by get.
func (p *pool) put(pc *poolConn) {
	p.mu.Lock()
	pc.streams--
	p.mu.Unlock()
}

// remove drops pc from the pool; called when its connection closes.
func (p *pool) remove(pc *poolConn) {
	p.mu.Lock()
	pc.closed = true
	conns := p.conns[pc.key]
	if i := slices.Index(conns, pc); i >= 0 {
		conns = slices.Delete(conns, i, i+1)
		if len(conns) == 0 {
			delete(p.conns, pc.key)
		} else {
			p.conns[pc.key] = conns
		}
	}
	p.mu.Unlock()
	p.log.Debug("hbone connection closed", "key", pc.key)
}

// size is the number of pooled connections.
func (p *pool) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, c := range p.conns {
		n += len(c)
	}
	return n
}

func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	var all []*poolConn
	for _, c := range p.conns {
		all = append(all, c...)
	}
	p.mu.Unlock()
	for _, pc := range all {
		pc.h2.closeWithError(errClientClosed) // aborts its streams; remove runs from onClose
	}
}
