// Package fault is Envoy's fault injection filter (envoy.filters.http.fault) for the embedded waypoint: it compiles a route's HTTPFault and decides, with the waypoint's random source, whether a request is delayed and whether it is then aborted, as Envoy does.
package fault

import (
	"errors"
	"fmt"
	"time"

	fault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/goambient/goambient/filters/embedded/router"
)

// Name is the filter's name in the chain and in typed_per_filter_config.
const Name = "envoy.filters.http.fault"

// Envoy's local reply for an abort.
const (
	AbortBody    = "fault filter abort"
	AbortDetails = "fault_filter_abort"
)

// Fault is a compiled HTTPFault: a delay and an abort, each with its fraction of requests.
type Fault struct {
	Delay              time.Duration // 0: none
	delayNum, delayDen uint64
	abortNum, abortDen uint64
	HTTPStatus         int   // the abort's status (200 for a gRPC abort)
	GRPCStatus         int64 // -1: not a gRPC abort
	aborts             bool
}

// Compile parses a route's typed_per_filter_config for the fault filter. Nil means no fault
// (an empty HTTPFault, the filter-level config istiod gives every chain). What Envoy's
// filter would read but the embedded waypoint cannot honour is an error.
func Compile(a *anypb.Any) (*Fault, error) {
	if a == nil {
		return nil, nil
	}
	var hf fault.HTTPFault
	if err := a.UnmarshalTo(&hf); err != nil {
		return nil, fmt.Errorf("%s: %w", Name, err)
	}
	if hf.GetResponseRateLimit() != nil || len(hf.GetHeaders()) > 0 || len(hf.GetDownstreamNodes()) > 0 || hf.GetUpstreamCluster() != "" ||
		hf.GetMaxActiveFaults() != nil || hf.GetDelayPercentRuntime() != "" || hf.GetAbortPercentRuntime() != "" {
		return nil, errors.New(Name + ": only fixed delays and HTTP or gRPC aborts are supported")
	}
	f := &Fault{GRPCStatus: -1}
	if d := hf.GetDelay(); d != nil {
		if d.GetHeaderDelay() != nil {
			return nil, errors.New(Name + ": header-controlled delays are not supported")
		}
		f.Delay = d.GetFixedDelay().AsDuration()
		f.delayNum, f.delayDen = uint64(d.GetPercentage().GetNumerator()), router.Denominator(d.GetPercentage().GetDenominator())
	}
	if ab := hf.GetAbort(); ab != nil {
		f.abortNum, f.abortDen = uint64(ab.GetPercentage().GetNumerator()), router.Denominator(ab.GetPercentage().GetDenominator())
		switch t := ab.GetErrorType().(type) {
		case *fault.FaultAbort_HttpStatus:
			f.HTTPStatus, f.aborts = int(t.HttpStatus), true
		case *fault.FaultAbort_GrpcStatus:
			f.HTTPStatus, f.GRPCStatus, f.aborts = 200, int64(t.GrpcStatus), true
		default:
			return nil, fmt.Errorf("%s: abort %T is not supported", Name, t)
		}
	}
	if f.Delay == 0 && !f.aborts {
		return nil, nil
	}
	return f, nil
}

// Decision is what the filter does to one request.
type Decision struct {
	Delay time.Duration // 0: not delayed (Envoy's DelayInjected flag DI otherwise)
	Abort bool          // answer HTTPStatus instead of going upstream (FaultInjected, FI)
}

// Decide draws a request's fate as Envoy's filter does: the delay (a zero duration is no
// delay), then the abort, each enabled when a random number below the denominator falls under
// the numerator. rand gives the random numbers.
func (f *Fault) Decide(rand func() uint64) Decision {
	var d Decision
	if f == nil {
		return d
	}
	if f.Delay > 0 && router.Enabled(rand(), f.delayNum, f.delayDen) {
		d.Delay = f.Delay
	}
	if f.aborts && router.Enabled(rand(), f.abortNum, f.abortDen) {
		d.Abort = true
	}
	return d
}
