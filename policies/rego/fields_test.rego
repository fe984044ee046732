# Rule matching, field by field (SEMANTICS.md "Matching one rule"): every source and operation
# field, its notX form, and every `when` key, with at least one matching and one non-matching
# case each. A case puts its rule in an ALLOW policy and checks whether that rule matched.
package goambient.authz_test

ap(ns, name, spec) := {
	"apiVersion": "security.istio.io/v1",
	"kind": "AuthorizationPolicy",
	"metadata": {"name": name, "namespace": ns},
	"spec": spec,
}

# base_request reaches the workload app=server in foo, from foo/client, with a JWT.
base_request := {
	"principal": "cluster.local/ns/foo/sa/client",
	"source_ip": "10.1.2.3",
	"destination_ip": "10.9.0.1",
	"destination_port": 8080,
	"auth": {
		"issuer": "https://idp.example.com/tenant",
		"subject": "user-1",
		"claims": {
			"aud": ["api", "web"],
			"azp": "web-app",
			"groups": ["admin", "dev"],
			"role": "reader",
			"nested": {"team": {"name": "core"}},
			"count": 3,
		},
	},
	"target": {"namespace": "foo", "labels": {"app": "server"}},
	"host": "Server.Foo.svc.cluster.local",
	"method": "GET",
	"path": "/api/v1/items?limit=10",
	"headers": {"x-user": "alice", "user-agent": "curl/8.0"},
	"sni": "server.foo.svc.cluster.local",
	"metadata": {"experimental.envoy.filters.network.mysql_proxy[shop.orders]": "select"},
}

# case_request: base_request with the case's top-level fields replaced (req) or removed (drop).
case_request(c) := object.union(
	object.remove(base_request, object.keys(object.get(c, "req", {})) | {k | some k in object.get(c, "drop", [])}),
	object.get(c, "req", {}),
)

case_policy(c) := ap(object.get(c, "ns", "foo"), "p", {"rules": [c.rule]})

case_hit(c) if {
	decide([case_policy(c)], case_request(c)).reason == "allow-matched"
} else := false

failing(cases) := {c.name | some c in cases; case_hit(c) != c.want}

src(s) := {"from": [{"source": s}]}

op(o) := {"to": [{"operation": o}]}

cond(key, values, not_values) := {"when": [object.filter(
	{"key": key, "values": values, "notValues": not_values},
	{"key"} | {k | some k, v in {"values": values, "notValues": not_values}; count(v) > 0},
)]}

jwt(iss, sub) := {"auth": {"issuer": iss, "subject": sub}}

# ---------------------------------------------------------------------------------------------

principal_cases := [
	{"name": "exact", "rule": src({"principals": ["cluster.local/ns/foo/sa/client"]}), "want": true},
	{"name": "exact other", "rule": src({"principals": ["cluster.local/ns/foo/sa/other"]}), "want": false},
	{"name": "one of several", "rule": src({"principals": ["x", "cluster.local/ns/foo/sa/client"]}), "want": true},
	{"name": "prefix", "rule": src({"principals": ["cluster.local/ns/foo/*"]}), "want": true},
	{"name": "prefix other", "rule": src({"principals": ["cluster.local/ns/bar/*"]}), "want": false},
	{"name": "suffix", "rule": src({"principals": ["*/sa/client"]}), "want": true},
	{"name": "suffix other", "rule": src({"principals": ["*/sa/other"]}), "want": false},
	{"name": "presence", "rule": src({"principals": ["*"]}), "want": true},
	{"name": "presence plaintext", "rule": src({"principals": ["*"]}), "drop": ["principal"], "want": false},
	{"name": "exact plaintext", "rule": src({"principals": ["cluster.local/ns/foo/sa/client"]}), "drop": ["principal"], "want": false},
	{"name": "not matching value", "rule": src({"notPrincipals": ["cluster.local/ns/foo/sa/client"]}), "want": false},
	{"name": "not other value", "rule": src({"notPrincipals": ["cluster.local/ns/foo/sa/other"]}), "want": true},
	{"name": "not presence plaintext", "rule": src({"notPrincipals": ["*"]}), "drop": ["principal"], "want": true},
	{"name": "not presence mTLS", "rule": src({"notPrincipals": ["*"]}), "want": false},
	{"name": "both", "rule": src({"principals": ["*"], "notPrincipals": ["*/sa/other"]}), "want": true},
	{"name": "presence is .+, which takes no newline", "rule": src({"principals": ["*"]}), "req": {"principal": "cluster.local/ns/foo/sa/a\nb"}, "want": false},
	{"name": "suffix is spiffe://.*x, .* takes no newline", "rule": src({"principals": ["*/sa/client"]}), "req": {"principal": "a\nb/ns/foo/sa/client"}, "want": false},
	{"name": "prefix is a prefix, a newline after it is fine", "rule": src({"principals": ["cluster.local/*"]}), "req": {"principal": "cluster.local/ns/foo/sa/a\nb"}, "want": true},
]

test_principals if {
	bad := failing(principal_cases)
	print("failing:", bad)
	count(bad) == 0
}

