package server

import (
	"runtime"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// Limits bound what a client of the ADS listeners can cost. A zero field takes the value of
// DefaultLimits; StreamsPerSecond below zero turns the rate limit off.
type Limits struct {
	// MaxConcurrentStreams is each connection's HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: streams
	// beyond it are refused by gRPC (REFUSED_STREAM), or queued by a client that obeys it.
	MaxConcurrentStreams uint32
	// MaxRecvMsgSize is the largest request message accepted, in bytes (ResourceExhausted).
	MaxRecvMsgSize int
	// MaxConnections is the number of open connections of each listener wrapped by Listener;
	// one more is closed as soon as it is accepted.
	MaxConnections int
	// MaxStreams is the number of ADS streams open at once, both listeners together; one more
	// ends with ResourceExhausted.
	MaxStreams int
	// StreamsPerSecond is the rate of new ADS streams (a token bucket of one, as istiod's
	// RequestRateLimit): a stream waits up to StreamWait for its turn, then ends with
	// ResourceExhausted.
	StreamsPerSecond float64
	// KeepaliveTime and KeepaliveTimeout: after KeepaliveTime without activity the server pings
	// the client, and closes the connection when the ping is not answered within
	// KeepaliveTimeout.
	KeepaliveTime, KeepaliveTimeout time.Duration
	// KeepaliveMinTime is the shortest interval between a client's pings: a client pinging more
	// often, or pinging without an open stream, gets a GOAWAY (ENHANCE_YOUR_CALM,
	// "too_many_pings") after three such pings.
	KeepaliveMinTime time.Duration
	// SendTimeout is how long sending one response may block on the client's flow control;
	// AckTimeout how long a response may wait for the client's ACK or NACK. Past either, the
	// client does not read what it is sent, and its connection is closed (the stream alone
	// when the connection is not one of Listener's).
	SendTimeout, AckTimeout time.Duration
}

// StreamWait is how long a new ADS stream waits for the rate limit before it is refused, as
// istiod's WaitForRequestLimit.
const StreamWait = time.Second

// DefaultStreamsPerSecond is istiod's PILOT_MAX_REQUESTS_PER_SECOND when unset: 15 + 5 per CPU
// (GOMAXPROCS), at most 100.
func DefaultStreamsPerSecond() float64 {
	return min(float64(15+5*runtime.GOMAXPROCS(0)), 100)
}

// DefaultLimits are the limits of a Server whose Options leave them zero. The keepalive values
// and the receive size are istiod's (pkg/keepalive, ISTIO_GPRC_MAXRECVMSGSIZE); the stream rate
// is istiod's default; the counts and timeouts are goambient's own (istiod has none, or allows
// 100,000 streams per connection).
func DefaultLimits() Limits {
	return Limits{
		MaxConcurrentStreams: 100,
		MaxRecvMsgSize:       4 << 20,
		MaxConnections:       4096,
		MaxStreams:           4096,
		StreamsPerSecond:     DefaultStreamsPerSecond(),
		KeepaliveTime:        30 * time.Second,
		KeepaliveTimeout:     10 * time.Second,
		KeepaliveMinTime:     15 * time.Second,
		SendTimeout:          30 * time.Second,
		AckTimeout:           60 * time.Second,
	}
}

// withDefaults fills the zero fields.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	or := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	if l.MaxConcurrentStreams == 0 {
		l.MaxConcurrentStreams = d.MaxConcurrentStreams
	}
	if l.MaxRecvMsgSize == 0 {
		l.MaxRecvMsgSize = d.MaxRecvMsgSize
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = d.MaxConnections
	}
	if l.MaxStreams == 0 {
		l.MaxStreams = d.MaxStreams
	}
	if l.StreamsPerSecond == 0 {
		l.StreamsPerSecond = d.StreamsPerSecond
	}
	or(&l.KeepaliveTime, d.KeepaliveTime)
	or(&l.KeepaliveTimeout, d.KeepaliveTimeout)
	or(&l.KeepaliveMinTime, d.KeepaliveMinTime)
	or(&l.SendTimeout, d.SendTimeout)
	or(&l.AckTimeout, d.AckTimeout)
	return l
}

// ServerOptions are the gRPC server options of the limits, as istiod's grpc.ServerOptions:
// concurrent streams per connection, receive size, keepalive parameters and enforcement.
// Serve uses them; a caller that makes its own gRPC server for Register or RegisterSecure
// should too, and serve it on Listener.
func (s *Server) ServerOptions() []grpc.ServerOption {
	l := s.limits
	return []grpc.ServerOption{
		grpc.MaxConcurrentStreams(l.MaxConcurrentStreams),
		grpc.MaxRecvMsgSize(l.MaxRecvMsgSize),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: l.KeepaliveMinTime}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: l.KeepaliveTime, Timeout: l.KeepaliveTimeout}),
	}
}
