package policies

import (
	"net/netip"
	"strings"
)

// strKind is one of Istio's string forms.
type strKind uint8

const (
	strExact strKind = iota
	strPrefix
	strSuffix
	strPresence
)

// strMatch is a compiled Istio string value: `*` (present), `abc*`, `*abc` or exact.
type strMatch struct {
	kind strKind
	s    string
	fold bool // case-insensitive (hosts)
}

func newStrMatch(v string, fold bool) strMatch {
	if fold {
		v = strings.ToLower(v)
	}
	switch {
	case v == "*":
		return strMatch{kind: strPresence, fold: fold}
	case strings.HasPrefix(v, "*"):
		return strMatch{kind: strSuffix, s: v[1:], fold: fold}
	case strings.HasSuffix(v, "*"):
		return strMatch{kind: strPrefix, s: v[:len(v)-1], fold: fold}
	}
	return strMatch{kind: strExact, s: v, fold: fold}
}

func (m *strMatch) match(v string) bool {
	switch m.kind {
	case strPresence:
		return v != ""
	case strPrefix:
		if m.fold {
			return len(v) >= len(m.s) && strings.EqualFold(v[:len(m.s)], m.s)
		}
		return strings.HasPrefix(v, m.s)
	case strSuffix:
		if m.fold {
			return len(v) >= len(m.s) && strings.EqualFold(v[len(v)-len(m.s):], m.s)
		}
		return strings.HasSuffix(v, m.s)
	}
	if m.fold {
		return strings.EqualFold(v, m.s)
	}
	return v == m.s
}

func strMatches(values []string, fold bool) []strMatch {
	out := make([]strMatch, len(values))
	for i, v := range values {
		out[i] = newStrMatch(v, fold)
	}
	return out
}

func anyStr(ms []strMatch, v string) bool {
	for i := range ms {
		if ms[i].match(v) {
			return true
		}
	}
	return false
}

// glob matches with `*` standing for any run of characters (namespaces, trust domains).
type glob string

func (g glob) match(s string) bool {
	p := string(g)
	// Iterative wildcard match with single backtrack point: no allocation.
	star, mark := -1, 0
	i, j := 0, 0
	for j < len(s) {
		switch {
		case i < len(p) && p[i] == '*':
			star, mark = i, j
			i++
		case i < len(p) && p[i] == s[j]:
			i++
			j++
		case star >= 0:
			i = star + 1
			mark++
			j = mark
		default:
			return false
		}
	}
	for i < len(p) && p[i] == '*' {
		i++
	}
	return i == len(p)
}

func globs(values []string) []glob {
	out := make([]glob, len(values))
	for i, v := range values {
		out[i] = glob(v)
	}
	return out
}

func anyGlob(gs []glob, v string) bool {
	for _, g := range gs {
		if g.match(v) {
			return true
		}
	}
	return false
}

// saMatch is a serviceAccounts value: namespace and name.
type saMatch struct{ ns, sa string }

func saMatches(values []string, policyNS string) []saMatch {
	out := make([]saMatch, len(values))
	for i, v := range values {
		ns, sa, ok := strings.Cut(v, "/")
		if !ok {
			ns, sa = policyNS, v
		}
		out[i] = saMatch{ns: ns, sa: sa}
	}
	return out
}

func anySA(ms []saMatch, p *Peer, ok bool) bool {
	if !ok {
		return false
	}
	for _, m := range ms {
		if m.ns == p.Namespace && m.sa == p.ServiceAccount {
			return true
		}
	}
	return false
}

// anyTD matches trustDomains values: `*` is any authenticated peer, whatever the form of its
// principal (istiod matches the prefix spiffe://); other values are globs on the trust domain.
func anyTD(ms []glob, principal string, p *Peer, ok bool) bool {
	for _, g := range ms {
		if g == "*" && principal != "" || ok && g.match(p.TrustDomain) {
			return true
		}
	}
	return false
}

func anyNS(ms []glob, p *Peer, ok bool) bool {
	return ok && anyGlob(ms, p.Namespace)
}

// reqPrincipalMatch is a requestPrincipals value split into issuer and subject matchers.
type reqPrincipalMatch struct{ iss, sub strMatch }

var matchAny = strMatch{kind: strPresence}

