package host

import (
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/envoyproxy/envoy/contrib/golang/common/go/api"
)

// Header is one request header as Envoy holds it: the name in lower case.
type Header struct{ Name, Value string }

// Request is one request's headers as the filters and the router see them: Envoy's
// pseudo headers and the other headers in a list, names lower case. Its methods are safe for
// concurrent use (a filter may read it from its own goroutine).
type Request struct {
	mu                              sync.Mutex
	method, path, authority, scheme string
	protocol                        string // HTTP/1.1 ...
	list                            []Header
	dirty                           bool // changed by a filter: the request sent upstream must be rebuilt
}

// Reset makes r the request of hdr (kept as is: names are lower-cased here), reusing its
// storage. Repeated headers keep one entry per value, in hdr's order for a name.
func (r *Request) Reset(method, path, authority, scheme, protocol string, hdr http.Header) {
	r.method, r.path, r.authority, r.scheme, r.protocol = method, path, authority, scheme, protocol
	r.list = r.list[:0]
	r.dirty = false
	for k, vs := range hdr {
		lk := lower(k)
		for _, v := range vs {
			r.list = append(r.list, Header{lk, v})
		}
	}
}

// lower is strings.ToLower without allocating for the common canonical names.
func lower(k string) string {
	if l, ok := commonLower[k]; ok {
		return l
	}
	return strings.ToLower(k)
}

var commonLower = map[string]string{}

func init() {
	for _, n := range []string{
		"accept", "accept-encoding", "accept-language", "authorization", "cache-control", "connection", "content-length",
		"content-type", "cookie", "forwarded", "origin", "referer", "te", "traceparent", "tracestate", "user-agent",
		"x-b3-parentspanid", "x-b3-sampled", "x-b3-spanid", "x-b3-traceid", "x-envoy-attempt-count", "x-forwarded-for",
		"x-forwarded-proto", "x-request-id", "x-client-trace-id", "baggage", "grpc-timeout", "upgrade",
	} {
		commonLower[http.CanonicalHeaderKey(n)] = n
		commonLower[n] = n
	}
}

// Method, Path, Authority, Scheme and Protocol are the pseudo headers (and the HTTP version).
func (r *Request) Method() string    { r.mu.Lock(); defer r.mu.Unlock(); return r.method }
func (r *Request) Path() string      { r.mu.Lock(); defer r.mu.Unlock(); return r.path }
func (r *Request) Authority() string { r.mu.Lock(); defer r.mu.Unlock(); return r.authority }
func (r *Request) Scheme() string    { r.mu.Lock(); defer r.mu.Unlock(); return r.scheme }
func (r *Request) Protocol() string  { return r.protocol }

// SetPath and SetAuthority change the pseudo headers (the router's rewrites).
func (r *Request) SetPath(p string) { r.mu.Lock(); r.path, r.dirty = p, true; r.mu.Unlock() }

// SetAuthority sets :authority.
func (r *Request) SetAuthority(a string) { r.mu.Lock(); r.authority, r.dirty = a, true; r.mu.Unlock() }

// Dirty reports whether a filter or the router changed the request.
func (r *Request) Dirty() bool { r.mu.Lock(); defer r.mu.Unlock(); return r.dirty }

// Header returns a header's values joined with ",", as Envoy's header matchers see a
// repeated header, and whether it is present. name must be lower case.
func (r *Request) Header(name string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch name {
	case ":method":
		return r.method, true
	case ":path":
		return r.path, true
	case ":authority", "host":
		return r.authority, r.authority != ""
	case ":scheme":
		return r.scheme, true
	}
	out, found := "", false
	for _, h := range r.list {
		if h.Name != name {
			continue
		}
		if found {
			out += "," + h.Value
		} else {
			out, found = h.Value, true
		}
	}
	return out, found
}

// Each calls f for every header that is not a pseudo header, in order.
func (r *Request) Each(f func(name, value string)) {
	r.mu.Lock()
	list := r.list
	r.mu.Unlock()
	for _, h := range list {
		f(h.Name, h.Value)
	}
}

// set replaces name's values; add appends one; del removes them. name is lower case.
func (r *Request) set(name, value string) {
	switch name {
	case ":path":
		r.path = value
	case ":method":
		r.method = value
	case ":authority", "host":
		r.authority = value
	case ":scheme":
		r.scheme = value
	default:
		r.delLocked(name)
		r.list = append(r.list, Header{name, value})
	}
	r.dirty = true
}

func (r *Request) delLocked(name string) {
	r.list = slices.DeleteFunc(r.list, func(h Header) bool { return h.Name == name })
	r.dirty = true
}

// Set replaces a header's values (the router's header changes). name is lower case.
func (r *Request) Set(name, value string) { r.mu.Lock(); r.set(name, value); r.mu.Unlock() }

// Add appends a value to a header. name is lower case.
func (r *Request) Add(name, value string) {
	r.mu.Lock()
	r.list = append(r.list, Header{name, value})
	r.dirty = true
	r.mu.Unlock()
}

