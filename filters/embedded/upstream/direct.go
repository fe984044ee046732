package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// DNSTimeout bounds the resolution of a STRICT_DNS or LOGICAL_DNS cluster's hostnames.
const DNSTimeout = 2 * time.Second

// Resolver resolves the hostnames of DNS clusters (net.DefaultResolver by default).
var Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
} = net.DefaultResolver

// isDNS says whether a cluster's endpoints are hostnames Envoy resolves (ServiceEntry
// resolution DNS at an egress waypoint).
func isDNS(c *cluster.Cluster) bool {
	return c.GetType() == cluster.Cluster_STRICT_DNS || c.GetType() == cluster.Cluster_LOGICAL_DNS
}

// socketEndpoints resolves the socket addresses of an assignment (egress endpoints outside the
// mesh: an IP, or a hostname of a DNS cluster resolved now, each address a host) into an
// assignment of the ip:port endpoint ids the cluster reads. ok is false when the assignment
// has no socket address (endpoints in the mesh, through connect_originate).
func socketEndpoints(name string, cla *endpoint.ClusterLoadAssignment, dns bool) (*endpoint.ClusterLoadAssignment, bool, error) {
	out := &endpoint.ClusterLoadAssignment{ClusterName: cla.GetClusterName()}
	found := false
	for _, l := range cla.GetEndpoints() {
		loc := &endpoint.LocalityLbEndpoints{}
		for _, e := range l.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			if sa == nil {
				loc.LbEndpoints = append(loc.LbEndpoints, e)
				continue
			}
			found = true
			ips := []netip.Addr{}
			if ip, err := netip.ParseAddr(sa.GetAddress()); err == nil {
				ips = append(ips, ip)
			} else if dns {
				ctx, cancel := context.WithTimeout(context.Background(), DNSTimeout)
				ips, err = Resolver.LookupNetIP(ctx, "ip", sa.GetAddress())
				cancel()
				if err != nil {
					continue // unresolved: no host, as Envoy has none until its resolution succeeds
				}
			} else {
				return nil, false, fmt.Errorf("cluster %s: endpoint %q is not an IP (an EDS cluster)", name, sa.GetAddress())
			}
			slices.SortFunc(ips, netip.Addr.Compare)
			for _, ip := range slices.Compact(ips) {
				loc.LbEndpoints = append(loc.LbEndpoints, &endpoint.LbEndpoint{
					HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: &core.Address{Address: &core.Address_EnvoyInternalAddress{
						EnvoyInternalAddress: &core.EnvoyInternalAddress{EndpointId: netip.AddrPortFrom(ip.Unmap(), uint16(sa.GetPortValue())).String()},
					}}}},
					HealthStatus: e.GetHealthStatus(),
				})
			}
		}
		out.Endpoints = append(out.Endpoints, loc)
	}
	return out, found, nil
}

// originTLS reads a cluster's TLS transport socket (TLS originated toward a host outside the
// mesh): the SNI, the CA file that verifies the server, and the DNS subject alt names it must
// have. No validation context: the server is not verified, as Envoy does then.
func originTLS(c *cluster.Cluster) (*tls.Config, error) {
	ts := c.GetTransportSocket()
	if ts.GetName() != "envoy.transport_sockets.tls" {
		return nil, nil
	}
	var utc tlsv3.UpstreamTlsContext
	if err := ts.GetTypedConfig().UnmarshalTo(&utc); err != nil {
		return nil, fmt.Errorf("cluster %s: transport socket: %w", c.GetName(), err)
	}
	ctc := utc.GetCommonTlsContext()
	if len(ctc.GetTlsCertificates()) > 0 || len(ctc.GetTlsCertificateSdsSecretConfigs()) > 0 || ctc.GetValidationContextSdsSecretConfig() != nil {
		return nil, fmt.Errorf("cluster %s: client certificates and SDS are not supported by the embedded waypoint", c.GetName())
	}
	cfg := &tls.Config{ServerName: utc.GetSni(), MinVersion: tls.VersionTLS12}
	vc := ctc.GetValidationContext()
	if vc == nil {
		cfg.InsecureSkipVerify = true // #nosec G402 -- as Envoy without a validation context (DestinationRule insecureSkipVerify)
		return cfg, nil
	}
	file := vc.GetTrustedCa().GetFilename()
	if file == "" {
		return nil, fmt.Errorf("cluster %s: trusted_ca must be a file", c.GetName())
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: trusted_ca: %w", c.GetName(), err)
	}
	cfg.RootCAs = x509.NewCertPool()
	if !cfg.RootCAs.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("cluster %s: trusted_ca %s holds no PEM certificate", c.GetName(), file)
	}
	var sans []string
	for _, m := range vc.GetMatchTypedSubjectAltNames() {
		if m.GetSanType() != tlsv3.SubjectAltNameMatcher_DNS || m.GetMatcher().GetExact() == "" {
			return nil, fmt.Errorf("cluster %s: only exact DNS subject alt names are supported", c.GetName())
		}
		sans = append(sans, m.GetMatcher().GetExact())
	}
	if len(sans) > 0 {
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			leaf := cs.PeerCertificates[0]
			for _, san := range sans {
				if leaf.VerifyHostname(san) == nil {
					return nil
				}
			}
			return fmt.Errorf("the server's certificate has none of the subject alt names %v", sans)
		}
	}
	return cfg, nil
}
