package socks5

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// Wire constants of RFC 1928.
const (
	version5 = 0x05

	methodNoAuth       = 0x00
	methodNoAcceptable = 0xFF

	cmdConnect = 0x01

	atypIPv4   = 0x01
	atypDomain = 0x03
	atypIPv6   = 0x04
)

// errRefusedHandshake marks a handshake the server answered with a failure and closed.
var errRefusedHandshake = errors.New("socks5: handshake refused")

// request is what the client asked for, before any name is resolved.
type request struct {
	cmd  byte
	addr netip.Addr // set for IPv4 / IPv6
	host string     // set for a domain name
	port uint16
}

// negotiate reads the method selection message and answers it: no-auth when offered,
// 0xFF ("no acceptable methods") otherwise.
func negotiate(rw io.ReadWriter) error {
	var hdr [2]byte
	if _, err := io.ReadFull(rw, hdr[:]); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if hdr[0] != version5 {
		return fmt.Errorf("unsupported version %d", hdr[0])
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(rw, methods); err != nil {
		return fmt.Errorf("read methods: %w", err)
	}
	for _, m := range methods {
		if m == methodNoAuth {
			_, err := rw.Write([]byte{version5, methodNoAuth})
			return err
		}
	}
	if _, err := rw.Write([]byte{version5, methodNoAcceptable}); err != nil {
		return err
	}
	return fmt.Errorf("%w: no acceptable authentication method among %v", errRefusedHandshake, methods)
}

// readRequest reads one request (VER CMD RSV ATYP DST.ADDR DST.PORT). An unknown address type
// is answered with 0x08 and a command other than CONNECT with 0x07, after the whole request is read.
func readRequest(rw io.ReadWriter) (request, error) {
	var req request
	var hdr [4]byte
	if _, err := io.ReadFull(rw, hdr[:]); err != nil {
		return req, fmt.Errorf("read request: %w", err)
	}
	if hdr[0] != version5 {
		return req, fmt.Errorf("unsupported version %d in request", hdr[0])
	}
	req.cmd = hdr[1]
	switch hdr[3] {
	case atypIPv4:
		var b [4]byte
		if _, err := io.ReadFull(rw, b[:]); err != nil {
			return req, fmt.Errorf("read address: %w", err)
		}
		req.addr = netip.AddrFrom4(b)
	case atypIPv6:
		var b [16]byte
		if _, err := io.ReadFull(rw, b[:]); err != nil {
			return req, fmt.Errorf("read address: %w", err)
		}
		req.addr = netip.AddrFrom16(b).Unmap()
	case atypDomain:
		var n [1]byte
		if _, err := io.ReadFull(rw, n[:]); err != nil {
			return req, fmt.Errorf("read name length: %w", err)
		}
		b := make([]byte, n[0])
		if _, err := io.ReadFull(rw, b); err != nil {
			return req, fmt.Errorf("read name: %w", err)
		}
		req.host = string(b)
	default:
		_ = writeReply(rw, ReplyAddressTypeNotSupported, netip.AddrPort{})
		return req, fmt.Errorf("%w: address type %d not supported", errRefusedHandshake, hdr[3])
	}
	var p [2]byte
	if _, err := io.ReadFull(rw, p[:]); err != nil {
		return req, fmt.Errorf("read port: %w", err)
	}
	req.port = binary.BigEndian.Uint16(p[:])
	if req.cmd != cmdConnect {
		_ = writeReply(rw, ReplyCommandNotSupported, netip.AddrPort{})
		return req, fmt.Errorf("%w: command %d not supported", errRefusedHandshake, req.cmd)
	}
	return req, nil
}

// writeReply writes VER REP RSV ATYP BND.ADDR BND.PORT; an invalid bound address is sent as 0.0.0.0:0.
func writeReply(w io.Writer, code Reply, bound netip.AddrPort) error {
	b := make([]byte, 0, 22)
	b = append(b, version5, byte(code), 0x00)
	a := bound.Addr().Unmap()
	switch {
	case a.Is4():
		v := a.As4()
		b = append(b, atypIPv4)
		b = append(b, v[:]...)
	case a.Is6():
		v := a.As16()
		b = append(b, atypIPv6)
		b = append(b, v[:]...)
	default:
		b = append(b, atypIPv4, 0, 0, 0, 0)
	}
	b = binary.BigEndian.AppendUint16(b, bound.Port())
	_, err := w.Write(b)
	return err
}
