package router

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// Request is what routing reads of a request: its pseudo headers and, by lower-case name, a
// header's values joined with "," (as Envoy's header matchers see a repeated header).
type Request interface {
	Method() string
	Path() string
	Authority() string
	Scheme() string
	Header(name string) (string, bool)
}

type pathKind uint8

const (
	pathPrefix pathKind = iota
	pathExact
	pathSeparatedPrefix
	pathRegex
)

// match is a compiled RouteMatch.
type match struct {
	kind          pathKind
	value         string // prefix or path (lower case when !caseSensitive)
	regex         *regexp.Regexp
	caseSensitive bool
	headers       []headerMatch
	query         []queryMatch
}

type headerMatch struct {
	name              string
	sm                *stringMatch // nil: a present match
	present           bool
	invert, treatNone bool
}

type queryMatch struct {
	name    string
	sm      *stringMatch // nil: present
	present bool
}

// stringMatch is Envoy's StringMatcher (exact, prefix, suffix, contains, a fully anchored RE2).
type stringMatch struct {
	exact, prefix, suffix, contains *string
	re                              *regexp.Regexp
	ignoreCase                      bool
}

func compileStringMatch(m *matcher.StringMatcher) (*stringMatch, error) {
	sm := &stringMatch{ignoreCase: m.GetIgnoreCase()}
	norm := func(s string) *string {
		if sm.ignoreCase {
			s = strings.ToLower(s)
		}
		return &s
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcher.StringMatcher_Exact:
		sm.exact = norm(p.Exact)
	case *matcher.StringMatcher_Prefix:
		sm.prefix = norm(p.Prefix)
	case *matcher.StringMatcher_Suffix:
		sm.suffix = norm(p.Suffix)
	case *matcher.StringMatcher_Contains:
		sm.contains = norm(p.Contains)
	case *matcher.StringMatcher_SafeRegex:
		re, err := anchored(p.SafeRegex.GetRegex())
		if err != nil {
			return nil, err
		}
		sm.re = re
	default:
		return nil, fmt.Errorf("string matcher %T is not supported", p)
	}
	return sm, nil
}

// anchored compiles an RE2 expression matched against the whole value, as Envoy's safe_regex.
func anchored(re string) (*regexp.Regexp, error) {
	return regexp.Compile(`^(?:` + re + `)$`)
}

func (sm *stringMatch) matches(v string) bool {
	if sm.re != nil {
		return sm.re.MatchString(v)
	}
	if sm.ignoreCase {
		switch {
		case sm.exact != nil:
			return strings.EqualFold(v, *sm.exact)
		case sm.prefix != nil:
			return len(v) >= len(*sm.prefix) && strings.EqualFold(v[:len(*sm.prefix)], *sm.prefix)
		case sm.suffix != nil:
			return len(v) >= len(*sm.suffix) && strings.EqualFold(v[len(v)-len(*sm.suffix):], *sm.suffix)
		}
		return strings.Contains(strings.ToLower(v), *sm.contains)
	}
	switch {
	case sm.exact != nil:
		return v == *sm.exact
	case sm.prefix != nil:
		return strings.HasPrefix(v, *sm.prefix)
	case sm.suffix != nil:
		return strings.HasSuffix(v, *sm.suffix)
	}
	return strings.Contains(v, *sm.contains)
}

