package envoytest

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"

	"github.com/envoyproxy/envoy/contrib/golang/common/go/api"
	"google.golang.org/protobuf/types/known/structpb"
)

// stream is one request's state: it is the filter's api.FilterCallbackHandler, its
// StreamInfo, FilterState, DynamicMetadata and decoder/encoder callbacks.
type stream struct {
	h          *Host
	req        *http.Request
	s          Stream
	reqHeaders requestHeaders
	level      api.LogType
	grpc       bool

	mu        sync.Mutex
	logs      []string
	lr        *LocalReply
	continued bool
	done      chan struct{} // closed by the first Continue or SendLocalReply
	closed    bool
	state     map[string]string
	metadata  map[string]*structpb.Struct
	override  string
}

var (
	_ api.FilterCallbackHandler  = (*stream)(nil)
	_ api.DecoderFilterCallbacks = (*stream)(nil)
	_ api.StreamInfo             = streamInfo{}
	_ api.FilterState            = filterState{}
	_ api.DynamicMetadata        = dynamicMetadata{}
	_ api.SslConnection          = sslConnection{}
)

func newStream(h *Host, req *http.Request, s Stream) *stream {
	st := &stream{
		h: h, req: req, s: s,
		reqHeaders: requestHeaderMap(req),
		level:      levelOf(h.logger),
		done:       make(chan struct{}),
		state:      map[string]string{},
		metadata:   map[string]*structpb.Struct{},
	}
	ct := req.Header.Get("Content-Type")
	// Envoy's Grpc::Common::hasGrpcContentType: exactly application/grpc or application/grpc+…
	// (application/grpc-web is not gRPC).
	st.grpc = ct == "application/grpc" || strings.HasPrefix(ct, "application/grpc+")
	for k, v := range s.FilterState {
		st.state[k] = v
	}
	for name, kv := range s.DynamicMetadata {
		pb, err := structpb.NewStruct(normalize(kv).(map[string]any))
		if err != nil {
			panic(fmt.Sprintf("envoytest: dynamic metadata %s: %v", name, err))
		}
		st.metadata[name] = pb
	}
	return st
}

// guard runs f as the SDK's shim does, turning a panic into Envoy's panic reply. It reports
// whether f panicked.
func (st *stream) guard(f func()) (panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			st.panicReply(r)
			panicked = true
		}
	}()
	f()
	return false
}

func (st *stream) panicReply(r any) {
	st.log(api.Critical, fmt.Sprintf("golang filter panic: %v", r))
	st.h.define(api.Counter, "golang.panic_error").Increment(1)
	st.reply(500, "error happened in filter\r\n", nil, 0, "")
}

func (st *stream) log(level api.LogType, msg string) {
	if level < st.level {
		return
	}
	st.mu.Lock()
	st.logs = append(st.logs, level.String()+": "+msg)
	st.mu.Unlock()
	st.h.logger.Log(context.Background(), slogLevel(level), msg, "plugin", "golang")
}

func (st *stream) local() *LocalReply {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.lr
}

func (st *stream) setContinued() {
	st.mu.Lock()
	st.continued = true
	st.mu.Unlock()
}

// nextPhase prepares for the next decoder callback (DecodeData after DecodeHeaders).
func (st *stream) nextPhase() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.continued = false
	st.done = make(chan struct{})
	st.closed = false
}

func (st *stream) signal() {
	if !st.closed {
		st.closed = true
		close(st.done)
	}
}

// reply records a local reply the way Envoy's sendLocalReply builds it; the first one wins.
func (st *stream) reply(code int, body string, headers map[string][]string, grpcStatus int64, details string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.lr != nil {
		return
	}
	lr := &LocalReply{Status: code, Body: body, GRPCStatus: grpcStatus, Details: details, FilterCode: code, Headers: map[string][]string{}}
	for k, vs := range headers {
		for _, v := range vs {
			if v != "" { // Envoy skips empty values
				lk := strings.ToLower(k)
				lr.Headers[lk] = append(lr.Headers[lk], v)
			}
		}
	}
	if st.grpc {
		// Utility::sendLocalReply for gRPC: trailers-only 200, grpc-status from the filter,
		// grpc-message the percent-encoded body.
		lr.Status = 200
		lr.Body = ""
		lr.Headers["content-type"] = []string{"application/grpc"}
		lr.Headers["grpc-status"] = []string{strconv.FormatInt(grpcStatus, 10)}
		if body != "" {
			lr.Headers["grpc-message"] = []string{percentEncode(body)}
		}
	} else if body != "" {
		lr.Headers["content-type"] = []string{"text/plain"}
	}
	st.lr = lr
	st.continued = false
	st.signal()
}

func (st *stream) finish(f api.StreamFilter) Response {
	if f != nil {
		st.guard(f.OnStreamComplete)
		st.guard(func() { f.OnLog(st.reqHeaders, nil, nil, nil) })
		st.guard(func() { f.OnDestroy(api.Normal) })
	}
	return st.response()
}

