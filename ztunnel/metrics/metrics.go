// Package metrics holds the ztunnel's Prometheus metrics, with Istio's ztunnel names and labels (istio_tcp_connections_opened_total and the rest), in a registry of its own served on /metrics and /stats/prometheus.
package metrics

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Reporter is the side of the connection that reports: the source's ztunnel (outbound) or the
// destination's (inbound).
type Reporter string

// The values of the reporter label.
const (
	ReporterSource      Reporter = "source"
	ReporterDestination Reporter = "destination"
)

// ResponseFlags is the response_flags label: "-" when the connection went through, otherwise
// why it did not.
type ResponseFlags string

// The response_flags values of Istio's ztunnel.
const (
	FlagNone               ResponseFlags = "-"
	FlagDeny               ResponseFlags = "DENY"    // authorization policy denied the connection
	FlagConnect            ResponseFlags = "CONNECT" // no upstream connection could be established
	FlagTLSFailure         ResponseFlags = "TLS_FAILURE"
	FlagH2HandshakeFailure ResponseFlags = "H2_HANDSHAKE_FAILURE"
	FlagNetworkPolicy      ResponseFlags = "NETWORK_POLICY"
	FlagIdentityError      ResponseFlags = "IDENTITY_ERROR"
	FlagCertRevoked        ResponseFlags = "CERT_REVOKED"
)

// SecurityPolicy is the connection_security_policy label.
type SecurityPolicy string

// The values of connection_security_policy.
const (
	SecurityMutualTLS SecurityPolicy = "mutual_tls"
	SecurityUnknown   SecurityPolicy = "unknown"
)

// Unknown is the value of every label that has no value (Istio's DefaultedUnknown).
const Unknown = "unknown"

// Labels are Istio's CommonTrafficLabels. Empty fields are exported as "unknown", except
// Reporter (default "source", as ztunnel's), RequestProtocol (default "tcp") and ResponseFlags
// (default "-"). Principals are SPIFFE IDs ("spiffe://cluster.local/ns/default/sa/sleep");
// SourcePrincipal is the peer's mTLS identity, so leave it empty for plaintext.
type Labels struct {
	Reporter Reporter

	SourceWorkload          string
	SourceCanonicalService  string
	SourceCanonicalRevision string
	SourceWorkloadNamespace string
	SourcePrincipal         string
	SourceApp               string
	SourceVersion           string
	SourceCluster           string

	DestinationService          string // hostname, e.g. "handson.handson.svc.cluster.local"
	DestinationServiceNamespace string
	DestinationServiceName      string

	DestinationWorkload          string
	DestinationCanonicalService  string
	DestinationCanonicalRevision string
	DestinationWorkloadNamespace string
	DestinationPrincipal         string
	DestinationApp               string
	DestinationVersion           string
	DestinationCluster           string

	RequestProtocol          string
	ResponseFlags            ResponseFlags
	ConnectionSecurityPolicy SecurityPolicy
}

// labelNames is the label set of the TCP metrics, in ztunnel's order.
var labelNames = []string{
	"reporter",
	"source_workload", "source_canonical_service", "source_canonical_revision", "source_workload_namespace",
	"source_principal", "source_app", "source_version", "source_cluster",
	"destination_service", "destination_service_namespace", "destination_service_name",
	"destination_workload", "destination_canonical_service", "destination_canonical_revision",
	"destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
	"destination_cluster",
	"request_protocol", "response_flags", "connection_security_policy",
}

