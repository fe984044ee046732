# OPA's Envoy plugin policy: alice may use /admin/*, with a header for the app; bob gets a
# 403 with a body and a header of OPA's choosing; anyone else the default deny.
package envoy.authz

default allow := false

user := input.attributes.request.http.headers["x-user"]

allow := {"allowed": true, "headers": {"x-opa-user": user}} if {
	input.parsed_path[0] == "admin"
	user == "alice"
}

allow := {"allowed": false, "http_status": 403, "body": "bob may not", "headers": {"x-opa": "denied"}} if {
	user == "bob"
}
