# The reference semantics of Istio's security.istio.io AuthorizationPolicy, as pinned by
# policies/SEMANTICS.md. The Go engine in policies/ is held to this file by the differential
# test in this folder.
#
# Input (see README.md):
#   input.request         the JSON form of policies.Request
#   input.policies        AuthorizationPolicy objects exactly as the user wrote them (k8s JSON)
#   input.root_namespace  the mesh root namespace
# When input.policies / input.root_namespace are absent, data.goambient.config.policies /
# data.goambient.config.root_namespace are used instead: the Go wrapper stores a prepared policy
# set there once, so each evaluation only sends the request.
#
# Output: decision, the JSON form of policies.Decision (encoding/json omission rules included).
package goambient.authz

# ---------------------------------------------------------------------------------------------
# Configuration and request
# ---------------------------------------------------------------------------------------------

default_root_namespace := "istio-system"

policy_set := input.policies if {
	is_array(input.policies)
} else := data.goambient.config.policies if {
	is_array(data.goambient.config.policies)
} else := []

root_namespace := input.root_namespace if {
	is_string(input.root_namespace)
	input.root_namespace != ""
} else := data.goambient.config.root_namespace if {
	is_string(data.goambient.config.root_namespace)
	data.goambient.config.root_namespace != ""
} else := default_root_namespace

req := input.request

target := object.get(req, "target", {})

# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

# list returns obj[key] when it is an array, else [] (absent and null lists mean "not set").
list(obj, key) := v if {
	v := obj[key]
	is_array(v)
} else := []

# str returns obj[key] when it is a string, else "" (Go's omitempty drops empty strings).
str(obj, key) := v if {
	v := obj[key]
	is_string(v)
} else := ""

# quote_meta escapes the regular-expression metacharacters of s (Go's regexp.QuoteMeta).
quote_meta(s) := regex.replace(s, `([\\.+*?()|\[\]{}^$])`, `\${1}`)

# full_match: the regexp re matches all of s, as Envoy's safe_regex (RE2::FullMatch) does. Go's
# regexp has RE2's syntax and semantics: '.' does not match a newline, [^/] does.
full_match(re, s) if regex.match(concat("", ["^(?:", re, ")$"]), s)

# glob_regex: pattern with each "*" as .* and the rest quoted (istiod's srcNamespaceGenerator).
glob_regex(pattern) := concat(".*", [quote_meta(p) | some p in split(pattern, "*")])

# ascii_lower lowers ASCII letters only, as Envoy's ignore_case and LowerCaseString do (Rego's
# lower() would also fold the Kelvin sign U+212A to k).
ascii_lower(s) := strings.replace_n(
	{
		"A": "a", "B": "b", "C": "c", "D": "d", "E": "e", "F": "f", "G": "g", "H": "h", "I": "i",
		"J": "j", "K": "k", "L": "l", "M": "m", "N": "n", "O": "o", "P": "p", "Q": "q", "R": "r",
		"S": "s", "T": "t", "U": "u", "V": "v", "W": "w", "X": "x", "Y": "y", "Z": "z",
	},
	s,
)

# ---------------------------------------------------------------------------------------------
# Istio's string forms: "*" = the regex .+ (non-empty, no newline), "abc*" = prefix, "*abc" =
# suffix, else exact (istiod matcher.StringMatcher: the "*" test comes first, then the leading
# "*", then the trailing "*"; so "*abc*" is the suffix "abc*"). Callers only call with a defined
# s: an absent attribute matches no value. Where istiod writes a HeaderMatcher (request headers,
# methods, hosts), "*" is present_match instead: see present_match.
# ---------------------------------------------------------------------------------------------

str_match(pat, s) if {
	pat == "*"
	s != ""
	not contains(s, "\n")
}

str_match(pat, s) if {
	pat != "*"
	startswith(pat, "*")
	endswith(s, substring(pat, 1, -1))
}

str_match(pat, s) if {
	not startswith(pat, "*")
	endswith(pat, "*")
	startswith(s, substring(pat, 0, count(pat) - 1))
}

str_match(pat, s) if {
	not startswith(pat, "*")
	not endswith(pat, "*")
	s == pat
}

