package hbone

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Header names of the CONNECT request (Istio ztunnel's src/proxy.rs).
const (
	HeaderForwarded        = "Forwarded"
	HeaderBaggage          = "Baggage"
	HeaderTraceparent      = "Traceparent"
	HeaderForwardedNetwork = "X-Forwarded-Network" // inner CONNECT of double HBONE only
)

// KeyValue is one baggage member.
type KeyValue struct{ Key, Value string }

// forwardedValue is `for="<src ip:port>"`, plus `;host=<host>` when host is given.
func forwardedValue(src netip.AddrPort, host string) string {
	v := `for="` + src.String() + `"`
	if host != "" {
		v += ";host=" + host
	}
	return v
}

// ParseForwarded reads the for= address and host= of a forwarded header written as Istio's
// ztunnel writes it (the first element only); zero values for what is missing or malformed.
func ParseForwarded(v string) (forAddr netip.AddrPort, host string) {
	v, _, _ = strings.Cut(v, ",")
	for pair := range strings.SplitSeq(v, ";") {
		k, val, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok {
			continue
		}
		val = strings.Trim(val, `"`)
		switch strings.ToLower(k) {
		case "for":
			forAddr, _ = netip.ParseAddrPort(val)
		case "host":
			host = val
		}
	}
	return forAddr, host
}

// BaggageValue encodes members as a W3C baggage header: key=value,key=value, with values
// percent-encoded outside the allowed octets.
func BaggageValue(kv []KeyValue) string {
	var b strings.Builder
	for i, m := range kv {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(m.Key)
		b.WriteByte('=')
		for j := 0; j < len(m.Value); j++ {
			c := m.Value[j]
			if baggageOctet(c) {
				b.WriteByte(c)
			} else {
				b.WriteByte('%')
				b.WriteString(strings.ToUpper(hex.EncodeToString([]byte{c})))
			}
		}
	}
	return b.String()
}

// baggage-octet of the W3C baggage spec: printable ASCII except space, '"', ',', ';' and '\'.
// '%' is allowed by the spec but encoded here so that decoding is unambiguous.
func baggageOctet(c byte) bool {
	return c > 0x20 && c < 0x7f && c != '"' && c != ',' && c != ';' && c != '\\' && c != '%'
}

// ParseBaggage decodes a baggage header into its members, in order; members without '=' are
// skipped and member properties (after ';') are dropped.
func ParseBaggage(v string) []KeyValue {
	var out []KeyValue
	for m := range strings.SplitSeq(v, ",") {
		m, _, _ = strings.Cut(m, ";")
		k, val, ok := strings.Cut(m, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			continue
		}
		out = append(out, KeyValue{Key: k, Value: percentDecode(strings.TrimSpace(val))})
	}
	return out
}

func percentDecode(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(n))
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// NewTraceparent is a random W3C traceparent, 00-<32 hex trace id>-<16 hex parent id>-00, as
// ztunnel sends on each outbound connection.
func NewTraceparent() string {
	var id [24]byte
	rand.Read(id[:]) // never fails (crypto/rand, Go ≥ 1.24)
	return "00-" + hex.EncodeToString(id[:16]) + "-" + hex.EncodeToString(id[16:]) + "-00"
}

// Authority is a parsed :authority: an IP and port, or a hostname and port.
type Authority struct {
	Addr netip.AddrPort // valid when the authority is ip:port
	Host string         // the host part as sent (an IP's text form when Addr is valid)
	Port uint16
}

// ParseAuthority parses host:port as ztunnel does: a socket address, otherwise a hostname
// with a port; ok is false when either part is missing or the port is not a number in 1-65535.
func ParseAuthority(s string) (a Authority, ok bool) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if ap.Port() == 0 {
			return a, false
		}
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		return Authority{Addr: ap, Host: ap.Addr().String(), Port: ap.Port()}, true
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" || strings.ContainsAny(host, " /@") {
		return a, false
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return a, false
	}
	return Authority{Host: host, Port: uint16(p)}, true
}

func (a Authority) String() string {
	if a.Addr.IsValid() {
		return a.Addr.String()
	}
	return net.JoinHostPort(a.Host, strconv.Itoa(int(a.Port)))
}
