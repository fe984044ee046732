package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"

	"github.com/goambient/goambient/filters/jwtauthn"
	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/xdsserver/waypointxds"
)

// checkJWT validates token offline as the waypoint's jwt_authn would, with the
// RequestAuthentications of ras that apply to req's target (remote JWKS replaced by the keys of
// jwksFile), and prints what it found. It returns the request's authentication, or the exit
// code when the token is refused (1) or cannot be checked offline (2).
func checkJWT(w io.Writer, ras []*policies.RequestAuthentication, root string, req *policies.Request, token, jwksFile string) (policies.RequestAuth, int) {
	t := req.Target
	var applied []*policies.RequestAuthentication
	if t.Waypoint {
		applied = waypointxds.RequestAuthenticationsAt(ras, root, t.Namespace, t.Gateway, t.GatewayClass, t.ServiceNS(), t.Service)
	} else {
		for _, ra := range ras {
			if (ra.Namespace == t.Namespace || ra.Namespace == root) && len(ra.Spec.GetTargetRefs()) == 0 && ra.Spec.GetTargetRef() == nil &&
				labelsMatch(ra.Spec.GetSelector().GetMatchLabels(), t.Labels) {
				applied = append(applied, ra)
			}
		}
	}
	cfg, err := waypointxds.JWTConfig(applied)
	if err != nil {
		fmt.Fprintf(w, "JWT: cannot build the jwt_authn config: %v\n", err)
		return policies.RequestAuth{}, 2
	}
	if cfg == nil {
		fmt.Fprintln(w, "JWT: no RequestAuthentication applies here: the token is not validated and gives no request.auth.* (Istio ignores it)")
		return policies.RequestAuth{}, 0
	}
	names := make([]string, 0, len(applied))
	for _, ra := range applied {
		names = append(names, ra.Key())
	}
	fmt.Fprintf(w, "JWT: RequestAuthentications %v\n", names)
	if code := localKeys(w, cfg, jwksFile); code != 0 {
		return policies.RequestAuth{}, code
	}
	f, err := jwtauthn.Compile(cfg, jwtauthn.Options{})
	if err != nil {
		fmt.Fprintf(w, "JWT: %v\n", err)
		return policies.RequestAuth{}, 2
	}
	path := req.Path
	if path == "" {
		path = "/"
	}
	hr := &jwtauthn.HeaderRequest{M: req.Method, P: path, A: req.Host, H: map[string]string{"authorization": "Bearer " + token}}
	for k, v := range req.Headers {
		if k != "authorization" {
			hr.H[k] = v
		}
	}
	res := f.Decode(context.Background(), hr)
	if r := res.Reply; r != nil {
		fmt.Fprintf(w, "JWT: DENY %d %s\nresponse_code_details: %s\n", r.Status, r.Body, r.Details)
		return policies.RequestAuth{}, 1
	}
	payload, _ := res.Payloads[waypointxds.JWTPayloadKey].(map[string]any)
	if payload == nil {
		fmt.Fprintln(w, "JWT: no provider reads the token where it was given (Authorization: Bearer): the request has no request.auth.*")
		return policies.RequestAuth{}, 0
	}
	a := policies.AuthFromClaims(payload)
	fmt.Fprintf(w, "JWT: valid, verified by %v: request.auth.principal=%s/%s\n", res.Verified, a.Issuer, a.Subject)
	return a, 0
}

// localKeys replaces each remote JWKS with the keys of file, which must be given for one.
func localKeys(w io.Writer, cfg *jwtv3.JwtAuthentication, file string) int {
	var remote []string
	for name, p := range cfg.GetProviders() {
		if p.GetRemoteJwks() != nil {
			remote = append(remote, name+" ("+p.GetRemoteJwks().GetHttpUri().GetUri()+")")
		}
	}
	if len(remote) == 0 {
		return 0
	}
	slices.Sort(remote)
	if file == "" {
		fmt.Fprintf(w, "JWT: providers %v fetch their keys: give them with --jwks FILE to check offline\n", remote)
		return 2
	}
	data, err := os.ReadFile(file)
	if err != nil {
		fmt.Fprintf(w, "JWT: --jwks: %v\n", err)
		return 2
	}
	if _, err := jwtauthn.ParseJWKS(data); err != nil {
		fmt.Fprintf(w, "JWT: --jwks %s: %v\n", file, err)
		return 2
	}
	for _, p := range cfg.GetProviders() {
		if p.GetRemoteJwks() != nil {
			p.JwksSourceSpecifier = &jwtv3.JwtProvider_LocalJwks{LocalJwks: &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: string(data)}}}
		}
	}
	return 0
}

func labelsMatch(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}