# present_match: a HeaderMatcher value on an attribute that is present (s defined): "*" matches
# any value, "" included; the other forms are str_match.
present_match("*", _)

present_match(pat, s) if {
	pat != "*"
	str_match(pat, s)
}

# ---------------------------------------------------------------------------------------------
# The peer. At an Istio waypoint the source fields are matched against the filter state
# io.istio.peer_principal, the peer's SPIFFE URI "spiffe://" + principal, with the matchers
# istiod writes (pilot/pkg/security/authz/model/generator.go); no principal, no match.
# ---------------------------------------------------------------------------------------------

principal := p if {
	p := req.principal
	is_string(p)
	p != ""
}

peer_uri := concat("", ["spiffe://", principal])

# ---------------------------------------------------------------------------------------------
# Field matchers. Each takes one policy value (and the policy's namespace where it matters).
# ---------------------------------------------------------------------------------------------

# principals / source.principal: StringMatcherWithPrefix(v, "spiffe://"): "*" is the regex .+,
# "*x" the regex spiffe://.*x, "x*" the prefix spiffe://x, else exactly spiffe://v.
principal_matches("*") if full_match(".+", peer_uri)

principal_matches(v) if {
	v != "*"
	startswith(v, "*")
	full_match(concat("", ["spiffe://.*", quote_meta(substring(v, 1, -1))]), peer_uri)
}

principal_matches(v) if {
	not startswith(v, "*")
	endswith(v, "*")
	startswith(peer_uri, concat("", ["spiffe://", substring(v, 0, count(v) - 1)]))
}

principal_matches(v) if {
	not startswith(v, "*")
	not endswith(v, "*")
	peer_uri == concat("", ["spiffe://", v])
}

# namespaces / source.namespace: the regex .*/ns/<v>/.* with each * of v as .* (so a glob runs
# across the whole URI: "s*a" matches spiffe://cluster.local/ns/shop/sa/client).
namespace_matches(v) if full_match(concat("", [".*/ns/", glob_regex(v), "/.*"]), peer_uri)

# serviceAccounts / source.serviceAccount: "ns/sa", or "sa" in the policy's namespace, as the
# regex spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)? (istiod's serviceAccountRegex).
service_account_matches(v, policy_ns) if {
	parts := service_account_parts(v, policy_ns)
	full_match(
		concat("", ["spiffe://.+/ns/", quote_meta(parts[0]), "/(.+/|)sa/", quote_meta(parts[1]), "(/.+)?"]),
		peer_uri,
	)
}

service_account_parts(v, _) := [substring(v, 0, i), substring(v, i + 1, -1)] if {
	i := indexof(v, "/")
	i >= 0
}

service_account_parts(v, policy_ns) := [policy_ns, v] if not contains(v, "/")

# trustDomains / source.trustDomain: "*" is the prefix spiffe:// (any principal), a value
# without "*" the prefix spiffe://<v>/, "pre*suf" the regex spiffe://pre[^/]*suf/.*.
trust_domain_matches("*") if startswith(peer_uri, "spiffe://")

trust_domain_matches(v) if {
	not contains(v, "*")
	startswith(peer_uri, concat("", ["spiffe://", v, "/"]))
}

trust_domain_matches(v) if {
	v != "*"
	i := indexof(v, "*")
	i >= 0
	re := concat("", ["spiffe://", quote_meta(substring(v, 0, i)), "[^/]*", quote_meta(substring(v, i + 1, -1)), "/.*"])
	full_match(re, peer_uri)
}

# ipBlocks, remoteIpBlocks, source.ip, remote.ip, destination.ip: an IP means /32 or /128.
cidr(v) := v if contains(v, "/")

cidr(v) := concat("", [v, "/128"]) if {
	not contains(v, "/")
	contains(v, ":")
}

cidr(v) := concat("", [v, "/32"]) if {
	not contains(v, "/")
	not contains(v, ":")
}

ip_matches(v, ip) if {
	is_string(ip)
	ip != ""
	net.cidr_contains(cidr(v), ip)
}

source_ip := str(req, "source_ip")

