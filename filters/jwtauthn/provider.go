package jwtauthn

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// maxTokens bounds the tokens verified per provider and request.
const maxTokens = 8

// algorithms are the signature algorithms Envoy's jwt_verify_lib accepts.
var algorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.HS256, jose.HS384, jose.HS512, jose.EdDSA,
}

type location struct {
	header, prefix string // from a header (with a value prefix)
	param          string // from a query parameter
	cookie         string // from a cookie
}

type claimHeader struct{ claim, header string }

type provider struct {
	name           string
	issuer         string
	audiences      []string
	src            keySource
	locs           []location
	forward        bool
	payloadHeader  string
	metadataKey    string
	claimHeaders   []claimHeader
	spaceDelimited []string
	skew           time.Duration
}

func compileProvider(name string, p *jwtv3.JwtProvider, o Options) (*provider, error) {
	cp := &provider{name: name, issuer: p.GetIssuer(), audiences: p.GetAudiences(), forward: p.GetForward(),
		payloadHeader: p.GetForwardPayloadHeader(), metadataKey: p.GetPayloadInMetadata(),
		spaceDelimited: p.GetNormalizePayloadInMetadata().GetSpaceDelimitedClaims(), skew: DefaultClockSkew}
	if s := p.GetClockSkewSeconds(); s > 0 {
		cp.skew = time.Duration(s) * time.Second
	}
	switch {
	case p.GetLocalJwks() != nil:
		ds := p.GetLocalJwks()
		if ds.GetInlineString() == "" && ds.GetInlineBytes() == nil {
			return nil, errors.New("local_jwks: only inline_string and inline_bytes are supported")
		}
		data := []byte(ds.GetInlineString())
		if ds.GetInlineBytes() != nil {
			data = ds.GetInlineBytes()
		}
		keys, err := ParseJWKS(data)
		if err != nil {
			// As Envoy: a provider whose inline JWKS is unusable fails every token it checks
			// (istiod inlines a fake JWKS when it cannot fetch one).
			o.Log.Warn("jwt provider has no usable inline jwks: its tokens will fail", "provider", name, "error", err)
			keys = nil
		}
		cp.src = staticKeys(keys)
	case p.GetRemoteJwks() != nil:
		rj := p.GetRemoteJwks()
		u := rj.GetHttpUri().GetUri()
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return nil, fmt.Errorf("remote_jwks.http_uri.uri %q: not an http(s) URL", u)
		}
		ro := o.Remote
		ro.Timeout = rj.GetHttpUri().GetTimeout().AsDuration()
		ro.CacheDuration = rj.GetCacheDuration().AsDuration()
		if o.Remotes != nil {
			cp.src = o.Remotes.Get(u, ro)
		} else {
			cp.src = NewRemote(u, ro)
		}
	default:
		return nil, errors.New("one of local_jwks or remote_jwks is required")
	}
	for _, h := range p.GetFromHeaders() {
		cp.locs = append(cp.locs, location{header: strings.ToLower(h.GetName()), prefix: h.GetValuePrefix()})
	}
	for _, q := range p.GetFromParams() {
		cp.locs = append(cp.locs, location{param: q})
	}
	for _, c := range p.GetFromCookies() {
		cp.locs = append(cp.locs, location{cookie: c})
	}
	if len(cp.locs) == 0 {
		// Envoy's default: Authorization: Bearer <token>, then ?access_token=<token>.
		cp.locs = []location{{header: "authorization", prefix: "Bearer "}, {param: "access_token"}}
	}
	for _, ch := range p.GetClaimToHeaders() {
		cp.claimHeaders = append(cp.claimHeaders, claimHeader{claim: ch.GetClaimName(), header: strings.ToLower(ch.GetHeaderName())})
	}
	return cp, nil
}

// token is one token found in a request and where.
type token struct {
	value  string
	header string // the header it came from ("" for a parameter or cookie)
}

