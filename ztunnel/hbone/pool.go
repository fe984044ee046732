package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
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
	cc      *http2.ClientConn
	tls     *tls.Conn
	peer    spiffeid.ID
	streams int  // streams handed out and not yet closed; under pool.mu
	closed  bool // its connection is closed; under pool.mu
}

// pool holds the client's HTTP/2 connections. A connection is taken for a new stream while it
// has fewer than maxStreams streams open and the x/net ClientConn can reserve one (it is not
// closing, has not received GOAWAY, and the server's own limit allows it); otherwise one more
// connection is dialled, one dial at a time per key. A connection leaves the pool when it is
// closed for any reason: idle timeout (x/net's idle timer), PING timeout, GOAWAY, peer close,
// read or write error, Client.Close.
type pool struct {
	log        *slog.Logger
	t          *http2.Transport
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
			if pc.streams < p.maxStreams && pc.cc.ReserveNewRequest() {
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
	if p.closed || pc.closed || !pc.cc.ReserveNewRequest() {
		go pc.cc.Close()
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
	tracked := &trackedConn{onClose: func() { p.remove(pc) }}
	tracked.gatheringTLS.Conn = tc
	tracked.gatheringTLS.raw, _ = tc.NetConn().(*gatherConn)
	cc, err := p.t.NewClientConn(tracked)
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("hbone: HTTP/2 to %s: %w", key.addr, err)
	}
	pc.cc = cc
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
		pc.cc.Close() // aborts its streams; remove runs from trackedConn.Close
	}
}

// trackedConn is the TLS connection under an x/net ClientConn: the ClientConn closes it when
// it is done with it (idle, ping timeout, GOAWAY, errors), which is when the pool drops it.
type trackedConn struct {
	gatheringTLS // also gives the ClientConn the TLS state (ConnectionState)
	once         sync.Once
	onClose      func()
}

func (c *trackedConn) Close() error {
	c.once.Do(c.onClose)
	// A TLS close_notify can block on an unresponsive peer; bound it as x/net does for a
	// *tls.Conn (it cannot see through this wrapper).
	t := time.AfterFunc(250*time.Millisecond, func() { c.Conn.NetConn().Close() })
	defer t.Stop()
	return c.Conn.Close()
}

var _ net.Conn = (*trackedConn)(nil)
