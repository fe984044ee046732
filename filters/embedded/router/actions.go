package router

import (
	"fmt"
	"net/http"
	"strings"
)

// Vars are the values of Envoy's %VARIABLE%s in header values that the embedded waypoint
// expands (xdsserver's model.SupportedHeaderFormatters, which warns about the others: they
// are written as is).
type Vars struct {
	DownstreamRemoteAddress, DownstreamLocalAddress, PeerURISAN, Hostname, Protocol, RequestID string
}

func withoutPort(a string) string {
	if i := strings.LastIndexByte(a, ':'); i > 0 && !strings.HasSuffix(a, "]") {
		return a[:i]
	}
	return a
}

func (v *Vars) value(name string) (string, bool) {
	switch name {
	case "DOWNSTREAM_REMOTE_ADDRESS":
		return v.DownstreamRemoteAddress, true
	case "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT":
		return withoutPort(v.DownstreamRemoteAddress), true
	case "DOWNSTREAM_LOCAL_ADDRESS":
		return v.DownstreamLocalAddress, true
	case "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":
		return withoutPort(v.DownstreamLocalAddress), true
	case "DOWNSTREAM_PEER_URI_SAN":
		return v.PeerURISAN, true
	case "HOSTNAME":
		return v.Hostname, true
	case "PROTOCOL":
		return v.Protocol, true
	case "REQUEST_ID":
		return v.RequestID, true
	}
	return "", false
}

// checkFormat refuses a value whose '%' is neither "%%" nor a %VARIABLE% (Envoy refuses it).
func checkFormat(s string) error {
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			continue
		}
		if i+1 < len(s) && s[i+1] == '%' {
			i++
			continue
		}
		end := strings.IndexByte(s[i+1:], '%')
		if end < 0 {
			return fmt.Errorf("%q: unterminated %% variable", s)
		}
		i += end + 1
	}
	return nil
}

// Format expands a header value's %VARIABLE%s as Envoy does for those in Vars (%% is %).
func (v *Vars) Format(s string) string {
	if strings.IndexByte(s, '%') < 0 {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == '%' {
			b.WriteByte('%')
			i++
			continue
		}
		end := strings.IndexByte(s[i+1:], '%')
		if end < 0 {
			b.WriteString(s[i:])
			break
		}
		name := s[i+1 : i+1+end]
		if val, ok := v.value(name); ok {
			b.WriteString(val)
		} else {
			b.WriteString(s[i : i+end+2])
		}
		i += end + 1
	}
	return b.String()
}

// MutableHeaders is a request's headers as the router changes them (lower-case names).
type MutableHeaders interface {
	Set(name, value string)
	Add(name, value string)
	Del(name string)
}

// ApplyRequest applies the request changes as Envoy's HeaderParser does: removals, then the
// overwrites, then the appends; a value empty after formatting is not added.
func (h *HeaderOps) ApplyRequest(r MutableHeaders, v *Vars) {
	for _, n := range h.Remove {
		r.Del(n)
	}
	for _, hv := range h.Add {
		if !hv.Append {
			if val := v.Format(hv.Value); val != "" {
				r.Set(hv.Name, val)
			}
		}
	}
	for _, hv := range h.Add {
		if hv.Append {
			if val := v.Format(hv.Value); val != "" {
				r.Add(hv.Name, val)
			}
		}
	}
}

// ApplyResponse applies the response changes the same way to an upstream answer's headers.
func (h *HeaderOps) ApplyResponse(hdr http.Header, v *Vars) {
	for _, n := range h.RespRemove {
		hdr.Del(n)
	}
	for _, hv := range h.RespAdd {
		if !hv.Append {
			if val := v.Format(hv.Value); val != "" {
				hdr.Set(hv.Name, val)
			}
		}
	}
	for _, hv := range h.RespAdd {
		if hv.Append {
			if val := v.Format(hv.Value); val != "" {
				hdr.Add(hv.Name, val)
			}
		}
	}
}

// RewritePath is the path Envoy sends upstream: prefix_rewrite replaces what the route
// matched (its prefix, or the whole path for exact and regex routes), regex_rewrite
// substitutes every match in the path (the query is kept). ok is false when nothing changes.
func (rt *Route) RewritePath(path string) (string, bool) {
	a := rt.Action
	if a == nil {
		return "", false
	}
	switch {
	case a.PrefixRewrite != "":
		matched := rt.matched(path)
		return a.PrefixRewrite + path[len(matched):], true
	case a.regexRewrite != nil:
		p := pathOnly(path)
		np := a.regexRewrite.ReplaceAllString(p, a.regexSub)
		if np == "" {
			return "", false // Envoy leaves the path when the rewrite is empty
		}
		return np + path[len(p):], true
	}
	return "", false
}

// matched is the part of path the route's path matcher matched.
func (rt *Route) matched(path string) string {
	switch rt.m.kind {
	case pathPrefix, pathSeparatedPrefix:
		return path[:len(rt.m.value)]
	}
	return pathOnly(path)
}

// Location is a redirect's Location, as Envoy's newUri builds it from the request (scheme,
// host with its port unless another is given, path and query).
func (rt *Route) Location(r Request, forwardedProto string) string {
	rd := rt.Redirect
	scheme := r.Scheme()
	if rd.Scheme != "" {
		scheme = rd.Scheme
	}
	port := ""
	if rd.Port != 0 {
		port = fmt.Sprintf(":%d", rd.Port)
	}
	host := rd.Host
	if host == "" {
		host = r.Authority()
		if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
			reqPort := host[i:]
			remove := port != ""
			if scheme != forwardedProto {
				remove = remove || forwardedProto == "https" && reqPort == ":443" || forwardedProto == "http" && reqPort == ":80"
			}
			if remove {
				host = host[:i]
			}
		}
	}
	path := r.Path()
	if rd.PrefixRewrite != "" {
		path = rd.PrefixRewrite + path[len(rt.matched(path)):]
	}
	hasQuery := strings.Contains(rd.Path, "?")
	if rd.Path != "" {
		if hasQuery {
			path = rd.Path
		} else if i := strings.IndexByte(path, '?'); i >= 0 {
			path = rd.Path + path[i:]
		} else {
			path = rd.Path
		}
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	if !hasQuery && rd.StripQuery {
		path = pathOnly(path)
	}
	return scheme + "://" + host + port + path
}

func lowerAll(names []string) []string {
	out := make([]string, 0, len(names))
	for _, n := range names {
		out = append(out, lowerName(n))
	}
	return out
}

func lowerName(n string) string { return strings.ToLower(n) }