# remote.ip is the original client (XFF / PROXY protocol), else the peer address.
remote_ip := ip if {
	ip := str(req, "remote_ip")
	ip != ""
} else := source_ip

destination_ip := str(req, "destination_ip")

# requestPrincipals / request.auth.principal: "<iss>/<sub>" of a validated JWT. As istiod's
# requestPrincipalGenerator does, the value is split at its last "/" (issuers are URLs) into an
# issuer and a subject matcher, and "any" is its matchAny, the regexp .+: present and non-empty.
auth := object.get(req, "auth", {})

jwt_issuer := str(auth, "issuer")

jwt_subject := str(auth, "subject")

jwt_present if jwt_issuer != ""

jwt_present if jwt_subject != ""

# last_slash is the index of the last "/" in v, or -1.
last_slash(v) := i if {
	idx := indexof_n(v, "/")
	count(idx) > 0
	i := idx[count(idx) - 1]
} else := -1

request_principal_matches(v) if {
	jwt_present
	rp_match(v, last_slash(v), jwt_issuer, jwt_subject)
}

# "*": any issuer and any subject.
rp_match(v, _, iss, sub) if {
	v == "*"
	iss != ""
	sub != ""
}

# "*x" without "/": any issuer, subject suffix x.
rp_match(v, slash, iss, sub) if {
	v != "*"
	startswith(v, "*")
	slash < 0
	iss != ""
	endswith(sub, substring(v, 1, -1))
}

# "*iss/sub": issuer suffix (any issuer when the issuer part is "*"), subject exact.
rp_match(v, slash, iss, sub) if {
	v != "*"
	startswith(v, "*")
	slash >= 0
	rp_issuer_suffix(substring(v, 0, slash), iss)
	sub == substring(v, slash + 1, -1)
}

# "x*" without "/": issuer prefix x, any subject.
rp_match(v, slash, iss, sub) if {
	not startswith(v, "*")
	endswith(v, "*")
	slash < 0
	startswith(iss, substring(v, 0, count(v) - 1))
	sub != ""
}

# "iss/sub*": issuer exact, subject prefix (any subject when the subject part is "*").
rp_match(v, slash, iss, sub) if {
	not startswith(v, "*")
	endswith(v, "*")
	slash >= 0
	iss == substring(v, 0, slash)
	rp_subject_prefix(substring(v, slash + 1, -1), sub)
}

# "iss/sub": both exact. Without "/", istiod takes the whole value as the issuer and an
# empty subject (our requests do not tell an absent "sub" claim from an empty one).
rp_match(v, slash, iss, sub) if {
	not startswith(v, "*")
	not endswith(v, "*")
	slash >= 0
	iss == substring(v, 0, slash)
	sub == substring(v, slash + 1, -1)
}

rp_match(v, slash, iss, sub) if {
	not startswith(v, "*")
	not endswith(v, "*")
	slash < 0
	iss == v
	sub == ""
}

rp_issuer_suffix("*", iss) if iss != ""

rp_issuer_suffix(part, iss) if {
	part != "*"
	endswith(iss, substring(part, 1, -1))
}

rp_subject_prefix("*", sub) if sub != ""

rp_subject_prefix(part, sub) if {
	part != "*"
	startswith(sub, substring(part, 0, count(part) - 1))
}

# hosts: HostMatcher on :authority, ignore_case (ASCII letters only); "*" is present_match.
host_matches(v) if {
	host := str(req, "host")
	host != ""
	present_match(ascii_lower(v), ascii_lower(host))
}

# ports / destination.port: decimal, exact.
port_matches(v) if {
	port := object.get(req, "destination_port", 0)
	port != 0
	to_number(v) == port
}

# methods: HeaderMatcher on :method, case-sensitive; "*" is present_match.
method_matches(v) if {
	method := str(req, "method")
	method != ""
	present_match(v, method)
}

# paths: the path without its query; a value containing {*} or {**} is an Envoy uri_template:
# istiod writes {*} as * and {**} as **, which Envoy matches with [tmpl]+ and [tmpl/]*, tmpl being
# a-zA-Z0-9-._~%!$&'()+,;:@= and "*" (uri_template_match_on_asterisk, on since Envoy 1.35).
path_only := p if {
	full := str(req, "path")
	full != ""
	p := split(full, "?")[0]
}

