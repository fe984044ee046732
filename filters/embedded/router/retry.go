package router

import (
	"errors"
	"fmt"
	"strings"
	"time"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// RetryOn is a set of Envoy retry_on conditions.
type RetryOn uint32

// The retry_on conditions (Envoy's router, x-envoy-retry-on and x-envoy-retry-grpc-on).
const (
	On5xx RetryOn = 1 << iota
	OnGatewayError
	OnReset
	OnResetBeforeRequest
	OnConnectFailure
	OnRetriable4xx
	OnRefusedStream
	OnRetriableStatusCodes
	OnRetriableHeaders
	OnEnvoyRateLimited
	OnHTTP3PostConnectFailure
	OnGRPCCancelled
	OnGRPCDeadlineExceeded
	OnGRPCInternal
	OnGRPCResourceExhausted
	OnGRPCUnavailable
)

var retryOnNames = map[string]RetryOn{
	"5xx": On5xx, "gateway-error": OnGatewayError, "reset": OnReset, "reset-before-request": OnResetBeforeRequest,
	"connect-failure": OnConnectFailure, "retriable-4xx": OnRetriable4xx, "refused-stream": OnRefusedStream,
	"retriable-status-codes": OnRetriableStatusCodes, "retriable-headers": OnRetriableHeaders,
	"envoy-ratelimited": OnEnvoyRateLimited, "http3-post-connect-failure": OnHTTP3PostConnectFailure,
	"cancelled": OnGRPCCancelled, "deadline-exceeded": OnGRPCDeadlineExceeded, "internal": OnGRPCInternal,
	"resource-exhausted": OnGRPCResourceExhausted, "unavailable": OnGRPCUnavailable,
}

// RetryPolicy is a compiled route retry policy.
type RetryPolicy struct {
	NumRetries    uint32
	On            RetryOn
	StatusCodes   []int
	PerTryTimeout time.Duration // 0: none
	// PreviousHosts retries on another host than those tried (the previous_hosts predicate);
	// HostSelectionAttempts is how many picks that may take.
	PreviousHosts         bool
	HostSelectionAttempts int
	// BaseInterval and MaxInterval bound Envoy's jittered exponential back-off
	// (25 ms and 10 × base by default).
	BaseInterval, MaxInterval time.Duration
}

func compileRetry(p *route.RetryPolicy) (*RetryPolicy, error) {
	if p == nil {
		return nil, nil
	}
	if p.GetRetryPriority() != nil || len(p.GetRetriableHeaders()) > 0 || len(p.GetRetriableRequestHeaders()) > 0 ||
		p.GetRateLimitedRetryBackOff() != nil || p.GetPerTryIdleTimeout() != nil || len(p.GetRetryOptionsPredicates()) > 0 {
		return nil, errors.New("retry policy: retry priorities, retriable headers, rate-limited back-off and per-try idle timeouts are not supported")
	}
	rp := &RetryPolicy{NumRetries: 1, HostSelectionAttempts: 1, BaseInterval: 25 * time.Millisecond}
	if p.GetNumRetries() != nil {
		rp.NumRetries = p.GetNumRetries().GetValue()
	}
	for _, tok := range strings.Split(p.GetRetryOn(), ",") {
		tok = strings.TrimSpace(tok)
		if tok == "" {
			continue
		}
		c, ok := retryOnNames[tok]
		if !ok {
			return nil, fmt.Errorf("retry policy: retry_on %q is not a condition Envoy knows", tok)
		}
		rp.On |= c
	}
	for _, c := range p.GetRetriableStatusCodes() {
		rp.StatusCodes = append(rp.StatusCodes, int(c))
	}
	if p.GetPerTryTimeout() != nil {
		rp.PerTryTimeout = p.GetPerTryTimeout().AsDuration()
	}
	for _, hp := range p.GetRetryHostPredicate() {
		if hp.GetName() != "envoy.retry_host_predicates.previous_hosts" {
			return nil, fmt.Errorf("retry policy: host predicate %s is not supported", hp.GetName())
		}
		rp.PreviousHosts = true
	}
	if n := p.GetHostSelectionRetryMaxAttempts(); n > 0 {
		rp.HostSelectionAttempts = int(n)
	}
	if bo := p.GetRetryBackOff(); bo != nil {
		rp.BaseInterval = bo.GetBaseInterval().AsDuration()
		if bo.GetMaxInterval() != nil {
			rp.MaxInterval = bo.GetMaxInterval().AsDuration()
		}
	}
	if rp.MaxInterval == 0 {
		rp.MaxInterval = 10 * rp.BaseInterval
	}
	return rp, nil
}

// RetryOnStatus is Envoy's wouldRetryFromHeaders for a response status (and gRPC status, -1
// when the answer has none).
func (p *RetryPolicy) RetryOnStatus(status, grpcStatus int) bool {
	switch {
	case p.On&On5xx != 0 && status >= 500 && status < 600,
		p.On&OnGatewayError != 0 && (status == 502 || status == 503 || status == 504),
		p.On&OnRetriable4xx != 0 && status == 409:
		return true
	}
	if p.On&OnRetriableStatusCodes != 0 {
		for _, c := range p.StatusCodes {
			if c == status && c != 425 {
				return true
			}
		}
	}
	switch grpcStatus {
	case 1:
		return p.On&OnGRPCCancelled != 0
	case 4:
		return p.On&OnGRPCDeadlineExceeded != 0
	case 8:
		return p.On&OnGRPCResourceExhausted != 0
	case 13:
		return p.On&OnGRPCInternal != 0
	case 14:
		return p.On&OnGRPCUnavailable != 0
	}
	return false
}

// Reset is why an attempt got no answer.
type Reset uint8

// The resets the embedded waypoint tells apart (Envoy's StreamResetReason).
const (
	ConnectFailure  Reset = iota // the connection could not be made
	PerTryTimeout                // the try timed out (a local reset)
	ConnectionReset              // the upstream closed or reset before answering
	Overflow                     // a circuit breaker refused the request: never retried
)

// RetryOnReset is Envoy's wouldRetryFromReset; sent says whether the request had been sent.
func (p *RetryPolicy) RetryOnReset(r Reset, sent bool) bool {
	switch {
	case r == Overflow:
		return false
	case r == ConnectFailure:
		if p.On&OnConnectFailure != 0 {
			return true
		}
	}
	switch {
	case p.On&OnResetBeforeRequest != 0 && !sent,
		p.On&OnReset != 0,
		p.On&(On5xx|OnGatewayError) != 0:
		return true
	}
	return false
}

// Backoff is Envoy's jittered exponential back-off before retry number n (1-based): a random
// number of milliseconds below min(base × 2^(n-1), max).
func (p *RetryPolicy) Backoff(n int, random uint64) time.Duration {
	ceiling := p.BaseInterval
	for i := 1; i < n && ceiling < p.MaxInterval; i++ {
		ceiling *= 2
	}
	if ceiling > p.MaxInterval {
		ceiling = p.MaxInterval
	}
	ms := uint64(ceiling.Milliseconds())
	if ms == 0 {
		return 0
	}
	return time.Duration(random%ms) * time.Millisecond
}
