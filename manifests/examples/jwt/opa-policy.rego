# OPA's Envoy plugin policy for /admin/*: the bearer token must verify with the local
# issuer's key, and its subject must be alice. OPA answers the others 403 with a reason.
package envoy.authz

import rego.v1

jwks := `{"keys":[{"use":"sig","kty":"EC","kid":"demo-1","crv":"P-256","alg":"ES256","x":"H8Ho5FN6GEGfNHwWORd58UyPN0MFkj6FwaRkN9t_zUY","y":"yp6U9vwLaWV34dQISTsLIb93LgDxE0f18RH9gMzRS48"}]}`

token := t if {
	[_, t] := split(input.attributes.request.http.headers.authorization, "Bearer ")
}

claims := payload if {
	[valid, _, payload] := io.jwt.decode_verify(token, {"cert": jwks, "iss": "https://issuer.goambient.local", "aud": "appb"})
	valid
}

default allow := {"allowed": false, "http_status": 403, "body": "opa: admin is for alice", "headers": {"x-opa-decision": "denied"}}

allow := {"allowed": true, "headers": {"x-opa-user": claims.sub}} if claims.sub == "alice"
