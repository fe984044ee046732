package server

import (
	"context"
	"sync"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	xds "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Reasons a connection or stream is refused or ended (the label of goambient_xds_refused_total).
const (
	refusedConnections     = "connections"     // Limits.MaxConnections
	refusedStreams         = "streams"         // Limits.MaxStreams
	refusedRate            = "rate"            // Limits.StreamsPerSecond
	refusedUnauthenticated = "unauthenticated" // secure listener: no token, or not accepted
	refusedPermission      = "permission"      // secure listener: not allowed what it asked for
	refusedStalled         = "stalled"         // Limits.SendTimeout, AckTimeout
)

// guardedADS is the ADS service of one listener behind the limits: a new stream gets a place
// among Limits.MaxStreams, waits for its turn in the rate limit, and is authenticated by authn
// (the secure listener's; nil on the plaintext one) before go-control-plane sees it; while it
// runs, a client that does not read its responses is cut off (stallWatch).
type guardedADS struct {
	s     *Server
	inner xds.Server
	// authn authenticates a stream and returns its context carrying the caller; its error is
	// the stream's status.
	authn func(context.Context) (context.Context, error)
}

func (g *guardedADS) StreamAggregatedResources(st discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return guard(g, st, g.inner.StreamAggregatedResources)
}

func (g *guardedADS) DeltaAggregatedResources(st discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return guard(g, st, g.inner.DeltaAggregatedResources)
}

// guard admits a stream, then runs inner on it with its sends and ACKs watched.
func guard[Req, Resp any](g *guardedADS, st grpc.BidiStreamingServer[Req, Resp], inner func(grpc.BidiStreamingServer[Req, Resp]) error) error {
	ctx, release, err := g.s.admit(st.Context(), g.authn)
	if err != nil {
		return err
	}
	defer release()
	key := ""
	if p, ok := peer.FromContext(ctx); ok {
		key = connKey(p.Addr, p.LocalAddr)
	}
	stalled := make(chan string, 1)
	w := &guardedStream[Req, Resp]{BidiStreamingServer: st, ctx: ctx}
	w.watch = newStallWatch(g.s.limits.SendTimeout, g.s.limits.AckTimeout, func(reason string) {
		g.s.refuse(refusedStalled, "xds client cut off: it does not read its responses", "peer", key, "reason", reason)
		select {
		case stalled <- reason:
		default:
		}
		g.s.conns.close(key)
	})
	defer w.watch.stop()
	if g.s.conns.has(key) {
		// Closing the connection ends the stream, and frees what gRPC queued for it.
		return inner(w)
	}
	// A gRPC server on a listener of its own: end the stream; its goroutines end with it, what
	// gRPC queued stays until the connection closes.
	done := make(chan error, 1)
	go func() { done <- inner(w) }()
	select {
	case err := <-done:
		return err
	case reason := <-stalled:
		return status.Error(codes.DeadlineExceeded, "xds client does not read its responses: "+reason)
	}
}

// admit gives a new stream its place: within Limits.MaxStreams, after its turn in the rate
// limit (waiting at most StreamWait), authenticated by authn when set. It returns the
// stream's context and the release of its place.
func (s *Server) admit(ctx context.Context, authn func(context.Context) (context.Context, error)) (context.Context, func(), error) {
	remote := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		remote = p.Addr.String()
	}
	if n := s.open.Add(1); n > int64(s.limits.MaxStreams) {
		s.open.Add(-1)
		s.refuse(refusedStreams, "xds stream refused: too many streams", "remote", remote, "limit", s.limits.MaxStreams)
		return nil, nil, status.Error(codes.ResourceExhausted, "too many xds streams")
	}
	release := func() { s.open.Add(-1) }
	if s.limiter != nil {
		wctx, cancel := context.WithTimeout(ctx, StreamWait)
		err := s.limiter.Wait(wctx)
		cancel()
		if err != nil {
			release()
			s.refuse(refusedRate, "xds stream refused: request rate limit exceeded", "remote", remote, "limit_per_second", s.limits.StreamsPerSecond)
			return nil, nil, status.Error(codes.ResourceExhausted, "request rate limit exceeded")
		}
	}
	if authn != nil {
		actx, err := authn(ctx)
		if err != nil {
			release()
			return nil, nil, err
		}
		ctx = actx
	}
	return ctx, release, nil
}

// refuse counts a refusal and logs it, at most once a second per reason (with the number
// of refusals not logged since), so that a flood does not flood the log.
func (s *Server) refuse(reason, msg string, args ...any) {
	s.metrics.refused.WithLabelValues(reason).Inc()
	s.refusals.mu.Lock()
	r := s.refusals.by[reason]
	if r == nil {
		r = &refusalLog{}
		s.refusals.by[reason] = r
	}
	now := time.Now()
	if !r.last.IsZero() && now.Sub(r.last) < time.Second {
		r.suppressed++
		s.refusals.mu.Unlock()
		return
	}
	suppressed := r.suppressed
	r.last, r.suppressed = now, 0
	s.refusals.mu.Unlock()
	if suppressed > 0 {
		args = append(args, "not_logged_since_last", suppressed)
	}
	s.log.Warn(msg, args...)
}