request_principal_cases := [
	{"name": "exact", "rule": src({"requestPrincipals": ["https://idp.example.com/tenant/user-1"]}), "want": true},
	{"name": "exact other sub", "rule": src({"requestPrincipals": ["https://idp.example.com/tenant/user-2"]}), "want": false},
	{"name": "exact other iss", "rule": src({"requestPrincipals": ["https://idp.example.com/other/user-1"]}), "want": false},
	{"name": "no slash, exact", "rule": src({"requestPrincipals": ["user-1"]}), "want": false},
	{"name": "no slash: the issuer, with an empty subject", "rule": src({"requestPrincipals": ["idp"]}), "req": {"auth": {"issuer": "idp"}}, "want": true},
	{"name": "no slash: not with a subject", "rule": src({"requestPrincipals": ["idp"]}), "req": jwt("idp", "u"), "want": false},
	{"name": "presence", "rule": src({"requestPrincipals": ["*"]}), "want": true},
	{"name": "presence without JWT", "rule": src({"requestPrincipals": ["*"]}), "drop": ["auth"], "want": false},
	{"name": "presence needs a subject", "rule": src({"requestPrincipals": ["*"]}), "req": {"auth": {"issuer": "iss"}}, "want": false},
	{"name": "presence needs an issuer", "rule": src({"requestPrincipals": ["*"]}), "req": {"auth": {"subject": "sub"}}, "want": false},
	{"name": "*x: sub suffix", "rule": src({"requestPrincipals": ["*r-1"]}), "want": true},
	{"name": "*x: sub suffix other", "rule": src({"requestPrincipals": ["*r-2"]}), "want": false},
	{"name": "*x: not an issuer suffix", "rule": src({"requestPrincipals": ["*iss"]}), "req": jwt("iss", "sub"), "want": false},
	{"name": "*iss/sub: iss suffix, sub exact", "rule": src({"requestPrincipals": ["*example.com/tenant/user-1"]}), "want": true},
	{"name": "*iss/sub: iss suffix other", "rule": src({"requestPrincipals": ["*example.org/tenant/user-1"]}), "want": false},
	{"name": "*iss/sub: sub is exact", "rule": src({"requestPrincipals": ["*example.com/tenant/user"]}), "want": false},
	{"name": "*/sub: any iss", "rule": src({"requestPrincipals": ["*/user-1"]}), "want": true},
	{"name": "*/sub: sub exact", "rule": src({"requestPrincipals": ["*/user-2"]}), "want": false},
	{"name": "*iss/sub*: sub exact, not prefix", "rule": src({"requestPrincipals": ["*/user*"]}), "want": false},
	{"name": "*iss/sub*: sub exact literal", "rule": src({"requestPrincipals": ["*/user*"]}), "req": jwt("iss", "user*"), "want": true},
	{"name": "x*: iss prefix", "rule": src({"requestPrincipals": ["acc*"]}), "req": jwt("accounts", "u"), "want": true},
	{"name": "x*: iss prefix other", "rule": src({"requestPrincipals": ["idp*"]}), "req": jwt("accounts", "u"), "want": false},
	{"name": "x*: not a sub prefix", "rule": src({"requestPrincipals": ["u*"]}), "req": jwt("accounts", "u"), "want": false},
	{"name": "iss/sub*: sub prefix", "rule": src({"requestPrincipals": ["https://idp.example.com/tenant/user*"]}), "want": true},
	{"name": "iss/sub*: sub prefix other", "rule": src({"requestPrincipals": ["https://idp.example.com/tenant/admin*"]}), "want": false},
	{"name": "iss/*: any sub", "rule": src({"requestPrincipals": ["https://idp.example.com/tenant/*"]}), "want": true},
	{"name": "iss/*: iss exact", "rule": src({"requestPrincipals": ["https://idp.example.com/*"]}), "want": false},
	{"name": "url issuer with prefix form is iss/sub*", "rule": src({"requestPrincipals": ["https://idp*"]}), "want": false},
	{"name": "*x: any issuer means an issuer (.+)", "rule": src({"requestPrincipals": ["*ice"]}), "req": {"auth": {"subject": "alice"}}, "want": false},
	{"name": "*/sub: any issuer means an issuer (.+)", "rule": src({"requestPrincipals": ["*/alice"]}), "req": {"auth": {"subject": "alice"}}, "want": false},
	{"name": "x*: any subject means a subject (.+)", "rule": src({"requestPrincipals": ["id*"]}), "req": {"auth": {"issuer": "idp"}}, "want": false},
	{"name": "iss/*: any subject means a subject (.+)", "rule": src({"requestPrincipals": ["idp/*"]}), "req": {"auth": {"issuer": "idp"}}, "want": false},
	{"name": "iss/sub: an empty subject is not *", "rule": src({"requestPrincipals": ["idp/x"]}), "req": {"auth": {"issuer": "idp"}}, "want": false},
	{"name": "not, without JWT", "rule": src({"notRequestPrincipals": ["*"]}), "drop": ["auth"], "want": true},
	{"name": "not, with JWT", "rule": src({"notRequestPrincipals": ["*"]}), "want": false},
	{"name": "not other", "rule": src({"notRequestPrincipals": ["*/user-2"]}), "want": true},
]

test_request_principals if {
	bad := failing(request_principal_cases)
	print("failing:", bad)
	count(bad) == 0
}