func (st *stream) response() Response {
	st.mu.Lock()
	defer st.mu.Unlock()
	return Response{
		Continued:      st.continued && st.lr == nil,
		LocalReply:     st.lr,
		RequestHeaders: st.reqHeaders.httpHeader(),
		Logs:           append([]string(nil), st.logs...),
		Metadata:       st.metadataMap(),
	}
}

// metadataMap is the dynamic metadata after the filter ran; st.mu is held.
func (st *stream) metadataMap() map[string]map[string]any {
	out := make(map[string]map[string]any, len(st.metadata))
	for name, s := range st.metadata {
		out[name] = s.AsMap()
	}
	return out
}

// api.FilterCallbackHandler

func (st *stream) StreamInfo() api.StreamInfo                         { return streamInfo{st} }
func (st *stream) ClearRouteCache()                                   {}
func (st *stream) RefreshRouteCache()                                 {}
func (st *stream) Log(level api.LogType, msg string)                  { st.log(level, msg) }
func (st *stream) LogLevel() api.LogType                              { return st.level }
func (st *stream) SecretManager() api.SecretManager                   { return secrets(st.s.Secrets) }
func (st *stream) DecoderFilterCallbacks() api.DecoderFilterCallbacks { return st }
func (st *stream) EncoderFilterCallbacks() api.EncoderFilterCallbacks { return st }

// GetProperty answers the CEL attributes a waypoint filter plausibly reads; other paths are
// api.ErrValueNotFound, and maps (request.headers) are api.ErrSerializationFailure, as in Envoy.
func (st *stream) GetProperty(key string) (string, error) {
	if v, ok := st.s.Properties[key]; ok {
		return v, nil
	}
	r := st.reqHeaders
	get := func(k string) (string, error) {
		if v, ok := r.Get(k); ok {
			return v, nil
		}
		return "", api.ErrValueNotFound
	}
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
		return get(":method")
	case "request.path":
		return get(":path")
	case "request.url_path":
		p, err := get(":path")
		p, _, _ = strings.Cut(p, "?")
		return p, err
	case "request.host":
		return get(":authority")
	case "request.scheme":
		return get(":scheme")
	case "request.protocol":
		return protocol(st.req), nil
	case "request.headers", "response.headers", "request.query":
		if key == "request.query" {
			p, _ := get(":path")
			_, q, _ := strings.Cut(p, "?")
			return q, nil
		}
		return "", api.ErrSerializationFailure
	case "source.address":
		return addr(st.s.DownstreamRemoteAddress, false)
	case "source.port":
		return addr(st.s.DownstreamRemoteAddress, true)
	case "destination.address":
		return addr(st.s.DownstreamLocalAddress, false)
	case "destination.port":
		return addr(st.s.DownstreamLocalAddress, true)
	case "connection.mtls":
		return strconv.FormatBool(len(st.s.PeerURISANs) > 0), nil
	case "connection.uri_san_peer_certificate":
		if len(st.s.PeerURISANs) > 0 {
			return st.s.PeerURISANs[0], nil // Envoy returns only the first URI SAN
		}
	case "xds.route_name":
		if st.s.RouteName != "" {
			return st.s.RouteName, nil
		}
	}
	return "", api.ErrValueNotFound
}

// api.DecoderFilterCallbacks

func (st *stream) Continue(status api.StatusType) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.lr == nil {
		st.continued = status != api.LocalReply
	}
	st.signal()
}

func (st *stream) SendLocalReply(code int, body string, headers map[string][]string, grpcStatus int64, details string) {
	st.reply(code, body, headers, grpcStatus, details)
}

// RecoverPanic must be deferred by the filter's own goroutines, as with the real SDK.
func (st *stream) RecoverPanic() {
	if r := recover(); r != nil {
		st.panicReply(r)
	}
}

func (st *stream) AddData(data []byte, isStreaming bool) {}
func (st *stream) InjectData(data []byte)                {}

func (st *stream) SetUpstreamOverrideHost(host string, strict bool) error {
	if _, err := netip.ParseAddrPort(host); err != nil {
		if _, err := netip.ParseAddr(host); err != nil {
			return api.ErrInvalidIPAddress
		}
	}
	st.mu.Lock()
	st.override = host
	st.mu.Unlock()
	return nil
}

func protocol(r *http.Request) string {
	switch r.ProtoMajor {
	case 2:
		return "HTTP/2"
	case 3:
		return "HTTP/3"
	case 1:
		if r.ProtoMinor == 0 {
			return "HTTP/1.0"
		}
	}
	return "HTTP/1.1"
}

// api.StreamInfo

type streamInfo struct{ st *stream }