type refusals struct {
	mu sync.Mutex
	by map[string]*refusalLog
}

type refusalLog struct {
	last       time.Time
	suppressed int
}

// guardedStream is a stream whose responses and ACKs its stallWatch sees; its context is the
// one admit returned (with the caller on the secure listener).
type guardedStream[Req, Resp any] struct {
	grpc.BidiStreamingServer[Req, Resp]
	ctx   context.Context
	watch *stallWatch
}

func (w *guardedStream[Req, Resp]) Context() context.Context { return w.ctx }

func (w *guardedStream[Req, Resp]) Send(m *Resp) error {
	r, _ := any(m).(interface {
		GetNonce() string
		GetTypeUrl() string
	})
	if r != nil {
		w.watch.sending(r.GetNonce(), r.GetTypeUrl())
	}
	err := w.BidiStreamingServer.Send(m)
	w.watch.sent()
	return err
}

func (w *guardedStream[Req, Resp]) Recv() (*Req, error) {
	m, err := w.BidiStreamingServer.Recv()
	if err == nil {
		if r, ok := any(m).(interface {
			GetResponseNonce() string
			GetTypeUrl() string
		}); ok && r.GetResponseNonce() != "" {
			w.watch.acked(r.GetResponseNonce(), r.GetTypeUrl())
		}
	}
	return m, err
}

// maxUnacked is the most responses a stream may leave unacknowledged: go-control-plane sends
// a type again only after the client's next request for it, so a client that reads has at
// most one per type in flight.
const maxUnacked = 64

// stallWatch tells when a client does not read: a Send blocked longer than the send timeout
// (the client's flow-control window stays shut), or a response neither ACKed nor NACKed
// within the ACK timeout. It calls stall once.
type stallWatch struct {
	sendTimeout, ackTimeout time.Duration
	stall                   func(reason string)

	mu      sync.Mutex
	since   time.Time               // start of the Send in progress; zero: none
	unacked map[string]unackedReply // by nonce
	timer   *time.Timer
	fired   bool
}

type unackedReply struct {
	typeURL string
	sent    time.Time
}

func newStallWatch(sendTimeout, ackTimeout time.Duration, stall func(string)) *stallWatch {
	return &stallWatch{sendTimeout: sendTimeout, ackTimeout: ackTimeout, stall: stall, unacked: map[string]unackedReply{}}
}

func (w *stallWatch) sending(nonce, typeURL string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	w.since = now
	if nonce != "" {
		w.unacked[nonce] = unackedReply{typeURL: typeURL, sent: now}
	}
	if len(w.unacked) > maxUnacked {
		w.fireLocked("more than 64 responses not acknowledged")
		return
	}
	w.armLocked()
}

func (w *stallWatch) sent() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.since = time.Time{}
	w.armLocked()
}

// acked forgets the response nonce, and the earlier responses of its type (the client has
// moved past them).
func (w *stallWatch) acked(nonce, typeURL string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	r, ok := w.unacked[nonce]
	if !ok {
		return
	}
	for n, u := range w.unacked {
		if u.typeURL == typeURL && !u.sent.After(r.sent) {
			delete(w.unacked, n)
		}
	}
	w.armLocked()
}

func (w *stallWatch) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.fired = true
	if w.timer != nil {
		w.timer.Stop()
	}
}

// armLocked sets the timer to the earliest deadline, if any.
func (w *stallWatch) armLocked() {
	if w.fired {
		return
	}
	var next time.Time
	if !w.since.IsZero() {
		next = w.since.Add(w.sendTimeout)
	}
	for _, u := range w.unacked {
		if d := u.sent.Add(w.ackTimeout); next.IsZero() || d.Before(next) {
			next = d
		}
	}
	if next.IsZero() {
		if w.timer != nil {
			w.timer.Stop()
		}
		return
	}
	if w.timer == nil {
		w.timer = time.AfterFunc(time.Until(next), w.check)
		return
	}
	w.timer.Reset(time.Until(next))
}

func (w *stallWatch) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fired {
		return
	}
	now := time.Now()
	if !w.since.IsZero() && now.Sub(w.since) >= w.sendTimeout {
		w.fireLocked("a response could not be sent within " + w.sendTimeout.String())
		return
	}
	for _, u := range w.unacked {
		if now.Sub(u.sent) >= w.ackTimeout {
			w.fireLocked("a " + u.typeURL + " response was not acknowledged within " + w.ackTimeout.String())
			return
		}
	}
	w.armLocked()
}

// fireLocked calls stall once, on its own goroutine (it closes a connection, which must not
// wait for this lock).
func (w *stallWatch) fireLocked(reason string) {
	if w.fired {
		return
	}
	w.fired = true
	if w.timer != nil {
		w.timer.Stop()
	}
	go w.stall(reason)
}