// values returns the label values in labelNames order, defaults filled in.
func (l *Labels) values() []string {
	return []string{
		orDefault(string(l.Reporter), string(ReporterSource)),
		orUnknown(l.SourceWorkload), orUnknown(l.SourceCanonicalService), orUnknown(l.SourceCanonicalRevision),
		orUnknown(l.SourceWorkloadNamespace), orUnknown(l.SourcePrincipal), orUnknown(l.SourceApp),
		orUnknown(l.SourceVersion), orUnknown(l.SourceCluster),
		orUnknown(l.DestinationService), orUnknown(l.DestinationServiceNamespace), orUnknown(l.DestinationServiceName),
		orUnknown(l.DestinationWorkload), orUnknown(l.DestinationCanonicalService), orUnknown(l.DestinationCanonicalRevision),
		orUnknown(l.DestinationWorkloadNamespace), orUnknown(l.DestinationPrincipal), orUnknown(l.DestinationApp),
		orUnknown(l.DestinationVersion), orUnknown(l.DestinationCluster),
		orDefault(l.RequestProtocol, "tcp"),
		orDefault(string(l.ResponseFlags), string(FlagNone)),
		orDefault(string(l.ConnectionSecurityPolicy), string(SecurityUnknown)),
	}
}

func orUnknown(s string) string { return orDefault(s, Unknown) }

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Metrics is one ztunnel's metrics and their registry. Its methods are safe for concurrent use.
type Metrics struct {
	// sets bounds the label sets (MaxLabelSets): a peer's baggage names its workload, so an
	// authenticated peer could otherwise grow the series without end.
	setsMu   sync.Mutex
	sets     map[string]struct{}
	overflow prometheus.Counter

	reg      *prometheus.Registry
	opened   *prometheus.CounterVec
	closed   *prometheus.CounterVec
	sent     *prometheus.CounterVec
	received *prometheus.CounterVec
	failed   *prometheus.CounterVec
}

