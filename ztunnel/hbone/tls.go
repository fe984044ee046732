package hbone

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ALPN is the only application protocol HBONE speaks over TLS.
const ALPN = "h2"

// CipherSuites are the TLS 1.3 suites HBONE accepts: the two AES-GCM suites Istio's ztunnel
// offers, and TLS_CHACHA20_POLY1305_SHA256, which Istio's Go HBONE (x/net's HTTP/2 on
// crypto/tls) accepts too.
//
// Go's crypto/tls does not let a program choose TLS 1.3 suites (tls.Config.CipherSuites only
// applies to TLS 1.2; Go 1.26 crypto/tls/handshake_server_tls13.go picks from a fixed
// preference list): a Go client on a host without AES hardware offers ChaCha20 first, and a Go
// server then picks it, as does a Go server without AES hardware whatever the client
// prefers. Refusing ChaCha20 would make such hosts unable to use HBONE at all, and negotiating
// AES-GCM instead cannot be configured. With Istio's Rust ztunnel, which only implements the
// AES-GCM suites, the suite is AES-GCM either way. GODEBUG=fips140=on makes Go offer and pick
// AES-GCM only.
var CipherSuites = []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256}

// ClientTLSConfig is the TLS configuration of an HBONE client: TLS 1.3, ALPN h2, no SNI, no
// session resumption, src as the client certificate, and a server certificate that must chain
// to bundle and carry one of serverIDs as its SPIFFE ID (hostnames are not checked).
func ClientTLSConfig(src *x509svid.SVID, bundle x509bundle.Source, serverIDs []spiffeid.ID) (*tls.Config, error) {
	cert, err := svidCertificate(src)
	if err != nil {
		return nil, err
	}
	if bundle == nil {
		return nil, errors.New("hbone: no trust bundle")
	}
	if len(serverIDs) == 0 {
		return nil, errors.New("hbone: no expected server identity")
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		NextProtos: []string{ALPN},
		// ServerName stays empty, so no SNI is sent (Istio clients send none). Go then requires
		// InsecureSkipVerify, which only turns off its hostname-based verification: the chain and
		// the SPIFFE ID are verified by VerifyPeerCertificate, which crypto/tls always calls.
		InsecureSkipVerify:    true, //nolint:gosec // SPIFFE verification below replaces it.
		VerifyPeerCertificate: tlsconfig.VerifyPeerCertificate(bundle, tlsconfig.AuthorizeOneOf(serverIDs...)),
		VerifyConnection:      checkConnectionState,
		// Full-size records from the first byte: connections are pooled and long-lived.
		DynamicRecordSizingDisabled: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cert, nil
		},
		// No ClientSessionCache: no resumption, every handshake verifies the peer.
	}, nil
}

// ServerTLSConfig is the TLS configuration of an HBONE server: TLS 1.3, ALPN h2 required, a
// client certificate required that chains to bundle and whose SPIFFE ID is in one of
// trustDomains (any trust domain bundle has roots for when trustDomains is empty), the
// certificate presented chosen by getCert from the local address the connection arrived on,
// and no session tickets (a resumed session would skip the client certificate check).
func ServerTLSConfig(bundle x509bundle.Source, trustDomains []spiffeid.TrustDomain,
	getCert func(local netip.Addr) (*x509svid.SVID, error)) (*tls.Config, error) {
	if bundle == nil {
		return nil, errors.New("hbone: no trust bundle")
	}
	if getCert == nil {
		return nil, errors.New("hbone: no GetCertificate")
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		NextProtos: []string{ALPN},
		ClientAuth: tls.RequireAnyClientCert, // verified by VerifyPeerCertificate
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			local := addrPortOf(hello.Conn.LocalAddr())
			svid, err := getCert(local.Addr())
			if err != nil {
				return nil, fmt.Errorf("hbone: no certificate for %s: %w", local.Addr(), err)
			}
			return svidCertificate(svid)
		},
		VerifyPeerCertificate:       tlsconfig.VerifyPeerCertificate(bundle, authorizeTrustDomains(trustDomains)),
		VerifyConnection:            checkConnectionState,
		SessionTicketsDisabled:      true,
		DynamicRecordSizingDisabled: true,
	}, nil
}

// authorizeTrustDomains accepts a SPIFFE ID of one of tds (any when tds is empty: the chain
// was already verified against the bundle of the ID's own trust domain).
func authorizeTrustDomains(tds []spiffeid.TrustDomain) tlsconfig.Authorizer {
	if len(tds) == 0 {
		return tlsconfig.AuthorizeAny()
	}
	tds = slices.Clone(tds)
	return tlsconfig.AdaptMatcher(func(id spiffeid.ID) error {
		if slices.Contains(tds, id.TrustDomain()) {
			return nil
		}
		return fmt.Errorf("hbone: trust domain %q of %s is not allowed", id.TrustDomain(), id)
	})
}

// checkConnectionState is both peers' VerifyConnection: TLS 1.3, one of CipherSuites, ALPN h2.
func checkConnectionState(cs tls.ConnectionState) error {
	if cs.Version != tls.VersionTLS13 {
		return fmt.Errorf("hbone: %s negotiated, TLS 1.3 required", tls.VersionName(cs.Version))
	}
	if !slices.Contains(CipherSuites, cs.CipherSuite) {
		return fmt.Errorf("hbone: cipher suite %s refused", tls.CipherSuiteName(cs.CipherSuite))
	}
	if cs.NegotiatedProtocol != ALPN {
		return fmt.Errorf("hbone: ALPN %q negotiated, %q required", cs.NegotiatedProtocol, ALPN)
	}
	return nil
}

// PeerID is the SPIFFE ID of the peer of a verified HBONE TLS connection.
func PeerID(cs *tls.ConnectionState) (spiffeid.ID, error) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("hbone: no peer certificate")
	}
	return x509svid.IDFromCert(cs.PeerCertificates[0])
}

func svidCertificate(svid *x509svid.SVID) (*tls.Certificate, error) {
	if svid == nil || len(svid.Certificates) == 0 || svid.PrivateKey == nil {
		return nil, errors.New("hbone: no SVID")
	}
	cert := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert, nil
}

// addrPortOf returns a's IP (IPv4-mapped IPv6 unmapped) and port; invalid if a is not IP.
func addrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case nil:
		return ap
	default:
		ap, _ = netip.ParseAddrPort(a.String())
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