namespace_cases := [
	{"name": "exact", "rule": src({"namespaces": ["foo"]}), "want": true},
	{"name": "exact other", "rule": src({"namespaces": ["bar"]}), "want": false},
	{"name": "prefix", "rule": src({"namespaces": ["f*"]}), "want": true},
	{"name": "suffix", "rule": src({"namespaces": ["*oo"]}), "want": true},
	{"name": "glob in the middle", "rule": src({"namespaces": ["f*o"]}), "want": true},
	{"name": "glob in the middle other", "rule": src({"namespaces": ["b*o"]}), "want": false},
	{"name": "presence", "rule": src({"namespaces": ["*"]}), "want": true},
	{"name": "regexp characters are literal", "rule": src({"namespaces": ["f.o"]}), "want": false},
	{"name": "plaintext", "rule": src({"namespaces": ["*"]}), "drop": ["principal"], "want": false},
	{"name": "not a SPIFFE principal", "rule": src({"namespaces": ["*"]}), "req": {"principal": "cluster.local/foo"}, "want": false},
	{"name": "spiffe:// prefix tolerated", "rule": src({"namespaces": ["foo"]}), "req": {"principal": "spiffe://cluster.local/ns/foo/sa/client"}, "want": true},
	{"name": "not matching", "rule": src({"notNamespaces": ["foo"]}), "want": false},
	{"name": "not other", "rule": src({"notNamespaces": ["bar"]}), "want": true},
	{"name": "not, plaintext", "rule": src({"notNamespaces": ["foo"]}), "drop": ["principal"], "want": true},
	{"name": "the glob runs across the URI: s*a matches shop/sa", "rule": src({"namespaces": ["s*a"]}), "req": {"principal": "cluster.local/ns/shop/sa/client"}, "want": true},
	{"name": "the glob needs a / after it", "rule": src({"namespaces": ["s*a"]}), "req": {"principal": "cluster.local/ns/shop/sa2/client"}, "want": false},
	{"name": "suffix glob runs across /sa", "rule": src({"namespaces": ["*a"]}), "want": true},
	{"name": "a segment after the namespace", "rule": src({"namespaces": ["foo"]}), "req": {"principal": "cluster.local/ns/foo/extra/sa/client"}, "want": true},
	{"name": "a newline anywhere in the URI", "rule": src({"namespaces": ["foo"]}), "req": {"principal": "cluster.local/ns/foo/sa/a\nb"}, "want": false},
	{"name": "not, the glob runs across the URI", "rule": src({"notNamespaces": ["*a"]}), "want": false},
]

test_namespaces if {
	bad := failing(namespace_cases)
	print("failing:", bad)
	count(bad) == 0
}

service_account_cases := [
	{"name": "ns/sa", "rule": src({"serviceAccounts": ["foo/client"]}), "want": true},
	{"name": "ns/sa other ns", "rule": src({"serviceAccounts": ["bar/client"]}), "want": false},
	{"name": "ns/sa other sa", "rule": src({"serviceAccounts": ["foo/other"]}), "want": false},
	{"name": "sa in the policy's namespace", "rule": src({"serviceAccounts": ["client"]}), "want": true},
	{"name": "sa, policy in another namespace", "rule": src({"serviceAccounts": ["client"]}), "ns": "istio-system", "want": false},
	{"name": "sa, policy in the root namespace", "rule": src({"serviceAccounts": ["foo/client"]}), "ns": "istio-system", "want": true},
	{"name": "no wildcards", "rule": src({"serviceAccounts": ["foo/*"]}), "want": false},
	{"name": "plaintext", "rule": src({"serviceAccounts": ["foo/client"]}), "drop": ["principal"], "want": false},
	{"name": "not matching", "rule": src({"notServiceAccounts": ["foo/client"]}), "want": false},
	{"name": "not, bare sa", "rule": src({"notServiceAccounts": ["client"]}), "want": false},
	{"name": "not other", "rule": src({"notServiceAccounts": ["foo/other"]}), "want": true},
	{"name": "a segment between the namespace and sa/", "rule": src({"serviceAccounts": ["foo/client"]}), "req": {"principal": "cluster.local/ns/foo/extra/sa/client"}, "want": true},
	{"name": "segments before /ns/ and after the account", "rule": src({"serviceAccounts": ["client"]}), "req": {"principal": "td/x/ns/foo/sa/client/y/z"}, "want": true},
	{"name": "a longer account name", "rule": src({"serviceAccounts": ["foo/client"]}), "req": {"principal": "cluster.local/ns/foo/sa/client2"}, "want": false},
	{"name": "an empty segment after the account", "rule": src({"serviceAccounts": ["foo/client"]}), "req": {"principal": "cluster.local/ns/foo/sa/client/"}, "want": false},
	{"name": "no trust domain before /ns/", "rule": src({"serviceAccounts": ["foo/client"]}), "req": {"principal": "/ns/foo/sa/client"}, "want": false},
	{"name": "a newline after the account", "rule": src({"serviceAccounts": ["foo/client"]}), "req": {"principal": "cluster.local/ns/foo/sa/client/a\nb"}, "want": false},
	{"name": "not, extra segments", "rule": src({"notServiceAccounts": ["foo/client"]}), "req": {"principal": "cluster.local/ns/foo/x/sa/client"}, "want": false},
]

