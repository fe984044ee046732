// Package envoytest is a fake Envoy host that runs Envoy Go HTTP filters in-process against an *http.Request and returns what Envoy would send.
package envoytest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/envoyproxy/envoy/contrib/golang/common/go/api"
	"google.golang.org/protobuf/types/known/anypb"
)

// Plugin is what filters.so registers under one plugin_name. A nil Factory is what Envoy does
// when the plugin_name is not registered: it passes every request through (and logs
// "plugin NAME not found, pass through by default"); a nil Parser is the SDK's NullParser.
type Plugin struct {
	Name    string
	Factory api.StreamFilterFactory
	Parser  api.StreamFilterConfigParser
}

// Stream is what Envoy knows about a request besides its headers.
type Stream struct {
	FilterState             map[string]string         // FilterState().GetString
	DownstreamRemoteAddress string                    // "ip:port", the client (in main_internal: restored by original_dst)
	DownstreamLocalAddress  string                    // "ip:port", the destination
	PeerURISANs             []string                  // when set, DownstreamSslConnection() is non-nil with these URI SANs
	DynamicMetadata         map[string]map[string]any // filter name → key → value (numbers become float64, as from a protobuf Struct)
	RouteName               string                    // StreamInfo().GetRouteName()
	Secrets                 map[string]string         // SecretManager().GetGenericSecret
	Properties              map[string]string         // extra GetProperty answers, by attribute path
}

// Response is what Envoy does with the request after the filter has run.
type Response struct {
	Continued      bool        // the filter let the request go upstream
	LocalReply     *LocalReply // the reply Envoy sends instead (nil when Continued)
	RequestHeaders http.Header // the request headers after the filter, as sent upstream
	Logs           []string    // "level: message" for every cb.Log at or above the host's level
	// Metadata is the dynamic metadata after the filter ran (what the next filters see).
	Metadata map[string]map[string]any
}

// LocalReply is a reply the filter asked Envoy to send (SendLocalReply), as Envoy sends it: for
// a gRPC request (content-type application/grpc*) Envoy answers HTTP 200 with grpc-status and
// grpc-message headers and no body, whatever the HTTP code the filter gave.
type LocalReply struct {
	Status     int                 // the HTTP status Envoy sends
	Body       string              // the body Envoy sends
	Headers    map[string][]string // the headers the filter added, plus content-type / grpc-* as Envoy adds them
	GRPCStatus int64               // the gRPC status the filter passed
	Details    string              // response_code_details, as %RESPONSE_CODE_DETAILS% prints it
	FilterCode int                 // the HTTP code the filter passed to SendLocalReply
}

// Host is a fake Envoy process: it parses and merges plugin configs, holds the metrics plugins
// define, and runs requests through a filter. It is safe for concurrent use.
type Host struct {
	logger *slog.Logger

	mu      sync.Mutex
	metrics map[metricKey]*metric
}

type metricKey struct {
	typ  api.MetricType
	name string
}

type metric struct{ v atomic.Uint64 }

func (m *metric) Increment(offset int64) { m.v.Add(uint64(offset)) }
func (m *metric) Get() uint64            { return m.v.Load() }
func (m *metric) Record(value uint64)    { m.v.Store(value) }

// NewHost returns a host whose filters log to logger (nil: discard). It also routes the SDK's
// package-level logging (api.LogInfof...) to logger: that hook is process-wide, so the most
// recently created host receives it.
func NewHost(logger *slog.Logger) *Host {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	h := &Host{logger: logger, metrics: map[metricKey]*metric{}}
	common.Store(&commonCAPI{logger: logger})
	installCommonOnce.Do(func() { api.SetCommonCAPI(commonProxy{}) })
	return h
}

// Parse parses a filter-level plugin_config as Envoy does (with config callbacks that define
// metrics on this host). A nil Parser returns the Any itself, as the SDK's NullParser does.
func (h *Host) Parse(p Plugin, config *anypb.Any) (any, error) {
	if config == nil {
		config = &anypb.Any{} // Envoy passes an empty Any when plugin_config is absent
	}
	if p.Parser == nil {
		return config, nil
	}
	return p.Parser.Parse(config, configCallbacks{h})
}

// ParseRoute parses a per-route config (typed_per_filter_config): Envoy passes nil callbacks.
func (h *Host) ParseRoute(p Plugin, config *anypb.Any) (any, error) {
	if config == nil {
		config = &anypb.Any{}
	}
	if p.Parser == nil {
		return config, nil
	}
	return p.Parser.Parse(config, nil)
}

// Merge merges a route config into its parent as Envoy does for each level of the route
// (virtual host, route, weighted cluster). A nil Parser returns child, as NullParser does.
func (h *Host) Merge(p Plugin, parent, child any) any {
	if p.Parser == nil {
		return child
	}
	return p.Parser.Merge(parent, child)
}

// Counter is the value of the counter name defined by a parsed config (0 when undefined).
// Envoy's own counter golang.panic_error counts the panics the host recovered.
func (h *Host) Counter(name string) uint64 { return h.value(api.Counter, name) }