// Del removes a header. name is lower case.
func (r *Request) Del(name string) { r.mu.Lock(); r.delLocked(name); r.mu.Unlock() }

// HTTPHeader is the request's headers (not pseudo) as an http.Header, to send upstream.
func (r *Request) HTTPHeader() http.Header {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := make(http.Header, len(r.list))
	for _, e := range r.list {
		k := http.CanonicalHeaderKey(e.Name)
		h[k] = append(h[k], e.Value)
	}
	return h
}

// headerMap is the filter's view of a Request: Envoy's RequestHeaderMap (keys lower-cased on
// access, pseudo headers included in Get and Set). Once the stream s has ended (Decode
// returned), every access is dropped: the Request then belongs to the server again, which
// reuses it for its next request, and a filter answering late must not read or change it.
type headerMap struct {
	r *Request
	s *stream
}

var _ api.RequestHeaderMap = headerMap{}

// held takes s's liveness read lock and reports whether the request is still the filter's;
// the caller releases the lock (m.s.live.RUnlock) whatever the answer.
func (m headerMap) held() bool {
	m.s.live.RLock()
	return !m.s.ended
}

func (m headerMap) GetRaw(name string) string {
	v, _ := m.get(name)
	return v
}

func (m headerMap) get(name string) (string, bool) {
	defer m.s.live.RUnlock()
	if !m.held() {
		return "", false
	}
	r := m.r
	r.mu.Lock()
	defer r.mu.Unlock()
	switch name {
	case ":method":
		return r.method, true
	case ":path":
		return r.path, true
	case ":authority":
		return r.authority, true
	case ":scheme":
		return r.scheme, true
	}
	for _, h := range r.list {
		if h.Name == name {
			return h.Value, true
		}
	}
	return "", false
}

func (m headerMap) Get(key string) (string, bool) { return m.get(lower(key)) }

func (m headerMap) Values(key string) []string {
	key = lower(key)
	if strings.HasPrefix(key, ":") {
		if v, ok := m.get(key); ok {
			return []string{v}
		}
		return nil
	}
	defer m.s.live.RUnlock()
	if !m.held() {
		return nil
	}
	r := m.r
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, h := range r.list {
		if h.Name == key {
			out = append(out, h.Value)
		}
	}
	return out
}

// write runs f on the request while the stream lives.
func (m headerMap) write(f func(r *Request)) {
	defer m.s.live.RUnlock()
	if m.held() {
		f(m.r)
	}
}

func (m headerMap) Set(key, value string) { m.write(func(r *Request) { r.Set(lower(key), value) }) }
func (m headerMap) Add(key, value string) { m.write(func(r *Request) { r.Add(lower(key), value) }) }
func (m headerMap) Del(key string)        { m.write(func(r *Request) { r.Del(lower(key)) }) }

// Range visits the pseudo headers, then each header value, holding the request's lock as
// Envoy holds its map's: f must not call the map's other methods.
func (m headerMap) Range(f func(key, value string) bool) {
	defer m.s.live.RUnlock()
	if !m.held() {
		return
	}
	r := m.r
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range [...]Header{{":authority", r.authority}, {":path", r.path}, {":method", r.method}, {":scheme", r.scheme}} {
		if !f(p.Name, p.Value) {
			return
		}
	}
	for _, h := range r.list {
		if !f(h.Name, h.Value) {
			return
		}
	}
}

func (m headerMap) RangeWithCopy(f func(key, value string) bool) {
	var copied []Header
	m.write(func(r *Request) {
		r.mu.Lock()
		copied = append([]Header{{":authority", r.authority}, {":path", r.path}, {":method", r.method}, {":scheme", r.scheme}}, r.list...)
		r.mu.Unlock()
	})
	for _, h := range copied {
		if !f(h.Name, h.Value) {
			return
		}
	}
}

func (m headerMap) GetAllHeaders() map[string][]string {
	out := map[string][]string{}
	m.RangeWithCopy(func(k, v string) bool { out[k] = append(out[k], v); return true })
	return out
}

func (m headerMap) Scheme() string { v, _ := m.get(":scheme"); return v }
func (m headerMap) Method() string { v, _ := m.get(":method"); return v }
func (m headerMap) Host() string   { v, _ := m.get(":authority"); return v }
func (m headerMap) Path() string   { v, _ := m.get(":path"); return v }
func (m headerMap) SetMethod(v string) {
	m.write(func(r *Request) { r.mu.Lock(); r.set(":method", v); r.mu.Unlock() })
}
func (m headerMap) SetHost(v string) {
	m.write(func(r *Request) { r.mu.Lock(); r.set(":authority", v); r.mu.Unlock() })
}
func (m headerMap) SetPath(v string) {
	m.write(func(r *Request) { r.mu.Lock(); r.set(":path", v); r.mu.Unlock() })
}
