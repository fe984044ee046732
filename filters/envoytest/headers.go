package envoytest

import (
	"net/http"
	"strings"
	"sync"

	"github.com/envoyproxy/envoy/contrib/golang/common/go/api"
)

// headerMap mirrors the SDK's requestOrResponseHeaderMapImpl (pkg/http/type.go): keys are
// lower-cased on every access, a key holds its values in order, Get returns the first, Set
// replaces them, Add appends, Del removes them all, Range visits each value, and Values
// returns the stored slice (not a copy). Order of keys in Range is unspecified, as in Envoy.
type headerMap struct {
	mu sync.Mutex
	h  map[string][]string
}

var (
	_ api.RequestHeaderMap  = (*requestHeaders)(nil)
	_ api.ResponseHeaderMap = (*responseHeaders)(nil)
	_ api.RequestTrailerMap = (*headerMap)(nil)
)

func newHeaderMap() *headerMap { return &headerMap{h: map[string][]string{}} }

// GetRaw is case-sensitive in Envoy (it reads Envoy's own map, whose keys are lower case).
func (m *headerMap) GetRaw(key string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v := m.h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (m *headerMap) Get(key string) (string, bool) {
	key = strings.ToLower(key)
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.h[key]
	if !ok || len(v) == 0 {
		return "", false
	}
	return v[0], true
}

func (m *headerMap) Values(key string) []string {
	key = strings.ToLower(key)
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.h[key]
}

func (m *headerMap) Set(key, value string) {
	key = strings.ToLower(key)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.h[key] = []string{value}
}

func (m *headerMap) Add(key, value string) {
	key = strings.ToLower(key)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.h[key] = append(m.h[key], value)
}

func (m *headerMap) Del(key string) {
	key = strings.ToLower(key)
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.h, key)
}

// Range holds the lock while f runs, as Envoy's does: f must not call the map's other methods.
func (m *headerMap) Range(f func(key, value string) bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, vs := range m.h {
		for _, v := range vs {
			if !f(k, v) {
				return
			}
		}
	}
}

func (m *headerMap) RangeWithCopy(f func(key, value string) bool) {
	for k, vs := range m.GetAllHeaders() {
		for _, v := range vs {
			if !f(k, v) {
				return
			}
		}
	}
}

func (m *headerMap) GetAllHeaders() map[string][]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string][]string, len(m.h))
	for k, vs := range m.h {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

// httpHeader copies the map into an http.Header (canonical keys; pseudo-headers kept as is).
func (m *headerMap) httpHeader() http.Header {
	out := http.Header{}
	for k, vs := range m.GetAllHeaders() {
		for _, v := range vs {
			out.Add(k, v)
		}
	}
	return out
}

type requestHeaders struct{ *headerMap }

func (h requestHeaders) first(k string) string { v, _ := h.Get(k); return v }
func (h requestHeaders) Scheme() string        { return h.first(":scheme") }
func (h requestHeaders) Method() string        { return h.first(":method") }
func (h requestHeaders) Host() string          { return h.first(":authority") }
func (h requestHeaders) Path() string          { return h.first(":path") }
func (h requestHeaders) SetMethod(v string)    { h.Set(":method", v) }
func (h requestHeaders) SetHost(v string)      { h.Set(":authority", v) }
func (h requestHeaders) SetPath(v string)      { h.Set(":path", v) }

type responseHeaders struct{ *headerMap }

func (h responseHeaders) Status() (int, bool) {
	v, ok := h.Get(":status")
	if !ok {
		return 0, false
	}
	n := 0
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, true
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// requestHeaderMap builds Envoy's view of req: pseudo-headers first (:method, :path with the
// query, :authority from Host, :scheme), then every header with its name lower-cased and each
// repeated value kept as its own entry. Envoy's HTTP/1 codec turns Host into :authority.
func requestHeaderMap(req *http.Request) requestHeaders {
	m := newHeaderMap()
	m.h[":method"] = []string{req.Method}
	path := req.RequestURI
	if path == "" || strings.Contains(path, "://") {
		path = req.URL.RequestURI()
	}
	m.h[":path"] = []string{path}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if host != "" {
		m.h[":authority"] = []string{host}
	}
	scheme := req.URL.Scheme
	if scheme == "" {
		scheme = "http"
		if req.TLS != nil {
			scheme = "https"
		}
	}
	m.h[":scheme"] = []string{scheme}
	for k, vs := range req.Header {
		lk := strings.ToLower(k)
		if lk == "host" {
			continue
		}
		m.h[lk] = append(m.h[lk], vs...)
	}
	return requestHeaders{m}
}