// extract finds the provider's tokens in the request, in its locations' order, at most maxTokens.
func (p *provider) extract(r Request) []token {
	var out []token
	var query url.Values
	add := func(t token) {
		if t.value != "" && len(out) < maxTokens && !slices.ContainsFunc(out, func(o token) bool { return o.value == t.value }) {
			out = append(out, t)
		}
	}
	for _, l := range p.locs {
		switch {
		case l.header != "":
			v, found := r.Header(l.header)
			if !found {
				continue
			}
			for _, one := range strings.Split(v, ",") {
				one = strings.TrimSpace(one)
				if l.prefix != "" {
					i := strings.Index(one, l.prefix)
					if i < 0 {
						continue
					}
					one = one[i+len(l.prefix):]
				}
				add(token{value: strings.TrimSpace(one), header: l.header})
			}
		case l.param != "":
			if query == nil {
				query = url.Values{}
				if _, q, ok := strings.Cut(r.Path(), "?"); ok {
					query, _ = url.ParseQuery(q)
				}
			}
			add(token{value: query.Get(l.param)})
		case l.cookie != "":
			c, found := r.Header("cookie")
			if !found {
				continue
			}
			hdr := make(map[string][]string, 1)
			hdr["Cookie"] = []string{c}
			for _, ck := range (&httpCookieReader{hdr}).cookies() {
				if ck.name == l.cookie {
					add(token{value: ck.value})
				}
			}
		}
	}
	return out
}

// verify checks one token: its form, issuer, time, audiences, then its signature with the
// provider's keys (fetched if remote), in Envoy's order. It returns the decoded payload.
func (p *provider) verify(v *verification, t token) (map[string]any, []byte, status) {
	if strings.Count(t.value, ".") != 2 {
		return nil, nil, jwtBadFormat
	}
	tok, err := jwt.ParseSigned(t.value, algorithms)
	if err != nil {
		if strings.Contains(err.Error(), "unexpected signature algorithm") {
			return nil, nil, jwtHeaderBadAlg
		}
		return nil, nil, jwtBadFormat
	}
	var claims jwt.Claims
	var raw json.RawMessage
	if err := tok.UnsafeClaimsWithoutVerification(&claims, &raw); err != nil {
		return nil, nil, jwtBadFormat
	}
	if p.issuer != "" && claims.Issuer != p.issuer {
		return nil, nil, jwtUnknownIssuer
	}
	now := v.now
	if claims.Expiry != nil && now.After(claims.Expiry.Time().Add(p.skew)) {
		return nil, nil, jwtExpired
	}
	if claims.NotBefore != nil && now.Add(p.skew).Before(claims.NotBefore.Time()) {
		return nil, nil, jwtNotYetValid
	}
	if len(p.audiences) > 0 && !slices.ContainsFunc(claims.Audience, func(a string) bool { return slices.Contains(p.audiences, a) }) {
		return nil, nil, audiencesNotAllowed
	}
	h := tok.Headers[0]
	keys, err := p.src.keys(v.ctx, h.KeyID)
	if err != nil {
		return nil, nil, jwksFetchFail
	}
	cands := keyFor(keys, h.KeyID, h.Algorithm)
	if len(cands) == 0 {
		return nil, nil, jwksKidAlgMismatch
	}
	for _, k := range cands {
		var payload map[string]any
		if tok.Claims(k.Key, &payload) == nil {
			return payload, raw, ok
		}
	}
	return nil, nil, jwtVerificationFail
}

// normalize turns the space-delimited claims into lists, as payload_in_metadata's
// normalize_payload_in_metadata.
func (p *provider) normalize(payload map[string]any) map[string]any {
	for _, c := range p.spaceDelimited {
		if s, isStr := payload[c].(string); isStr {
			parts := strings.Fields(s)
			l := make([]any, len(parts))
			for i, x := range parts {
				l[i] = x
			}
			payload[c] = l
		}
	}
	return payload
}

// claimValue is a claim (a dotted path into nested objects) as a header value: strings,
// numbers and booleans only, as Envoy's claim_to_headers.
func claimValue(payload map[string]any, claim string) (string, bool) {
	var cur any = payload
	for _, part := range strings.Split(claim, ".") {
		m, isMap := cur.(map[string]any)
		if !isMap {
			return "", false
		}
		cur = m[part]
	}
	switch x := cur.(type) {
	case string:
		return x, true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	case bool:
		return strconv.FormatBool(x), true
	}
	return "", false
}

func b64(raw []byte) string { return base64.RawURLEncoding.EncodeToString(raw) }
