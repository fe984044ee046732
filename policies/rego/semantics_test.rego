# Which policies apply, the CUSTOM/AUDIT/DENY/ALLOW order, Envoy's rule order, empty specs,
# dry-run, and the exact JSON shape of decisions (SEMANTICS.md "Which policies apply" and
# "Order and outcome").
package goambient.authz_test

import data.goambient.authz

allowed_no_policies := {"allowed": true, "reason": "no-policies", "rule": -1}

# workload target: the app=server pod in foo.
req_workload := {
	"principal": "cluster.local/ns/foo/sa/client",
	"source_ip": "10.1.2.3",
	"destination_port": 8080,
	"method": "GET",
	"path": "/",
	"target": {"namespace": "foo", "labels": {"app": "server", "version": "v1"}},
}

# waypoint target: the Gateway waypoint in foo (class istio-waypoint), addressed to Service web.
req_waypoint := {
	"principal": "cluster.local/ns/foo/sa/client",
	"source_ip": "10.1.2.3",
	"destination_port": 8080,
	"method": "GET",
	"path": "/",
	"target": {
		"namespace": "foo",
		"waypoint": true,
		"gateway": "waypoint",
		"gateway_class": "istio-waypoint",
		"service": "web",
	},
}

with_target(r, t) := object.union(object.remove(r, ["target"]), {"target": t})

deny_all(ns, name) := ap(ns, name, {"action": "DENY", "rules": [{}]})

allow_all(ns, name) := ap(ns, name, {"rules": [{}]})

with_spec(p, extra) := object.union(p, {"spec": extra})

dry(p) := object.union(p, {"metadata": {"annotations": {"istio.io/dry-run": "true"}}})

applies(p, r) if decide([p], r).reason == "deny-matched"

# ---------------------------------------------------------------------------------------------
# Workload targets
# ---------------------------------------------------------------------------------------------

test_workload_policy_in_target_namespace_applies if applies(deny_all("foo", "d"), req_workload)

test_workload_policy_in_other_namespace_does_not_apply if not applies(deny_all("bar", "d"), req_workload)

test_workload_root_namespace_policy_applies_everywhere if applies(deny_all("istio-system", "d"), req_workload)

test_workload_root_namespace_from_input if {
	d := authz.decision with input as {
		"root_namespace": "mesh-root",
		"policies": [deny_all("istio-system", "d")],
		"request": req_workload,
	}
	d == allowed_no_policies
	d2 := authz.decision with input as {
		"root_namespace": "mesh-root",
		"policies": [deny_all("mesh-root", "d")],
		"request": req_workload,
	}
	d2.reason == "deny-matched"
}

test_workload_root_namespace_defaults_to_istio_system if {
	d := authz.decision with input as {"policies": [deny_all("istio-system", "d")], "request": req_workload}
	d.reason == "deny-matched"
}

test_workload_selector_matches if {
	applies(with_spec(deny_all("foo", "d"), {"selector": {"matchLabels": {"app": "server"}}}), req_workload)
	applies(with_spec(deny_all("foo", "d"), {"selector": {"matchLabels": {"app": "server", "version": "v1"}}}), req_workload)
}

test_workload_selector_mismatch if {
	not applies(with_spec(deny_all("foo", "d"), {"selector": {"matchLabels": {"app": "other"}}}), req_workload)
	not applies(with_spec(deny_all("foo", "d"), {"selector": {"matchLabels": {"app": "server", "tier": "db"}}}), req_workload)
	not applies(with_spec(deny_all("foo", "d"), {"selector": {"matchLabels": {"app": "server"}}}), with_target(req_workload, {"namespace": "foo"}))
}

test_workload_empty_selector_selects_everything if {
	applies(with_spec(deny_all("foo", "d"), {"selector": {"matchLabels": {}}}), req_workload)
	applies(with_spec(deny_all("foo", "d"), {"selector": {}}), req_workload)
}

test_workload_root_selector_policy if {
	applies(with_spec(deny_all("istio-system", "d"), {"selector": {"matchLabels": {"app": "server"}}}), req_workload)
	not applies(with_spec(deny_all("istio-system", "d"), {"selector": {"matchLabels": {"app": "db"}}}), req_workload)
}

gateway_ref := {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}

