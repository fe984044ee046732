package policies

import (
	"net/netip"
	"strings"
)

// strKind is one of Istio's string forms, as istiod hands it to Envoy.
type strKind uint8

const (
	strExact  strKind = iota
	strPrefix         // "abc*"
	strSuffix         // "*abc"
	// strAny is "*" where istiod writes the regex ".+" (matcher.StringMatcher and
	// StringMatcherWithPrefix): a non-empty value; RE2's '.' does not match a newline.
	strAny
	// strPresent is "*" where istiod writes present_match (matcher.HeaderMatcher, HostMatcher):
	// the attribute is present, whatever its value, "" included. Callers check presence.
	strPresent
	// strSuffixURI is "*abc" of a principal: istiod's regex spiffe://.*abc on the peer's URI,
	// so the part before the suffix holds no newline.
	strSuffixURI
)

// strMatch is a compiled Istio string value.
type strMatch struct {
	kind strKind
	s    string
	fold bool // ASCII case-insensitive (hosts), as Envoy's ignore_case
}

// newStrMatch compiles a value of a field istiod turns into a StringMatcher ("*" is ".+").
func newStrMatch(v string, fold bool) strMatch {
	switch {
	case v == "*":
		return strMatch{kind: strAny, fold: fold}
	case strings.HasPrefix(v, "*"):
		return strMatch{kind: strSuffix, s: v[1:], fold: fold}
	case strings.HasSuffix(v, "*"):
		return strMatch{kind: strPrefix, s: v[:len(v)-1], fold: fold}
	}
	return strMatch{kind: strExact, s: v, fold: fold}
}

// newHeaderMatch compiles a value of a field istiod turns into a HeaderMatcher (request
// headers, methods, hosts): "*" is present_match.
func newHeaderMatch(v string, fold bool) strMatch {
	if v == "*" {
		return strMatch{kind: strPresent, fold: fold}
	}
	return newStrMatch(v, fold)
}

// newPrincipalMatch compiles a principals / source.principal value: istiod's
// StringMatcherWithPrefix(v, "spiffe://") matched against the peer's SPIFFE URI. The principal
// given to match is that URI without "spiffe://".
func newPrincipalMatch(v string) strMatch {
	m := newStrMatch(v, false)
	if m.kind == strSuffix {
		m.kind = strSuffixURI
	}
	return m
}

func (m *strMatch) match(v string) bool {
	switch m.kind {
	case strAny:
		return v != "" && strings.IndexByte(v, '\n') < 0
	case strPresent:
		return true
	case strPrefix:
		if m.fold {
			return len(v) >= len(m.s) && equalFoldASCII(v[:len(m.s)], m.s)
		}
		return strings.HasPrefix(v, m.s)
	case strSuffix:
		if m.fold {
			return len(v) >= len(m.s) && equalFoldASCII(v[len(v)-len(m.s):], m.s)
		}
		return strings.HasSuffix(v, m.s)
	case strSuffixURI:
		return strings.HasSuffix(v, m.s) && strings.IndexByte(v[:len(v)-len(m.s)], '\n') < 0
	}
	if m.fold {
		return equalFoldASCII(v, m.s)
	}
	return v == m.s
}

// equalFoldASCII is Envoy's ignore_case comparison (absl::EqualsIgnoreCase): only ASCII letters
// fold, so the Kelvin sign U+212A is not 'k' and U+017F is not 's'.
func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if lowerASCII(a[i]) != lowerASCII(b[i]) {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// toLowerASCII lowers the ASCII letters of s, as Envoy's LowerCaseString does to header names.
func toLowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		b[i] = lowerASCII(c)
	}
	return string(b)
}

func strMatches(values []string, fold bool) []strMatch {
	return compileAll(values, func(v string) strMatch { return newStrMatch(v, fold) })
}

func headerMatches(values []string, fold bool) []strMatch {
	return compileAll(values, func(v string) strMatch { return newHeaderMatch(v, fold) })
}

func principalMatches(values []string) []strMatch {
	return compileAll(values, newPrincipalMatch)
}