test_service_accounts if {
	bad := failing(service_account_cases)
	print("failing:", bad)
	count(bad) == 0
}

trust_domain_cases := [
	{"name": "exact", "rule": src({"trustDomains": ["cluster.local"]}), "want": true},
	{"name": "exact other", "rule": src({"trustDomains": ["other.local"]}), "want": false},
	{"name": "any", "rule": src({"trustDomains": ["*"]}), "want": true},
	{"name": "any, plaintext", "rule": src({"trustDomains": ["*"]}), "drop": ["principal"], "want": false},
	{"name": "any, even not a SPIFFE ID", "rule": src({"trustDomains": ["*"]}), "req": {"principal": "cluster.local/sa/web"}, "want": true},
	{"name": "glob, any URI under the trust domain", "rule": src({"trustDomains": ["cluster.*"]}), "req": {"principal": "cluster.local/sa/web"}, "want": true},
	{"name": "exact, any URI under the trust domain", "rule": src({"trustDomains": ["cluster.local"]}), "req": {"principal": "cluster.local/workload"}, "want": true},
	{"name": "exact needs the / after it", "rule": src({"trustDomains": ["cluster.local"]}), "req": {"principal": "cluster.localx/ns/foo/sa/client"}, "want": false},
	{"name": "exact is a prefix match: a newline after is fine", "rule": src({"trustDomains": ["cluster.local"]}), "req": {"principal": "cluster.local/ns/foo/sa/a\nb"}, "want": true},
	{"name": "glob is a regex: .* after it takes no newline", "rule": src({"trustDomains": ["cluster.*"]}), "req": {"principal": "cluster.local/ns/foo/sa/a\nb"}, "want": false},
	{"name": "prefix glob", "rule": src({"trustDomains": ["cluster.*"]}), "want": true},
	{"name": "suffix glob", "rule": src({"trustDomains": ["*.local"]}), "want": true},
	{"name": "middle glob", "rule": src({"trustDomains": ["c*l"]}), "want": true},
	{"name": "glob other", "rule": src({"trustDomains": ["prod.*"]}), "want": false},
	{"name": "glob does not cross /", "rule": src({"trustDomains": ["*b"]}), "req": {"principal": "a/b/ns/foo/sa/client"}, "want": false},
	{"name": "not matching", "rule": src({"notTrustDomains": ["cluster.local"]}), "want": false},
	{"name": "not other", "rule": src({"notTrustDomains": ["other.local"]}), "want": true},
]

test_trust_domains if {
	bad := failing(trust_domain_cases)
	print("failing:", bad)
	count(bad) == 0
}

ip_block_cases := [
	{"name": "cidr", "rule": src({"ipBlocks": ["10.1.0.0/16"]}), "want": true},
	{"name": "cidr other", "rule": src({"ipBlocks": ["10.2.0.0/16"]}), "want": false},
	{"name": "bare ip", "rule": src({"ipBlocks": ["10.1.2.3"]}), "want": true},
	{"name": "bare ip other", "rule": src({"ipBlocks": ["10.1.2.4"]}), "want": false},
	{"name": "ipv6 cidr", "rule": src({"ipBlocks": ["fd00::/64"]}), "req": {"source_ip": "fd00::5"}, "want": true},
	{"name": "ipv6 bare", "rule": src({"ipBlocks": ["fd00::5"]}), "req": {"source_ip": "fd00::5"}, "want": true},
	{"name": "ipv6 bare other", "rule": src({"ipBlocks": ["fd00::6"]}), "req": {"source_ip": "fd00::5"}, "want": false},
	{"name": "family mismatch", "rule": src({"ipBlocks": ["10.0.0.0/8"]}), "req": {"source_ip": "fd00::5"}, "want": false},
	{"name": "remote ip is not the source", "rule": src({"ipBlocks": ["203.0.113.0/24"]}), "req": {"remote_ip": "203.0.113.7"}, "want": false},
	{"name": "not matching", "rule": src({"notIpBlocks": ["10.0.0.0/8"]}), "want": false},
	{"name": "not other", "rule": src({"notIpBlocks": ["192.168.0.0/16"]}), "want": true},
	{"name": "remote cidr", "rule": src({"remoteIpBlocks": ["203.0.113.0/24"]}), "req": {"remote_ip": "203.0.113.7"}, "want": true},
	{"name": "remote, source not used when remote set", "rule": src({"remoteIpBlocks": ["10.1.2.3"]}), "req": {"remote_ip": "203.0.113.7"}, "want": false},
	{"name": "remote falls back to source", "rule": src({"remoteIpBlocks": ["10.1.2.3"]}), "want": true},
	{"name": "remote fallback other", "rule": src({"remoteIpBlocks": ["10.1.2.4/32"]}), "want": false},
	{"name": "not remote matching", "rule": src({"notRemoteIpBlocks": ["203.0.113.0/24"]}), "req": {"remote_ip": "203.0.113.7"}, "want": false},
	{"name": "not remote other", "rule": src({"notRemoteIpBlocks": ["10.1.2.3"]}), "req": {"remote_ip": "203.0.113.7"}, "want": true},
]

