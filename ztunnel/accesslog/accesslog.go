// Package accesslog writes the ztunnel's per-connection log lines with Istio ztunnel's messages, fields, levels and error wording, through log/slog, in Istio's text layout or as JSON.
package accesslog

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"time"
)

// Scope is the scope (ztunnel's tracing target) of every access log line.
const Scope = "access"

// ScopeKey is the attribute that names a line's scope; Handler prints it in its own column.
const ScopeKey = "scope"

// The messages of ztunnel's access log.
const (
	MsgOpened   = "connection opened"   // DEBUG
	MsgComplete = "connection complete" // INFO, or ERROR when the connection failed
	MsgFailed   = "connection failed"   // WARN: denied before the connection could be described
)

// Direction is "outbound" when the source's ztunnel logs, "inbound" when the destination's does.
type Direction string

// The two directions.
const (
	Outbound Direction = "outbound"
	Inbound  Direction = "inbound"
)

// Entry describes one proxied connection. Empty fields are left out of the line, as ztunnel
// leaves out fields it has no value for.
type Entry struct {
	// Time is when the event happened; the zero value means now.
	Time time.Time

	SrcAddr      netip.AddrPort // the client's address
	SrcWorkload  string         // workload (pod) name, or its canonical service when the pod is unknown
	SrcNamespace string
	SrcIdentity  string // SPIFFE ID of the peer; logged only when MTLS
	SrcCluster   string

	DstAddr      netip.AddrPort // outbound: the pod or waypoint address and port 15008; inbound: the 15008 address too
	DstHBONEAddr string         // the CONNECT :authority (ip:port), when the connection goes over HBONE
	DstService   string         // service hostname, e.g. "productpage.default.svc.cluster.local"
	DstWorkload  string
	DstNamespace string
	DstIdentity  string // SPIFFE ID of the destination; logged only when MTLS
	DstCluster   string

	Direction Direction
	// MTLS says the connection was mutual TLS (connection_security_policy=mutual_tls): only then
	// are the identities logged.
	MTLS bool

	// BytesSent and BytesRecv are the bytes the reporting workload sent and received (the
	// source's request and response bytes outbound, the destination's response and request
	// bytes inbound): Istio's access log does not flip them as its metrics do.
	BytesSent, BytesRecv int64
	Duration             time.Duration // logged in whole milliseconds, "<n>ms"

	// Err is why the connection failed; nil when it succeeded.
	Err error
}

// display is a value ztunnel prints with Display (unquoted in the text layout): addresses.
type display string

func (d display) String() string { return string(d) }

// MarshalText makes JSON encoders write a plain string.
func (d display) MarshalText() ([]byte, error) { return []byte(d), nil }

// Attrs returns the line's fields in ztunnel's order, without the scope and without error.
func (e *Entry) Attrs() []slog.Attr {
	return e.attrs(true)
}

func (e *Entry) attrs(withTraffic bool) []slog.Attr {
	a := make([]slog.Attr, 0, 18)
	addr := func(k string, v netip.AddrPort) {
		if v.IsValid() {
			a = append(a, slog.Any(k, display(v.String())))
		}
	}
	str := func(k, v string) {
		if v != "" {
			a = append(a, slog.String(k, v))
		}
	}
	addr("src.addr", e.SrcAddr)
	str("src.workload", e.SrcWorkload)
	str("src.namespace", e.SrcNamespace)
	if e.MTLS {
		str("src.identity", e.SrcIdentity)
	}
	str("src.cluster", e.SrcCluster)

	addr("dst.addr", e.DstAddr)
	if e.DstHBONEAddr != "" {
		a = append(a, slog.Any("dst.hbone_addr", display(e.DstHBONEAddr)))
	}
	str("dst.service", e.DstService)
	str("dst.workload", e.DstWorkload)
	str("dst.namespace", e.DstNamespace)
	if e.MTLS {
		str("dst.identity", e.DstIdentity)
	}
	str("dst.cluster", e.DstCluster)

	str("direction", string(e.Direction))
	if withTraffic {
		a = append(a,
			slog.Int64("bytes_sent", e.BytesSent),
			slog.Int64("bytes_recv", e.BytesRecv),
			slog.String("duration", fmt.Sprintf("%dms", e.Duration.Milliseconds())),
		)
	}
	return a
}