is_template(v) if contains(v, "{*}")

is_template(v) if contains(v, "{**}")

path_matches(v) if {
	not is_template(v)
	str_match(v, path_only)
}

path_matches(v) if {
	is_template(v)
	template_matches(split(v, "/"), split(path_only, "/"))
}

# Without {**}: same number of segments, each literal or a non-empty {*} segment.
template_matches(pat, segs) if {
	not "{**}" in pat
	count(pat) == count(segs)
	every i, p in pat {
		segment_matches(p, segs[i])
	}
}

# With {**} (the last operator; Istio still allows literal segments after it, as in its example
# "/foo/{**}/"): the segments before it match the first path segments, those after it match
# the last ones, and {**} takes whatever is between, "/" included, possibly empty. Envoy turns
# {**} into the regexp [pchar/]*, so "/a/{**}" matches "/a/" and "/a/b/c", but not "/a".
template_matches(pat, segs) if {
	some k, "{**}" in pat
	n := count(pat)
	m := count(segs)
	m >= n
	every i, p in array.slice(pat, 0, k) {
		segment_matches(p, segs[i])
	}
	every i, p in array.slice(pat, k + 1, n) {
		segment_matches(p, segs[((m - n) + (k + 1)) + i])
	}
	every s in array.slice(segs, k, (m - n) + (k + 1)) {
		regex.match(`^[a-zA-Z0-9._~%!$&'()+,;:@=*-]*$`, s)
	}
}

segment_matches("{*}", s) if regex.match(`^[a-zA-Z0-9._~%!$&'()+,;:@=*-]+$`, s)

segment_matches(p, s) if {
	p != "{*}"
	p == s
}

# ---------------------------------------------------------------------------------------------
# Sources and operations: every set field must match; notX matches when none of its values do.
# ---------------------------------------------------------------------------------------------

# field_matches(name, value, policy_ns) dispatches on the field name.
field_matches("principals", v, _) if principal_matches(v)

field_matches("requestPrincipals", v, _) if request_principal_matches(v)

field_matches("namespaces", v, _) if namespace_matches(v)

field_matches("serviceAccounts", v, ns) if service_account_matches(v, ns)

field_matches("trustDomains", v, _) if trust_domain_matches(v)

field_matches("ipBlocks", v, _) if ip_matches(v, source_ip)

field_matches("remoteIpBlocks", v, _) if ip_matches(v, remote_ip)

field_matches("hosts", v, _) if host_matches(v)

field_matches("ports", v, _) if port_matches(v)

field_matches("methods", v, _) if method_matches(v)

field_matches("paths", v, _) if path_matches(v)

# The fields of a source and of an operation, and the notX form of each.
positive_fields := {
	"principals", "requestPrincipals", "namespaces", "serviceAccounts", "trustDomains", "ipBlocks",
	"remoteIpBlocks", "hosts", "ports", "methods", "paths",
}

negated_fields := {
	"notPrincipals": "principals",
	"notRequestPrincipals": "requestPrincipals",
	"notNamespaces": "namespaces",
	"notServiceAccounts": "serviceAccounts",
	"notTrustDomains": "trustDomains",
	"notIpBlocks": "ipBlocks",
	"notRemoteIpBlocks": "remoteIpBlocks",
	"notHosts": "hosts",
	"notPorts": "ports",
	"notMethods": "methods",
	"notPaths": "paths",
}

any_value_matches(field, values, ns) if {
	some v in values
	field_matches(field, v, ns)
}

# clause_matches: every field the source or operation sets matches. Only the keys present are
# visited; an empty or null list is a field that is not set.
clause_matches(obj, ns) if {
	every key, values in obj {
		field_ok(key, as_list(values), ns)
	}
}

as_list(v) := v if is_array(v)

else := []

# X: not set, or one of its values matches.
field_ok(field, values, ns) if {
	field in positive_fields
	positive_ok(field, values, ns)
}