test_ip_blocks if {
	bad := failing(ip_block_cases)
	print("failing:", bad)
	count(bad) == 0
}

source_combination_cases := [
	{"name": "fields are ANDed", "rule": src({"principals": ["*"], "namespaces": ["bar"]}), "want": false},
	{"name": "fields are ANDed, all match", "rule": src({"principals": ["*"], "namespaces": ["foo"], "ipBlocks": ["10.0.0.0/8"]}), "want": true},
	{"name": "sources are ORed", "rule": {"from": [{"source": {"namespaces": ["bar"]}}, {"source": {"namespaces": ["foo"]}}]}, "want": true},
	{"name": "from and to are ANDed", "rule": {"from": [{"source": {"namespaces": ["foo"]}}], "to": [{"operation": {"methods": ["POST"]}}]}, "want": false},
	{
		"name": "from, to and when", "rule": {
			"from": [{"source": {"namespaces": ["foo"]}}],
			"to": [{"operation": {"methods": ["GET"]}}],
			"when": [{"key": "request.headers[x-user]", "values": ["alice"]}],
		},
		"want": true,
	},
	{"name": "empty rule", "rule": {}, "want": true},
	{"name": "empty rule, bare TCP", "rule": {}, "drop": ["principal", "method", "path", "host", "auth"], "want": true},
]

test_source_combinations if {
	bad := failing(source_combination_cases)
	print("failing:", bad)
	count(bad) == 0
}

# ---------------------------------------------------------------------------------------------

host_cases := [
	{"name": "exact, case-insensitive", "rule": op({"hosts": ["server.foo.svc.cluster.local"]}), "want": true},
	{"name": "exact, upper-case value", "rule": op({"hosts": ["SERVER.FOO.SVC.CLUSTER.LOCAL"]}), "want": true},
	{"name": "exact other", "rule": op({"hosts": ["server.bar.svc.cluster.local"]}), "want": false},
	{"name": "prefix", "rule": op({"hosts": ["server.*"]}), "want": true},
	{"name": "suffix", "rule": op({"hosts": ["*.svc.cluster.local"]}), "want": true},
	{"name": "suffix other", "rule": op({"hosts": ["*.example.com"]}), "want": false},
	{"name": "presence", "rule": op({"hosts": ["*"]}), "want": true},
	{"name": "presence, no host", "rule": op({"hosts": ["*"]}), "drop": ["host"], "want": false},
	{"name": "not matching", "rule": op({"notHosts": ["Server.*"]}), "want": false},
	{"name": "not other", "rule": op({"notHosts": ["other"]}), "want": true},
	{"name": "not, no host", "rule": op({"notHosts": ["*"]}), "drop": ["host"], "want": true},
	{"name": "ASCII only: the Kelvin sign is not k", "rule": op({"hosts": ["kelvin.example"]}), "req": {"host": "\u212Aelvin.example"}, "want": false},
	{"name": "ASCII only: U+017F is not s", "rule": op({"hosts": ["*.svc.local"]}), "req": {"host": "web.\u017Fvc.local"}, "want": false},
	{"name": "ASCII only: non-ASCII bytes compare exactly", "rule": op({"hosts": ["\u00e9.example"]}), "req": {"host": "\u00e9.EXAMPLE"}, "want": true},
]

test_hosts if {
	bad := failing(host_cases)
	print("failing:", bad)
	count(bad) == 0
}

port_cases := [
	{"name": "exact", "rule": op({"ports": ["8080"]}), "want": true},
	{"name": "other", "rule": op({"ports": ["9090"]}), "want": false},
	{"name": "one of several", "rule": op({"ports": ["80", "8080"]}), "want": true},
	{"name": "not matching", "rule": op({"notPorts": ["8080"]}), "want": false},
	{"name": "not other", "rule": op({"notPorts": ["9090"]}), "want": true},
]

test_ports if {
	bad := failing(port_cases)
	print("failing:", bad)
	count(bad) == 0
}

method_cases := [
	{"name": "exact", "rule": op({"methods": ["GET"]}), "want": true},
	{"name": "case-sensitive", "rule": op({"methods": ["get"]}), "want": false},
	{"name": "other", "rule": op({"methods": ["POST", "PUT"]}), "want": false},
	{"name": "prefix", "rule": op({"methods": ["G*"]}), "want": true},
	{"name": "suffix", "rule": op({"methods": ["*ET"]}), "want": true},
	{"name": "presence", "rule": op({"methods": ["*"]}), "want": true},
	{"name": "presence, TCP", "rule": op({"methods": ["*"]}), "drop": ["method"], "want": false},
	{"name": "not matching", "rule": op({"notMethods": ["GET"]}), "want": false},
	{"name": "not other", "rule": op({"notMethods": ["POST"]}), "want": true},
	{"name": "not, TCP", "rule": op({"notMethods": ["GET"]}), "drop": ["method"], "want": true},
]

test_methods if {
	bad := failing(method_cases)
	print("failing:", bad)
	count(bad) == 0
}