func compileMatch(m *route.RouteMatch) (match, error) {
	out := match{caseSensitive: m.GetCaseSensitive() == nil || m.GetCaseSensitive().GetValue()}
	fold := func(s string) string {
		if !out.caseSensitive {
			return strings.ToLower(s)
		}
		return s
	}
	switch p := m.GetPathSpecifier().(type) {
	case *route.RouteMatch_Prefix:
		out.kind, out.value = pathPrefix, fold(p.Prefix)
	case *route.RouteMatch_Path:
		out.kind, out.value = pathExact, fold(p.Path)
	case *route.RouteMatch_PathSeparatedPrefix:
		out.kind, out.value = pathSeparatedPrefix, fold(p.PathSeparatedPrefix)
	case *route.RouteMatch_SafeRegex:
		re, err := anchored(p.SafeRegex.GetRegex())
		if err != nil {
			return out, fmt.Errorf("safe_regex: %w", err)
		}
		out.kind, out.regex = pathRegex, re
	default:
		return out, fmt.Errorf("path specifier %T is not supported", p)
	}
	if m.GetRuntimeFraction() != nil || m.GetGrpc() != nil || m.GetTlsContext() != nil || len(m.GetDynamicMetadata()) > 0 ||
		len(m.GetFilterState()) > 0 || len(m.GetCookies()) > 0 {
		return out, fmt.Errorf("only path, header and query parameter matches are supported")
	}
	for _, h := range m.GetHeaders() {
		hm := headerMatch{name: strings.ToLower(h.GetName()), invert: h.GetInvertMatch(), treatNone: h.GetTreatMissingHeaderAsEmpty()}
		switch s := h.GetHeaderMatchSpecifier().(type) {
		case *route.HeaderMatcher_PresentMatch:
			hm.present = s.PresentMatch
		case *route.HeaderMatcher_StringMatch:
			sm, err := compileStringMatch(s.StringMatch)
			if err != nil {
				return out, fmt.Errorf("header %s: %w", h.GetName(), err)
			}
			hm.sm = sm
		default:
			return out, fmt.Errorf("header %s: %T is not supported", h.GetName(), s)
		}
		out.headers = append(out.headers, hm)
	}
	for _, q := range m.GetQueryParameters() {
		qm := queryMatch{name: q.GetName()}
		switch s := q.GetQueryParameterMatchSpecifier().(type) {
		case *route.QueryParameterMatcher_PresentMatch:
			qm.present = s.PresentMatch
		case *route.QueryParameterMatcher_StringMatch:
			sm, err := compileStringMatch(s.StringMatch)
			if err != nil {
				return out, fmt.Errorf("query parameter %s: %w", q.GetName(), err)
			}
			qm.sm = sm
		case nil:
			qm.present = true
		}
		out.query = append(out.query, qm)
	}
	return out, nil
}

// pathOnly is the path without its query and fragment.
func pathOnly(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		return p[:i]
	}
	return p
}

// matches is Envoy's route match: the path p (without query), then every header, then every
// query parameter (of full, the path with its query). Select reads the path once for all
// routes.
func (m *match) matches(r Request, full, p string) bool {
	switch m.kind {
	case pathPrefix:
		if len(p) < len(m.value) || (m.caseSensitive && p[:len(m.value)] != m.value) || (!m.caseSensitive && !strings.EqualFold(p[:len(m.value)], m.value)) {
			return false
		}
	case pathExact:
		if (m.caseSensitive && p != m.value) || (!m.caseSensitive && !strings.EqualFold(p, m.value)) {
			return false
		}
	case pathSeparatedPrefix:
		if len(p) < len(m.value) || (m.caseSensitive && p[:len(m.value)] != m.value) || (!m.caseSensitive && !strings.EqualFold(p[:len(m.value)], m.value)) ||
			len(p) > len(m.value) && p[len(m.value)] != '/' {
			return false
		}
	case pathRegex:
		if !m.regex.MatchString(p) {
			return false
		}
	}
	for i := range m.headers {
		if !m.headers[i].matches(r) {
			return false
		}
	}
	if len(m.query) > 0 {
		_, q, _ := strings.Cut(full, "?")
		q, _, _ = strings.Cut(q, "#")
		for i := range m.query {
			if !m.query[i].matches(q) {
				return false
			}
		}
	}
	return true
}

// matches is Envoy's HeaderDataPresentMatch / HeaderDataBaseImpl.
func (h *headerMatch) matches(r Request) bool {
	v, ok := r.Header(h.name)
	if h.sm == nil {
		if !ok && !h.treatNone {
			return h.invert == h.present
		}
		return h.present != h.invert
	}
	if !ok && !h.treatNone {
		return false
	}
	return h.sm.matches(v) != h.invert
}

// matches is Envoy's QueryParameterMatcher on the first value of the parameter (decoded).
func (q *queryMatch) matches(query string) bool {
	v, ok := firstQueryValue(query, q.name)
	if q.sm == nil {
		return ok == q.present
	}
	return ok && q.sm.matches(v)
}

func firstQueryValue(query, name string) (string, bool) {
	for query != "" {
		var kv string
		kv, query, _ = strings.Cut(query, "&")
		k, v, _ := strings.Cut(kv, "=")
		if k != name {
			if dk, err := url.QueryUnescape(k); err != nil || dk != name {
				continue
			}
		}
		if dv, err := url.QueryUnescape(v); err == nil {
			v = dv
		}
		return v, true
	}
	return "", false
}
