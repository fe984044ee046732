// Package authzhost runs the goambient.authz filter (filters/authz) through the fake Envoy host of filters/envoytest, as the embedded waypoint's filterhost.Host.
package authzhost

import (
	"log/slog"
	"net/http"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/goambient/goambient/cmd/waypoint/internal/filterhost"
	"github.com/goambient/goambient/filters/authz"
	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/envoytest"
)

// New returns the Host that runs filters/authz; log receives the filter's logs.
func New(log *slog.Logger) filterhost.Host {
	h := envoytest.NewHost(log)
	p := envoytest.Plugin{Name: authzconfig.PluginName, Factory: authz.Factory, Parser: authz.Parser{}}
	return newAdapter(p, h.Parse, h.ParseRoute, h.Merge, h.Do, h)
}

// adapter binds the host's methods whatever the concrete types of their parsed configs are.
type adapter[P, C, R, M, D any] struct {
	p          P
	parse      func(P, *anypb.Any) (C, error)
	parseRoute func(P, *anypb.Any) (R, error)
	merge      func(P, C, R) M
	do         func(P, D, *http.Request, envoytest.Stream) envoytest.Response
	host       *envoytest.Host
}

func newAdapter[P, C, R, M, D any](p P, parse func(P, *anypb.Any) (C, error), parseRoute func(P, *anypb.Any) (R, error),
	merge func(P, C, R) M, do func(P, D, *http.Request, envoytest.Stream) envoytest.Response, h *envoytest.Host) *adapter[P, C, R, M, D] {
	return &adapter[P, C, R, M, D]{p: p, parse: parse, parseRoute: parseRoute, merge: merge, do: do, host: h}
}

func (a *adapter[P, C, R, M, D]) Parse(x *anypb.Any) (filterhost.Config, error) {
	c, err := a.parse(a.p, x)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (a *adapter[P, C, R, M, D]) ParseRoute(x *anypb.Any) (filterhost.RouteConfig, error) {
	r, err := a.parseRoute(a.p, x)
	if err != nil {
		return nil, err
	}
	return r, nil
}

func (a *adapter[P, C, R, M, D]) Merge(c filterhost.Config, r filterhost.RouteConfig) filterhost.Merged {
	var rc R
	if r != nil {
		rc = r.(R)
	}
	return a.merge(a.p, c.(C), rc)
}

func (a *adapter[P, C, R, M, D]) Do(m filterhost.Merged, req *http.Request, s filterhost.Stream) filterhost.Result {
	resp := a.do(a.p, any(m).(D), req, envoytest.Stream{
		FilterState: s.FilterState, DownstreamRemoteAddress: s.DownstreamRemoteAddress,
		DownstreamLocalAddress: s.DownstreamLocalAddress, PeerURISANs: s.PeerURISANs,
	})
	out := filterhost.Result{Continued: resp.Continued, RequestHeaders: resp.RequestHeaders}
	if lr := resp.LocalReply; lr != nil {
		out.LocalReply = &filterhost.LocalReply{Status: lr.Status, Body: lr.Body, Headers: lr.Headers, GRPCStatus: lr.GRPCStatus, Details: lr.Details}
	}
	return out
}