// Gauge is the value of the gauge name (0 when undefined).
func (h *Host) Gauge(name string) uint64 { return h.value(api.Gauge, name) }

func (h *Host) value(t api.MetricType, name string) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if m := h.metrics[metricKey{t, name}]; m != nil {
		return m.Get()
	}
	return 0
}

func (h *Host) define(t api.MetricType, name string) *metric {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := metricKey{t, name}
	m := h.metrics[k]
	if m == nil {
		m = &metric{}
		h.metrics[k] = m
	}
	return m
}

type configCallbacks struct{ h *Host }

func (c configCallbacks) DefineCounterMetric(name string) api.CounterMetric {
	return c.h.define(api.Counter, name)
}

func (c configCallbacks) DefineGaugeMetric(name string) api.GaugeMetric {
	return c.h.define(api.Gauge, name)
}

// Do runs req through the plugin's filter built from config (what Parse or Merge returned), as
// Envoy's decoder path does: Factory, DecodeHeaders, then DecodeData with the whole body if
// there is one and the filter went on, then OnStreamComplete, OnLog and OnDestroy. A filter
// that returns api.Running is waited for until it calls Continue or SendLocalReply, or until
// req's context ends. A panic in a callback becomes Envoy's 500 reply and counts in
// golang.panic_error. nil config is passed to the factory as is.
func (h *Host) Do(p Plugin, config any, req *http.Request, s Stream) Response {
	st := newStream(h, req, s)
	factory := p.Factory
	if factory == nil {
		h.logger.Error(fmt.Sprintf("plugin %s not found, pass through by default", p.Name))
		st.log(api.Error, fmt.Sprintf("plugin %s not found, pass through by default", p.Name))
		factory = passThroughFactory
	}
	var f api.StreamFilter
	if st.guard(func() { f = factory(config, st) }) {
		return st.response()
	}
	end := req.Body == nil || req.Body == http.NoBody
	var status api.StatusType
	if st.guard(func() { status = f.DecodeHeaders(st.reqHeaders, end) }) {
		return st.finish(f)
	}
	if !st.settle(req.Context(), status) || end {
		return st.finish(f)
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		st.reply(400, "", nil, 13, "downstream_body_read_error") // unreachable with in-memory bodies
		return st.finish(f)
	}
	st.nextPhase()
	buf := &buffer{b: body}
	if st.guard(func() { status = f.DecodeData(buf, true) }) {
		return st.finish(f)
	}
	st.settle(req.Context(), status)
	return st.finish(f)
}

var passThroughFactory api.StreamFilterFactory = func(any, api.FilterCallbackHandler) api.StreamFilter {
	return &api.PassThroughStreamFilter{}
}

// settle turns a callback's status into "went on" (true) or "stopped" (false).
func (st *stream) settle(ctx context.Context, status api.StatusType) bool {
	switch status {
	case api.Running:
		st.mu.Lock()
		done := st.done
		st.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			st.reply(504, "", nil, 4, "goambient_envoytest_filter_never_resumed")
		}
	case api.LocalReply:
		// SendLocalReply was called (or the filter lied: then Envoy hangs; we answer 500).
		if st.local() == nil {
			st.reply(500, "", nil, 13, "goambient_envoytest_local_reply_without_reply")
		}
	case api.Continue, api.HeaderContinue, api.DataContinue, api.HeaderContinueAndDontEndStream:
		if st.local() == nil {
			st.setContinued()
		}
	default:
		// StopAndBuffer*, StopNoBuffer, *StopIteration: Envoy delivers the body next.
		if st.local() == nil {
			st.setContinued()
		}
	}
	return st.local() == nil
}

// commonCAPI carries the SDK's package-level logging to the latest host's logger.
type commonCAPI struct{ logger *slog.Logger }

var (
	common            atomic.Pointer[commonCAPI]
	installCommonOnce sync.Once
)

type commonProxy struct{}

func (commonProxy) Log(level api.LogType, msg string) {
	if c := common.Load(); c != nil {
		c.logger.Log(context.Background(), slogLevel(level), msg)
	}
}

func (commonProxy) LogLevel() api.LogType {
	if c := common.Load(); c != nil {
		return levelOf(c.logger)
	}
	return api.Info
}

func slogLevel(l api.LogType) slog.Level {
	switch l {
	case api.Trace:
		return slog.LevelDebug - 4
	case api.Debug:
		return slog.LevelDebug
	case api.Info:
		return slog.LevelInfo
	case api.Warn:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

// levelOf is Envoy's log level as the logger's handler enables it (Envoy's default is info).
func levelOf(l *slog.Logger) api.LogType {
	ctx := context.Background()
	for _, t := range []api.LogType{api.Trace, api.Debug, api.Info, api.Warn} {
		if l.Enabled(ctx, slogLevel(t)) {
			return t
		}
	}
	if l.Handler() == slog.DiscardHandler {
		return api.Info
	}
	return api.Error
}
