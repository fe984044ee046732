// Package istiostats defines Istio's standard request metrics (istio_requests_total and the three request histograms) with Istio's names, labels and buckets, and records them into Prometheus (the embedded waypoint) or into Envoy stats through the Go filter SDK, whose names carry the labels for stats_config's tag extraction.
package istiostats

import "strings"

// The metric names (Istio's standard metrics, reporter=waypoint at a waypoint).
const (
	RequestsTotal    = "istio_requests_total"
	RequestDuration  = "istio_request_duration_milliseconds"
	RequestBytes     = "istio_request_bytes"
	ResponseBytes    = "istio_response_bytes"
	ReporterWaypoint = "waypoint"
	Unknown          = "unknown" // a label without a value, as Istio's stats filter writes it
	MutualTLS        = "mutual_tls"
)

// Buckets are the histograms' upper bounds: Envoy's default histogram buckets, which Istio's
// stats filter uses for all three (durations in milliseconds, sizes in bytes) unless
// stats_config.histogram_bucket_settings says otherwise.
var Buckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
	300000, 600000, 1800000, 3600000}

// Labels are one request's label values, Istio's request-metric label set.
type Labels struct {
	Reporter string

	SourceWorkload, SourceWorkloadNamespace, SourcePrincipal, SourceApp, SourceVersion string
	SourceCanonicalService, SourceCanonicalRevision, SourceCluster                     string

	DestinationWorkload, DestinationWorkloadNamespace, DestinationPrincipal string
	DestinationApp, DestinationVersion                                      string
	DestinationService, DestinationServiceName, DestinationServiceNamespace string
	DestinationCanonicalService, DestinationCanonicalRevision               string
	DestinationCluster                                                      string

	RequestProtocol          string // http, grpc
	ResponseCode             string // "403"; "0" when no answer was sent
	GRPCResponseStatus       string // "" for a request that is not gRPC
	ResponseFlags            string // Envoy's short flags, "-" for none
	ConnectionSecurityPolicy string // mutual_tls, unknown
}

// LabelNames is the label set of the four metrics, in Istio's order.
var LabelNames = []string{
	"reporter",
	"source_workload", "source_canonical_service", "source_canonical_revision", "source_workload_namespace",
	"source_principal", "source_app", "source_version", "source_cluster",
	"destination_workload", "destination_workload_namespace", "destination_principal",
	"destination_app", "destination_version",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"destination_canonical_service", "destination_canonical_revision", "destination_cluster",
	"request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
}

// MaxValueLen bounds each label value: longer values are cut (a value comes from the mesh's
// own state, but a Prometheus series is no place for a megabyte).
const MaxValueLen = 253

// Values returns the label values in LabelNames order: empty ones "unknown" (grpc_response_status
// stays empty outside gRPC, response_flags "-"), each cut to MaxValueLen and without the
// characters the Envoy stat name encoding reserves (';', '=' become '_').
func (l *Labels) Values() []string {
	return []string{
		or(l.Reporter, ReporterWaypoint),
		clean(l.SourceWorkload, Unknown), clean(l.SourceCanonicalService, Unknown), clean(l.SourceCanonicalRevision, Unknown),
		clean(l.SourceWorkloadNamespace, Unknown), clean(l.SourcePrincipal, Unknown), clean(l.SourceApp, Unknown),
		clean(l.SourceVersion, Unknown), clean(l.SourceCluster, Unknown),
		clean(l.DestinationWorkload, Unknown), clean(l.DestinationWorkloadNamespace, Unknown), clean(l.DestinationPrincipal, Unknown),
		clean(l.DestinationApp, Unknown), clean(l.DestinationVersion, Unknown),
		clean(l.DestinationService, Unknown), clean(l.DestinationServiceName, Unknown), clean(l.DestinationServiceNamespace, Unknown),
		clean(l.DestinationCanonicalService, Unknown), clean(l.DestinationCanonicalRevision, Unknown), clean(l.DestinationCluster, Unknown),
		clean(l.RequestProtocol, "http"), clean(l.ResponseCode, "0"), clean(l.GRPCResponseStatus, ""),
		clean(l.ResponseFlags, "-"), clean(l.ConnectionSecurityPolicy, Unknown),
	}
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func clean(s, def string) string {
	if s == "" {
		return def
	}
	if len(s) > MaxValueLen {
		s = s[:MaxValueLen]
	}
	if strings.ContainsAny(s, ";=\n") {
		s = strings.NewReplacer(";", "_", "=", "_", "\n", "_").Replace(s)
	}
	return s
}
