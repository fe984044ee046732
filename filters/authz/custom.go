package authz

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"

	"github.com/envoyproxy/envoy/contrib/golang/common/go/api"

	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/extauthz"
	"github.com/goambient/goambient/policies/extprovider"
)

// clients are the ext_authz clients of the process, one per provider name, kept across config
// updates while a provider's config is unchanged (its connections outlive an xDS push).
var (
	clientsOnce sync.Once
	clients     *extauthz.Clients
)

func providerClients() *extauthz.Clients {
	clientsOnce.Do(func() { clients = extauthz.NewClients(nil) })
	return clients
}

// SetProviderDialer sets how ext_authz providers are reached by the clients made from now on
// (the embedded waypoint sets one that reaches a mesh Service's pods over HBONE); nil, the
// default, dials the provider's host:port directly, as Envoy's cluster would resolve it.
func SetProviderDialer(d func(ctx context.Context, address string) (net.Conn, error)) {
	providerClients().SetDial(d)
}

// providers makes the clients of the providers the translator passed on; one that does not
// validate refuses the whole config (Envoy keeps the last good one).
func providers(ps []extprovider.Provider) (map[string]extauthz.Client, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	cs := make(map[string]extauthz.Client, len(ps))
	for i := range ps {
		p := &ps[i]
		if err := p.Validate(); err != nil {
			return nil, err
		}
		if _, dup := cs[p.Name]; dup {
			return nil, errors.New("provider " + p.Name + ": given twice")
		}
		c, err := providerClients().Get(p)
		if err != nil {
			return nil, err
		}
		cs[p.Name] = c
	}
	return cs, nil
}

// custom consults the CUSTOM rule's provider, as Envoy's ext_authz filter runs before the RBAC
// filters in istiod's chain: the provider's deny is answered with its status, body and
// headers; its allow lets the ALLOW/DENY decision (allowed, details) stand. The check runs on
// its own goroutine; the request waits (api.Running) until it resumes or answers it.
func (f *filter) custom(c *filterConfig, h api.RequestHeaderMap, provider, policy string, rule int, allowed bool, details string) api.StatusType {
	client := c.clients[provider]
	if client == nil {
		ns, name, _ := strings.Cut(policy, "/")
		f.cb.Log(api.Warn, authzconfig.PluginName+": CUSTOM policy "+policy+": provider "+provider+" is not in the mesh config: denying")
		return f.reply(c.metrics, denyStatus, denyBody, grpcDenied,
			"rbac_access_denied_matched_policy[ns["+ns+"]-policy["+name+"]-rule["+strconv.Itoa(rule)+"]]")
	}
	req := f.checkRequest(h)
	dec := f.cb.DecoderFilterCallbacks()
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel // OnDestroy ends the check when the stream goes away first
	go func() {
		defer cancel()
		defer func() {
			if p := recover(); p != nil && ctx.Err() == nil {
				// A stream still waiting must be answered; one already destroyed must not be
				// touched (Envoy panics on a destroyed stream's callbacks).
				func() {
					defer func() { _ = recover() }()
					f.cb.Log(api.Error, fmt.Sprintf("%s: ext_authz check panicked: %v", authzconfig.PluginName, p))
					dec.SendLocalReply(500, "", nil, 13, extauthz.DetailsError)
				}()
			}
		}()
		res := client.Check(ctx, req)
		if ctx.Err() != nil {
			return // the stream was destroyed while the provider thought
		}
		if res.Err != nil {
			f.cb.Log(api.Warn, authzconfig.PluginName+": ext_authz provider "+provider+": "+res.Err.Error())
		}
		if !res.Allowed {
			hdr := map[string][]string{}
			for _, kv := range res.Headers {
				hdr[kv[0]] = append(hdr[kv[0]], kv[1])
			}
			if c.metrics != nil {
				inc(c.metrics.denied)
			}
			dec.SendLocalReply(res.Status, res.Body, hdr, grpcStatusOf(res.Status), res.Details)
			return
		}
		for _, k := range res.Remove {
			h.Del(k)
		}
		for _, kv := range res.Upstream {
			h.Set(kv[0], kv[1])
		}
		if !allowed {
			f.reply(c.metrics, denyStatus, denyBody, grpcDenied, details)
			return
		}
		if c.metrics != nil && !c.customPhase { // the DENY/ALLOW phase counts it
			inc(c.metrics.allowed)
		}
		dec.Continue(api.Continue)
	}()
	return api.Running
}

// checkRequest is what the provider is told: the request's headers, the peers.
func (f *filter) checkRequest(h api.RequestHeaderMap) *extauthz.Request {
	r := &extauthz.Request{Method: h.Method(), Path: h.Path(), Host: h.Host(), Scheme: "http", Protocol: "HTTP/1.1"}
	if s := h.Scheme(); s != "" {
		r.Scheme = s
	}
	h.Range(func(k, v string) bool {
		if !strings.HasPrefix(k, ":") {
			r.Headers = append(r.Headers, [2]string{k, v})
		}
		return true
	})
	r.ID = r.Header("x-request-id")
	si := f.cb.StreamInfo()
	r.SourceAddress, r.DestinationAddress = si.DownstreamRemoteAddress(), si.DownstreamLocalAddress()
	if p := principal(si); p != "" {
		r.SourcePrincipal = "spiffe://" + p
	}
	return r
}

// grpcStatusOf is the grpc-status Envoy sends a gRPC client for an HTTP status.
func grpcStatusOf(status int) int64 {
	switch status {
	case 400:
		return 13
	case 401:
		return 16
	case 403:
		return 7
	case 404:
		return 12
	case 429, 502, 503, 504:
		return 14
	}
	return 2
}

// OnDestroy ends a running ext_authz check.
func (f *filter) OnDestroy(api.DestroyReason) {
	if f.cancel != nil {
		f.cancel()
	}
}