test_workload_target_refs_policy_does_not_apply if {
	not applies(with_spec(deny_all("foo", "d"), {"targetRefs": [gateway_ref]}), req_workload)
	not applies(with_spec(deny_all("foo", "d"), {"targetRef": gateway_ref}), req_workload)
}

# ---------------------------------------------------------------------------------------------
# Waypoint targets
# ---------------------------------------------------------------------------------------------

test_waypoint_gateway_ref if {
	applies(with_spec(deny_all("foo", "d"), {"targetRefs": [gateway_ref]}), req_waypoint)
}

test_waypoint_gateway_ref_other_name if {
	ref := object.union(gateway_ref, {"name": "other"})
	not applies(with_spec(deny_all("foo", "d"), {"targetRefs": [ref]}), req_waypoint)
}

test_waypoint_gateway_ref_other_namespace if {
	not applies(with_spec(deny_all("bar", "d"), {"targetRefs": [gateway_ref]}), req_waypoint)
	not applies(with_spec(deny_all("istio-system", "d"), {"targetRefs": [gateway_ref]}), req_waypoint)
}

test_waypoint_gateway_ref_needs_the_gateway_api_group if {
	ref := object.union(gateway_ref, {"group": "networking.istio.io"})
	not applies(with_spec(deny_all("foo", "d"), {"targetRefs": [ref]}), req_waypoint)
}

test_waypoint_gateway_class_ref_in_root_namespace if {
	ref := {"kind": "GatewayClass", "group": "gateway.networking.k8s.io", "name": "istio-waypoint"}
	applies(with_spec(deny_all("istio-system", "d"), {"targetRefs": [ref]}), req_waypoint)
	not applies(with_spec(deny_all("foo", "d"), {"targetRefs": [ref]}), req_waypoint)
	other := object.union(ref, {"name": "istio"})
	not applies(with_spec(deny_all("istio-system", "d"), {"targetRefs": [other]}), req_waypoint)
}

test_waypoint_service_ref if {
	for_group("")
	for_group("core")
	not applies(with_spec(deny_all("foo", "d"), {"targetRefs": [{"kind": "Service", "name": "api"}]}), req_waypoint)
}

for_group(g) if applies(with_spec(deny_all("foo", "d"), {"targetRefs": [{"kind": "Service", "group": g, "name": "web"}]}), req_waypoint)

test_waypoint_service_ref_in_service_namespace if {
	r := object.union(req_waypoint, {"target": {"service_namespace": "bar"}})
	ref := {"kind": "Service", "group": "", "name": "web"}
	applies(with_spec(deny_all("bar", "d"), {"targetRefs": [ref]}), r)
	not applies(with_spec(deny_all("foo", "d"), {"targetRefs": [ref]}), r)
}

test_waypoint_service_ref_needs_a_service if {
	r := with_target(req_waypoint, {"namespace": "foo", "waypoint": true, "gateway": "waypoint"})
	not applies(with_spec(deny_all("foo", "d"), {"targetRefs": [{"kind": "Service", "group": "", "name": "web"}]}), r)
	applies(with_spec(deny_all("foo", "d"), {"targetRefs": [gateway_ref]}), r)
}

# A ServiceEntry targetRef attaches to the ServiceEntry the request is for, a Service targetRef
# to a Service: never the one to the other, even of the same name.
test_waypoint_service_entry_ref if {
	ref := {"kind": "ServiceEntry", "group": "networking.istio.io", "name": "web"}
	se := with_target(req_waypoint, object.union(req_waypoint.target, {"service_kind": "ServiceEntry"}))
	applies(with_spec(deny_all("foo", "d"), {"targetRefs": [ref]}), se)
	not applies(with_spec(deny_all("foo", "d"), {"targetRefs": [object.union(ref, {"name": "db"})]}), se)
	not applies(with_spec(deny_all("foo", "d"), {"targetRefs": [ref]}), req_waypoint)
	not applies(with_spec(deny_all("foo", "d"), {"targetRefs": [{"kind": "Service", "name": "web"}]}), se)
	svc := with_target(req_waypoint, object.union(req_waypoint.target, {"service_kind": "Service"}))
	applies(with_spec(deny_all("foo", "d"), {"targetRefs": [{"kind": "Service", "name": "web"}]}), svc)
}

