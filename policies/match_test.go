package policies

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

// istiodPrincipalRegex is the matcher istiod's RBAC builder writes for a source field value
// (pilot/pkg/security/authz/model/generator.go, matcher/string.go), as a full-match regexp on
// the peer URI, or "" for the forms it writes as a plain prefix or exact match.
func istiodPrincipalRegex(field, v, policyNS string) string {
	q := regexp.QuoteMeta
	switch field {
	case "principals": // StringMatcherWithPrefix(v, "spiffe://")
		switch {
		case v == "*":
			return ".+"
		case strings.HasPrefix(v, "*"):
			return "spiffe://.*" + q(v[1:])
		}
		return ""
	case "namespaces": // srcNamespaceGenerator
		parts := strings.Split(v, "*")
		for i := range parts {
			parts[i] = q(parts[i])
		}
		return ".*/ns/" + strings.Join(parts, ".*") + "/.*"
	case "serviceAccounts": // serviceAccountRegex
		ns, sa, ok := strings.Cut(v, "/")
		if !ok {
			ns, sa = policyNS, v
		}
		return "spiffe://.+/ns/" + q(ns) + "/(.+/|)sa/" + q(sa) + "(/.+)?"
	case "trustDomains": // srcTrustDomainGenerator
		if v == "*" || !strings.Contains(v, "*") {
			return ""
		}
		parts := strings.SplitN(v, "*", 2)
		return "spiffe://" + q(parts[0]) + "[^/]*" + q(parts[1]) + "/.*"
	}
	panic(field)
}

// TestPrincipalMatchersAreIstiodsRegexes holds the hand-written matchers of principals,
// namespaces, serviceAccounts and trustDomains to the regexes istiod generates, run with Go's
// regexp (RE2 syntax and semantics, as Envoy's safe_regex), on random principals and values
// drawn from the characters that matter ('/', the letters of "ns" and "sa", '*', newline).
func TestPrincipalMatchersAreIstiodsRegexes(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 5))
	pieces := []string{"/", "/", "ns", "sa", "/ns/", "/sa/", "a", "b", "td", ".", "\n", "x/"}
	draw := func(n int) string {
		var b strings.Builder
		for range n {
			b.WriteString(pieces[rng.IntN(len(pieces))])
		}
		return b.String()
	}
	valuePieces := []string{"a", "b", "s", "n", "*", "ab", "\n", "."}
	value := func(stars bool) string {
		var b strings.Builder
		for range 1 + rng.IntN(3) {
			p := valuePieces[rng.IntN(len(valuePieces))]
			if p == "*" && !stars {
				p = "a"
			}
			b.WriteString(p)
		}
		return b.String()
	}
	checked := map[string]int{}
	compiled := map[string]*regexp.Regexp{}
	for range 50000 {
		principal := draw(rng.IntN(9))
		switch rng.IntN(12) {
		case 0, 1, 2, 3:
			principal = "td/ns/" + value(false) + "/" + draw(rng.IntN(2)) + "sa/" + value(false) + draw(rng.IntN(2))
		case 4: // more "ns/" segments than nsSites keeps
			principal = strings.Repeat("ns/a/", 8+rng.IntN(3)) + draw(3)
		}
		field := []string{"principals", "namespaces", "serviceAccounts", "trustDomains"}[rng.IntN(4)]
		var v string
		var got bool
		switch field {
		case "principals":
			v = value(false)
			switch rng.IntN(3) {
			case 0:
				v = "*"
			case 1:
				v = "*" + v
			}
			m := newPrincipalMatch(v)
			got = anyPrincipal([]strMatch{m}, principal)
		case "namespaces":
			v = value(true)
			got = anyNS(nsMatches([]string{v}), principal, &nsSites{})
		case "serviceAccounts":
			v = value(false)
			if rng.IntN(2) == 0 {
				v = value(false) + "/" + v
			}
			if rng.IntN(2) == 0 { // a principal of that account, with or without extra segments
				ns, sa, ok := strings.Cut(v, "/")
				if !ok {
					ns, sa = "b", v
				}
				principal = draw(1+rng.IntN(2)) + "/ns/" + ns + "/" + draw(rng.IntN(2)) + "sa/" + sa + draw(rng.IntN(2))
			}
			got = anySA(saMatches([]string{v}, "b"), principal)
		case "trustDomains":
			v = value(false)
			switch rng.IntN(3) {
			case 0:
				v = "*" + v
			case 1:
				v += "*"
			}
			got = anyTD(tdMatches([]string{v}), principal)
		}
		re := istiodPrincipalRegex(field, v, "b")
		if re == "" {
			continue // a prefix or exact match: nothing regex-like to compare
		}
		rx := compiled[re]
		if rx == nil {
			rx = regexp.MustCompile("^(?:" + re + ")$")
			compiled[re] = rx
		}
		want := principal != "" && rx.MatchString("spiffe://"+principal)
		if got != want {
			t.Fatalf("%s %q on principal %q: got %v, istiod's regex %q says %v", field, v, principal, got, re, want)
		}
		checked[field+"="+map[bool]string{true: "match", false: "no"}[want]]++
	}
	for _, k := range []string{"principals=match", "principals=no", "namespaces=match", "namespaces=no", "serviceAccounts=match", "serviceAccounts=no", "trustDomains=match", "trustDomains=no"} {
		if checked[k] < 50 {
			t.Errorf("only %d cases of %s: the generator does not reach it", checked[k], k)
		}
	}
}