// newReqPrincipalMatch follows istiod's requestPrincipalGenerator.
func newReqPrincipalMatch(v string) reqPrincipalMatch {
	idx := strings.LastIndexByte(v, '/')
	found := idx >= 0
	iss, sub := v, ""
	if found {
		iss, sub = v[:idx], v[idx+1:]
	}
	switch {
	case v == "*":
		return reqPrincipalMatch{matchAny, matchAny}
	case strings.HasPrefix(v, "*"):
		if found {
			m := reqPrincipalMatch{iss: strMatch{kind: strSuffix, s: strings.TrimPrefix(iss, "*")}, sub: strMatch{kind: strExact, s: sub}}
			if iss == "*" {
				m.iss = matchAny
			}
			return m
		}
		return reqPrincipalMatch{iss: matchAny, sub: strMatch{kind: strSuffix, s: v[1:]}}
	case strings.HasSuffix(v, "*"):
		if found {
			m := reqPrincipalMatch{iss: strMatch{kind: strExact, s: iss}, sub: strMatch{kind: strPrefix, s: strings.TrimSuffix(sub, "*")}}
			if sub == "*" {
				m.sub = matchAny
			}
			return m
		}
		return reqPrincipalMatch{iss: strMatch{kind: strPrefix, s: v[:len(v)-1]}, sub: matchAny}
	}
	return reqPrincipalMatch{iss: strMatch{kind: strExact, s: iss}, sub: strMatch{kind: strExact, s: sub}}
}

func reqPrincipalMatches(values []string) []reqPrincipalMatch {
	out := make([]reqPrincipalMatch, len(values))
	for i, v := range values {
		out[i] = newReqPrincipalMatch(v)
	}
	return out
}

func anyReqPrincipal(ms []reqPrincipalMatch, a *RequestAuth) bool {
	if !a.present() {
		return false
	}
	for i := range ms {
		if ms[i].iss.match(a.Issuer) && ms[i].sub.match(a.Subject) {
			return true
		}
	}
	return false
}

func prefixes(values []string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(values))
	for _, v := range values {
		if p, err := parseCIDR(v); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func anyPrefix(ps []netip.Prefix, a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	a = a.Unmap()
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func ports(values []string) []uint16 {
	out := make([]uint16, 0, len(values))
	for _, v := range values {
		if p, err := parsePort(v); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func anyPort(ps []uint16, p uint16) bool {
	for _, x := range ps {
		if x == p {
			return true
		}
	}
	return false
}

// pathMatch is a paths value: an Istio string form, or a {*} / {**} template.
type pathMatch struct {
	str    strMatch
	tmpl   bool
	head   []string // template segments before {**} (all of them without {**}); "{*}" is one segment
	any    bool     // the template has {**}
	suffix string   // literal text after {**}, starting with "/", or ""
}

func newPathMatch(v string) pathMatch {
	if !isTemplate(v) {
		return pathMatch{str: newStrMatch(v, false)}
	}
	m := pathMatch{tmpl: true}
	toks := strings.Split(v, "/")
	for i, t := range toks {
		if t == "{**}" {
			m.any = true
			if rest := toks[i+1:]; len(rest) > 0 {
				m.suffix = "/" + strings.Join(rest, "/")
			}
			break
		}
		m.head = append(m.head, t)
	}
	return m
}

func (m *pathMatch) match(path string) bool {
	if !m.tmpl {
		return m.str.match(path)
	}
	rest := path
	for i, tok := range m.head {
		var seg string
		if !m.any && i == len(m.head)-1 {
			if strings.IndexByte(rest, '/') >= 0 {
				return false
			}
			seg, rest = rest, ""
		} else {
			j := strings.IndexByte(rest, '/')
			if j < 0 {
				return false
			}
			seg, rest = rest[:j], rest[j+1:]
		}
		if tok == "{*}" {
			if seg == "" {
				return false
			}
		} else if seg != tok {
			return false
		}
	}
	return !m.any || strings.HasSuffix(rest, m.suffix)
}

func pathMatches(values []string) []pathMatch {
	out := make([]pathMatch, len(values))
	for i, v := range values {
		out[i] = newPathMatch(v)
	}
	return out
}

func anyPath(ms []pathMatch, p string) bool {
	for i := range ms {
		if ms[i].match(p) {
			return true
		}
	}
	return false
}

// claimValue finds the claim at path in claims and reports whether some string there matches.
func claimMatches(claims map[string]any, path []string, ms []strMatch) bool {
	var v any = claims
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return false
		}
		if v, ok = m[k]; !ok {
			return false
		}
	}
	switch x := v.(type) {
	case string:
		return anyStr(ms, x)
	case []string:
		for _, s := range x {
			if anyStr(ms, s) {
				return true
			}
		}
	case []any:
		for _, e := range x {
			if s, ok := e.(string); ok && anyStr(ms, s) {
				return true
			}
		}
	}
	return false
}
