package main

import (
	"flag"
	"math"

	"github.com/goambient/goambient/xdsserver/server"
)

// limitFlags defines the flags of the ADS listeners' limits (xdsserver/README.md has the
// table) and returns a function giving the Limits they set.
func limitFlags(fs *flag.FlagSet) func() server.Limits {
	d := server.DefaultLimits()
	perConn := fs.Uint("max-streams-per-connection", uint(d.MaxConcurrentStreams), "HTTP/2 concurrent streams per connection of the ADS listeners")
	recv := fs.Int("max-recv-message-size", d.MaxRecvMsgSize, "largest request message accepted, in bytes")
	conns := fs.Int("max-connections", d.MaxConnections, "open connections per ADS listener; more are closed when accepted")
	streams := fs.Int("max-streams", d.MaxStreams, "open ADS streams, both listeners together; more end with ResourceExhausted")
	rate := fs.Float64("max-new-streams-per-second", d.StreamsPerSecond, "new ADS streams per second (istiod's PILOT_MAX_REQUESTS_PER_SECOND: 15 + 5 per CPU, at most 100); a stream waits up to 1s, then ends with ResourceExhausted; negative: no limit")
	kaTime := fs.Duration("keepalive-time", d.KeepaliveTime, "ping a client after this long without activity")
	kaTimeout := fs.Duration("keepalive-timeout", d.KeepaliveTimeout, "close a connection whose ping is not answered within this")
	kaMin := fs.Duration("keepalive-min-time", d.KeepaliveMinTime, "shortest interval allowed between a client's pings (GOAWAY too_many_pings below it)")
	send := fs.Duration("xds-send-timeout", d.SendTimeout, "close the connection of a client that leaves a response unsent (flow control) this long")
	ack := fs.Duration("xds-ack-timeout", d.AckTimeout, "close the connection of a client that leaves a response unacknowledged this long")
	return func() server.Limits {
		return server.Limits{
			MaxConcurrentStreams: uint32(min(*perConn, math.MaxUint32)),
			MaxRecvMsgSize:       *recv,
			MaxConnections:       *conns,
			MaxStreams:           *streams,
			StreamsPerSecond:     *rate,
			KeepaliveTime:        *kaTime,
			KeepaliveTimeout:     *kaTimeout,
			KeepaliveMinTime:     *kaMin,
			SendTimeout:          *send,
			AckTimeout:           *ack,
		}
	}
}