// Log writes "connection complete": at INFO when e.Err is nil, else at ERROR with error="...".
func (e *Entry) Log(ctx context.Context, logger *slog.Logger) {
	level := slog.LevelInfo
	attrs := e.attrs(true)
	if e.Err != nil {
		level = slog.LevelError
		attrs = append(attrs, slog.String("error", e.Err.Error()))
	}
	e.emit(ctx, logger, level, MsgComplete, attrs)
}

// LogOpened writes "connection opened" at DEBUG, with the fields known when a connection opens.
func (e *Entry) LogOpened(ctx context.Context, logger *slog.Logger) {
	e.emit(ctx, logger, slog.LevelDebug, MsgOpened, e.attrs(false))
}

// LogFailed writes "connection failed" at WARN, for a connection denied before it could be
// described (ztunnel's early deny): src.addr, dst.addr, direction and error only.
func (e *Entry) LogFailed(ctx context.Context, logger *slog.Logger) {
	attrs := make([]slog.Attr, 0, 4)
	if e.SrcAddr.IsValid() {
		attrs = append(attrs, slog.Any("src.addr", display(e.SrcAddr.String())))
	}
	if e.DstAddr.IsValid() {
		attrs = append(attrs, slog.Any("dst.addr", display(e.DstAddr.String())))
	}
	if e.Direction != "" {
		attrs = append(attrs, slog.String("direction", string(e.Direction)))
	}
	if e.Err != nil {
		attrs = append(attrs, slog.String("error", e.Err.Error()))
	}
	e.emit(ctx, logger, slog.LevelWarn, MsgFailed, attrs)
}

func (e *Entry) emit(ctx context.Context, logger *slog.Logger, level slog.Level, msg string, attrs []slog.Attr) {
	if ctx == nil {
		ctx = context.Background()
	}
	h := logger.Handler()
	if !h.Enabled(ctx, level) {
		return
	}
	t := e.Time
	if t.IsZero() {
		t = time.Now()
	}
	r := slog.NewRecord(t, level, msg, 0)
	r.AddAttrs(slog.String(ScopeKey, Scope))
	r.AddAttrs(attrs...)
	_ = h.Handle(ctx, r)
}

// PolicyError is a connection closed by authorization, in Istio's words:
// "connection closed due to policy rejection: <reason>".
type PolicyError struct {
	// Reason as policies/l4 words it: "explicitly denied by: ns/name" or
	// "allow policies exist, but none allowed".
	Reason string
}

func (e *PolicyError) Error() string {
	return "connection closed due to policy rejection: " + e.Reason
}

// DeniedBy is the error of a connection a DENY policy ("ns/name") matched.
func DeniedBy(policy string) error {
	return &PolicyError{Reason: "explicitly denied by: " + policy}
}

// NoAllowMatched is the error of a connection no ALLOW policy allowed, where some apply.
func NoAllowMatched() error {
	return &PolicyError{Reason: "allow policies exist, but none allowed"}
}

// HTTPStatusError is an HBONE CONNECT answered with another status than 200, as the source's
// ztunnel logs it: "http status: 401 Unauthorized".
type HTTPStatusError struct {
	Code int
}

func (e *HTTPStatusError) Error() string {
	return fmt.Sprintf("http status: %d %s", e.Code, http.StatusText(e.Code))
}

// Error wording of ztunnel for other common failures (src/proxy.rs).
var (
	ErrIPMismatch      = stringError("ip mismatch")
	ErrUnknownWaypoint = stringError("unknown waypoint")
	ErrSelfCall        = stringError("attempted recursive call to ourselves")
)

// NoHealthyUpstream is ztunnel's error when no endpoint can take the connection: "no healthy upstream: <addr>".
func NoHealthyUpstream(dst netip.AddrPort) error {
	return stringError("no healthy upstream: " + dst.String())
}

// ConnectTimeout is ztunnel's error when the HBONE connection to port 15008 times out.
func ConnectTimeout() error {
	return stringError("connection timed out, maybe a NetworkPolicy is blocking HBONE port 15008: deadline has elapsed")
}

type stringError string

func (s stringError) Error() string { return string(s) }
