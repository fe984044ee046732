// Package jwtauthn is Envoy's envoy.filters.http.jwt_authn for the embedded waypoint: the JwtAuthentication config istiod generates (providers with issuer, audiences, local or remote JWKS, token locations, forwarding, claims to headers, payload_in_metadata; requirement rules) compiled once, then each request's tokens verified with go-jose, answering 401 with Envoy's bodies and details when a token is invalid.
package jwtauthn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	jose "github.com/go-jose/go-jose/v4"
)

// Name is the filter's name in an HTTP connection manager and its dynamic metadata namespace.
const Name = "envoy.filters.http.jwt_authn"

// DefaultClockSkew is Envoy's clock_skew_seconds default.
const DefaultClockSkew = 60 * time.Second

// Request is what the filter reads and changes of a request (host.Request is one).
type Request interface {
	Method() string
	Path() string // with the query
	Authority() string
	Header(name string) (string, bool) // lower-case name; repeated headers joined with ","
	Set(name, value string)
	Del(name string)
}

// Options are what the filter needs besides its config.
type Options struct {
	Remote RemoteOptions // for remote JWKS (Timeout and CacheDuration come from the config)
	// Remotes, when set, shares one Remote per URI across configs (so an xDS update does not
	// refetch every JWKS); nil makes one per provider.
	Remotes *RemoteCache
	Log     *slog.Logger
	Now     func() time.Time
}

// Filter is a compiled JwtAuthentication; it is immutable and safe for concurrent use.
type Filter struct {
	providers map[string]*provider
	rules     []rule
	bypass    bool // bypass_cors_preflight
	now       func() time.Time
}

type rule struct {
	prefix, path string
	req          requirement // nil: no requirement (the request passes)
}