func compileAll[T any](values []string, f func(string) T) []T {
	out := make([]T, len(values))
	for i, v := range values {
		out[i] = f(v)
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

// spiffeURI is a peer principal p standing for the URI "spiffe://"+p that Envoy's matchers see
// (the filter state io.istio.peer_principal at an Istio waypoint), without building it.
type spiffeURI string

const spiffePrefix = "spiffe://"

func (u spiffeURI) len() int { return len(spiffePrefix) + len(u) }

func (u spiffeURI) at(i int) byte {
	if i < len(spiffePrefix) {
		return spiffePrefix[i]
	}
	return u[i-len(spiffePrefix)]
}

// index is the first position >= from where tok starts in the URI, or -1.
func (u spiffeURI) index(tok string, from int) int {
	for i := from; i+len(tok) <= u.len(); i++ {
		j := 0
		for j < len(tok) && u.at(i+j) == tok[j] {
			j++
		}
		if j == len(tok) {
			return i
		}
	}
	return -1
}

// hasNewline reports whether the URI holds a newline in [from, to).
func (u spiffeURI) hasNewline(from, to int) bool {
	from = max(from-len(spiffePrefix), 0) // the prefix has none
	to -= len(spiffePrefix)
	return to > from && strings.IndexByte(string(u[from:to]), '\n') >= 0
}

// nsMatch is a namespaces / source.namespace value as istiod translates it: the regex
// .*/ns/<v>/.* on the peer's SPIFFE URI, each '*' of v becoming .* and the rest quoted, fully
// matched. So the glob runs over the whole URI, not over its namespace segment: "s*a" matches
// cluster.local/ns/shop/sa/client ("shop/sa" before a '/'), and cluster.local/ns/x/extra/sa/y
// is in namespace x.
type nsMatch struct {
	toks    []string // the literals between the .* of the regex: "/ns/"+part[0], part[1], ..., part[k]+"/"
	newline bool     // some literal holds a newline (so the quick search does not apply)
}

func newNSMatch(v string) nsMatch {
	parts := strings.Split(v, "*")
	parts[0] = "/ns/" + parts[0]
	parts[len(parts)-1] += "/"
	toks := parts[:0]
	for _, p := range parts {
		if p != "" {
			toks = append(toks, p)
		}
	}
	return nsMatch{toks: toks, newline: strings.Contains(v, "\n")}
}

func nsMatches(values []string) []nsMatch { return compileAll(values, newNSMatch) }

func (m *nsMatch) match(principal string, sites *nsSites) bool {
	if principal == "" {
		return false
	}
	if m.newline {
		return starsMatch(spiffeURI(principal), m.toks, 0)
	}
	// Every byte is matched by a literal or by a .*, neither of which takes a newline; and with
	// no newline anywhere, placing each literal as early as possible is enough.
	if !sites.done {
		sites.find(principal)
	}
	if sites.newline {
		return false
	}
	head := m.toks[0][1:] // "ns/<part>": the first literal without its '/'
	from := -1
	if !sites.many {
		part := head[len("ns/"):]
		for _, k := range sites.pos[:sites.n] {
			if strings.HasPrefix(principal[k+len("ns/"):], part) { // principal[k:] starts with "ns/"
				from = k + len(head)
				break
			}
		}
	} else if strings.HasPrefix(principal, head) {
		from = len(head) // the '/' is the last byte of "spiffe://"
	} else if i := strings.Index(principal, m.toks[0]); i >= 0 {
		from = i + len(m.toks[0])
	}
	if from < 0 {
		return false
	}
	for _, t := range m.toks[1:] {
		i := strings.Index(principal[from:], t)
		if i < 0 {
			return false
		}
		from += i + len(t)
	}
	return true
}

// nsSites is what the namespace matchers of one request share about its peer URI
// spiffe://<principal>: where a segment "ns/" starts (positions in the principal; 0 when the
// principal begins with "ns/", whose '/' is then the prefix's last byte), and whether it holds
// a newline. It is computed once, on first use, without allocating.
type nsSites struct {
	done    bool
	newline bool
	many    bool // more sites than pos holds: search the principal instead
	n       int
	pos     [8]int
}

func (s *nsSites) find(principal string) {
	s.done = true
	s.newline = strings.IndexByte(principal, '\n') >= 0
	for i := 0; ; {
		j := strings.Index(principal[i:], "ns/")
		if j < 0 {
			return
		}
		k := i + j
		if k == 0 || principal[k-1] == '/' {
			if s.n == len(s.pos) {
				s.many = true
				return
			}
			s.pos[s.n] = k
			s.n++
		}
		i = k + 1
	}
}

// starsMatch reports whether the URI from `from` on is .* toks[0] .* toks[1] ... .* with '.'
// not matching a newline, trying every placement of each literal.
func starsMatch(u spiffeURI, toks []string, from int) bool {
	if len(toks) == 0 {
		return !u.hasNewline(from, u.len())
	}
	for i := u.index(toks[0], from); i >= 0; i = u.index(toks[0], i+1) {
		if u.hasNewline(from, i) {
			return false // every later placement has it too
		}
		if starsMatch(u, toks[1:], i+len(toks[0])) {
			return true
		}
	}
	return false
}

func anyNS(ms []nsMatch, principal string, sites *nsSites) bool {
	for i := range ms {
		if ms[i].match(principal, sites) {
			return true
		}
	}
	return false
}

// saMatch is a serviceAccounts / source.serviceAccount value ("ns/sa", or "sa" in the policy's
// namespace) as istiod translates it: the regex spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)? on the
// peer's SPIFFE URI. Path segments may come before /ns/, between the namespace and sa/, and
// after the service account.
type saMatch struct {
	ns, sa string
	nsTok  string // "/ns/<ns>/"
	saTok  string // "sa/<sa>"
}

func saMatches(values []string, policyNS string) []saMatch {
	return compileAll(values, func(v string) saMatch {
		ns, sa, ok := strings.Cut(v, "/")
		if !ok {
			ns, sa = policyNS, v
		}
		return saMatch{ns: ns, sa: sa, nsTok: "/ns/" + ns + "/", saTok: "sa/" + sa}
	})
}

// match reports whether principal is A/ns/<ns>/B sa/<sa>C with A non-empty, B empty or X/, C
// empty or /Y, where A, X and Y are non-empty and hold no newline (RE2's .+).
func (m *saMatch) match(principal string) bool {
	for i := indexFrom(principal, m.nsTok, 1); i >= 0; i = indexFrom(principal, m.nsTok, i+1) {
		if strings.IndexByte(principal[:i], '\n') >= 0 {
			return false // every later A holds it too
		}
		rest := principal[i+len(m.nsTok):]
		for k := indexFrom(rest, m.saTok, 0); k >= 0; k = indexFrom(rest, m.saTok, k+1) {
			if b := rest[:k]; b != "" && (len(b) < 2 || b[len(b)-1] != '/' || strings.IndexByte(b, '\n') >= 0) {
				continue
			}
			c := rest[k+len(m.saTok):]
			if c == "" || len(c) >= 2 && c[0] == '/' && strings.IndexByte(c, '\n') < 0 {
				return true
			}
		}
	}
	return false
}

// indexFrom is strings.Index(s[from:], sub) as a position in s, or -1.
func indexFrom(s, sub string, from int) int {
	if from > len(s) {
		return -1
	}
	if i := strings.Index(s[from:], sub); i >= 0 {
		return from + i
	}
	return -1
}

func anySA(ms []saMatch, principal string) bool {
	for i := range ms {
		if ms[i].match(principal) {
			return true
		}
	}
	return false
}

// tdMatch is a trustDomains / source.trustDomain value as istiod translates it, on the peer's
// SPIFFE URI: "*" is the prefix spiffe:// (any peer principal, whatever its form); a value
// without '*' is the prefix spiffe://<td>/; "pre*suf" is the regex spiffe://pre[^/]*suf/.*.
type tdMatch struct {
	any      bool
	glob     bool
	prefix   string // "<td>/" for an exact value
	pre, suf string // the parts of a glob
}

func tdMatches(values []string) []tdMatch {
	return compileAll(values, func(v string) tdMatch {
		pre, suf, glob := strings.Cut(v, "*")
		switch {
		case v == "*":
			return tdMatch{any: true}
		case glob:
			return tdMatch{glob: true, pre: pre, suf: suf}
		}
		return tdMatch{prefix: v + "/"}
	})
}

func (m *tdMatch) match(principal string) bool {
	switch {
	case principal == "":
		return false
	case m.any:
		return true
	case !m.glob:
		return strings.HasPrefix(principal, m.prefix)
	}
	// [^/]* keeps the trust domain to the first '/'; it may hold a newline, the .* after it not.
	j := strings.IndexByte(principal, '/')
	if j < 0 {
		return false
	}
	td := principal[:j]
	return len(td) >= len(m.pre)+len(m.suf) && strings.HasPrefix(td, m.pre) && strings.HasSuffix(td, m.suf) &&
		strings.IndexByte(principal[j+1:], '\n') < 0
}

func anyTD(ms []tdMatch, principal string) bool {
	for i := range ms {
		if ms[i].match(principal) {
			return true
		}
	}
	return false
}

// reqPrincipalMatch is a requestPrincipals value split into issuer and subject matchers.
type reqPrincipalMatch struct{ iss, sub strMatch }

var matchAny = strMatch{kind: strAny} // istiod's matchAny: the regex .+

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
	return compileAll(values, newReqPrincipalMatch)
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

// pathMatch is a paths value: an Istio string form, or a {*} / {**} template. istiod hands a
// template to Envoy's uri_template matcher with {*} as * and {**} as **; Envoy turns * into
// [tmpl]+ and ** into [tmpl/]*, tmpl being the pchar set a-zA-Z0-9-._~%!$&'()+,;:@= plus '*'
// (runtime guard envoy.reloadable_features.uri_template_match_on_asterisk, true since Envoy
// 1.35), and matches the path without its query.
type pathMatch struct {
	str    strMatch
	tmpl   bool
	head   []string // template segments before {**} (all of them without {**}); "{*}" is one segment
	any    bool     // the template has {**}
	suffix string   // literal text after {**}, starting with "/", or ""
}

// templateChars are the bytes a {*} or {**} matches ({**} matches '/' too).
var templateChars = func() (t [256]bool) {
	for _, c := range []byte("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()+,;:@=*") {
		t[c] = true
	}
	return t
}()

func allTemplateChars(s string, slash bool) bool {
	for i := 0; i < len(s); i++ {
		if !templateChars[s[i]] && (!slash || s[i] != '/') {
			return false
		}
	}
	return true
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
			if seg == "" || !allTemplateChars(seg, false) {
				return false
			}
		} else if seg != tok {
			return false
		}
	}
	if !m.any {
		return true
	}
	return strings.HasSuffix(rest, m.suffix) && allTemplateChars(rest[:len(rest)-len(m.suffix)], true)
}

func pathMatches(values []string) []pathMatch { return compileAll(values, newPathMatch) }

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
