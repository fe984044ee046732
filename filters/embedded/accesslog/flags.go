package accesslog

import "strings"

// Flags are Envoy's response flags (%RESPONSE_FLAGS%), a set.
type Flags uint32

// The flags the embedded waypoint sets, in Envoy's order (StreamInfo::CoreResponseFlag).
const (
	NoHealthyUpstream               Flags = 1 << iota // UH
	UpstreamRequestTimeout                            // UT
	UpstreamConnectionFailure                         // UF
	UpstreamConnectionTermination                     // UC
	UpstreamOverflow                                  // UO
	NoRouteFound                                      // NR
	DelayInjected                                     // DI
	FaultInjected                                     // FI
	DownstreamConnectionTermination                   // DC
	UpstreamRetryLimitExceeded                        // URX
	StreamIdleTimeout                                 // SI
	NoClusterFound                                    // NC
)

var flagNames = []string{"UH", "UT", "UF", "UC", "UO", "NR", "DI", "FI", "DC", "URX", "SI", "NC"}

// String is the flags as Envoy prints them: short names joined by ",", "-" for none.
func (f Flags) String() string {
	if f == 0 {
		return "-"
	}
	var out []string
	for i, n := range flagNames {
		if f&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return strings.Join(out, ",")
}