func (i streamInfo) GetRouteName() string     { return i.st.s.RouteName }
func (i streamInfo) FilterChainName() string  { return "" }
func (i streamInfo) Protocol() (string, bool) { return protocol(i.st.req), true }
func (i streamInfo) ResponseCode() (uint32, bool) {
	if lr := i.st.local(); lr != nil {
		return uint32(lr.Status), true
	}
	return 0, false
}
func (i streamInfo) ResponseCodeDetails() (string, bool) {
	if lr := i.st.local(); lr != nil {
		return lr.Details, true
	}
	return "", false
}
func (i streamInfo) AttemptCount() uint32                  { return 0 }
func (i streamInfo) DynamicMetadata() api.DynamicMetadata  { return dynamicMetadata{i.st} }
func (i streamInfo) DownstreamLocalAddress() string        { return i.st.s.DownstreamLocalAddress }
func (i streamInfo) DownstreamRemoteAddress() string       { return i.st.s.DownstreamRemoteAddress }
func (i streamInfo) UpstreamLocalAddress() (string, bool)  { return "", false }
func (i streamInfo) UpstreamRemoteAddress() (string, bool) { return "", false }
func (i streamInfo) UpstreamClusterName() (string, bool)   { return "", false }
func (i streamInfo) FilterState() api.FilterState          { return filterState{i.st} }
func (i streamInfo) VirtualClusterName() (string, bool)    { return "", false }
func (i streamInfo) WorkerID() uint32                      { return 0 }
func (i streamInfo) DrainConnectionUponCompletion()        {}
func (i streamInfo) DownstreamSslConnection() api.SslConnection {
	if len(i.st.s.PeerURISANs) == 0 {
		return nil // a plaintext downstream connection, as in main_internal
	}
	return sslConnection{i.st.s.PeerURISANs}
}

// api.FilterState: strings only, as the SDK sees Router::StringAccessor objects.

type filterState struct{ st *stream }

func (f filterState) SetString(key, value string, _ api.StateType, _ api.LifeSpan, _ api.StreamSharing) {
	f.st.mu.Lock()
	defer f.st.mu.Unlock()
	f.st.state[key] = value
}

func (f filterState) GetString(key string) string {
	f.st.mu.Lock()
	defer f.st.mu.Unlock()
	return f.st.state[key]
}

// api.DynamicMetadata: each Get is a fresh copy converted from a protobuf Struct, as in Envoy.

type dynamicMetadata struct{ st *stream }

func (d dynamicMetadata) Get(filterName string) map[string]any {
	d.st.mu.Lock()
	defer d.st.mu.Unlock()
	if s := d.st.metadata[filterName]; s != nil {
		return s.AsMap()
	}
	return map[string]any{}
}

func (d dynamicMetadata) Set(filterName, key string, value any) {
	v, err := structpb.NewValue(normalize(value))
	if err != nil {
		panic(fmt.Sprintf("dynamic metadata %s.%s: %v", filterName, key, err))
	}
	d.st.mu.Lock()
	defer d.st.mu.Unlock()
	s := d.st.metadata[filterName]
	if s == nil {
		s = &structpb.Struct{Fields: map[string]*structpb.Value{}}
		d.st.metadata[filterName] = s
	}
	s.Fields[key] = v
}

// api.SslConnection of a verified mTLS peer with the given URI SANs.

type sslConnection struct{ sans []string }

func (c sslConnection) PeerCertificatePresented() bool                   { return true }
func (c sslConnection) PeerCertificateValidated() bool                   { return true }
func (c sslConnection) Sha256PeerCertificateDigest() string              { return "" }
func (c sslConnection) SerialNumberPeerCertificate() string              { return "" }
func (c sslConnection) SubjectPeerCertificate() string                   { return "" }
func (c sslConnection) IssuerPeerCertificate() string                    { return "" }
func (c sslConnection) SubjectLocalCertificate() string                  { return "" }
func (c sslConnection) UriSanPeerCertificate() []string                  { return append([]string(nil), c.sans...) }
func (c sslConnection) UriSanLocalCertificate() []string                 { return nil }
func (c sslConnection) DnsSansPeerCertificate() []string                 { return nil }
func (c sslConnection) DnsSansLocalCertificate() []string                { return nil }
func (c sslConnection) ValidFromPeerCertificate() (uint64, bool)         { return 0, false }
func (c sslConnection) ExpirationPeerCertificate() (uint64, bool)        { return 0, false }
func (c sslConnection) TlsVersion() string                               { return "TLSv1.3" }
func (c sslConnection) CiphersuiteString() string                        { return "TLS_AES_128_GCM_SHA256" }
func (c sslConnection) CiphersuiteId() (uint16, bool)                    { return 0x1301, true }
func (c sslConnection) SessionId() (string, bool)                        { return "", false }
func (c sslConnection) UrlEncodedPemEncodedPeerCertificate() string      { return "" }
func (c sslConnection) UrlEncodedPemEncodedPeerCertificateChain() string { return "" }

type secrets map[string]string

func (s secrets) GetGenericSecret(name string) (string, bool) { v, ok := s[name]; return v, ok }

// normalize turns the Go shapes users write ([]string, map[string]string, nested) into the
// ones a protobuf Struct accepts.
func normalize(v any) any {
	switch x := v.(type) {
	case []string:
		out := make([]any, len(x))
		for i, s := range x {
			out[i] = s
		}
		return out
	case map[string]string:
		out := make(map[string]any, len(x))
		for k, s := range x {
			out[k] = s
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normalize(e)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = normalize(e)
		}
		return out
	}
	return v
}

// percentEncode is Envoy's Http::Utility::PercentEncoding::encode with its default reserved
// set: bytes below ' ', from '~' up, and '%' become %XX; everything else, spaces included, stays.
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
