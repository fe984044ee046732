package host

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/envoyproxy/envoy/contrib/golang/common/go/api"
	"google.golang.org/protobuf/types/known/structpb"
)

var (
	_ api.FilterCallbackHandler  = (*stream)(nil)
	_ api.DecoderFilterCallbacks = (*stream)(nil)
	_ api.StreamInfo             = streamInfo{}
	_ api.FilterState            = filterState{}
	_ api.DynamicMetadata        = dynamicMetadata{}
)

// api.FilterCallbackHandler

func (s *stream) StreamInfo() api.StreamInfo                         { return streamInfo{s} }
func (s *stream) ClearRouteCache()                                   {}
func (s *stream) RefreshRouteCache()                                 {}
func (s *stream) LogLevel() api.LogType                              { return s.h.level }
func (s *stream) SecretManager() api.SecretManager                   { return noSecrets{} }
func (s *stream) DecoderFilterCallbacks() api.DecoderFilterCallbacks { return s }
func (s *stream) EncoderFilterCallbacks() api.EncoderFilterCallbacks { return s }

func (s *stream) Log(level api.LogType, msg string) {
	if level >= s.h.level {
		s.h.log.Log(context.Background(), slogLevel(level), msg, "plugin", s.h.p.Name)
	}
}

// GetProperty answers the CEL attributes a waypoint filter reads; others are
// api.ErrValueNotFound, maps api.ErrSerializationFailure, as in Envoy.
func (s *stream) GetProperty(key string) (string, error) {
	r := s.r
	addr := func(a string, port bool) (string, error) {
		ap, err := netip.ParseAddrPort(a)
		switch {
		case err != nil:
			return "", api.ErrValueNotFound
		case port:
			return strconv.Itoa(int(ap.Port())), nil
		}
		return a, nil
	}
	switch key {
	case "request.method":
		return r.Method(), nil
	case "request.path":
		return r.Path(), nil
	case "request.url_path":
		p, _, _ := strings.Cut(r.Path(), "?")
		return p, nil
	case "request.host":
		return r.Authority(), nil
	case "request.scheme":
		return r.Scheme(), nil
	case "request.protocol":
		return r.Protocol(), nil
	case "request.query":
		_, q, _ := strings.Cut(r.Path(), "?")
		return q, nil
	case "request.headers", "response.headers":
		return "", api.ErrSerializationFailure
	case "source.address":
		return addr(s.c.DownstreamRemoteAddress, false)
	case "source.port":
		return addr(s.c.DownstreamRemoteAddress, true)
	case "destination.address":
		return addr(s.c.DownstreamLocalAddress, false)
	case "destination.port":
		return addr(s.c.DownstreamLocalAddress, true)
	case "connection.mtls":
		return "false", nil // main_internal is a plaintext internal connection
	case "xds.route_name":
		if s.c.RouteName != "" {
			return s.c.RouteName, nil
		}
	}
	return "", api.ErrValueNotFound
}

// api.DecoderFilterCallbacks

func (s *stream) Continue(status api.StatusType) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.replied || s.decided {
		return
	}
	s.continued, s.decided = status != api.LocalReply, true
	select {
	case s.done <- struct{}{}:
	default:
	}
}

func (s *stream) SendLocalReply(code int, body string, headers map[string][]string, grpcStatus int64, details string) {
	s.sendReply(code, body, headers, grpcStatus, details)
}

// RecoverPanic must be deferred by a filter's own goroutines, as with Envoy's SDK.
func (s *stream) RecoverPanic() {
	if p := recover(); p != nil {
		s.h.log.Error("golang filter panic", "plugin", s.h.p.Name, "panic", fmt.Sprint(p))
		s.h.metric("counter/golang.panic_error").Increment(1)
		s.sendReply(500, "error happened in filter\r\n", nil, 0, "")
	}
}

func (s *stream) AddData([]byte, bool) {}
func (s *stream) InjectData([]byte)    {}

func (s *stream) SetUpstreamOverrideHost(string, bool) error {
	return api.ErrInternalFailure // not supported: the embedded waypoint picks endpoints itself
}

// api.StreamInfo

type streamInfo struct{ s *stream }