test_waypoint_deprecated_target_ref if {
	applies(with_spec(deny_all("foo", "d"), {"targetRef": gateway_ref}), req_waypoint)
	not applies(with_spec(deny_all("foo", "d"), {"targetRef": object.union(gateway_ref, {"name": "x"})}), req_waypoint)
}

test_waypoint_target_ref_is_one_more_entry if {
	other := object.union(gateway_ref, {"name": "x"})
	applies(with_spec(deny_all("foo", "d"), {"targetRefs": [other], "targetRef": gateway_ref}), req_waypoint)
	applies(with_spec(deny_all("foo", "d"), {"targetRefs": [other, gateway_ref]}), req_waypoint)
}

test_waypoint_ignores_selector_namespace_and_root_policies if {
	not applies(deny_all("foo", "d"), req_waypoint)
	not applies(deny_all("istio-system", "d"), req_waypoint)
	not applies(with_spec(deny_all("foo", "d"), {"selector": {"matchLabels": {}}}), req_waypoint)
}

test_only_authorization_policies_count if {
	pa := {
		"apiVersion": "security.istio.io/v1",
		"kind": "PeerAuthentication",
		"metadata": {"name": "default", "namespace": "istio-system"},
		"spec": {"mtls": {"mode": "STRICT"}},
	}
	decide([pa], req_workload) == allowed_no_policies
}

# ---------------------------------------------------------------------------------------------
# Outcome and empty specs
# ---------------------------------------------------------------------------------------------

test_no_policies if decide([], req_workload) == allowed_no_policies

test_deny_wins_over_allow if {
	decide([allow_all("foo", "a"), deny_all("foo", "z")], req_workload).reason == "deny-matched"
}

