package socks5

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"syscall"
)

// Reply is a SOCKS5 reply code (RFC 1928 §6, field REP).
type Reply byte

// The reply codes of RFC 1928 §6.
const (
	ReplySucceeded               Reply = 0x00
	ReplyGeneralFailure          Reply = 0x01
	ReplyNotAllowed              Reply = 0x02 // connection not allowed by ruleset
	ReplyNetworkUnreachable      Reply = 0x03
	ReplyHostUnreachable         Reply = 0x04
	ReplyConnectionRefused       Reply = 0x05
	ReplyTTLExpired              Reply = 0x06
	ReplyCommandNotSupported     Reply = 0x07
	ReplyAddressTypeNotSupported Reply = 0x08
)

// String returns the RFC's name of the code (the same words golang.org/x/net/proxy reports).
func (r Reply) String() string {
	switch r {
	case ReplySucceeded:
		return "succeeded"
	case ReplyGeneralFailure:
		return "general SOCKS server failure"
	case ReplyNotAllowed:
		return "connection not allowed by ruleset"
	case ReplyNetworkUnreachable:
		return "network unreachable"
	case ReplyHostUnreachable:
		return "host unreachable"
	case ReplyConnectionRefused:
		return "connection refused"
	case ReplyTTLExpired:
		return "TTL expired"
	case ReplyCommandNotSupported:
		return "command not supported"
	case ReplyAddressTypeNotSupported:
		return "address type not supported"
	}
	return "unknown reply " + strconv.Itoa(int(r))
}

// ReplyError is an error that carries the reply code the client must get. A handler returns one
// (directly, wrapped, or through WithReply) to choose the code instead of the default mapping.
type ReplyError struct {
	Code Reply
	Err  error // the cause; may be nil
}

func (e *ReplyError) Error() string {
	if e.Err == nil {
		return e.Code.String()
	}
	return e.Code.String() + ": " + e.Err.Error()
}

func (e *ReplyError) Unwrap() error { return e.Err }

// WithReply wraps err so that the client gets code.
func WithReply(code Reply, err error) error { return &ReplyError{Code: code, Err: err} }

// Errors a handler can return (or wrap) to pick a reply code explicitly.
var (
	ErrGeneralFailure     error = &ReplyError{Code: ReplyGeneralFailure}
	ErrNotAllowed         error = &ReplyError{Code: ReplyNotAllowed}
	ErrNetworkUnreachable error = &ReplyError{Code: ReplyNetworkUnreachable}
	ErrHostUnreachable    error = &ReplyError{Code: ReplyHostUnreachable}
	ErrConnectionRefused  error = &ReplyError{Code: ReplyConnectionRefused}
)

// ReplyFor maps an error from dialling the destination to the reply code the client gets:
// a ReplyError anywhere in the chain wins; then ECONNREFUSED → connection refused,
// EHOSTUNREACH → host unreachable, ENETUNREACH → network unreachable, a timeout or an
// unresolvable name → host unreachable; anything else → general failure. nil → succeeded.
func ReplyFor(err error) Reply {
	if err == nil {
		return ReplySucceeded
	}
	var re *ReplyError
	if errors.As(err, &re) {
		return re.Code
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return ReplyConnectionRefused
	case errors.Is(err, syscall.EHOSTUNREACH):
		return ReplyHostUnreachable
	case errors.Is(err, syscall.ENETUNREACH):
		return ReplyNetworkUnreachable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return ReplyHostUnreachable
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return ReplyHostUnreachable
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return ReplyHostUnreachable
	}
	return ReplyGeneralFailure
}
