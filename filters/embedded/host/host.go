// Package host is the production host adapter of the embedded waypoint: it runs an Envoy Go HTTP filter (the SDK's api interfaces) on requests the way Envoy's golang filter does — configs parsed and merged once, then per request the filter's factory, DecodeHeaders and its local replies — without the test fake's costs (filters/envoytest stays a fake for tests).
package host

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/envoyproxy/envoy/contrib/golang/common/go/api"
	"google.golang.org/protobuf/types/known/anypb"
)

// Plugin is one registered filter: its plugin_name, factory and config parser, as filters.so
// registers it (a nil Factory or Parser is refused: the embedded waypoint never passes
// traffic through an unknown plugin).
type Plugin struct {
	Name    string
	Factory api.StreamFilterFactory
	Parser  api.StreamFilterConfigParser
}

// Host runs one plugin. It is safe for concurrent use.
type Host struct {
	p     Plugin
	log   *slog.Logger
	level api.LogType

	mu      sync.Mutex
	metrics map[string]*metric
}

type metric struct{ v atomic.Uint64 }

func (m *metric) Increment(offset int64) { m.v.Add(uint64(offset)) }
func (m *metric) Get() uint64            { return m.v.Load() }
func (m *metric) Record(value uint64)    { m.v.Store(value) }

// New returns the host of p; log receives the filter's logs (Envoy's "golang" logger).
func New(p Plugin, log *slog.Logger) (*Host, error) {
	if p.Factory == nil || p.Parser == nil || p.Name == "" {
		return nil, fmt.Errorf("host: plugin %q needs a name, a factory and a parser", p.Name)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Host{p: p, log: log, metrics: map[string]*metric{}, level: api.Error}
	for _, t := range []api.LogType{api.Trace, api.Debug, api.Info, api.Warn} {
		if log.Enabled(context.Background(), slogLevel(t)) {
			h.level = t
			break
		}
	}
	installLogger(log)
	return h, nil
}

// Name is the plugin's name.
func (h *Host) Name() string { return h.p.Name }

// Parse parses a filter-level plugin_config (ECDS); an error means Envoy refuses the config.
func (h *Host) Parse(a *anypb.Any) (any, error) {
	if a == nil {
		a = &anypb.Any{}
	}
	return h.p.Parser.Parse(a, configCallbacks{h})
}

// ParseRoute parses a per-route config (Envoy passes nil callbacks).
func (h *Host) ParseRoute(a *anypb.Any) (any, error) {
	if a == nil {
		a = &anypb.Any{}
	}
	return h.p.Parser.Parse(a, nil)
}

// Merge merges a route level into its parent, as Envoy does for each level of a route.
func (h *Host) Merge(parent, child any) any { return h.p.Parser.Merge(parent, child) }

// Counter is the value of a counter the plugin defined (0 when undefined); Envoy's own
// golang.panic_error counts the panics recovered.
func (h *Host) Counter(name string) uint64 { return h.metric("counter/" + name).Get() }

func (h *Host) metric(key string) *metric {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := h.metrics[key]
	if m == nil {
		m = &metric{}
		h.metrics[key] = m
	}
	return m
}

type configCallbacks struct{ h *Host }

func (c configCallbacks) DefineCounterMetric(name string) api.CounterMetric {
	return c.h.metric("counter/" + name)
}
func (c configCallbacks) DefineGaugeMetric(name string) api.GaugeMetric {
	return c.h.metric("gauge/" + name)
}

// Conn is what Envoy knows of a request besides its headers.
type Conn struct {
	PeerPrincipal           string // filter state io.istio.peer_principal
	PeerPrincipalKey        string // its key
	DownstreamRemoteAddress string // "ip:port"
	DownstreamLocalAddress  string // "ip:port"
	RouteName               string
	GRPC                    bool // content-type application/grpc: local replies are gRPC's
	// Metadata is the dynamic metadata filters before this one set (jwt_authn's verified
	// payloads), by filter name; the filter sees a copy.
	Metadata map[string]map[string]any
}

// LocalReply is an answer the filter sent instead of letting the request go on, as Envoy
// sends it (for a gRPC request: 200 with grpc-status and grpc-message, no body).
type LocalReply struct {
	Status     int
	Body       string
	Headers    []Header // names lower case; content-type added as Envoy adds it
	GRPCStatus int64
	Details    string // response_code_details
}

// Result is what the filter decided for a request.
type Result struct {
	Continue bool
	Reply    *LocalReply // when it did not continue
}

// Decode runs the request's headers through the plugin's filter built from config (what
// Parse or Merge returned): factory, DecodeHeaders, then OnStreamComplete, OnLog and
// OnDestroy. A filter returning api.Running is waited for until it calls Continue or
// SendLocalReply, or ctx ends (then 504). A panic is Envoy's 500 "error happened in filter".
func (h *Host) Decode(ctx context.Context, config any, r *Request, c Conn) Result {
	s := streams.Get().(*stream)
	s.reset(h, r, c)
	var status api.StatusType
	defer func() {
		s.end()
		// A filter that went on in its own goroutine (api.Running) may still hold s and call
		// it after its request ended (a provider answering after the timeout): such a stream
		// is left to the garbage collector rather than handed to the next request.
		if status != api.Running {
			streams.Put(s)
		}
	}()
	var f api.StreamFilter
	if s.guard(func() { f = h.p.Factory(config, s) }) {
		return s.result()
	}
	hm := headerMap{r, s}
	if !s.guard(func() { status = f.DecodeHeaders(hm, true) }) {
		s.settle(ctx, status)
	}
	s.guard(f.OnStreamComplete)
	s.guard(func() { f.OnLog(hm, nil, nil, nil) })
	s.guard(func() { f.OnDestroy(api.Normal) })
	return s.result()
}

var streams = sync.Pool{New: func() any { return &stream{done: make(chan struct{}, 1)} }}

// stream is one request's callbacks: FilterCallbackHandler, DecoderFilterCallbacks,
// StreamInfo, FilterState, DynamicMetadata.
type stream struct {
	h *Host
	r *Request
	c Conn

	mu        sync.Mutex
	decided   bool
	continued bool
	reply     LocalReply
	replied   bool
	done      chan struct{} // one token per decision of a Running filter
	// live guards ended: once Decode returns, the filter's view of the request (headerMap)
	// reads and changes nothing, the Request being the server's again.
	live     sync.RWMutex
	ended    bool
	state    []Header // filter state strings besides the peer principal
	metadata map[string]map[string]any
}

func (s *stream) reset(h *Host, r *Request, c Conn) {
	s.h, s.r, s.c = h, r, c
	s.ended = false
	s.decided, s.continued, s.replied = false, false, false
	s.reply = LocalReply{}
	s.state = s.state[:0]
	s.metadata = nil
	for name, kv := range c.Metadata {
		if s.metadata == nil {
			s.metadata = make(map[string]map[string]any, len(c.Metadata))
		}
		m := make(map[string]any, len(kv))
		for k, v := range kv {
			m[k] = v
		}
		s.metadata[name] = m
	}
	select {
	case <-s.done:
	default:
	}
}

// end ends the filter's access to the request: it waits for an access in progress.
func (s *stream) end() {
	s.live.Lock()
	s.ended = true
	s.live.Unlock()
}

func (s *stream) result() Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.replied {
		lr := s.reply
		lr.Headers = append([]Header(nil), lr.Headers...)
		return Result{Reply: &lr}
	}
	return Result{Continue: s.continued}
}

