package rego

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"

	"github.com/goambient/goambient/policies"
)

// gen draws valid AuthorizationPolicy objects (the Kubernetes JSON shape, as maps) and
// requests from small vocabularies, so that rules match often and every field, form and
// `when` key is exercised. Validity follows Istio's rules (and policies.Load's): no selector
// with targetRefs, no targetRef with targetRefs, serviceAccounts never beside principals or
// namespaces, {**} only as the last segment, no empty source, operation or condition, DENY and
// CUSTOM always with rules, CUSTOM always with a provider and only IP attributes, GatewayClass
// references only in the root namespace. Draws never depend on map iteration order, so a seed
// gives the same cases everywhere.
type gen struct{ r *rand.Rand }

const rootNS = "istio-system"

// newGen returns the generator of case `stream` of the run seeded with seed.
func newGen(seed, stream uint64) *gen {
	return &gen{r: rand.New(rand.NewPCG(seed, stream))}
}

func (g *gen) chance(p float64) bool   { return g.r.Float64() < p }
func (g *gen) pick(xs []string) string { return xs[g.r.IntN(len(xs))] }
func (g *gen) between(lo, hi int) int  { return lo + g.r.IntN(hi-lo+1) }

// some returns between lo and hi distinct values of xs, in a random order.
func (g *gen) some(xs []string, lo, hi int) []string {
	n := min(g.between(lo, hi), len(xs))
	perm := g.r.Perm(len(xs))
	out := make([]string, n)
	for i := range n {
		out[i] = xs[perm[i]]
	}
	return out
}