path_cases := [
	{"name": "exact, query ignored", "rule": op({"paths": ["/api/v1/items"]}), "want": true},
	{"name": "exact with the query never matches", "rule": op({"paths": ["/api/v1/items?limit=10"]}), "want": false},
	{"name": "exact other", "rule": op({"paths": ["/api/v1"]}), "want": false},
	{"name": "prefix", "rule": op({"paths": ["/api/*"]}), "want": true},
	{"name": "prefix other", "rule": op({"paths": ["/admin/*"]}), "want": false},
	{"name": "suffix", "rule": op({"paths": ["*/items"]}), "want": true},
	{"name": "suffix sees no query", "rule": op({"paths": ["*=10"]}), "want": false},
	{"name": "presence", "rule": op({"paths": ["*"]}), "want": true},
	{"name": "presence, TCP", "rule": op({"paths": ["*"]}), "drop": ["path"], "want": false},
	{"name": "template {*}", "rule": op({"paths": ["/api/{*}/items"]}), "want": true},
	{"name": "template {*} per segment", "rule": op({"paths": ["/{*}/{*}/{*}"]}), "want": true},
	{"name": "template {*} too few segments", "rule": op({"paths": ["/api/{*}"]}), "want": false},
	{"name": "template {*} too many segments", "rule": op({"paths": ["/{*}/{*}/{*}/{*}"]}), "want": false},
	{"name": "template {*} needs a non-empty segment", "rule": op({"paths": ["/api/v1/{*}"]}), "req": {"path": "/api/v1/"}, "want": false},
	{"name": "template literal segment other", "rule": op({"paths": ["/api/{*}/users"]}), "want": false},
	{"name": "template {**} rest", "rule": op({"paths": ["/api/{**}"]}), "want": true},
	{"name": "template {**} everything", "rule": op({"paths": ["/{**}"]}), "want": true},
	{"name": "template {**} empty rest", "rule": op({"paths": ["/api/v1/items/{**}"]}), "req": {"path": "/api/v1/items/"}, "want": true},
	{"name": "template {**} needs the slash", "rule": op({"paths": ["/api/v1/items/{**}"]}), "want": false},
	{"name": "template {**} other prefix", "rule": op({"paths": ["/api/v2/{**}"]}), "want": false},
	{"name": "template {*} and {**}", "rule": op({"paths": ["/api/{*}/{**}"]}), "req": {"path": "/api/v1/items/42/reviews"}, "want": true},
	{"name": "template {**} then literals", "rule": op({"paths": ["/api/{**}/42"]}), "req": {"path": "/api/v1/items/42"}, "want": true},
	{"name": "template {**} then literals, empty middle", "rule": op({"paths": ["/api/{**}/42"]}), "req": {"path": "/api//42"}, "want": true},
	{"name": "template {**} then literals, too short", "rule": op({"paths": ["/api/{**}/42"]}), "req": {"path": "/api/42"}, "want": false},
	{"name": "template {**} then literals, other end", "rule": op({"paths": ["/{**}/items"]}), "req": {"path": "/api/v1/items/42"}, "want": false},
	{"name": "template {**} then a trailing slash", "rule": op({"paths": ["/api/{**}/"]}), "req": {"path": "/api/v1/items/"}, "want": true},
	{"name": "template, query ignored", "rule": op({"paths": ["/api/{*}/items"]}), "req": {"path": "/api/v1/items?next=/a/b"}, "want": true},
	{"name": "template literal segments are not regexps", "rule": op({"paths": ["/a.i/{*}/items"]}), "want": false},
	{"name": "not matching", "rule": op({"notPaths": ["/api/*"]}), "want": false},
	{"name": "not other", "rule": op({"notPaths": ["/admin/*"]}), "want": true},
	{"name": "not template", "rule": op({"notPaths": ["/api/{**}"]}), "want": false},
	{"name": "not, TCP", "rule": op({"notPaths": ["/api/*"]}), "drop": ["path"], "want": true},
	{"name": "template {*} takes '*' (Envoy's uri_template_match_on_asterisk)", "rule": op({"paths": ["/api/{*}"]}), "req": {"path": "/api/*"}, "want": true},
	{"name": "template {*} does not take '['", "rule": op({"paths": ["/api/{*}"]}), "req": {"path": "/api/[x]"}, "want": false},
	{"name": "template {**} does not take ']'", "rule": op({"paths": ["/api/{**}"]}), "req": {"path": "/api/a/b]"}, "want": false},
	{"name": "template {**} then literals, the middle is checked", "rule": op({"paths": ["/api/{**}/42"]}), "req": {"path": "/api/[a]/42"}, "want": false},
]

test_paths if {
	bad := failing(path_cases)
	print("failing:", bad)
	count(bad) == 0
}

operation_combination_cases := [
	{"name": "fields are ANDed", "rule": op({"methods": ["GET"], "paths": ["/admin/*"]}), "want": false},
	{"name": "fields are ANDed, all match", "rule": op({"methods": ["GET"], "paths": ["/api/*"], "ports": ["8080"], "hosts": ["*"]}), "want": true},
	{"name": "operations are ORed", "rule": {"to": [{"operation": {"methods": ["POST"]}}, {"operation": {"methods": ["GET"]}}]}, "want": true},
	{"name": "value and not value", "rule": op({"paths": ["/api/*"], "notPaths": ["/api/v1/*"]}), "want": false},
]

test_operation_combinations if {
	bad := failing(operation_combination_cases)
	print("failing:", bad)
	count(bad) == 0
}

