// Package accesslog writes the embedded waypoint's access log: one JSON object per request with the field names of Envoy's (Istio's) JSON access log.
package accesslog

import (
	"encoding/json"
	"io"
	"sync"
	"time"
)

// Entry is one request. Empty strings are written as null, as Envoy writes "-" fields in JSON.
type Entry struct {
	StartTime                time.Time
	Method                   string
	Path                     string
	Protocol                 string // HTTP/1.1
	ResponseCode             int    // 0 when no response was sent
	ResponseFlags            string // Envoy's short flags as written, or empty: Flags
	Flags                    Flags  // response flags (DI, FI, UT, URX, UF, UC, UO, UH, NR, NC, DC)
	ResponseCodeDetails      string // via_upstream, rbac_access_denied_matched_policy[...], ...
	ConnectionTermination    string
	UpstreamTransportFailure string
	BytesReceived            int64
	BytesSent                int64
	Duration                 time.Duration
	UpstreamServiceTime      time.Duration // -1: none
	XForwardedFor            string
	UserAgent                string
	RequestID                string
	Authority                string
	UpstreamHost             string
	UpstreamCluster          string
	UpstreamLocalAddress     string
	DownstreamLocalAddress   string
	DownstreamRemoteAddress  string
	RouteName                string
	PeerPrincipal            string // the HBONE peer's SPIFFE ID
	// GRPCStatus is the answer's grpc-status header (a trailers-only answer), "" when none;
	// not written to the line (Envoy's default JSON format has no such field), it labels the
	// request metrics.
	GRPCStatus string
}

// Logger writes entries to w, one line each; safe for concurrent use.
type Logger struct {
	mu sync.Mutex
	w  io.Writer
}

// New returns a Logger writing to w.
func New(w io.Writer) *Logger { return &Logger{w: w} }

func str(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

type line struct {
	StartTime                string  `json:"start_time"`
	Method                   *string `json:"method"`
	Path                     *string `json:"path"`
	Protocol                 *string `json:"protocol"`
	ResponseCode             int     `json:"response_code"`
	ResponseFlags            string  `json:"response_flags"`
	ResponseCodeDetails      *string `json:"response_code_details"`
	ConnectionTermination    *string `json:"connection_termination_details"`
	UpstreamTransportFailure *string `json:"upstream_transport_failure_reason"`
	BytesReceived            int64   `json:"bytes_received"`
	BytesSent                int64   `json:"bytes_sent"`
	Duration                 int64   `json:"duration"`
	UpstreamServiceTime      *string `json:"upstream_service_time"`
	XForwardedFor            *string `json:"x_forwarded_for"`
	UserAgent                *string `json:"user_agent"`
	RequestID                *string `json:"request_id"`
	Authority                *string `json:"authority"`
	UpstreamHost             *string `json:"upstream_host"`
	UpstreamCluster          *string `json:"upstream_cluster"`
	UpstreamLocalAddress     *string `json:"upstream_local_address"`
	DownstreamLocalAddress   *string `json:"downstream_local_address"`
	DownstreamRemoteAddress  *string `json:"downstream_remote_address"`
	RequestedServerName      *string `json:"requested_server_name"`
	RouteName                *string `json:"route_name"`
	DownstreamPeerURISAN     *string `json:"downstream_peer_uri_san"`
}

// Marshal returns e as Envoy's JSON line (without the newline).
func Marshal(e *Entry) []byte {
	l := line{
		StartTime:                e.StartTime.UTC().Format("2006-01-02T15:04:05.000Z"),
		Method:                   str(e.Method),
		Path:                     str(e.Path),
		Protocol:                 str(e.Protocol),
		ResponseCode:             e.ResponseCode,
		ResponseFlags:            e.ResponseFlags,
		ResponseCodeDetails:      str(e.ResponseCodeDetails),
		ConnectionTermination:    str(e.ConnectionTermination),
		UpstreamTransportFailure: str(e.UpstreamTransportFailure),
		BytesReceived:            e.BytesReceived,
		BytesSent:                e.BytesSent,
		Duration:                 e.Duration.Milliseconds(),
		XForwardedFor:            str(e.XForwardedFor),
		UserAgent:                str(e.UserAgent),
		RequestID:                str(e.RequestID),
		Authority:                str(e.Authority),
		UpstreamHost:             str(e.UpstreamHost),
		UpstreamCluster:          str(e.UpstreamCluster),
		UpstreamLocalAddress:     str(e.UpstreamLocalAddress),
		DownstreamLocalAddress:   str(e.DownstreamLocalAddress),
		DownstreamRemoteAddress:  str(e.DownstreamRemoteAddress),
		RouteName:                str(e.RouteName),
		DownstreamPeerURISAN:     str(e.PeerPrincipal),
	}
	if l.ResponseFlags == "" {
		l.ResponseFlags = e.Flags.String()
	}
	if e.UpstreamServiceTime >= 0 && e.UpstreamHost != "" {
		l.UpstreamServiceTime = str(itoa(e.UpstreamServiceTime.Milliseconds()))
	}
	b, _ := json.Marshal(&l)
	return b
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// Log writes e as one line.
func (l *Logger) Log(e *Entry) {
	b := append(Marshal(e), '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.Write(b)
}
