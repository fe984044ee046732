// Package filterhost is the seam between the embedded waypoint and the Envoy Go filter it runs: the waypoint sees a Host that parses configs and runs one request through the filter, and authzhost implements it with filters/envoytest and filters/authz.
package filterhost

import (
	"net/http"

	"google.golang.org/protobuf/types/known/anypb"
)

// Stream is what Envoy's stream info would hold for one request of the waypoint's main_internal
// listener.
type Stream struct {
	FilterState             map[string]string // io.istio.peer_principal, as connect_terminate sets it
	DownstreamRemoteAddress string            // the original source, ip:port
	DownstreamLocalAddress  string            // the service VIP:port
	PeerURISANs             []string          // empty on main_internal (no TLS there)
}

// LocalReply is a SendLocalReply the filter made.
type LocalReply struct {
	Status     int
	Body       string
	Headers    map[string][]string
	GRPCStatus int64
	Details    string
}

// Result is what the filter decided for one request.
type Result struct {
	Continued      bool        // the request goes on to the upstream
	LocalReply     *LocalReply // the filter answered itself
	RequestHeaders http.Header // the request headers after the filter (it may change them)
}

// Config, RouteConfig and Merged are parsed configurations, opaque to the waypoint.
type (
	Config      any
	RouteConfig any
	Merged      any
)

// Host runs the authorization filter the way Envoy does. Implementations are safe for concurrent
// use.
type Host interface {
	// Parse parses a plugin_config (ECDS); an error means Envoy would reject the config.
	Parse(a *anypb.Any) (Config, error)
	// ParseRoute parses a per-route config (typed_per_filter_config).
	ParseRoute(a *anypb.Any) (RouteConfig, error)
	// Merge merges a route's config into the filter's, as Envoy does per route.
	Merge(c Config, r RouteConfig) Merged
	// Do runs req through the filter with m.
	Do(m Merged, req *http.Request, s Stream) Result
}
