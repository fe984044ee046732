package istiostats

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/envoyproxy/envoy/contrib/golang/common/go/api"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/goambient/goambient/filters/authzconfig"
)

// PluginName is the stats filter's plugin_name in filters.so: it records each request Envoy
// logs (local replies such as the authz filter's 403 included) with reporter="waypoint".
const PluginName = authzconfig.StatsPluginName

// Parser parses the filter's config: there is none to read (the plugin_config, if any, is
// ignored); each filter config gets its recorder over its own metric callbacks.
type Parser struct{}

var _ api.StreamFilterConfigParser = Parser{}

type filterConfig struct{ rec *Envoy }

// Parse makes a filter config; a per-route config (callbacks nil) is refused.
func (Parser) Parse(_ *anypb.Any, callbacks api.ConfigCallbackHandler) (any, error) {
	if callbacks == nil {
		return nil, fmt.Errorf("%s: no per-route config", PluginName)
	}
	return &filterConfig{rec: NewEnvoy(callbacks, 0)}, nil
}

// Merge keeps the filter-level config.
func (Parser) Merge(parent, _ any) any { return parent }

// Factory builds the filter for one request.
func Factory(config any, callbacks api.FilterCallbackHandler) api.StreamFilter {
	c, _ := config.(*filterConfig)
	return &filter{cb: callbacks, cfg: c}
}

type filter struct {
	api.PassThroughStreamFilter
	cb  api.FilterCallbackHandler
	cfg *filterConfig
}

// OnLog records the finished request.
func (f *filter) OnLog(req api.RequestHeaderMap, _ api.RequestTrailerMap, rsp api.ResponseHeaderMap, _ api.ResponseTrailerMap) {
	if f.cfg == nil {
		return
	}
	l, d, reqBytes, rspBytes := EnvoyLabels(f.cb, req, rsp)
	f.cfg.rec.Record(&l, d, reqBytes, rspBytes)
}

// EnvoyLabels are a finished request's labels as the Envoy path reads them: the peer's SPIFFE
// ID from connect_terminate's filter state, the destination Service from the cluster name
// (inbound-vip|PORT|http|HOST), the code, flags, duration and sizes from Envoy's attributes.
// Workload labels are left unknown: the filter has no workload metadata (Istio's waypoint
// reads it from metadata discovery).
func EnvoyLabels(cb api.FilterCallbackHandler, req api.RequestHeaderMap, rsp api.ResponseHeaderMap) (l Labels, d time.Duration, reqBytes, rspBytes int64) {
	si := cb.StreamInfo()
	l.Reporter, l.RequestProtocol = ReporterWaypoint, "http"
	if v, err := cb.GetProperty("response.code"); err == nil {
		l.ResponseCode = v
	} else if code, ok := si.ResponseCode(); ok {
		l.ResponseCode = strconv.Itoa(int(code))
	}
	if p := si.FilterState().GetString(authzconfig.PeerPrincipalKey); strings.HasPrefix(p, "spiffe://") && !strings.Contains(p, ",") {
		l.SourcePrincipal, l.ConnectionSecurityPolicy = p, MutualTLS
	}
	if cluster, err := cb.GetProperty("xds.cluster_name"); err == nil {
		if parts := strings.Split(cluster, "|"); len(parts) == 4 {
			l.DestinationService = parts[3]
			if name, rest, ok := strings.Cut(parts[3], "."); ok {
				l.DestinationServiceName = name
				l.DestinationServiceNamespace, _, _ = strings.Cut(rest, ".")
			}
		}
	}
	if req != nil {
		if ct, ok := req.Get("content-type"); ok && (ct == "application/grpc" || strings.HasPrefix(ct, "application/grpc+")) {
			l.RequestProtocol = "grpc"
			if rsp != nil {
				l.GRPCResponseStatus, _ = rsp.Get("grpc-status")
			}
		}
	}
	flags := "-"
	if v, err := cb.GetProperty("response.flags"); err == nil {
		if n, err := strconv.ParseUint(v, 10, 64); err == nil {
			flags = FlagsString(n)
		}
	}
	l.ResponseFlags = flags
	if v, err := cb.GetProperty("request.duration"); err == nil {
		d, _ = time.ParseDuration(v) // absl::FormatDuration: "12.5ms", "1.2s", "250us"
	}
	if v, err := cb.GetProperty("request.total_size"); err == nil {
		reqBytes, _ = strconv.ParseInt(v, 10, 64)
	}
	if v, err := cb.GetProperty("response.total_size"); err == nil {
		rspBytes, _ = strconv.ParseInt(v, 10, 64)
	}
	return l, d, reqBytes, rspBytes
}

// shortFlags are Envoy's short response flags in the bit order of response.flags
// (envoy/stream_info/stream_info.h CoreResponseFlag, source/common/stream_info/utility.h).
var shortFlags = []string{"LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX",
	"RLSE", "DC", "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR", "UDO"}

// FlagsString writes the response.flags bit vector as Envoy's %RESPONSE_FLAGS%: short flags
// joined with ",", "-" for none.
func FlagsString(bits uint64) string {
	var out []string
	for i, s := range shortFlags {
		if bits&(1<<i) != 0 {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, ",")
}