# notX: none of its values matches (so it can match a request that lacks the attribute).
field_ok(not_field, values, ns) if {
	field := negated_fields[not_field]
	not any_value_matches(field, values, ns)
}

positive_ok(_, values, _) if count(values) == 0

positive_ok(field, values, ns) if any_value_matches(field, values, ns)

source_matches(src, ns) if clause_matches(src, ns)

operation_matches(op) if clause_matches(op, "")

# ---------------------------------------------------------------------------------------------
# Conditions (when): (values empty or some value matches) and (notValues empty or none matches).
# ---------------------------------------------------------------------------------------------

condition_matches(c, ns) if {
	key := c.key
	values := list(c, "values")
	not_values := list(c, "notValues")
	condition_positive(key, values, ns)
	not any_condition_value(key, not_values, ns)
}

condition_positive(_, values, _) if count(values) == 0

condition_positive(key, values, ns) if any_condition_value(key, values, ns)

any_condition_value(key, values, ns) if {
	some v in values
	key_matches(key, v, ns)
}

key_matches("source.ip", v, _) if ip_matches(v, source_ip)

key_matches("remote.ip", v, _) if ip_matches(v, remote_ip)

key_matches("destination.ip", v, _) if ip_matches(v, destination_ip)

key_matches("source.namespace", v, _) if namespace_matches(v)

key_matches("source.principal", v, _) if principal_matches(v)

key_matches("source.serviceAccount", v, ns) if service_account_matches(v, ns)

key_matches("source.trustDomain", v, _) if trust_domain_matches(v)

key_matches("destination.port", v, _) if port_matches(v)

key_matches("connection.sni", v, _) if {
	sni := str(req, "sni")
	sni != ""
	str_match(v, sni)
}

key_matches("request.auth.principal", v, _) if request_principal_matches(v)

# request.auth.audiences and request.auth.presenter: the claims aud and azp, as istiod writes
# them (a string, or any element of a list).
key_matches("request.auth.audiences", v, _) if claim_matches(v, object.get(object.get(auth, "claims", {}), "aud", null))

key_matches("request.auth.presenter", v, _) if claim_matches(v, object.get(object.get(auth, "claims", {}), "azp", null))

# request.headers[NAME]: HeaderMatcher on the header named NAME with its ASCII letters lowered;
# an absent header matches nothing, "*" (present_match) matches one sent empty.
key_matches(key, v, _) if {
	startswith(key, "request.headers[")
	endswith(key, "]")
	name := ascii_lower(substring(key, count("request.headers["), (count(key) - count("request.headers[")) - 1))
	value := req.headers[name]
	is_string(value)
	present_match(v, value)
}

# request.auth.claims[A][B]...: the claim at that path, a string or a list of strings.
key_matches(key, v, _) if {
	startswith(key, "request.auth.claims[")
	endswith(key, "]")
	inner := substring(key, count("request.auth.claims["), (count(key) - count("request.auth.claims[")) - 1)
	claim := object.get(object.get(auth, "claims", {}), split(inner, "]["), null)
	claim_matches(v, claim)
}

# experimental.envoy.filters.*: string forms against metadata[key].
key_matches(key, v, _) if {
	startswith(key, "experimental.envoy.filters.")
	value := req.metadata[key]
	is_string(value)
	str_match(v, value)
}

claim_matches(v, claim) if {
	is_string(claim)
	str_match(v, claim)
}

claim_matches(v, claim) if {
	is_array(claim)
	some c in claim
	is_string(c)
	str_match(v, c)
}

# ---------------------------------------------------------------------------------------------
# Rules: (no from, or some source matches) and (no to, or some operation matches) and every
# condition matches. An empty rule {} matches everything.
# ---------------------------------------------------------------------------------------------

rule_matches(rule, ns) if {
	from_ok(rule, ns)
	to_ok(rule)
	every c in list(rule, "when") {
		condition_matches(c, ns)
	}
}

from_ok(rule, _) if count(list(rule, "from")) == 0

from_ok(rule, ns) if {
	some f in list(rule, "from")
	source_matches(object.get(f, "source", {}), ns)
}

to_ok(rule) if count(list(rule, "to")) == 0