# ---------------------------------------------------------------------------------------------

mysql_key := "experimental.envoy.filters.network.mysql_proxy[shop.orders]"

condition_cases := [
	{"name": "source.ip cidr", "rule": cond("source.ip", ["10.1.0.0/16"], []), "want": true},
	{"name": "source.ip other", "rule": cond("source.ip", ["10.2.0.0/16"], []), "want": false},
	{"name": "source.ip notValues", "rule": cond("source.ip", [], ["10.1.2.3"]), "want": false},
	{"name": "source.ip notValues other", "rule": cond("source.ip", [], ["10.2.0.0/16"]), "want": true},
	{"name": "values and notValues", "rule": cond("source.ip", ["10.0.0.0/8"], ["10.1.2.3"]), "want": false},
	{"name": "values and notValues other", "rule": cond("source.ip", ["10.0.0.0/8"], ["10.1.9.9"]), "want": true},
	{"name": "remote.ip", "rule": cond("remote.ip", ["203.0.113.7"], []), "req": {"remote_ip": "203.0.113.7"}, "want": true},
	{"name": "remote.ip, not the source", "rule": cond("remote.ip", ["10.1.2.3"], []), "req": {"remote_ip": "203.0.113.7"}, "want": false},
	{"name": "remote.ip falls back to source", "rule": cond("remote.ip", ["10.1.0.0/16"], []), "want": true},
	{"name": "destination.ip", "rule": cond("destination.ip", ["10.9.0.0/16"], []), "want": true},
	{"name": "destination.ip other", "rule": cond("destination.ip", ["10.8.0.1"], []), "want": false},
	{"name": "destination.ip absent", "rule": cond("destination.ip", ["0.0.0.0/0"], []), "drop": ["destination_ip"], "want": false},
	{"name": "source.namespace", "rule": cond("source.namespace", ["f*"], []), "want": true},
	{"name": "source.namespace other", "rule": cond("source.namespace", ["b*"], []), "want": false},
	{"name": "source.principal", "rule": cond("source.principal", ["cluster.local/ns/foo/sa/client"], []), "want": true},
	{"name": "source.principal, plaintext", "rule": cond("source.principal", ["*"], []), "drop": ["principal"], "want": false},
	{"name": "source.principal notValues, plaintext", "rule": cond("source.principal", [], ["*"]), "drop": ["principal"], "want": true},
	{"name": "source.serviceAccount bare", "rule": cond("source.serviceAccount", ["client"], []), "want": true},
	{"name": "source.serviceAccount other", "rule": cond("source.serviceAccount", ["foo/other"], []), "want": false},
	{"name": "source.trustDomain", "rule": cond("source.trustDomain", ["cluster.local"], []), "want": true},
	{"name": "source.trustDomain other", "rule": cond("source.trustDomain", ["prod.*"], []), "want": false},
	{"name": "destination.port", "rule": cond("destination.port", ["8080"], []), "want": true},
	{"name": "destination.port other", "rule": cond("destination.port", ["8081"], []), "want": false},
	{"name": "connection.sni suffix", "rule": cond("connection.sni", ["*.svc.cluster.local"], []), "want": true},
	{"name": "connection.sni other", "rule": cond("connection.sni", ["example.com"], []), "want": false},
	{"name": "connection.sni absent", "rule": cond("connection.sni", ["*"], []), "drop": ["sni"], "want": false},
	{"name": "header, name lower-cased", "rule": cond("request.headers[X-User]", ["alice"], []), "want": true},
	{"name": "header prefix", "rule": cond("request.headers[x-user]", ["ali*"], []), "want": true},
	{"name": "header other", "rule": cond("request.headers[x-user]", ["bob"], []), "want": false},
	{"name": "header absent", "rule": cond("request.headers[x-missing]", ["*"], []), "want": false},
	{"name": "header absent, notValues", "rule": cond("request.headers[x-missing]", [], ["bob"]), "want": true},
	{"name": "header notValues", "rule": cond("request.headers[user-agent]", [], ["curl/*"]), "want": false},
	{"name": "header sent empty, * is present_match", "rule": cond("request.headers[x-team]", ["*"], []), "req": {"headers": {"x-team": ""}}, "want": true},
	{"name": "header sent empty, notValues *", "rule": cond("request.headers[x-team]", [], ["*"]), "req": {"headers": {"x-team": ""}}, "want": false},
	{"name": "header sent empty, a prefix", "rule": cond("request.headers[x-team]", ["a*"], []), "req": {"headers": {"x-team": ""}}, "want": false},
	{"name": "header absent, notValues *", "rule": cond("request.headers[x-team]", [], ["*"]), "want": true},
	{"name": "request.auth.principal", "rule": cond("request.auth.principal", ["https://idp.example.com/tenant/user-1"], []), "want": true},
	{"name": "request.auth.principal forms", "rule": cond("request.auth.principal", ["*/user-1"], []), "want": true},
	{"name": "request.auth.principal, no JWT", "rule": cond("request.auth.principal", ["*"], []), "drop": ["auth"], "want": false},
	{"name": "request.auth.audiences, any of", "rule": cond("request.auth.audiences", ["web"], []), "want": true},
	{"name": "request.auth.audiences prefix", "rule": cond("request.auth.audiences", ["a*"], []), "want": true},
	{"name": "request.auth.audiences other", "rule": cond("request.auth.audiences", ["mobile"], []), "want": false},
	{"name": "request.auth.audiences notValues", "rule": cond("request.auth.audiences", [], ["api"]), "want": false},
	{"name": "request.auth.presenter", "rule": cond("request.auth.presenter", ["web-app"], []), "want": true},
	{"name": "request.auth.presenter other", "rule": cond("request.auth.presenter", ["cli"], []), "want": false},
	{"name": "request.auth.presenter, azp a list", "rule": cond("request.auth.presenter", ["cli"], []), "req": {"auth": {"issuer": "i", "subject": "s", "claims": {"azp": ["web", "cli"]}}}, "want": true},
	{"name": "request.auth.audiences, aud a string", "rule": cond("request.auth.audiences", ["api"], []), "req": {"auth": {"issuer": "i", "subject": "s", "claims": {"aud": "api"}}}, "want": true},
	{"name": "request.auth.audiences, no aud", "rule": cond("request.auth.audiences", ["*"], []), "req": {"auth": {"issuer": "i", "subject": "s"}}, "want": false},
	{"name": "source.namespace, the glob runs across the URI", "rule": cond("source.namespace", ["*a"], []), "want": true},
	{"name": "source.serviceAccount, extra segments", "rule": cond("source.serviceAccount", ["client"], []), "req": {"principal": "cluster.local/ns/foo/x/sa/client"}, "want": true},
	{"name": "claim, list element", "rule": cond("request.auth.claims[groups]", ["admin"], []), "want": true},
	{"name": "claim, list other", "rule": cond("request.auth.claims[groups]", ["ops"], []), "want": false},
	{"name": "claim, string", "rule": cond("request.auth.claims[role]", ["reader"], []), "want": true},
	{"name": "claim, string prefix", "rule": cond("request.auth.claims[role]", ["read*"], []), "want": true},
	{"name": "claim, nested", "rule": cond("request.auth.claims[nested][team][name]", ["core"], []), "want": true},
	{"name": "claim, nested other", "rule": cond("request.auth.claims[nested][team][name]", ["edge"], []), "want": false},
	{"name": "claim, an object is no string", "rule": cond("request.auth.claims[nested][team]", ["*"], []), "want": false},
	{"name": "claim, a number is no string", "rule": cond("request.auth.claims[count]", ["3"], []), "want": false},
	{"name": "claim, missing", "rule": cond("request.auth.claims[missing]", ["*"], []), "want": false},
	{"name": "claim, missing, notValues", "rule": cond("request.auth.claims[missing]", [], ["x"]), "want": true},
	{"name": "claim, no JWT", "rule": cond("request.auth.claims[role]", ["reader"], []), "drop": ["auth"], "want": false},
	{"name": "envoy filter metadata", "rule": cond(mysql_key, ["select"], []), "want": true},
	{"name": "envoy filter metadata other", "rule": cond(mysql_key, ["insert"], []), "want": false},
	{"name": "envoy filter metadata absent", "rule": cond(mysql_key, ["*"], []), "drop": ["metadata"], "want": false},
	{
		"name": "conditions are ANDed", "rule": {"when": [
			{"key": "source.ip", "values": ["10.0.0.0/8"]},
			{"key": "destination.port", "values": ["9090"]},
		]},
		"want": false,
	},
	{
		"name": "conditions are ANDed, all match", "rule": {"when": [
			{"key": "source.ip", "values": ["10.0.0.0/8"]},
			{"key": "destination.port", "values": ["8080"]},
		]},
		"want": true,
	},
]

