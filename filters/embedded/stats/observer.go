package stats

import (
	"net/netip"
	"strconv"
	"strings"

	"github.com/goambient/goambient/filters/embedded/accesslog"
	"github.com/goambient/goambient/filters/embedded/config"
	is "github.com/goambient/goambient/filters/istiostats"
	"github.com/goambient/goambient/ztunnel/state"
	"istio.io/istio/pkg/workloadapi"
)

// Observer records each request the embedded waypoint finishes (server.Observer).
type Observer struct {
	P *Prometheus
}

// ObserveRequest labels e as Istio's waypoint does (reporter=waypoint; the source from the
// original source address and the HBONE peer's principal, the destination from the Service
// VIP and the endpoint chosen) and records it.
func (o Observer) ObserveRequest(e *accesslog.Entry, snap *config.Snapshot, grpc bool) {
	l := Labels(e, snap, grpc)
	o.P.Record(&l, e.Duration, e.BytesReceived, e.BytesSent)
}

// Labels are the request-metric labels of a finished request.
func Labels(e *accesslog.Entry, snap *config.Snapshot, grpc bool) is.Labels {
	l := is.Labels{
		Reporter:        is.ReporterWaypoint,
		SourcePrincipal: e.PeerPrincipal,
		RequestProtocol: "http",
		ResponseCode:    strconv.Itoa(e.ResponseCode),
		ResponseFlags:   e.ResponseFlags,
	}
	if l.ResponseFlags == "" {
		l.ResponseFlags = e.Flags.String()
	}
	if grpc {
		l.RequestProtocol, l.GRPCResponseStatus = "grpc", e.GRPCStatus
	}
	if e.PeerPrincipal != "" {
		l.ConnectionSecurityPolicy = is.MutualTLS // every request arrives over HBONE
	}
	var st *state.State
	if snap != nil {
		st = snap.State
	}
	if st == nil {
		return l
	}
	if ap, err := netip.ParseAddrPort(e.DownstreamRemoteAddress); err == nil {
		if w := st.WorkloadByIP(ap.Addr()); w != nil {
			l.SourceWorkload, l.SourceWorkloadNamespace = w.GetWorkloadName(), w.GetNamespace()
			l.SourceCanonicalService, l.SourceCanonicalRevision = w.GetCanonicalName(), w.GetCanonicalRevision()
			l.SourceApp, l.SourceVersion, l.SourceCluster = w.GetCanonicalName(), w.GetCanonicalRevision(), w.GetClusterId()
		}
	}
	if ap, err := netip.ParseAddrPort(e.DownstreamLocalAddress); err == nil {
		if sv := st.ServiceByVIP(ap.Addr()); sv != nil {
			l.DestinationService, l.DestinationServiceName, l.DestinationServiceNamespace = sv.GetHostname(), sv.GetName(), sv.GetNamespace()
		}
	}
	// Envoy's upstream host through HBONE is envoy://connect_originate/ip:port.
	if ap, err := netip.ParseAddrPort(strings.TrimPrefix(e.UpstreamHost, "envoy://connect_originate/")); err == nil {
		if w := st.WorkloadByIP(ap.Addr()); w != nil {
			dst(&l, st, w)
		}
	}
	return l
}

func dst(l *is.Labels, st *state.State, w *workloadapi.Workload) {
	l.DestinationPrincipal = st.Identity(w)
	l.DestinationWorkload, l.DestinationWorkloadNamespace = w.GetWorkloadName(), w.GetNamespace()
	l.DestinationCanonicalService, l.DestinationCanonicalRevision = w.GetCanonicalName(), w.GetCanonicalRevision()
	l.DestinationApp, l.DestinationVersion, l.DestinationCluster = w.GetCanonicalName(), w.GetCanonicalRevision(), w.GetClusterId()
}
