# The scenarios of examples/ (manifests/examples in this repository), with their policies written
# as the JSON form of the YAML the user applies, and the results the scenario READMEs require.
package goambient.authz_test

import data.goambient.authz

decide(policies, request) := d if {
	d := authz.decision with input as {
		"root_namespace": "istio-system",
		"policies": policies,
		"request": request,
	}
}

# ---------------------------------------------------------------------------------------------
# handson
# ---------------------------------------------------------------------------------------------

# manifests/examples/handson/L4-authorization-policy.yaml
handson_l4 := {
	"apiVersion": "security.istio.io/v1",
	"kind": "AuthorizationPolicy",
	"metadata": {"name": "layer4-authz", "namespace": "handson", "labels": {"content": "layer4-authz"}},
	"spec": {
		"selector": {"matchLabels": {"app": "handson"}},
		"action": "DENY",
		"rules": [{
			"from": [{"source": {"principals": ["cluster.local/ns/handson/sa/curl-deny"]}}],
			"to": [{"operation": {"ports": ["8080"]}}],
		}],
	},
}

# manifests/examples/handson/L7-authorization-policy.yaml
handson_l7 := {
	"apiVersion": "security.istio.io/v1",
	"kind": "AuthorizationPolicy",
	"metadata": {"name": "layer7-authz", "namespace": "handson", "labels": {"content": "layer7-authz"}},
	"spec": {
		"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "handson"}],
		"action": "DENY",
		"rules": [{
			"from": [{"source": {"principals": ["cluster.local/ns/handson/sa/curl"]}}],
			"to": [{"operation": {"notMethods": ["GET"]}}],
		}],
	},
}

# handson-blue, as its destination ztunnel sees it.
handson_workload := {"namespace": "handson", "labels": {"app": "handson", "version": "blue"}}

# the namespace waypoint (k8s-gateway.yaml), for requests addressed to the Service handson.
handson_waypoint := {
	"namespace": "handson",
	"waypoint": true,
	"gateway": "handson",
	"gateway_class": "istio-waypoint",
	"service": "handson",
}

handson_tcp(sa) := {
	"principal": sprintf("cluster.local/ns/handson/sa/%s", [sa]),
	"source_ip": "10.244.1.5",
	"destination_ip": "10.244.2.7",
	"destination_port": 8080,
	"target": handson_workload,
}

handson_http(method, path) := {
	"principal": "cluster.local/ns/handson/sa/curl",
	"source_ip": "10.244.1.6",
	"destination_ip": "10.96.10.20",
	"destination_port": 8080,
	"host": "handson:8080",
	"method": method,
	"path": path,
	"target": handson_waypoint,
}

test_handson_step1_mesh_only_allows_everyone if {
	decide([], handson_tcp("curl-allow")) == {"allowed": true, "reason": "no-policies", "rule": -1}
	decide([], handson_tcp("curl-deny")) == {"allowed": true, "reason": "no-policies", "rule": -1}
}

test_handson_step2_curl_allow_allowed if {
	decide([handson_l4], handson_tcp("curl-allow")) == {"allowed": true, "reason": "no-policies", "rule": -1}
}

test_handson_step2_curl_deny_denied if {
	decide([handson_l4], handson_tcp("curl-deny")) == {
		"allowed": false,
		"reason": "deny-matched",
		"action": "DENY",
		"policy": "handson/layer4-authz",
		"rule": 0,
		"details": "rbac_access_denied_matched_policy[ns[handson]-policy[layer4-authz]-rule[0]]",
	}
}

test_handson_step2_other_port_and_other_workload_allowed if {
	decide([handson_l4], object.union(handson_tcp("curl-deny"), {"destination_port": 9090})).allowed
	decide([handson_l4], object.union(handson_tcp("curl-deny"), {"target": {"labels": {"app": "other"}}})).allowed
}