func (i streamInfo) GetRouteName() string     { return i.s.c.RouteName }
func (i streamInfo) FilterChainName() string  { return "" }
func (i streamInfo) Protocol() (string, bool) { return i.s.r.Protocol(), true }
func (i streamInfo) ResponseCode() (uint32, bool) {
	i.s.mu.Lock()
	defer i.s.mu.Unlock()
	if i.s.replied {
		return uint32(i.s.reply.Status), true
	}
	return 0, false
}
func (i streamInfo) ResponseCodeDetails() (string, bool) {
	i.s.mu.Lock()
	defer i.s.mu.Unlock()
	if i.s.replied {
		return i.s.reply.Details, true
	}
	return "", false
}
func (i streamInfo) AttemptCount() uint32                       { return 0 }
func (i streamInfo) DynamicMetadata() api.DynamicMetadata       { return dynamicMetadata{i.s} }
func (i streamInfo) DownstreamLocalAddress() string             { return i.s.c.DownstreamLocalAddress }
func (i streamInfo) DownstreamRemoteAddress() string            { return i.s.c.DownstreamRemoteAddress }
func (i streamInfo) UpstreamLocalAddress() (string, bool)       { return "", false }
func (i streamInfo) UpstreamRemoteAddress() (string, bool)      { return "", false }
func (i streamInfo) UpstreamClusterName() (string, bool)        { return "", false }
func (i streamInfo) FilterState() api.FilterState               { return filterState{i.s} }
func (i streamInfo) VirtualClusterName() (string, bool)         { return "", false }
func (i streamInfo) WorkerID() uint32                           { return 0 }
func (i streamInfo) DrainConnectionUponCompletion()             {}
func (i streamInfo) DownstreamSslConnection() api.SslConnection { return nil } // main_internal is plaintext

// api.FilterState: strings, as the SDK sees Router::StringAccessor objects.

type filterState struct{ s *stream }

func (f filterState) SetString(key, value string, _ api.StateType, _ api.LifeSpan, _ api.StreamSharing) {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	for i := range f.s.state {
		if f.s.state[i].Name == key {
			f.s.state[i].Value = value
			return
		}
	}
	f.s.state = append(f.s.state, Header{key, value})
}

func (f filterState) GetString(key string) string {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	for _, kv := range f.s.state {
		if kv.Name == key {
			return kv.Value
		}
	}
	if key == f.s.c.PeerPrincipalKey {
		return f.s.c.PeerPrincipal
	}
	return ""
}

// api.DynamicMetadata: each Get a fresh copy through a protobuf Struct, as Envoy's.

type dynamicMetadata struct{ s *stream }

func (d dynamicMetadata) Get(filterName string) map[string]any {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	m := d.s.metadata[filterName]
	if m == nil {
		return map[string]any{}
	}
	st, err := structpb.NewStruct(m)
	if err != nil {
		return map[string]any{}
	}
	return st.AsMap()
}

func (d dynamicMetadata) Set(filterName, key string, value any) {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	if d.s.metadata == nil {
		d.s.metadata = map[string]map[string]any{}
	}
	if d.s.metadata[filterName] == nil {
		d.s.metadata[filterName] = map[string]any{}
	}
	d.s.metadata[filterName][key] = value
}

type noSecrets struct{}

func (noSecrets) GetGenericSecret(string) (string, bool) { return "", false }

// Logging: the SDK's package-level api.Log* go to the most recently created host's logger
// (api.SetCommonCAPI is process-wide).

var (
	commonLogger atomic.Pointer[slog.Logger]
	installOnce  sync.Once
)

func installLogger(l *slog.Logger) {
	commonLogger.Store(l)
	installOnce.Do(func() { api.SetCommonCAPI(commonCAPI{}) })
}

type commonCAPI struct{}

func (commonCAPI) Log(level api.LogType, message string) {
	commonLogger.Load().Log(context.Background(), slogLevel(level), message, "plugin", "golang")
}

func (commonCAPI) LogLevel() api.LogType {
	l := commonLogger.Load()
	for _, t := range []api.LogType{api.Trace, api.Debug, api.Info, api.Warn} {
		if l.Enabled(context.Background(), slogLevel(t)) {
			return t
		}
	}
	return api.Error
}

func slogLevel(t api.LogType) slog.Level {
	switch t {
	case api.Trace, api.Debug:
		return slog.LevelDebug
	case api.Info:
		return slog.LevelInfo
	case api.Warn:
		return slog.LevelWarn
	}
	return slog.LevelError
}