// guard runs f as the SDK's shim does: a panic becomes Envoy's panic reply.
func (s *stream) guard(f func()) (panicked bool) {
	defer func() {
		if p := recover(); p != nil {
			s.h.log.Error("golang filter panic", "plugin", s.h.p.Name, "panic", fmt.Sprint(p))
			s.h.metric("counter/golang.panic_error").Increment(1)
			s.sendReply(500, "error happened in filter\r\n", nil, 0, "")
			panicked = true
		}
	}()
	f()
	return false
}

func (s *stream) settle(ctx context.Context, status api.StatusType) {
	switch status {
	case api.Running:
		select {
		case <-s.done:
		case <-ctx.Done():
			s.sendReply(504, "", nil, 4, "goambient_filter_never_resumed")
		}
	case api.LocalReply:
		s.mu.Lock()
		replied := s.replied
		s.mu.Unlock()
		if !replied { // the filter said LocalReply without sending one: Envoy would hang
			s.sendReply(500, "", nil, 13, "goambient_filter_local_reply_without_reply")
		}
	case api.Continue, api.HeaderContinue, api.HeaderContinueAndDontEndStream:
		s.mu.Lock()
		if !s.replied {
			s.continued = true
		}
		s.mu.Unlock()
	default: // StopAndBuffer and the like: the whole request was given, nothing more comes
		s.sendReply(500, "", nil, 13, "goambient_filter_stopped_iteration")
	}
}

func (s *stream) sendReply(code int, body string, headers map[string][]string, grpcStatus int64, details string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.replied || s.decided && s.continued {
		return
	}
	lr := LocalReply{Status: code, Body: body, GRPCStatus: grpcStatus, Details: details}
	for k, vs := range headers {
		for _, v := range vs {
			if v != "" { // Envoy skips empty values
				lr.Headers = append(lr.Headers, Header{strings.ToLower(k), v})
			}
		}
	}
	if s.c.GRPC {
		// Envoy's gRPC local reply: trailers-only 200, grpc-status, grpc-message.
		lr.Status, lr.Body = 200, ""
		lr.Headers = append(lr.Headers, Header{"content-type", "application/grpc"}, Header{"grpc-status", strconv.FormatInt(grpcStatus, 10)})
		if body != "" {
			lr.Headers = append(lr.Headers, Header{"grpc-message", percentEncode(body)})
		}
	} else if body != "" {
		lr.Headers = append(lr.Headers, Header{"content-type", "text/plain"})
	}
	s.reply, s.replied, s.decided = lr, true, true
	select {
	case s.done <- struct{}{}:
	default:
	}
}

// percentEncode is Envoy's PercentEncoding::encode with its default reserved set.
func percentEncode(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < ' ' || c >= '~' || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