test_handson_step3_post_denied_at_waypoint if {
	decide([handson_l7], handson_http("POST", "/")) == {
		"allowed": false,
		"reason": "deny-matched",
		"action": "DENY",
		"policy": "handson/layer7-authz",
		"rule": 0,
		"details": "rbac_access_denied_matched_policy[ns[handson]-policy[layer7-authz]-rule[0]]",
	}
}

test_handson_step3_delete_denied_with_same_details if {
	d := decide([handson_l7], handson_http("DELETE", "/id/123"))
	not d.allowed
	d.details == "rbac_access_denied_matched_policy[ns[handson]-policy[layer7-authz]-rule[0]]"
}

test_handson_step3_get_allowed if {
	decide([handson_l7], handson_http("GET", "/")) == {"allowed": true, "reason": "no-policies", "rule": -1}
}

test_handson_step3_other_clients_post_allowed if {
	req := object.union(handson_http("POST", "/"), {"principal": "cluster.local/ns/handson/sa/curl-allow"})
	decide([handson_l7], req).allowed
}

# The targetRefs policy is for the waypoint; ztunnel does not enforce it.
test_handson_step3_l7_policy_not_enforced_at_ztunnel if {
	req := object.union(object.remove(handson_http("POST", "/"), ["target"]), {"target": handson_workload})
	decide([handson_l7], req) == {"allowed": true, "reason": "no-policies", "rule": -1}
}

# Step 2's selector policy is enforced by ztunnel, not by the waypoint.
test_handson_l4_policy_not_enforced_at_waypoint if {
	req := object.union(handson_http("POST", "/"), {"principal": "cluster.local/ns/handson/sa/curl-deny"})
	decide([handson_l4], req) == {"allowed": true, "reason": "no-policies", "rule": -1}
}

# ---------------------------------------------------------------------------------------------
# bookinfo-lite
# ---------------------------------------------------------------------------------------------

# manifests/examples/bookinfo-lite/allow-nothing.yaml
allow_nothing := {
	"apiVersion": "security.istio.io/v1beta1",
	"kind": "AuthorizationPolicy",
	"metadata": {"name": "allow-nothing", "namespace": "default"},
	"spec": {},
}

# manifests/examples/bookinfo-lite/rbac.yaml
rbac(name, app, principals) := {
	"apiVersion": "security.istio.io/v1beta1",
	"kind": "AuthorizationPolicy",
	"metadata": {"name": name, "namespace": "default"},
	"spec": {
		"selector": {"matchLabels": {"app": app}},
		"action": "ALLOW",
		"rules": [{"from": [{"source": {"principals": principals}}]}],
	},
}

bookinfo_rbac := [
	rbac("web-api-rbac", "web-api", [
		"cluster.local/ns/default/sa/sleep",
		"cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account",
	]),
	rbac("recommendation-rbac", "recommendation", ["cluster.local/ns/default/sa/web-api"]),
	rbac("purchase-history-rbac", "purchase-history", ["cluster.local/ns/default/sa/recommendation"]),
]

bookinfo_call(from_sa, to_app) := {
	"principal": sprintf("cluster.local/ns/default/sa/%s", [from_sa]),
	"source_ip": "10.0.0.2",
	"destination_port": 8081,
	"target": {"namespace": "default", "labels": {"app": to_app}},
}

denied_none := {
	"allowed": false,
	"reason": "no-allow-matched",
	"rule": -1,
	"details": "rbac_access_denied_matched_policy[none]",
}

test_bookinfo_step1_mesh_only if {
	decide([], bookinfo_call("sleep", "web-api")).allowed
}

test_bookinfo_step2_allow_nothing_denies_every_hop if {
	every call in [["sleep", "web-api"], ["web-api", "recommendation"], ["recommendation", "purchase-history"]] {
		decide([allow_nothing], bookinfo_call(call[0], call[1])) == denied_none
	}
}

