package fault_test

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	fault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	xdstype "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	embedded "github.com/goambient/goambient/filters/embedded/fault"
)

func toAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// delay is the fault istiod writes for fault.delay {fixedDelay: d, percentage: {value: pct}}.
func delay(d time.Duration, millionths uint32) *faultv3.FaultDelay {
	return &faultv3.FaultDelay{
		FaultDelaySecifier: &faultv3.FaultDelay_FixedDelay{FixedDelay: durationpb.New(d)},
		Percentage:         &xdstype.FractionalPercent{Numerator: millionths, Denominator: xdstype.FractionalPercent_MILLION},
	}
}

// TestDecide: the seed's 50% delay delays about half of the requests (a binomial bound over
// 20,000 draws from a seeded source), 0% none, 100% all; the abort is drawn after the delay;
// an empty HTTPFault is no fault; what the embedded waypoint cannot honour is refused.
func TestDecide(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	draw := rng.Uint64
	for _, tc := range []struct {
		name        string
		hf          *fault.HTTPFault
		delayed, ab float64 // expected fractions
	}{
		{"seed: 2 s on 50%", &fault.HTTPFault{Delay: delay(2*time.Second, 500000)}, 0.5, 0},
		{"no percentage: 0%", &fault.HTTPFault{Delay: delay(time.Second, 0)}, 0, 0},
		{"abort 100% after a 10% delay", &fault.HTTPFault{Delay: delay(time.Millisecond, 100000), Abort: &fault.FaultAbort{
			ErrorType:  &fault.FaultAbort_HttpStatus{HttpStatus: 418},
			Percentage: &xdstype.FractionalPercent{Numerator: 100, Denominator: xdstype.FractionalPercent_HUNDRED}}}, 0.1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := embedded.Compile(toAny(t, tc.hf))
			if err != nil {
				t.Fatal(err)
			}
			const n = 20000
			delayed, aborted := 0, 0
			for range n {
				d := f.Decide(draw)
				if d.Delay > 0 {
					delayed++
					if d.Delay != tc.hf.GetDelay().GetFixedDelay().AsDuration() {
						t.Fatalf("delay %v", d.Delay)
					}
				}
				if d.Abort {
					aborted++
				}
			}
			for _, c := range []struct {
				what string
				k    int
				p    float64
			}{{"delayed", delayed, tc.delayed}, {"aborted", aborted, tc.ab}} {
				mean, sd := n*c.p, math.Sqrt(n*c.p*(1-c.p))
				if math.Abs(float64(c.k)-mean) > 4.5*sd {
					t.Errorf("%s %d of %d, want %.0f ± %.1f", c.what, c.k, n, mean, 4.5*sd)
				}
			}
		})
	}
	if f, err := embedded.Compile(toAny(t, &fault.HTTPFault{})); f != nil || err != nil {
		t.Errorf("empty HTTPFault: %v %v, want no fault", f, err)
	}
	if f, err := embedded.Compile(nil); f != nil || err != nil {
		t.Errorf("nil: %v %v, want no fault", f, err)
	}
	if _, err := embedded.Compile(toAny(t, &fault.HTTPFault{Delay: delay(time.Second, 1), UpstreamCluster: "x"})); err == nil {
		t.Error("upstream_cluster was accepted")
	}
	g, err := embedded.Compile(toAny(t, &fault.HTTPFault{Abort: &fault.FaultAbort{ErrorType: &fault.FaultAbort_GrpcStatus{GrpcStatus: 14},
		Percentage: &xdstype.FractionalPercent{Numerator: 1, Denominator: xdstype.FractionalPercent_HUNDRED}}}))
	if err != nil || g.HTTPStatus != 200 || g.GRPCStatus != 14 {
		t.Errorf("gRPC abort: %+v %v, want HTTP 200 with grpc-status 14", g, err)
	}
}
