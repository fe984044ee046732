package upstream

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

func socketCLA(name string, addrs ...string) *endpoint.ClusterLoadAssignment {
	var lbs []*endpoint.LbEndpoint
	for _, a := range addrs {
		lbs = append(lbs, &endpoint.LbEndpoint{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: &core.Address{
			Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{Address: a, PortSpecifier: &core.SocketAddress_PortValue{PortValue: 8443}}},
		}}}})
	}
	return &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: lbs}}}
}

func tlsSocket(t *testing.T, utc *tlsv3.UpstreamTlsContext) *core.TransportSocket {
	t.Helper()
	a, err := anypb.New(utc)
	if err != nil {
		t.Fatal(err)
	}
	return &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: a}}
}

// TestDirectClusters: the egress clusters xdsserver sends (socket addresses outside the mesh)
// compile as Envoy reads them — a DNS cluster's names resolved (localhost, through the system
// resolver; a name that does not resolve is no host), an EDS cluster's IPs, a name in an EDS
// cluster refused — and their TLS transport socket becomes the dial's TLS config.
func TestDirectClusters(t *testing.T) {
	m := NewManager()
	dns := &cluster.Cluster{Name: "dns", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STRICT_DNS},
		LbPolicy: cluster.Cluster_ROUND_ROBIN, LoadAssignment: socketCLA("dns", "localhost", "nothing.invalid")}
	c, err := m.Compile(dns, nil)
	if err != nil {
		t.Fatal(err)
	}
	var hosts []netip.AddrPort
	for _, h := range c.Hosts {
		hosts = append(hosts, h.Addr)
	}
	if !c.Direct || !slices.Contains(hosts, netip.MustParseAddrPort("127.0.0.1:8443")) || slices.ContainsFunc(hosts, func(a netip.AddrPort) bool { return a.Port() != 8443 }) {
		t.Errorf("STRICT_DNS over localhost: direct %v, hosts %v; want 127.0.0.1:8443 among them", c.Direct, hosts)
	}
	eds := &cluster.Cluster{Name: "eds", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS}, LbPolicy: cluster.Cluster_ROUND_ROBIN}
	if c, err := m.Compile(eds, socketCLA("eds", "192.0.2.7")); err != nil || !c.Direct || len(c.Hosts) != 1 || c.Hosts[0].Addr.String() != "192.0.2.7:8443" || c.TLS != nil {
		t.Errorf("EDS over an IP: %v %+v", err, c)
	}
	if _, err := m.Compile(eds, socketCLA("eds", "api.example.com")); err == nil {
		t.Error("a name in an EDS cluster was accepted")
	}

	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, selfSignedPEM(t), 0o644); err != nil {
		t.Fatal(err)
	}
	withTLS := func(utc *tlsv3.UpstreamTlsContext) (*Cluster, error) {
		c := &cluster.Cluster{Name: "tls", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS}, LbPolicy: cluster.Cluster_ROUND_ROBIN,
			TransportSocket: tlsSocket(t, utc)}
		return m.Compile(c, socketCLA("tls", "192.0.2.7"))
	}
	vc := func(file string, sans ...string) *tlsv3.CommonTlsContext {
		v := &tlsv3.CertificateValidationContext{TrustedCa: &core.DataSource{Specifier: &core.DataSource_Filename{Filename: file}}}
		for _, s := range sans {
			v.MatchTypedSubjectAltNames = append(v.MatchTypedSubjectAltNames, &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_DNS,
				Matcher: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: s}}})
		}
		return &tlsv3.CommonTlsContext{ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: v}}
	}
	c, err = withTLS(&tlsv3.UpstreamTlsContext{Sni: "api.example.com", CommonTlsContext: vc(caFile, "api.example.com")})
	if err != nil {
		t.Fatalf("SIMPLE with CA and SANs: %v", err)
	}
	if c.TLS == nil || c.TLS.ServerName != "api.example.com" || c.TLS.RootCAs == nil || c.TLS.VerifyConnection == nil || c.TLS.InsecureSkipVerify {
		t.Errorf("SIMPLE with CA and SANs: %v %+v", err, c.TLS)
	}
	if c, err := withTLS(&tlsv3.UpstreamTlsContext{Sni: "api.example.com", CommonTlsContext: &tlsv3.CommonTlsContext{}}); err != nil || !c.TLS.InsecureSkipVerify {
		t.Errorf("no validation context (insecureSkipVerify): %v %+v", err, c)
	}
	for name, utc := range map[string]*tlsv3.UpstreamTlsContext{
		"missing CA file":    {CommonTlsContext: vc(filepath.Join(dir, "nope.pem"))},
		"not PEM":            {CommonTlsContext: vc(filepath.Join(dir))},
		"client certificate": {CommonTlsContext: &tlsv3.CommonTlsContext{TlsCertificates: []*tlsv3.TlsCertificate{{}}}},
	} {
		if _, err := withTLS(utc); err == nil || !strings.Contains(err.Error(), "cluster tls") {
			t.Errorf("%s: %v, want the cluster refused", name, err)
		}
	}
}

// selfSignedPEM is a CA certificate of the test's own.
func selfSignedPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test-ca"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