test_unmatched_deny_alone_is_no_policies if {
	p := ap("foo", "d", {"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]})
	decide([p], req_workload) == allowed_no_policies
}

test_allow_matched_has_no_details if {
	decide([allow_all("foo", "a")], req_workload) == {
		"allowed": true,
		"reason": "allow-matched",
		"action": "ALLOW",
		"policy": "foo/a",
		"rule": 0,
	}
}

test_action_defaults_to_allow if {
	decide([ap("foo", "a", {"action": "", "rules": [{}]})], req_workload).reason == "allow-matched"
}

test_allow_nothing_spec_denies_everything if {
	decide([ap("foo", "allow-nothing", {})], req_workload) == denied_none
	decide([ap("foo", "allow-nothing", {"action": "ALLOW"})], req_workload) == denied_none
	decide([ap("foo", "allow-nothing", {"rules": []})], req_workload) == denied_none
}

test_empty_rule_allows_everything if {
	tcp := {"source_ip": "10.1.2.3", "target": {"namespace": "foo"}}
	decide([allow_all("foo", "a")], tcp).reason == "allow-matched"
}

test_unmatched_allow_denies_with_none if {
	p := ap("foo", "a", {"rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]})
	decide([p], req_workload) == denied_none
}

test_deny_audit_custom_without_rules_match_nothing if {
	decide([ap("foo", "d", {"action": "DENY"})], req_workload) == allowed_no_policies
	decide([ap("foo", "a", {"action": "AUDIT"})], req_workload) == allowed_no_policies
	decide([ap("foo", "c", {"action": "CUSTOM", "provider": {"name": "ext"}})], req_workload) == allowed_no_policies
}

test_unmatched_allow_elsewhere_still_denies if {
	nothing := ap("foo", "a", {"rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]})
	d := decide([nothing, ap("istio-system", "b", {"rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]})], req_workload)
	d.reason == "allow-matched"
	d.policy == "istio-system/b"
}

# ---------------------------------------------------------------------------------------------
# Envoy's order: the string ns[NS]-policy[NAME]-rule[IDX] in byte order.
# ---------------------------------------------------------------------------------------------

test_order_by_policy_name if {
	decide([deny_all("foo", "b"), deny_all("foo", "a")], req_workload).policy == "foo/a"
}

test_order_by_namespace if {
	decide([deny_all("istio-system", "a"), deny_all("foo", "z")], req_workload).policy == "foo/z"
}

# "]" (0x5D) sorts after "-" (0x2D) and before letters.
test_order_is_byte_order_of_the_bracketed_string if {
	decide([deny_all("foo", "a"), deny_all("foo", "a-b")], req_workload).policy == "foo/a-b"
	decide([deny_all("foo", "ab"), deny_all("foo", "a")], req_workload).policy == "foo/a"
	decide([deny_all("foo", "a.b"), deny_all("foo", "a")], req_workload).policy == "foo/a.b"
}

post_only := {"to": [{"operation": {"methods": ["POST"]}}]}

# rule[10] sorts before rule[2].
test_order_rule_10_before_rule_2 if {
	rules := [r |
		some i in numbers.range(0, 10)
		r := {true: {}, false: post_only}[i in {2, 10}]
	]
	d := decide([ap("foo", "d", {"action": "DENY", "rules": rules})], req_workload)
	d.rule == 10
	d.details == "rbac_access_denied_matched_policy[ns[foo]-policy[d]-rule[10]]"
	a := decide([ap("foo", "a", {"rules": rules})], req_workload)
	a.rule == 10
}

# ---------------------------------------------------------------------------------------------
# AUDIT and CUSTOM
# ---------------------------------------------------------------------------------------------

audit_all(ns, name) := ap(ns, name, {"action": "AUDIT", "rules": [{}]})

custom_all(ns, name, provider) := ap(ns, name, {"action": "CUSTOM", "provider": {"name": provider}, "rules": [{}]})

test_audit_lists_every_match_in_order if {
	twelve := [r | some i in numbers.range(0, 11); r := {true: {}, false: post_only}[i in {2, 10}]]
	policies := [
		audit_all("foo", "b"),
		ap("foo", "a", {"action": "AUDIT", "rules": twelve}),
		audit_all("istio-system", "root"),
		ap("foo", "c", {"action": "AUDIT", "rules": [post_only]}),
	]
	decide(policies, req_workload) == {
		"allowed": true,
		"reason": "no-policies",
		"rule": -1,
		"audit": [
			{"policy": "foo/a", "rule": 10},
			{"policy": "foo/a", "rule": 2},
			{"policy": "foo/b", "rule": 0},
			{"policy": "istio-system/root", "rule": 0},
		],
	}
}

test_audit_never_changes_the_outcome if {
	decide([audit_all("foo", "a"), deny_all("foo", "d")], req_workload).reason == "deny-matched"
	decide([audit_all("foo", "a"), ap("foo", "x", {})], req_workload).reason == "no-allow-matched"
}

test_custom_names_the_first_match if {
	policies := [custom_all("foo", "b", "ext-b"), custom_all("foo", "a", "ext-a")]
	decide(policies, req_workload) == {
		"allowed": true,
		"reason": "no-policies",
		"rule": -1,
		"custom": {"policy": "foo/a", "rule": 0},
		"custom_provider": "ext-a",
	}
}

test_custom_evaluation_goes_on if {
	d := decide([custom_all("foo", "c", "ext"), deny_all("foo", "d")], req_workload)
	d.reason == "deny-matched"
	d.custom == {"policy": "foo/c", "rule": 0}
	d.custom_provider == "ext"
}

test_custom_unmatched_is_absent if {
	p := ap("foo", "c", {"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [post_only]})
	decide([p], req_workload) == allowed_no_policies
}

test_custom_is_not_an_allow_policy if {
	p := ap("foo", "c", {"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [post_only]})
	decide([p, allow_all("foo", "a")], req_workload).reason == "allow-matched"
}

# ---------------------------------------------------------------------------------------------
# Dry-run
# ---------------------------------------------------------------------------------------------

test_dry_run_deny_does_not_deny if {
	decide([dry(deny_all("foo", "d"))], req_workload) == {
		"allowed": true,
		"reason": "no-policies",
		"rule": -1,
		"dry_run": {
			"applied": true,
			"allowed": false,
			"policy": "foo/d",
			"rule": 0,
			"details": "rbac_access_denied_matched_policy[ns[foo]-policy[d]-rule[0]]",
		},
	}
}

test_dry_run_allow_unmatched if {
	p := dry(ap("foo", "a", {"rules": [post_only]}))
	decide([p], req_workload) == {
		"allowed": true,
		"reason": "no-policies",
		"rule": -1,
		"dry_run": {"applied": true, "allowed": false, "rule": -1, "details": "rbac_access_denied_matched_policy[none]"},
	}
}

test_dry_run_allow_matched if {
	decide([dry(allow_all("foo", "a")), ap("foo", "real", {})], req_workload) == {
		"allowed": false,
		"reason": "no-allow-matched",
		"rule": -1,
		"details": "rbac_access_denied_matched_policy[none]",
		"dry_run": {"applied": true, "allowed": true, "policy": "foo/a", "rule": 0},
	}
}

test_dry_run_unmatched_deny_alone if {
	p := dry(ap("foo", "d", {"action": "DENY", "rules": [post_only]}))
	decide([p], req_workload).dry_run == {"applied": true, "allowed": true, "rule": -1}
}

test_dry_run_deny_before_allow if {
	d := decide([dry(allow_all("foo", "a")), dry(deny_all("foo", "z"))], req_workload)
	d.dry_run.policy == "foo/z"
	not d.dry_run.allowed
}

test_dry_run_and_real_policies_are_separate if {
	d := decide([allow_all("foo", "a"), dry(deny_all("foo", "d"))], req_workload)
	d.reason == "allow-matched"
	d.policy == "foo/a"
	d.dry_run.policy == "foo/d"
}

test_dry_run_annotation_is_a_go_bool if {
	every v in ["1", "t", "T", "true", "TRUE", "True"] {
		p := object.union(deny_all("foo", "d"), {"metadata": {"annotations": {"istio.io/dry-run": v}}})
		decide([p], req_workload).reason == "no-policies"
	}
	every v in ["false", "yes", "on", ""] {
		p := object.union(deny_all("foo", "d"), {"metadata": {"annotations": {"istio.io/dry-run": v}}})
		decide([p], req_workload).reason == "deny-matched"
	}
}

test_dry_run_false_is_a_real_policy if {
	p := object.union(deny_all("foo", "d"), {"metadata": {"annotations": {"istio.io/dry-run": "false"}}})
	d := decide([p], req_workload)
	d.reason == "deny-matched"
	not d.dry_run
}

test_dry_run_absent_when_no_dry_run_policy_applies if {
	d := decide([dry(deny_all("bar", "d"))], req_workload)
	d == allowed_no_policies
}

test_dry_run_audit_and_custom_are_ignored if {
	decide([dry(audit_all("foo", "a")), dry(custom_all("foo", "c", "ext"))], req_workload) == allowed_no_policies
}

# ---------------------------------------------------------------------------------------------
# Everything at once, the request checks, and the prepared-policy form (data.goambient.config).
# ---------------------------------------------------------------------------------------------

test_full_decision_shape if {
	policies := [
		custom_all("foo", "ext", "opa"),
		audit_all("foo", "log"),
		dry(deny_all("foo", "shadow")),
		deny_all("istio-system", "deny-all"),
		allow_all("foo", "allow"),
	]
	decide(policies, req_workload) == {
		"allowed": false,
		"reason": "deny-matched",
		"action": "DENY",
		"policy": "istio-system/deny-all",
		"rule": 0,
		"details": "rbac_access_denied_matched_policy[ns[istio-system]-policy[deny-all]-rule[0]]",
		"custom": {"policy": "foo/ext", "rule": 0},
		"custom_provider": "opa",
		"audit": [{"policy": "foo/log", "rule": 0}],
		"dry_run": {
			"applied": true,
			"allowed": false,
			"policy": "foo/shadow",
			"rule": 0,
			"details": "rbac_access_denied_matched_policy[ns[foo]-policy[shadow]-rule[0]]",
		},
	}
}

test_nul_in_path_is_a_bad_request if {
	every path in ["/a%00b", "/a\u0000b", "/a#b", "/a?x#y"] {
		decide([allow_all("foo", "a")], object.union(req_workload, {"path": path})) == {"allowed": false, "reason": "bad-request", "rule": -1}
	}
	decide([allow_all("foo", "a")], object.union(req_workload, {"path": "/a?x=%00"})).reason == "allow-matched"
}

test_prepared_policies_in_data if {
	d := authz.decision with input as {"request": req_workload}
		with data.goambient.config as {"root_namespace": "mesh-root", "policies": [deny_all("mesh-root", "d")]}
	d.policy == "mesh-root/d"
}

test_input_policies_win_over_data if {
	d := authz.decision with input as {"policies": [], "request": req_workload}
		with data.goambient.config as {"policies": [deny_all("foo", "d")]}
	d == allowed_no_policies
}
