package proxy

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/goambient/goambient/ztunnel/dnsproxy"
	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/identity"
	"github.com/goambient/goambient/ztunnel/metrics"
	"github.com/goambient/goambient/ztunnel/state"
)

// Istio ztunnel's ports (reference/istio-ambient.md §1.1).
const (
	PortInboundHBONE     = 15008
	PortInboundPlaintext = 15006
	PortOutbound         = 15001
)

// DefaultAppOffset is the loopback-mode offset added to the second octet of a pod IP to get the
// private address its application listens on: pod 127.10.0.5 → app 127.110.0.5.
const DefaultAppOffset = 100

// Config configures a Proxy. Store and Identity are required.
type Config struct {
	Logger *slog.Logger // ztunnel's logs and access log lines (an accesslog.Handler); nil: none
	Node   string       // the node this ztunnel serves: workloads whose node is this are local
	// TrustDomain of the workloads without one ("" means cluster.local); the state should be
	// built with state.WithTrustDomain of the same value.
	TrustDomain string
	Store       *state.Store
	Identity    *identity.Manager
	Metrics     *metrics.Metrics // nil: a new one

	// HBONEClient and HBONEServer tune HBONE; the proxy fills Bundle (from Identity),
	// GetCertificate and Handler, and keeps the rest.
	HBONEClient hbone.ClientConfig
	HBONEServer hbone.ServerConfig

	Listen Listen

	// Loopback is the loopback mode: each local workload's IP is a loopback address; the proxy
	// listens for HBONE on podIP:15008 and for plaintext on podIP:targetPort of each service
	// port of the pod, and relays to the application's private address (AppAddr).
	Loopback bool
	// AppAddr, in loopback mode, maps a pod address to where its application listens. nil:
	// AppOffsetRule(DefaultAppOffset).
	AppAddr func(pod netip.AddrPort) netip.AddrPort

	// Namespaces, when set, is namespace (in-pod) mode (see PodNetworks): the 15001, 15006 and
	// 15008 listeners are per pod, inside its network namespace, and Listen's are not opened.
	Namespaces PodNetworks

	// Ready, when set, must also be true for /healthz/ready (e.g. "the state file was loaded").
	Ready func() bool
	// DNS, in namespace mode, is served inside each pod's namespace on 127.0.0.1:15053 (UDP and
	// TCP), where istio-cni's DNS capture redirects the pod's queries (ztunnel/netns.DNSRules);
	// its upstream queries leave from the pod's namespace with ztunnel's mark. nil: none.
	DNS DNSServer
	// Resolver resolves hostname workloads (ServiceEntry resolution DNS) when a connection goes
	// to one; nil: Go's resolver, uncached.
	Resolver HostResolver
	// DrainGrace is how long open connections get after Shutdown starts (default 5s).
	DrainGrace time.Duration
	// DisableBaggage turns off the baggage header on outbound CONNECTs and in inbound answers,
	// and reading the peer's (Istio's ztunnel always sends it outbound; its
	// ENABLE_RESPONSE_BAGGAGE=false turns off the rest). For measuring what it costs.
	DisableBaggage bool
}

// PortDNS is Istio's in-pod DNS capture port.
const PortDNS = 15053

// DNSServer is a DNS proxy served on a pod's sockets (ztunnel/dnsproxy.Proxy).
type DNSServer interface {
	ServeDialing(ctx context.Context, pc net.PacketConn, ln net.Listener, dial dnsproxy.Dial) error
}

// Listen holds the listen addresses; an empty one turns that listener off.
type Listen struct {
	// InboundHBONE is the HBONE listener outside loopback mode (e.g. "[::]:15008"); in loopback
	// mode there is one per local workload at podIP:15008.
	InboundHBONE string
	// InboundPlaintext is the plaintext inbound outside loopback mode ("[::]:15006", connections
	// redirected by iptables; the original destination from SO_ORIGINAL_DST).
	InboundPlaintext string
	Outbound         string // transparent capture ("[::]:15001", SO_ORIGINAL_DST)
	SOCKS5           string // "127.0.0.1:15080"
	Metrics          string // ":15020": /metrics, /stats/prometheus
	Readiness        string // ":15021": /healthz/ready
	Admin            string // "127.0.0.1:15000": /config_dump, /debug/pprof/
}

// AppOffsetRule is the loopback rule "the application of pod a.b.c.d listens on
// a.(b+offset).c.d, same port" (mod 256): pod 127.10.0.5:8080 → app 127.110.0.5:8080 with
// offset 100. IPv6 pods add offset to the second byte the same way.
func AppOffsetRule(offset byte) func(netip.AddrPort) netip.AddrPort {
	return func(pod netip.AddrPort) netip.AddrPort {
		b := pod.Addr().AsSlice()
		b[1] += offset
		a, _ := netip.AddrFromSlice(b)
		return netip.AddrPortFrom(a.Unmap(), pod.Port())
	}
}
