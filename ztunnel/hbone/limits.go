package hbone

import (
	"errors"
	"net/netip"
	"sync"
	"time"
)

// Limits that keep one peer, or many, from exhausting a Server or a Client. Istio's ztunnel
// values are kept where Istio has them; the others follow x/net's HTTP/2 server. The README's
// "Limits" table lists each with what happens when it is exceeded.
const (
	// DefaultMaxHandshakes bounds the connections in their TLS handshake or HTTP/2 preface at
	// once; DefaultMaxHandshakesPerSource per client IP address.
	DefaultMaxHandshakes          = 256
	DefaultMaxHandshakesPerSource = 32
	// DefaultMaxConnectionsCap is the most the default MaxConnections can be (it is half the
	// process's open-file limit below that); a source gets a quarter of the total, at most
	// DefaultMaxConnectionsPerSourceCap.
	DefaultMaxConnectionsCap          = 65536
	DefaultMaxConnectionsPerSourceCap = 1024
	// DefaultServerIdleTimeout closes a server connection without streams for this long:
	// twice the client pool's DefaultIdleTimeout, so a well-behaved client always leaves first.
	DefaultServerIdleTimeout = 2 * DefaultIdleTimeout
	// DefaultWriteTimeout: a socket write that makes no progress for this long closes the
	// connection (as long as a PING may go unanswered).
	DefaultWriteTimeout = DefaultPingTimeout
	// DefaultMaxQueuedControlFrames: control frames waiting to be written (acknowledgements,
	// resets, window updates) beyond this close the connection. x/net allows 10,000; HBONE's
	// legitimate peak is a few per stream (≤ 200 streams).
	DefaultMaxQueuedControlFrames = 1000
	// DefaultConnectTimeout bounds the wait for a CONNECT's answer when the Dial's context has
	// no earlier deadline (the ztunnel's own outbound dial timeout).
	DefaultConnectTimeout = 10 * time.Second
	// DefaultFailureLogsPerSecond bounds the log lines a peer can cause without a valid
	// connection (failed handshakes, refused connections).
	DefaultFailureLogsPerSecond = 5
)

// handlerQueueFactor: streams waiting for a handler slot, per slot, before the connection is
// closed with ENHANCE_YOUR_CALM (x/net: 4 × max concurrent streams).
const handlerQueueFactor = 4

var errTooManyHandlers = errors.New("hbone: too many streams waiting for a handler (rapid reset)")

// connLimiter counts a Server's connections, in total and per client address, and those still
// in their handshake.
type connLimiter struct {
	maxConns, maxConnsPerSrc int
	maxHS, maxHSPerSrc       int

	mu    sync.Mutex
	conns int
	hs    int
	src   map[netip.Addr]*srcUse
}

type srcUse struct{ conns, hs int }

// admit counts a new connection from src, in its handshake; it returns which limit refuses it
// ("" when admitted).
func (l *connLimiter) admit(src netip.Addr) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.src[src]
	if u == nil {
		u = &srcUse{}
	}
	switch {
	case l.conns >= l.maxConns:
		return "too many connections"
	case u.conns >= l.maxConnsPerSrc:
		return "too many connections from this address"
	case l.hs >= l.maxHS:
		return "too many handshakes in progress"
	case u.hs >= l.maxHSPerSrc:
		return "too many handshakes in progress from this address"
	}
	l.conns++
	l.hs++
	u.conns++
	u.hs++
	if u.conns == 1 {
		l.src[src] = u
	}
	return ""
}

// handshakeDone moves an admitted connection from src out of its handshake.
func (l *connLimiter) handshakeDone(src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.hs--
	l.src[src].hs--
}

// release forgets an admitted connection from src; inHandshake says it never finished it.
func (l *connLimiter) release(src netip.Addr, inHandshake bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.src[src]
	l.conns--
	u.conns--
	if inHandshake {
		l.hs--
		u.hs--
	}
	if u.conns == 0 {
		delete(l.src, src)
	}
}

// handlerSlots runs the handlers of one connection's streams, at most max at a time: a
// stream's handler keeps its slot until it returns (relay included), even when its stream is
// reset, so resetting streams does not buy more handlers (Rapid Reset, CVE-2023-44487). Streams
// beyond wait their turn, up to handlerQueueFactor×max; a stream reset while it waits is
// dropped when its turn comes, its handler never run. This is x/net's scheduleHandler.
type handlerSlots struct {
	mu      sync.Mutex
	max     int
	running int
	queue   []queuedHandler
}

type queuedHandler struct {
	st  *h2Stream
	run func()
}

// start runs run now if a slot is free, or queues it; errTooManyHandlers when the queue is
// full.
func (h *handlerSlots) start(st *h2Stream, run func()) error {
	h.mu.Lock()
	if h.running < h.max {
		h.running++
		h.mu.Unlock()
		go h.loop(run)
		return nil
	}
	if len(h.queue) >= handlerQueueFactor*h.max {
		h.mu.Unlock()
		return errTooManyHandlers
	}
	h.queue = append(h.queue, queuedHandler{st: st, run: run})
	h.mu.Unlock()
	return nil
}

// loop runs handlers in one slot (one goroutine) until none waits.
func (h *handlerSlots) loop(run func()) {
	for run != nil {
		run()
		run = h.next()
	}
}

// next takes the next waiting handler whose stream is still open, keeping the caller's slot
// for it, or frees the slot and returns nil.
func (h *handlerSlots) next() func() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for len(h.queue) > 0 {
		q := h.queue[0]
		h.queue[0] = queuedHandler{}
		h.queue = h.queue[1:]
		if !q.st.isReset() {
			return q.run
		}
	}
	h.queue = nil // let the backing array go
	h.running--
	return nil
}