test_conditions if {
	bad := failing(condition_cases)
	print("failing:", bad)
	count(bad) == 0
}

# Every `when` key of SEMANTICS.md has a matching and a non-matching case above.
test_every_condition_key_is_covered if {
	keys := {
		"source.ip", "remote.ip", "destination.ip", "source.namespace", "source.principal",
		"source.serviceAccount", "source.trustDomain", "destination.port", "connection.sni",
		"request.headers[x-user]", "request.auth.principal", "request.auth.audiences",
		"request.auth.presenter", "request.auth.claims[role]", mysql_key,
	}
	covered(keys, true)
	covered(keys, false)
}

covered(keys, want) if {
	seen := {w.key | some c in condition_cases; c.want == want; some w in c.rule.when}
	count(keys - seen) == 0
}

# all_cases is every case of the tables above with its policy and request, for
# TestRegoCasesOnNative (rego_test.go), which runs them through the Go engine too.
case_tables := {
	"principals": principal_cases,
	"requestPrincipals": request_principal_cases,
	"namespaces": namespace_cases,
	"serviceAccounts": service_account_cases,
	"trustDomains": trust_domain_cases,
	"ipBlocks": ip_block_cases,
	"sources": source_combination_cases,
	"hosts": host_cases,
	"ports": port_cases,
	"methods": method_cases,
	"paths": path_cases,
	"operations": operation_combination_cases,
	"conditions": condition_cases,
}

all_cases := [x |
	some table, cases in case_tables
	some c in cases
	x := {"name": concat("/", [table, c.name]), "policy": case_policy(c), "request": case_request(c), "want": c.want}
]
