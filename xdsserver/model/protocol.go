package model

import "strings"

// Protocol is the application protocol of a service port, as Istio derives it.
type Protocol string

// Protocols Istio knows (pkg/config/protocol).
const (
	ProtocolHTTP        Protocol = "HTTP"
	ProtocolHTTP2       Protocol = "HTTP2"
	ProtocolHTTPProxy   Protocol = "HTTP_PROXY"
	ProtocolGRPC        Protocol = "GRPC"
	ProtocolGRPCWeb     Protocol = "GRPC-Web"
	ProtocolHTTPS       Protocol = "HTTPS"
	ProtocolTLS         Protocol = "TLS"
	ProtocolTCP         Protocol = "TCP"
	ProtocolUDP         Protocol = "UDP"
	ProtocolMongo       Protocol = "Mongo"
	ProtocolRedis       Protocol = "Redis"
	ProtocolMySQL       Protocol = "MySQL"
	ProtocolHBONE       Protocol = "HBONE"
	ProtocolUnsupported Protocol = "UnsupportedProtocol" // unknown: Istio sniffs it
)

var protocolNames = map[string]Protocol{
	"tcp": ProtocolTCP, "udp": ProtocolUDP, "grpc": ProtocolGRPC, "grpc-web": ProtocolGRPCWeb,
	"http": ProtocolHTTP, "http_proxy": ProtocolHTTPProxy, "http2": ProtocolHTTP2, "https": ProtocolHTTPS,
	"tls": ProtocolTLS, "mongo": ProtocolMongo, "redis": ProtocolRedis, "mysql": ProtocolMySQL, "hbone": ProtocolHBONE,
}

// wellKnownPorts are treated as TCP when nothing names their protocol (Istio does not sniff them).
var wellKnownPorts = map[uint32]bool{25: true, 53: true, 3306: true, 27017: true}

// Protocol derives the port's protocol as Istio's ConvertProtocol does: UDP from the transport;
// otherwise from appProtocol (with Kubernetes' kubernetes.io/h2c, ws and wss), else from the
// port name's prefix before '-' ("http-web" is HTTP); unknown on a well-known port is TCP.
func (p ServicePort) Protocol() Protocol {
	if p.Transport == "UDP" {
		return ProtocolUDP
	}
	name := p.Name
	if p.AppProtocol != "" {
		name = p.AppProtocol
		switch name {
		case "kubernetes.io/h2c":
			return ProtocolHTTP2
		case "kubernetes.io/ws":
			return ProtocolHTTP
		case "kubernetes.io/wss":
			return ProtocolHTTPS
		}
	}
	if strings.HasPrefix(strings.ToLower(name), "grpc-web") {
		return ProtocolGRPCWeb
	}
	if i := strings.IndexByte(name, '-'); i >= 0 {
		name = name[:i]
	}
	if proto, ok := protocolNames[strings.ToLower(name)]; ok && proto != ProtocolUDP {
		return proto
	}
	if wellKnownPorts[p.Port] {
		return ProtocolTCP
	}
	return ProtocolUnsupported
}

// IsHTTP reports whether the protocol is HTTP of some kind (what a waypoint handles at L7).
func (p Protocol) IsHTTP() bool {
	switch p {
	case ProtocolHTTP, ProtocolHTTP2, ProtocolGRPC, ProtocolGRPCWeb:
		return true
	}
	return false
}