test_bookinfo_step3_chain_allowed if {
	policies := array.concat([allow_nothing], bookinfo_rbac)
	decide(policies, bookinfo_call("sleep", "web-api")) == {
		"allowed": true,
		"reason": "allow-matched",
		"action": "ALLOW",
		"policy": "default/web-api-rbac",
		"rule": 0,
	}
	decide(policies, bookinfo_call("web-api", "recommendation")).policy == "default/recommendation-rbac"
	decide(policies, bookinfo_call("recommendation", "purchase-history")).policy == "default/purchase-history-rbac"
}

test_bookinfo_step3_notsleep_denied if {
	policies := array.concat([allow_nothing], bookinfo_rbac)
	decide(policies, bookinfo_call("notsleep", "web-api")) == denied_none
}

test_bookinfo_step3_sleep_to_recommendation_denied if {
	policies := array.concat([allow_nothing], bookinfo_rbac)
	decide(policies, bookinfo_call("sleep", "recommendation")) == denied_none
}

# ---------------------------------------------------------------------------------------------
# demo-strict
# ---------------------------------------------------------------------------------------------

# manifests/examples/demo-strict/authz-policy.yaml
backend_allow_frontend_only := {
	"apiVersion": "security.istio.io/v1",
	"kind": "AuthorizationPolicy",
	"metadata": {"name": "backend-allow-frontend-only", "namespace": "demo"},
	"spec": {
		"selector": {"matchLabels": {"app": "backend"}},
		"action": "ALLOW",
		"rules": [{"from": [{"source": {"principals": [
			"cluster.local/ns/demo/sa/frontend",
			"cluster.local/ns/kong/sa/kong-kong",
		]}}]}],
	},
}

# PeerAuthentication STRICT as istiod projects it for ztunnel (reference §3.5): the static
# DENY policy istio-system/istio_converted_static_strict, notPrincipals presence.
converted_static_strict := {
	"apiVersion": "security.istio.io/v1",
	"kind": "AuthorizationPolicy",
	"metadata": {"name": "istio_converted_static_strict", "namespace": "istio-system"},
	"spec": {"action": "DENY", "rules": [{"from": [{"source": {"notPrincipals": ["*"]}}]}]},
}

# a plaintext request (curl-test, outside the mesh) has no principal.
plaintext_call(path) := {
	"source_ip": "10.1.0.9",
	"destination_port": 8080,
	"method": "GET",
	"path": path,
	"host": "backend.demo.svc.cluster.local",
	"target": {"namespace": "demo", "labels": {"app": "backend"}},
}

backend_call(principal, path) := object.union(plaintext_call(path), {"principal": principal})

test_demo_strict_step1_frontend_allowed if {
	policies := [converted_static_strict, backend_allow_frontend_only]
	every path in ["/status/200", "/get"] {
		decide(policies, backend_call("cluster.local/ns/demo/sa/frontend", path)) == {
			"allowed": true,
			"reason": "allow-matched",
			"action": "ALLOW",
			"policy": "demo/backend-allow-frontend-only",
			"rule": 0,
		}
	}
}

test_demo_strict_step1_attacker_denied if {
	policies := [converted_static_strict, backend_allow_frontend_only]
	decide(policies, backend_call("cluster.local/ns/demo/sa/attacker", "/get")) == denied_none
}

test_demo_strict_step1_plaintext_denied_by_strict if {
	policies := [converted_static_strict, backend_allow_frontend_only]
	decide(policies, plaintext_call("/get")) == {
		"allowed": false,
		"reason": "deny-matched",
		"action": "DENY",
		"policy": "istio-system/istio_converted_static_strict",
		"rule": 0,
		"details": "rbac_access_denied_matched_policy[ns[istio-system]-policy[istio_converted_static_strict]-rule[0]]",
	}
}

test_demo_strict_step2_policy_removed_attacker_allowed if {
	d := decide([converted_static_strict], backend_call("cluster.local/ns/demo/sa/attacker", "/get"))
	d == {"allowed": true, "reason": "no-policies", "rule": -1}
}

test_demo_strict_step3_permissive_plaintext_allowed if {
	decide([], plaintext_call("/get")).allowed
}