to_ok(rule) if {
	some t in list(rule, "to")
	operation_matches(object.get(t, "operation", {}))
}

# ---------------------------------------------------------------------------------------------
# Policies: metadata, action, applicability.
# ---------------------------------------------------------------------------------------------

policy_ns(p) := ns if {
	ns := p.metadata.namespace
	is_string(ns)
	ns != ""
} else := "default"

policy_name(p) := str(p.metadata, "name")

spec(p) := s if {
	s := p.spec
	is_object(s)
} else := {}

# The action (of a spec) defaults to ALLOW.
action(s) := a if {
	a := str(s, "action")
	a != ""
} else := "ALLOW"

# istio.io/dry-run: "true" makes the policy a shadow (dry-run) policy. istiod reads the value
# with strconv.ParseBool, so these are its spellings of true.
dry_run(p) if p.metadata.annotations["istio.io/dry-run"] in {"1", "t", "T", "true", "TRUE", "True"}

is_dry(p) if {
	dry_run(p)
} else := false

# targetRefs plus the deprecated singular targetRef (of a spec), treated as one more entry.
target_refs(s) := array.concat(list(s, "targetRefs"), single_target_ref(s))

single_target_ref(s) := [r] if {
	r := s.targetRef
	is_object(r)
} else := []

# applies(s, ns): a policy with spec s in namespace ns applies to the request's target.
# Workload target (ztunnel): policies without targetRefs, in the root namespace or the
# workload's namespace, whose selector labels (if any) are all on the workload.
applies(s, ns) if {
	not target.waypoint
	namespace_applies(ns)
	count(target_refs(s)) == 0
	every k, v in object.get(s, ["selector", "matchLabels"], {}) {
		target_labels[k] == v
	}
}

namespace_applies(ns) if ns == root_namespace

namespace_applies(ns) if ns == target.namespace

target_labels := object.get(target, "labels", {})

# Waypoint target: only targetRefs policies, when some ref names this waypoint or service.
# Selector, namespace and root-namespace policies are enforced by ztunnel, not the waypoint.
applies(s, ns) if {
	target.waypoint == true
	some ref in target_refs(s)
	ref_matches(ref, ns)
}

ref_group(ref) := str(ref, "group")

ref_matches(ref, ns) if {
	ref.kind == "Gateway"
	ref_group(ref) == "gateway.networking.k8s.io"
	ns == target.namespace
	ref.name == target.gateway
}

ref_matches(ref, ns) if {
	ref.kind == "GatewayClass"
	ref_group(ref) == "gateway.networking.k8s.io"
	ns == root_namespace
	ref.name == target.gateway_class
}

# A Service targetRef attaches only to a Kubernetes Service, a ServiceEntry targetRef only to a
# ServiceEntry (istiod's WorkloadPolicyMatcher checks the service's registry).
ref_matches(ref, ns) if {
	ref.kind == "Service"
	ref_group(ref) in {"", "core"}
	service_kind == "Service"
	service_ref_matches(ref, ns)
}

ref_matches(ref, ns) if {
	ref.kind == "ServiceEntry"
	ref_group(ref) == "networking.istio.io"
	service_kind == "ServiceEntry"
	service_ref_matches(ref, ns)
}

service_kind := k if {
	k := str(target, "service_kind")
	k != ""
} else := "Service"

service_namespace := ns if {
	ns := str(target, "service_namespace")
	ns != ""
} else := str(target, "namespace")

service_ref_matches(ref, ns) if {
	service := str(target, "service")
	service != ""
	ns == service_namespace
	ref.name == service
}

# The applicable AuthorizationPolicies, each as what the evaluation needs of it (computed once
# per policy).
applicable := [info |
	some p in policy_set
	p.kind == "AuthorizationPolicy"
	ns := policy_ns(p)
	s := spec(p)
	applies(s, ns)
	info := policy_info(p, s, ns)
]

policy_info(p, s, ns) := {
	"ns": ns,
	"name": name,
	"policy": concat("/", [ns, name]),
	"action": action(s),
	"dry": is_dry(p),
	"provider": str(object.get(s, "provider", {}), "name"),
	"rules": list(s, "rules"),
} if {
	name := policy_name(p)
}

