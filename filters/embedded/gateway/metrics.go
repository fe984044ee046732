package gateway

import (
	"io"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/goambient/goambient/filters/embedded/accesslog"
	"github.com/goambient/goambient/filters/embedded/upstream"
	is "github.com/goambient/goambient/filters/istiostats"
)

// Recorder takes each finished request with Istio's request-metric labels
// (filters/embedded/stats.Prometheus is one).
type Recorder interface {
	Record(l *is.Labels, d time.Duration, requestBytes, responseBytes int64)
}

// reporterSource is the reporter of an ingress gateway's request metrics. Istio gives a
// gateway's listeners (ListenerClassGateway) the client metrics in client mode
// (pilot/pkg/model/telemetry.go: MetricsForClass, workloadMode) and keeps the SERVER_GATEWAY
// reporter for waypoints: Istio's stats filter then reports as the source.
const reporterSource = "source"

// requestLabels are the labels of a request the gateway finished: the gateway itself is the
// source (its workload from the workload API by the node's IP, its own SPIFFE id as
// principal); the destination is the cluster's Service and, when the tunnel went straight to
// a pod, that pod (through a waypoint the gateway does not know which pod answers). As any
// source report, connection_security_policy is unknown (Istio sets mutual_tls only when the
// destination reports).
func (g *Gateway) requestLabels(e *accesslog.Entry, snap *Snapshot, host *upstream.Host, grpc bool) is.Labels {
	l := is.Labels{
		Reporter:                 reporterSource,
		SourcePrincipal:          g.id.String(),
		SourceWorkloadNamespace:  g.ns,
		RequestProtocol:          "http",
		ResponseCode:             strconv.Itoa(e.ResponseCode),
		ResponseFlags:            e.ResponseFlags,
		ConnectionSecurityPolicy: is.Unknown,
	}
	if grpc {
		l.RequestProtocol = "grpc"
	}
	if hostname, ok := clusterHostname(e.UpstreamCluster); ok {
		l.DestinationService = hostname
		if name, ns, ok := strings.Cut(hostname, "."); ok {
			l.DestinationServiceName = name
			l.DestinationServiceNamespace, _, _ = strings.Cut(ns, ".")
		}
	}
	if snap == nil || snap.State == nil {
		return l
	}
	st := snap.State
	if ip, err := netip.ParseAddr(nodeIP(g.o.NodeID)); err == nil {
		if w := st.WorkloadByIP(ip); w != nil {
			l.SourceWorkload, l.SourceWorkloadNamespace = w.GetWorkloadName(), w.GetNamespace()
			l.SourceCanonicalService, l.SourceCanonicalRevision = w.GetCanonicalName(), w.GetCanonicalRevision()
			l.SourceApp, l.SourceVersion, l.SourceCluster = w.GetCanonicalName(), w.GetCanonicalRevision(), w.GetClusterId()
		}
	}
	if host == nil {
		return l
	}
	if host.Authority.IsValid() { // through the Service's waypoint
		if sv := st.ServiceByVIP(host.Authority.Addr()); sv != nil {
			l.DestinationService, l.DestinationServiceName, l.DestinationServiceNamespace = sv.GetHostname(), sv.GetName(), sv.GetNamespace()
		}
		return l
	}
	if w := st.WorkloadByIP(host.Addr.Addr()); w != nil {
		l.DestinationPrincipal = st.Identity(w)
		l.DestinationWorkload, l.DestinationWorkloadNamespace = w.GetWorkloadName(), w.GetNamespace()
		l.DestinationCanonicalService, l.DestinationCanonicalRevision = w.GetCanonicalName(), w.GetCanonicalRevision()
		l.DestinationApp, l.DestinationVersion, l.DestinationCluster = w.GetCanonicalName(), w.GetCanonicalRevision(), w.GetClusterId()
	}
	return l
}

// clusterHostname is the Service hostname of an outbound|<port>|<subset>|<hostname> cluster.
func clusterHostname(cluster string) (string, bool) {
	parts := strings.Split(cluster, "|")
	if len(parts) != 4 || parts[0] != "outbound" || parts[3] == "" {
		return "", false
	}
	return parts[3], true
}

// nodeIP is the IP of a router~<ip>~... node id.
func nodeIP(id string) string {
	parts := strings.Split(id, "~")
	if len(parts) < 2 {
		return ""
	}
	return parts[1]
}

// countingBody counts the request body bytes read (by the upstream transport, which may still
// read while the handler finishes: hence atomic).
type countingBody struct {
	r interface {
		Read([]byte) (int, error)
		Close() error
	}
	n      atomic.Int64
	failed atomic.Bool // a read failed other than at the end (a stalled client past RequestTimeout)
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	if err != nil && err != io.EOF {
		c.failed.Store(true)
	}
	return n, err
}

func (c *countingBody) Close() error { return c.r.Close() }