// Vocabularies. Policy values mix exact, prefix, suffix and presence forms of the request values.
var (
	namespaces   = []string{"foo", "bar", rootNS}
	policyNames  = []string{"a", "a-b", "ab", "allow", "deny", "p1", "p10", "p2", "z"} // byte order matters: "a-b" < "a" < "ab"
	trustDomains = []string{"cluster.local", "cluster.local", "cluster.local", "td2.example"}
	accounts     = []string{"client", "web", "admin"}
	sourceIPs    = []string{"10.0.0.1", "10.0.1.5", "10.1.0.7", "192.168.1.10", "172.16.0.1", "fd00::1", "fd00::2:5"}
	ports        = []uint16{80, 8080, 9090}
	reqHosts     = []string{"web.foo.svc.cluster.local", "Web.Foo.svc.cluster.local", "api.example.com", "web:8080", "\u212Aube.svc.cluster.local"}
	reqPaths     = []string{"/", "/api/v1/items", "/api/v1/items/42", "/api/v1/items/", "/api/v2/users", "/api/v1/", "/admin/config", "/static/app.js", "/static/css/site.css",
		"/api/*/items", "/api/[v1]/items", "/static/a]b/c.css"} // '*' is in Envoy's uri_template set, '[' and ']' are not
	// oddPrincipals are peer URIs not of the form <td>/ns/<ns>/sa/<sa>, which istiod's regexes
	// still match (extra segments), and one with a newline, which RE2's '.' does not match.
	oddPrincipals = []string{"cluster.local/ns/foo/extra/sa/client", "cluster.local/ns/bar/sa/web/extra", "td2.example/x/ns/foo/sa/admin",
		"cluster.local/workload", "cluster.local/ns/foo/sa/client\nx", "cluster.local/ns/bar/sa/client2"}
	reqQueries = []string{"?q=1", "?next=/admin/x", "?"}
	reqMethods = []string{"GET", "GET", "POST", "DELETE", "PUT"}
	issuers    = []string{"https://issuer.example", "https://accounts.example/tenant", "idp"}
	subjects   = []string{"alice", "bob", "svc-1"}
	audiences  = []string{"api", "web", "mobile"}
	presenters = []string{"web-app", "cli"}
	snis       = []string{"web.foo.svc.cluster.local", "api.example.com"}
	gateways   = []string{"waypoint", "wp2"}
	classes    = []string{"istio-waypoint", "other-class"}
	services   = []string{"web", "api"}

	valPrincipals = []string{
		"cluster.local/ns/foo/sa/client", "cluster.local/ns/bar/sa/web", "cluster.local/ns/istio-system/sa/admin",
		"td2.example/ns/foo/sa/web", "cluster.local/ns/foo/*", "*/sa/web", "*", "td2.example/*",
	}
	valRequestPrincipals = []string{
		"*", "https://issuer.example/alice", "idp/bob", "*/alice", "https://issuer.example/*",
		"*issuer.example/alice", "*example/tenant/svc-1", "idp*", "https:*", "*ice", "https://issuer.example/al*",
		"https://accounts.example/tenant/*",
	}
	valNamespaces    = []string{"foo", "bar", rootNS, "f*", "*o", "*", "b*r", "istio-*", "*a", "b*b", "f*t"} // the glob runs across the URI: "*a" matches foo/sa
	valAccounts      = []string{"client", "web", "admin", "foo/client", "bar/web", "istio-system/admin"}
	valTrustDomains  = []string{"cluster.local", "td2.example", "*", "*.local", "td2.*", "cluster.*", "*.example"}
	valIPs           = []string{"10.0.0.0/16", "10.0.0.1", "10.1.0.0/16", "192.168.0.0/16", "fd00::/64", "fd00::1", "0.0.0.0/0", "10.0.0.0/8", "172.16.0.1/32"}
	valHosts         = []string{"web.foo.svc.cluster.local", "WEB.foo.svc.cluster.local", "*.svc.cluster.local", "web.*", "*", "api.example.com", "*.EXAMPLE.com", "web:8080", "KUBE.svc.cluster.local", "kube.*"}
	valPorts         = []string{"80", "8080", "9090"}
	valMethods       = []string{"GET", "POST", "DELETE", "PUT", "G*", "*", "*T"}
	valPaths         = []string{"/", "/api/v1/items", "/api/*", "*.js", "*", "/admin/*", "*/items", "/api/v1/items/42"}
	valTemplates     = []string{"/api/{*}/items", "/api/{**}", "/{*}/v1/{**}", "/api/v1/{*}", "/{**}", "/admin/{*}", "/static/{**}", "/api/v1/items/{**}", "/{*}/{*}/{*}", "/api/{*}/items/{**}"}
	valSNIs          = []string{"web.foo.svc.cluster.local", "*.svc.cluster.local", "api.*", "*"}
	valHeaderUser    = []string{"alice", "bob", "a*", "*", "*ce"}
	valHeaderEnv     = []string{"prod", "staging", "*ing", "*"}
	valAudiences     = []string{"api", "web", "a*", "*", "mobile"}
	valPresenters    = []string{"web-app", "cli", "*-app", "*"}
	valClaimGroups   = []string{"admin", "dev", "ops", "ad*", "*"}
	valClaimRole     = []string{"reader", "writer", "*er", "*"}
	valClaimRealm    = []string{"prod", "production", "prod*", "dev"}
	valMetadata      = []string{"select", "insert", "*"}
	mysqlKey         = "experimental.envoy.filters.network.mysql_proxy[shop.orders]"
	sourceFieldNames = []string{"principals", "requestPrincipals", "namespaces", "serviceAccounts", "trustDomains", "ipBlocks", "remoteIpBlocks"}
	opFieldNames     = []string{"hosts", "ports", "methods", "paths"}
	conditionKeys    = []string{
		"source.ip", "remote.ip", "destination.ip", "source.namespace", "source.principal", "source.serviceAccount",
		"source.trustDomain", "destination.port", "connection.sni", "request.headers[x-user]", "request.headers[X-User]",
		"request.headers[x-env]", "request.auth.principal", "request.auth.audiences", "request.auth.presenter",
		"request.auth.claims[groups]", "request.auth.claims[role]", "request.auth.claims[realm][name]",
		"request.auth.claims[missing]", mysqlKey,
	}
)

// policySet returns 1-8 policies with distinct namespace/name pairs.
func (g *gen) policySet() []map[string]any {
	n := g.between(1, 8)
	seen := map[string]bool{}
	var out []map[string]any
	for len(out) < n {
		ns := g.pick([]string{"foo", "foo", "bar", rootNS})
		name := g.pick(policyNames)
		if seen[ns+"/"+name] {
			continue
		}
		seen[ns+"/"+name] = true
		out = append(out, g.policy(ns, name))
	}
	return out
}