# ---------------------------------------------------------------------------------------------
# Matching rules, in Envoy's order.
# ---------------------------------------------------------------------------------------------

# Envoy's RBAC policies live in a map keyed by ns[NS]-policy[NAME]-rule[IDX] and are tried in
# key order (plain byte order, so rule[10] < rule[2]); Rego's sort on strings is byte order.
rule_key(ns, name, idx) := sprintf("ns[%s]-policy[%s]-rule[%d]", [ns, name, idx])

# Each matching rule, in its group: the action, prefixed with "dry-" for a dry-run policy.
hits contains hit if {
	some a in applicable
	some idx, rule in a.rules
	rule_matches(rule, a.ns)
	hit := {
		"key": rule_key(a.ns, a.name, idx),
		"group": group(a.action, a.dry),
		"policy": a.policy,
		"rule": idx,
		"provider": a.provider,
	}
}

group(act, false) := act

group(act, true) := concat("", ["dry-", act])

# ranked[group]: the matching rules of that group, first first.
ranked[g] := [t[1] | some t in sort([[h.key, h] | some h in hits; h.group == g])] if {
	some hit in hits
	g := hit.group
}

ordered(act, dry) := object.get(ranked, group(act, dry), [])

allow_applies(dry) if {
	some a in applicable
	a.action == "ALLOW"
	a.dry == dry
}

details(key) := sprintf("rbac_access_denied_matched_policy[%s]", [key])

details_none := "rbac_access_denied_matched_policy[none]"

# verdict(dry): steps 3-6 of SEMANTICS.md (DENY, then no ALLOW, then ALLOW, then default deny)
# over the non-dry-run (dry=false) or the dry-run (dry=true) policies.
verdict(dry) := v if {
	denies := ordered("DENY", dry)
	count(denies) > 0
	h := denies[0]
	v := {
		"allowed": false,
		"reason": "deny-matched",
		"action": "DENY",
		"policy": h.policy,
		"rule": h.rule,
		"details": details(h.key),
	}
} else := {"allowed": true, "reason": "no-policies", "rule": -1} if {
	not allow_applies(dry)
} else := v if {
	allows := ordered("ALLOW", dry)
	count(allows) > 0
	h := allows[0]
	v := {
		"allowed": true,
		"reason": "allow-matched",
		"action": "ALLOW",
		"policy": h.policy,
		"rule": h.rule,
	}
} else := {"allowed": false, "reason": "no-allow-matched", "rule": -1, "details": details_none}

# CUSTOM: the first matching CUSTOM rule; the caller asks its provider.
custom_part := {"custom": {"policy": h.policy, "rule": h.rule}, "custom_provider": h.provider} if {
	h := ranked.CUSTOM[0]
	h.provider != ""
} else := {"custom": {"policy": h.policy, "rule": h.rule}} if {
	h := ranked.CUSTOM[0]
} else := {}

# AUDIT: every matching AUDIT rule, in order; never changes the outcome.
audit_part := {"audit": audits} if {
	audits := [{"policy": h.policy, "rule": h.rule} | some h in ordered("AUDIT", false)]
	count(audits) > 0
} else := {}

# Dry-run: what the dry-run ALLOW/DENY policies alone would decide; absent when none applies.
dry_run_applied if {
	some a in applicable
	a.dry
	a.action in {"ALLOW", "DENY"}
}

dry_run_part := {"dry_run": object.union({"applied": true}, object.filter(verdict(true), {"allowed", "policy", "rule", "details"}))} if {
	dry_run_applied
} else := {}

# Envoy answers 400 before any policy is looked at for a :path holding '#', or whose path part
# (before '?') holds a NUL, raw or as %00 (googleurl's canonicalizer fails on it).
bad_request if contains(str(req, "path"), "#")

bad_request if contains(split(str(req, "path"), "?")[0], "%00")

bad_request if contains(split(str(req, "path"), "?")[0], "\u0000")

decision := {"allowed": false, "reason": "bad-request", "rule": -1} if {
	bad_request
} else := object.union_n([verdict(false), custom_part, audit_part, dry_run_part])
