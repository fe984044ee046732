package jwtauthn

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
)

// requirement is a compiled JwtRequirement.
type requirement interface{ verify(v *verification) status }

type providerReq struct{ p *provider }
type anyReq struct {
	reqs         []requirement
	allowMissing bool
}
type allReq []requirement
type missingOrFailed struct{ ps []*provider }

func (f *Filter) compileRequirement(r *jwtv3.JwtRequirement) (requirement, error) {
	switch t := r.GetRequiresType().(type) {
	case *jwtv3.JwtRequirement_ProviderName:
		p := f.providers[t.ProviderName]
		if p == nil {
			return nil, fmt.Errorf("provider_name %q is not a provider", t.ProviderName)
		}
		return providerReq{p}, nil
	case *jwtv3.JwtRequirement_RequiresAny:
		a := &anyReq{}
		for i, c := range t.RequiresAny.GetRequirements() {
			if _, isMissing := c.GetRequiresType().(*jwtv3.JwtRequirement_AllowMissing); isMissing {
				a.allowMissing = true
				continue
			}
			cr, err := f.compileRequirement(c)
			if err != nil {
				return nil, fmt.Errorf("requires_any[%d]: %w", i, err)
			}
			a.reqs = append(a.reqs, cr)
		}
		return a, nil
	case *jwtv3.JwtRequirement_RequiresAll:
		var a allReq
		for i, c := range t.RequiresAll.GetRequirements() {
			cr, err := f.compileRequirement(c)
			if err != nil {
				return nil, fmt.Errorf("requires_all[%d]: %w", i, err)
			}
			a = append(a, cr)
		}
		return a, nil
	case *jwtv3.JwtRequirement_AllowMissing:
		return &anyReq{reqs: f.everyProvider(), allowMissing: true}, nil
	case *jwtv3.JwtRequirement_AllowMissingOrFailed:
		m := missingOrFailed{}
		for _, r := range f.everyProvider() {
			m.ps = append(m.ps, r.(providerReq).p)
		}
		return m, nil
	default:
		return nil, errors.New("requires_type: unsupported requirement")
	}
}

// everyProvider is a requirement per provider, by name.
func (f *Filter) everyProvider() []requirement {
	names := make([]string, 0, len(f.providers))
	for n := range f.providers {
		names = append(names, n)
	}
	slices.Sort(names)
	out := make([]requirement, 0, len(names))
	for _, n := range names {
		out = append(out, providerReq{f.providers[n]})
	}
	return out
}

// verify: the provider's tokens, all of which must be valid; none is jwtMissed.
func (pr providerReq) verify(v *verification) status {
	toks := pr.p.extract(v.r)
	if len(toks) == 0 {
		return jwtMissed
	}
	for _, t := range toks {
		if st := v.check(pr.p, t); st != ok {
			return st
		}
	}
	return ok
}

// verify: any child passing passes; else, with allow_missing, only missing tokens pass; else
// the most telling error, as Envoy's requires_any reports it: a failure of the token's own
// provider (bad signature, expired, keys not fetched) before another provider's "issuer is not
// configured", before "missing".
func (a *anyReq) verify(v *verification) status {
	best := jwtMissed
	for _, r := range a.reqs {
		st := r.verify(v)
		if st == ok {
			return ok
		}
		if rank(st) > rank(best) {
			best = st
		}
	}
	if best == jwtMissed && a.allowMissing {
		return ok
	}
	return best
}

func rank(st status) int {
	switch st {
	case jwtMissed:
		return 0
	case jwtUnknownIssuer:
		return 1
	}
	return 2
}

func (a allReq) verify(v *verification) status {
	for _, r := range a {
		if st := r.verify(v); st != ok {
			return st
		}
	}
	return ok
}

func (m missingOrFailed) verify(v *verification) status {
	for _, p := range m.ps {
		for _, t := range p.extract(v.r) {
			v.check(p, t)
		}
	}
	return ok
}

// verification is one request's verification: results per provider and token (a token is
// verified once however many requirements name its provider), the payloads and the header
// changes of the tokens that passed.
type verification struct {
	f        *Filter
	ctx      context.Context
	r        Request
	now      time.Time
	done     map[[2]string]status
	payloads map[string]any
	passed   []passed
	edits    []edit
}

type passed struct {
	p       *provider
	t       token
	payload map[string]any
	raw     []byte
}

func (v *verification) check(p *provider, t token) status {
	key := [2]string{p.name, t.value}
	if st, seen := v.done[key]; seen {
		return st
	}
	payload, raw, st := p.verify(v, t)
	if v.done == nil {
		v.done = map[[2]string]status{}
	}
	v.done[key] = st
	if st == ok {
		v.passed = append(v.passed, passed{p, t, payload, raw})
	}
	return st
}

// apply records the passed tokens' payloads and the header changes their providers ask for,
// once the requirement is satisfied.
func (v *verification) apply() {
	for _, ps := range v.passed {
		p := ps.p
		if p.metadataKey != "" {
			if v.payloads == nil {
				v.payloads = map[string]any{}
			}
			v.payloads[p.metadataKey] = p.normalize(ps.payload)
		}
		if !p.forward && ps.t.header != "" {
			v.edits = append(v.edits, edit{name: ps.t.header, del: true})
		}
		if p.payloadHeader != "" {
			v.edits = append(v.edits, edit{name: p.payloadHeader, value: b64(ps.raw)})
		}
		for _, ch := range p.claimHeaders {
			if val, found := claimValue(ps.payload, ch.claim); found {
				v.edits = append(v.edits, edit{name: ch.header, value: val})
			}
		}
	}
}

// edit is one header change: a removal or a value set.
type edit struct {
	name, value string
	del         bool
}