func (g *gen) policy(ns, name string) map[string]any {
	meta := map[string]any{"name": name, "namespace": ns}
	switch x := g.r.Float64(); {
	case x < 0.12:
		meta["annotations"] = map[string]any{"istio.io/dry-run": "true"}
	case x < 0.14:
		meta["annotations"] = map[string]any{"istio.io/dry-run": "True"}
	case x < 0.17:
		meta["annotations"] = map[string]any{"istio.io/dry-run": "false"}
	}
	obj := map[string]any{
		"apiVersion": "security.istio.io/v1",
		"kind":       "AuthorizationPolicy",
		"metadata":   meta,
	}
	spec := map[string]any{}
	obj["spec"] = spec
	if g.chance(0.04) {
		return obj // spec: {}, ALLOW nothing
	}

	action := ""
	switch x := g.r.Float64(); {
	case x < 0.15:
		// ALLOW by default
	case x < 0.40:
		action = "ALLOW"
	case x < 0.70:
		action = "DENY"
	case x < 0.85:
		action = "AUDIT"
	default:
		action = "CUSTOM"
	}
	if action != "" {
		spec["action"] = action
	}
	if action == "CUSTOM" {
		spec["provider"] = map[string]any{"name": g.pick([]string{"ext-authz", "opa"})}
	}

	switch x := g.r.Float64(); {
	case x < 0.40:
		// namespace-wide (or mesh-wide in the root namespace)
	case x < 0.60:
		spec["selector"] = map[string]any{"matchLabels": g.labels(0.5)}
	case x < 0.68:
		spec["targetRef"] = g.targetRef(ns)
	default:
		refs := []any{g.targetRef(ns)}
		if g.chance(0.3) {
			refs = append(refs, g.targetRef(ns))
		}
		spec["targetRefs"] = refs
	}

	nrules := g.between(1, 3)
	switch {
	case g.chance(0.04):
		nrules = g.between(11, 12) // rule[10] sorts before rule[2]
	case (action == "" || action == "ALLOW" || action == "AUDIT") && g.chance(0.06):
		nrules = 0
	}
	if nrules > 0 {
		rules := make([]any, nrules)
		for i := range rules {
			rules[i] = g.rule(action == "CUSTOM")
		}
		spec["rules"] = rules
	}
	return obj
}

func (g *gen) labels(p float64) map[string]any {
	l := map[string]any{}
	if g.chance(p) {
		l["app"] = g.pick(services)
	}
	if g.chance(p) {
		l["version"] = g.pick([]string{"v1", "v2"})
	}
	return l
}