// Compile checks and compiles cfg. It refuses what it cannot do as Envoy would, so that the
// embedded waypoint NACKs it rather than serving something else.
func Compile(cfg *jwtv3.JwtAuthentication, o Options) (*Filter, error) {
	if err := cfg.ValidateAll(); err != nil {
		return nil, err
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	f := &Filter{providers: map[string]*provider{}, bypass: cfg.GetBypassCorsPreflight(), now: o.Now}
	for name, p := range cfg.GetProviders() {
		cp, err := compileProvider(name, p, o)
		if err != nil {
			return nil, fmt.Errorf("providers[%s]: %w", name, err)
		}
		f.providers[name] = cp
	}
	if cfg.GetFilterStateRules() != nil || len(cfg.GetRequirementMap()) > 0 {
		return nil, errors.New("filter_state_rules and requirement_map are not supported by the embedded waypoint")
	}
	for i, r := range cfg.GetRules() {
		var cr rule
		switch m := r.GetMatch(); {
		case m.GetPrefix() != "" || m.GetPath() == "" && m.GetSafeRegex() == nil && m.GetPathSeparatedPrefix() == "":
			cr.prefix = m.GetPrefix()
		case m.GetPath() != "":
			cr.path = m.GetPath()
		default:
			return nil, fmt.Errorf("rules[%d].match: only prefix and path matches are supported", i)
		}
		if len(r.GetMatch().GetHeaders()) > 0 || len(r.GetMatch().GetQueryParameters()) > 0 {
			return nil, fmt.Errorf("rules[%d].match: header and query matches are not supported", i)
		}
		if r.GetRequirementName() != "" {
			return nil, fmt.Errorf("rules[%d].requirement_name is not supported", i)
		}
		if r.GetRequires() != nil {
			req, err := f.compileRequirement(r.GetRequires())
			if err != nil {
				return nil, fmt.Errorf("rules[%d].requires: %w", i, err)
			}
			cr.req = req
		}
		f.rules = append(f.rules, cr)
	}
	return f, nil
}

// Reply is a local reply: Envoy's 401 (or 403) and its response_code_details.
type Reply struct {
	Status  int
	Body    string
	Details string
	Headers [][2]string
}

// Result is what the filter decided for one request.
type Result struct {
	// Payloads are the verified tokens' payloads by payload_in_metadata key: the filter's
	// dynamic metadata. Empty when no token was verified.
	Payloads map[string]any
	Reply    *Reply // non-nil: answer this instead of going on
	// Verified names the providers whose tokens were verified ("origins-0 (issuer)").
	Verified []string
	edits    []edit
}

// Apply makes the header changes of the verified tokens' providers: the token's header
// removed unless forward, the payload and claims copied to headers. The embedded waypoint
// applies them after the CUSTOM check, which in istiod's chain (ext_authz before jwt_authn)
// sees the request as it came.
func (res Result) Apply(r Request) {
	for _, e := range res.edits {
		if e.del {
			r.Del(e.name)
		} else {
			r.Set(e.name, e.value)
		}
	}
}

// Decode verifies the request's tokens against the first matching rule's requirement and
// returns the metadata and the header changes to Apply, or the 401 to send. ctx bounds any
// JWKS fetch.
func (f *Filter) Decode(ctx context.Context, r Request) Result {
	if f.bypass && r.Method() == http.MethodOptions {
		if _, ok := r.Header("origin"); ok {
			if _, ok := r.Header("access-control-request-method"); ok {
				return Result{}
			}
		}
	}
	path := r.Path()
	p := path
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	var req requirement
	for i := range f.rules {
		ru := &f.rules[i]
		if ru.path != "" && p == ru.path || ru.path == "" && strings.HasPrefix(p, ru.prefix) {
			req = ru.req
			break
		}
	}
	if req == nil {
		return Result{}
	}
	v := &verification{f: f, ctx: ctx, r: r, now: f.now()}
	if st := req.verify(v); st != ok {
		return Result{Reply: f.deny(r, st)}
	}
	v.apply()
	res := Result{Payloads: v.payloads, edits: v.edits}
	for _, ps := range v.passed {
		res.Verified = append(res.Verified, ps.p.name+" ("+ps.p.issuer+")")
	}
	return res
}

// deny is Envoy's reply for a failed status: 401 with a WWW-Authenticate challenge, or 403
// for an audience or claim mismatch; details jwt_authn_access_denied{<status with _>}.
func (f *Filter) deny(r Request, st status) *Reply {
	code, msg := 401, st.String()
	if st == audiencesNotAllowed {
		code = 403
	}
	rep := &Reply{Status: code, Body: msg, Details: "jwt_authn_access_denied{" + strings.ReplaceAll(msg, " ", "_") + "}"}
	if code == 401 {
		p := r.Path()
		if i := strings.IndexAny(p, "?#"); i >= 0 {
			p = p[:i]
		}
		rep.Headers = [][2]string{{"www-authenticate", `Bearer realm="http://` + r.Authority() + p + `", error="invalid_token"`}}
	}
	return rep
}

// Providers lists the configured provider names (sorted by the caller as needed).
func (f *Filter) Providers() []string {
	out := make([]string, 0, len(f.providers))
	for n := range f.providers {
		out = append(out, n)
	}
	return out
}

// keyFor picks the keys a token may be verified with: those with its kid (when it has one) and
// an algorithm compatible with its alg.
func keyFor(keys []jose.JSONWebKey, kid, alg string) []jose.JSONWebKey {
	var out []jose.JSONWebKey
	for _, k := range keys {
		if kid != "" && k.KeyID != "" && k.KeyID != kid {
			continue
		}
		if k.Algorithm != "" && k.Algorithm != alg {
			continue
		}
		out = append(out, k)
	}
	return out
}

// HeaderRequest is a Request made of a method, a path, an authority and headers (lower-case
// names), for callers without a live request (meshctl authz check).
type HeaderRequest struct {
	M, P, A string
	H       map[string]string
}

func (r *HeaderRequest) Method() string    { return r.M }
func (r *HeaderRequest) Path() string      { return r.P }
func (r *HeaderRequest) Authority() string { return r.A }
func (r *HeaderRequest) Header(n string) (string, bool) {
	v, ok := r.H[n]
	return v, ok
}
func (r *HeaderRequest) Set(n, v string) { r.H[n] = v }
func (r *HeaderRequest) Del(n string)    { delete(r.H, n) }
