package proxy

import (
	"strings"

	"istio.io/istio/pkg/workloadapi"

	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/metrics"
)

// Istio's ztunnel (src/baggage.rs) sends the source workload's baggage on every outbound
// CONNECT, answers with the destination workload's (ENABLE_RESPONSE_BAGGAGE, on by default),
// and reads the other side's into the metrics' labels where its own state has no workload.

// Bounds on a peer's baggage: a header longer than maxBaggageLen is ignored whole; at most
// maxBaggageMembers members are looked at; a value longer than maxBaggageValue, or with a byte
// outside the W3C baggage-octet set, is dropped.
const (
	maxBaggageLen     = 4096
	maxBaggageMembers = 32
	maxBaggageValue   = 253
)

// baggageOf is w's baggage, in ztunnel's order; nil for an unknown workload.
func baggageOf(w *workloadapi.Workload) []hbone.KeyValue {
	if w == nil {
		return nil
	}
	kv := make([]hbone.KeyValue, 0, 7)
	add := func(k, v string) {
		if v != "" {
			kv = append(kv, hbone.KeyValue{Key: k, Value: v})
		}
	}
	add("k8s.cluster.name", w.GetClusterId())
	add("k8s.namespace.name", w.GetNamespace())
	add(workloadKey(w.GetWorkloadType()), w.GetWorkloadName())
	add("service.name", w.GetCanonicalName())
	add("service.version", w.GetCanonicalRevision())
	add("cloud.region", w.GetLocality().GetRegion())
	add("cloud.availability_zone", w.GetLocality().GetZone())
	return kv
}

// workloadKey is the baggage key of a workload's name: k8s.<its type, lower case>.name (the
// enum's String goes through protobuf reflection, a few microseconds a connection).
func workloadKey(t workloadapi.WorkloadType) string {
	switch t {
	case workloadapi.WorkloadType_CRONJOB:
		return "k8s.cronjob.name"
	case workloadapi.WorkloadType_POD:
		return "k8s.pod.name"
	case workloadapi.WorkloadType_JOB:
		return "k8s.job.name"
	}
	return "k8s.deployment.name"
}

// derivedWorkload is what a peer's baggage says about its workload (ztunnel's DerivedWorkload).
type derivedWorkload struct {
	cluster, namespace, workload, app, revision, region, zone string
}

// parseBaggage reads a peer's baggage header as ztunnel does (the keys of baggageOf; any
// k8s.{deployment,cronjob,pod,job}.name is the workload), within the bounds above; ok is false
// when nothing usable was found.
func parseBaggage(v string) (d derivedWorkload, ok bool) {
	if v == "" || len(v) > maxBaggageLen {
		return d, false
	}
	for i := 0; i < maxBaggageMembers && v != ""; i++ {
		var m string
		m, v, _ = strings.Cut(v, ",")
		m, _, _ = strings.Cut(m, ";") // member properties are not used
		k, val, found := strings.Cut(strings.TrimSpace(m), "=")
		if !found || !validBaggageValue(val) {
			continue
		}
		switch k {
		case "k8s.cluster.name":
			d.cluster = val
		case "k8s.namespace.name":
			d.namespace = val
		case "k8s.deployment.name", "k8s.cronjob.name", "k8s.pod.name", "k8s.job.name":
			d.workload = val
		case "service.name":
			d.app = val
		case "service.version":
			d.revision = val
		case "cloud.region":
			d.region = val
		case "cloud.availability_zone":
			d.zone = val
		default:
			continue
		}
		ok = true
	}
	return d, ok
}

func validBaggageValue(v string) bool {
	if len(v) > maxBaggageValue {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c <= 0x20 || c >= 0x7f || c == '"' || c == ',' || c == ';' || c == '\\' {
			return false
		}
	}
	return true
}

// fillSource sets the source labels from d as ztunnel's with_derived_source does (source_app
// is the workload name there, not the canonical service); callers apply the state's own
// workload after it, which wins.
func (d *derivedWorkload) fillSource(l *metrics.Labels) {
	l.SourceWorkload, l.SourceCanonicalService, l.SourceCanonicalRevision = d.workload, d.app, d.revision
	l.SourceWorkloadNamespace, l.SourceApp, l.SourceVersion, l.SourceCluster = d.namespace, d.workload, d.revision, d.cluster
}

// fillDestination sets the destination labels from d as ztunnel's with_derived_destination
// does, over what the state said (destination_app is the workload name there too);
// identity is the peer's verified SPIFFE ID.
func (d *derivedWorkload) fillDestination(l *metrics.Labels, identity string) {
	l.DestinationWorkload, l.DestinationCanonicalService, l.DestinationCanonicalRevision = d.workload, d.app, d.revision
	l.DestinationWorkloadNamespace, l.DestinationApp, l.DestinationVersion = d.namespace, d.workload, d.revision
	l.DestinationCluster, l.DestinationPrincipal = d.cluster, identity
}

// peerID is the HBONE server's verified SPIFFE ID ("" if it has none).
func peerID(c *hbone.Conn) string {
	cs := c.ConnectionState()
	if len(cs.PeerCertificates) == 0 {
		return ""
	}
	for _, u := range cs.PeerCertificates[0].URIs {
		if u.Scheme == "spiffe" {
			return u.String()
		}
	}
	return ""
}