// New returns metrics registered in a new registry (never the global default one), together
// with the Go runtime and process collectors.
func New() *Metrics {
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "istio", Name: name, Help: help}, labelNames)
	}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		// Names and help texts are ztunnel's (src/proxy/metrics.rs); the client adds _total.
		opened:   counter("tcp_connections_opened_total", "The total number of TCP connections opened"),
		closed:   counter("tcp_connections_closed_total", "The total number of TCP connections closed"),
		received: counter("tcp_received_bytes_total", "The size of total bytes received during request in case of a TCP connection"),
		sent:     counter("tcp_sent_bytes_total", "The size of total bytes sent during response in case of a TCP connection"),
		failed:   counter("tcp_connections_failed_total", "The total number of TCP connections that failed to establish (unstable)"),
		sets:     map[string]struct{}{},
		overflow: prometheus.NewCounter(prometheus.CounterOpts{Name: "goambient_tcp_metrics_overflow_total",
			Help: "Connections not counted in the istio_tcp_* metrics because their label sets reached MaxLabelSets"}),
	}
	m.reg.MustRegister(m.opened, m.closed, m.received, m.sent, m.failed, m.overflow,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// MaxLabelSets bounds the distinct label sets (as opened) the TCP metrics keep; connections
// with a new set past it are counted in goambient_tcp_metrics_overflow_total only.
const MaxLabelSets = 10000

// admit reports whether the label set v may be counted (known, or new within the bound).
func (m *Metrics) admit(v []string) bool {
	key := strings.Join(v, "\x00")
	m.setsMu.Lock()
	defer m.setsMu.Unlock()
	if _, ok := m.sets[key]; ok {
		return true
	}
	if len(m.sets) >= MaxLabelSets {
		m.overflow.Inc()
		return false
	}
	m.sets[key] = struct{}{}
	return true
}

// Registry is where the ztunnel's other components register their metrics.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus text format on /metrics and /stats/prometheus
// (ztunnel's paths on port 15020), and 404 elsewhere.
func (m *Metrics) Handler() http.Handler {
	h := promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	mux.Handle("/stats/prometheus", h)
	return mux
}

// Conn counts one connection: opened when made by Open, bytes as they flow, closed once by Close.
// Bytes are given from the reporting workload's point of view, as the access log prints them
// (bytes_sent, bytes_recv); Conn applies Istio's byte-direction convention (see ConnClosed).
type Conn struct {
	m      *Metrics
	labels Labels
	// request counts the bytes client → server (istio_tcp_received_bytes_total), response the
	// bytes server → client (istio_tcp_sent_bytes_total).
	request, response prometheus.Counter
	sent, recv        atomic.Int64
	closeOnce         sync.Once
	dropped           bool // past MaxLabelSets: only the byte totals are kept
}

// Open counts a new connection (istio_tcp_connections_opened_total) and returns its tracker.
// As in ztunnel, the opened counter and the byte counters use response_flags="-" whatever
// l.ResponseFlags says, since the outcome is not known yet, and the byte series exist (at 0)
// from now on; only istio_tcp_connections_closed_total carries the final flag.
func (m *Metrics) Open(l Labels) *Conn {
	l.ResponseFlags = FlagNone
	v := l.values()
	if !m.admit(v) {
		return &Conn{m: m, labels: l, dropped: true}
	}
	m.opened.WithLabelValues(v...).Inc()
	return &Conn{
		m:        m,
		labels:   l,
		request:  m.received.WithLabelValues(v...),
		response: m.sent.WithLabelValues(v...),
	}
}

// Sent adds n bytes the reporting workload sent: the source's request bytes when the reporter
// is the source, the destination's response bytes when it is the destination.
func (c *Conn) Sent(n int64) {
	if n <= 0 {
		return
	}
	c.sent.Add(n)
	if c.dropped {
		return
	}
	if c.labels.Reporter == ReporterDestination {
		c.response.Add(float64(n))
	} else {
		c.request.Add(float64(n))
	}
}

// Received adds n bytes the reporting workload received.
func (c *Conn) Received(n int64) {
	if n <= 0 {
		return
	}
	c.recv.Add(n)
	if c.dropped {
		return
	}
	if c.labels.Reporter == ReporterDestination {
		c.request.Add(float64(n))
	} else {
		c.response.Add(float64(n))
	}
}

// Close counts the connection closed with flags ("" means "-") and returns the bytes counted,
// for the access log. Calls after the first only return the totals.
func (c *Conn) Close(flags ResponseFlags) (sent, recv int64) {
	c.closeOnce.Do(func() {
		if c.dropped {
			return
		}
		l := c.labels
		l.ResponseFlags = flags
		c.m.closed.WithLabelValues(l.values()...).Inc()
	})
	return c.sent.Load(), c.recv.Load()
}

// ConnOpened counts a connection opened (see Open for the labels it uses).
func (m *Metrics) ConnOpened(l Labels) { m.Open(l) }

// ConnClosed counts a connection closed with l.ResponseFlags and its bytes, for callers that
// count bytes only at the end (Conn counts them as they flow). sent and recv are the bytes the
// reporting workload sent and received, as in the access log.
//
// Istio's byte-direction convention (istio/istio#32399): istio_tcp_received_bytes_total counts
// the request bytes (client → server) and istio_tcp_sent_bytes_total the response bytes
// (server → client), whoever reports. For reporter=destination that is what the destination
// received and sent; for reporter=source it is flipped: the bytes the source sent are counted
// in istio_tcp_received_bytes_total, and the bytes it received in istio_tcp_sent_bytes_total.
// The access log un-flips them (bytes_sent is what the reporting workload sent).
func (m *Metrics) ConnClosed(l Labels, sent, recv int64) {
	flags := l.ResponseFlags
	l.ResponseFlags = FlagNone
	v := l.values()
	if !m.admit(v) {
		return
	}
	c := &Conn{m: m, labels: l, request: m.received.WithLabelValues(v...), response: m.sent.WithLabelValues(v...)}
	c.Sent(sent)
	c.Received(recv)
	c.Close(flags)
}

// ConnFailed counts istio_tcp_connections_failed_total, which Istio marks unstable: a connection
// that could not be established (l.ResponseFlags says why).
func (m *Metrics) ConnFailed(l Labels) {
	v := l.values()
	if !m.admit(v) {
		return
	}
	m.failed.WithLabelValues(v...).Inc()
}