func (g *gen) targetRef(ns string) map[string]any {
	kinds := []string{"Gateway", "Gateway", "Service", "ServiceEntry"}
	if ns == rootNS {
		kinds = append(kinds, "GatewayClass", "GatewayClass")
	}
	switch g.pick(kinds) {
	case "Gateway":
		return map[string]any{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": g.pick(gateways)}
	case "GatewayClass":
		return map[string]any{"kind": "GatewayClass", "group": "gateway.networking.k8s.io", "name": g.pick(classes)}
	case "ServiceEntry":
		return map[string]any{"kind": "ServiceEntry", "group": "networking.istio.io", "name": g.pick(services)}
	default:
		ref := map[string]any{"kind": "Service", "name": g.pick(services)}
		if group := g.pick([]string{"", "core", "omit"}); group != "omit" {
			ref["group"] = group
		}
		return ref
	}
}

func (g *gen) rule(custom bool) map[string]any {
	r := map[string]any{}
	if g.chance(0.12) {
		return r // {} matches everything
	}
	if g.chance(0.55) {
		from := make([]any, g.between(1, 2))
		for i := range from {
			from[i] = map[string]any{"source": g.source(custom)}
		}
		r["from"] = from
	}
	if g.chance(0.55) {
		to := make([]any, g.between(1, 2))
		for i := range to {
			to[i] = map[string]any{"operation": g.operation()}
		}
		r["to"] = to
	}
	if g.chance(0.35) {
		when := make([]any, g.between(1, 2))
		for i := range when {
			when[i] = g.condition(custom)
		}
		r["when"] = when
	}
	return r
}

// sourceValues are the values a source field (or its condition key) draws from.
func sourceValues(field string) []string {
	switch field {
	case "principals":
		return valPrincipals
	case "requestPrincipals":
		return valRequestPrincipals
	case "namespaces":
		return valNamespaces
	case "serviceAccounts":
		return valAccounts
	case "trustDomains":
		return valTrustDomains
	default: // ipBlocks, remoteIpBlocks
		return valIPs
	}
}

func notField(field string) string {
	return "not" + string(field[0]-'a'+'A') + field[1:]
}

// source sets 1-3 fields, each in its positive and/or not form.
func (g *gen) source(custom bool) map[string]any {
	fields := sourceFieldNames
	if custom {
		fields = []string{"ipBlocks", "remoteIpBlocks"} // CUSTOM supports only IP attributes
	}
	s := map[string]any{}
	for _, f := range g.some(fields, 1, 3) {
		if f == "serviceAccounts" && (s["principals"] != nil || s["notPrincipals"] != nil || s["namespaces"] != nil || s["notNamespaces"] != nil) {
			continue
		}
		if (f == "principals" || f == "namespaces") && (s["serviceAccounts"] != nil || s["notServiceAccounts"] != nil) {
			continue
		}
		g.setField(s, f, sourceValues(f))
	}
	if len(s) == 0 {
		g.setField(s, fields[0], sourceValues(fields[0]))
	}
	return s
}

func (g *gen) operation() map[string]any {
	o := map[string]any{}
	for _, f := range g.some(opFieldNames, 1, 3) {
		switch f {
		case "hosts":
			g.setField(o, f, valHosts)
		case "ports":
			g.setField(o, f, valPorts)
		case "methods":
			g.setField(o, f, valMethods)
		case "paths":
			vals := valPaths
			if g.chance(0.5) {
				vals = valTemplates
			}
			g.setField(o, f, vals)
		}
	}
	return o
}

// setField sets field, notField or both, with 1-3 values each.
func (g *gen) setField(m map[string]any, field string, vals []string) {
	switch x := g.r.Float64(); {
	case x < 0.6:
		m[field] = g.some(vals, 1, 3)
	case x < 0.85:
		m[notField(field)] = g.some(vals, 1, 2)
	default:
		m[field] = g.some(vals, 1, 3)
		m[notField(field)] = g.some(vals, 1, 2)
	}
}

func conditionValues(key string) []string {
	switch key {
	case "source.ip", "remote.ip", "destination.ip":
		return valIPs
	case "source.namespace":
		return valNamespaces
	case "source.principal":
		return valPrincipals
	case "source.serviceAccount":
		return valAccounts
	case "source.trustDomain":
		return valTrustDomains
	case "destination.port":
		return valPorts
	case "connection.sni":
		return valSNIs
	case "request.headers[x-user]", "request.headers[X-User]":
		return valHeaderUser
	case "request.headers[x-env]":
		return valHeaderEnv
	case "request.auth.principal":
		return valRequestPrincipals
	case "request.auth.audiences":
		return valAudiences
	case "request.auth.presenter":
		return valPresenters
	case "request.auth.claims[groups]", "request.auth.claims[missing]":
		return valClaimGroups
	case "request.auth.claims[role]":
		return valClaimRole
	case "request.auth.claims[realm][name]":
		return valClaimRealm
	default:
		return valMetadata
	}
}

func (g *gen) condition(custom bool) map[string]any {
	key := g.pick(conditionKeys)
	for custom && (key != "source.ip" && strings.HasPrefix(key, "source.") || strings.HasPrefix(key, "request.auth.")) {
		key = g.pick(conditionKeys) // CUSTOM supports neither peer nor JWT attributes
	}
	c := map[string]any{"key": key}
	vals := conditionValues(key)
	switch x := g.r.Float64(); {
	case x < 0.6:
		c["values"] = g.some(vals, 1, 3)
	case x < 0.85:
		c["notValues"] = g.some(vals, 1, 2)
	default:
		c["values"] = g.some(vals, 1, 3)
		c["notValues"] = g.some(vals, 1, 2)
	}
	return c
}

// request draws a request for a workload (ztunnel) or a waypoint target.
func (g *gen) request() policies.Request {
	var r policies.Request
	switch x := g.r.Float64(); {
	case x < 0.12:
		// plaintext
	case x < 0.15:
		r.Principal = "cluster.local/sa/" + g.pick(accounts) // not a SPIFFE workload identity
	case x < 0.25:
		r.Principal = g.pick(oddPrincipals)
	default:
		r.Principal = fmt.Sprintf("%s/ns/%s/sa/%s", g.pick(trustDomains), g.pick(namespaces), g.pick(accounts))
	}
	r.SourceIP = netip.MustParseAddr(g.pick(sourceIPs))
	if g.chance(0.3) {
		r.RemoteIP = netip.MustParseAddr(g.pick(sourceIPs))
	}
	if g.chance(0.7) {
		r.DestIP = netip.MustParseAddr(g.pick([]string{"10.0.0.1", "10.1.0.7", "192.168.1.10", "fd00::1"}))
	}
	if g.chance(0.92) {
		r.DestPort = ports[g.r.IntN(len(ports))]
	}
	if g.chance(0.5) {
		r.Auth = g.auth()
	}
	if g.chance(0.8) { // HTTP
		if g.chance(0.9) {
			r.Host = g.pick(reqHosts)
		}
		r.Method = g.pick(reqMethods)
		r.Path = g.pick(reqPaths)
		if g.chance(0.25) {
			r.Path += g.pick(reqQueries)
		}
		r.Headers = map[string]string{}
		if g.chance(0.6) {
			r.Headers["x-user"] = g.pick([]string{"alice", "bob", "carol", ""}) // sent empty: "*" (present_match) matches it
		}
		if g.chance(0.4) {
			r.Headers["x-env"] = g.pick([]string{"prod", "staging", ""})
		}
		if len(r.Headers) == 0 {
			r.Headers = nil
		}
	}
	if g.chance(0.5) {
		r.SNI = g.pick(snis)
	}
	if g.chance(0.3) {
		r.Metadata = map[string]string{mysqlKey: g.pick([]string{"select", "insert"})}
	}
	if g.chance(0.6) {
		r.Target = policies.Target{Namespace: g.pick([]string{"foo", "foo", "bar", rootNS})}
		if l := g.labels(0.75); len(l) > 0 {
			r.Target.Labels = map[string]string{}
			for k, v := range l {
				r.Target.Labels[k] = v.(string)
			}
		}
	} else {
		r.Target = policies.Target{Namespace: g.pick([]string{"foo", "foo", "bar"}), Waypoint: true}
		if g.chance(0.9) {
			r.Target.Gateway = g.pick(gateways)
		}
		if g.chance(0.8) {
			r.Target.GatewayClass = g.pick(classes)
		}
		if g.chance(0.7) {
			r.Target.Service = g.pick(services)
			if g.chance(0.3) {
				r.Target.ServiceNamespace = g.pick([]string{"foo", "bar"})
			}
			switch x := g.r.Float64(); {
			case x < 0.3:
				r.Target.ServiceKind = policies.KindServiceEntry
			case x < 0.45:
				r.Target.ServiceKind = policies.KindService
			}
		}
	}
	return r
}

func (g *gen) auth() policies.RequestAuth {
	a := policies.RequestAuth{Issuer: g.pick(issuers), Subject: g.pick(subjects)}
	switch x := g.r.Float64(); {
	case x < 0.04:
		a.Issuer = ""
	case x < 0.08:
		a.Subject = ""
	}
	claims := map[string]any{}
	// aud and azp, each a string or a list (request.auth.audiences / presenter read them).
	for _, c := range []struct {
		claim string
		vocab []string
	}{{"aud", audiences}, {"azp", presenters}} {
		switch x := g.r.Float64(); {
		case x < 0.3:
			claims[c.claim] = g.pick(c.vocab)
		case x < 0.6:
			list := []any{}
			for _, v := range g.some(c.vocab, 0, 2) {
				list = append(list, v)
			}
			claims[c.claim] = list
		}
	}
	if g.chance(0.6) {
		if g.chance(0.8) {
			groups := []any{}
			for _, s := range g.some([]string{"admin", "dev", "ops"}, 0, 2) {
				groups = append(groups, s)
			}
			claims["groups"] = groups
		} else {
			claims["groups"] = g.pick([]string{"admin", "dev"})
		}
	}
	if g.chance(0.5) {
		claims["role"] = g.pick([]string{"reader", "writer"})
	}
	if g.chance(0.4) {
		claims["realm"] = map[string]any{"name": g.pick([]string{"prod", "production", "dev"})}
	}
	if len(claims) > 0 {
		a.Claims = claims
	}
	return a
}
