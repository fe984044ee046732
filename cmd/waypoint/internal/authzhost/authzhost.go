// Package authzhost runs the goambient.authz filter (filters/authz) through the fake Envoy host of filters/envoytest, the way the embedded waypoint's Envoy would run it.
package authzhost

import (
	"log/slog"
	"net/http"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/goambient/goambient/filters/authz"
	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/envoytest"
)

// Host runs filters/authz as Envoy does: configs parsed and merged once, requests run through
// the filter. The parsed configs are opaque (any). It is safe for concurrent use.
type Host struct {
	h *envoytest.Host
	p envoytest.Plugin
}

// New returns the Host; log receives the filter's logs.
func New(log *slog.Logger) *Host {
	return &Host{
		h: envoytest.NewHost(log),
		p: envoytest.Plugin{Name: authzconfig.PluginName, Factory: authz.Factory, Parser: authz.Parser{}},
	}
}

// Parse parses a plugin_config (ECDS); an error means Envoy would reject the config.
func (h *Host) Parse(a *anypb.Any) (any, error) { return h.h.Parse(h.p, a) }

// ParseRoute parses a per-route config (typed_per_filter_config).
func (h *Host) ParseRoute(a *anypb.Any) (any, error) { return h.h.ParseRoute(h.p, a) }

// Merge merges a route's config (nil: none) into the filter's, as Envoy does per route.
func (h *Host) Merge(filter, route any) any { return h.h.Merge(h.p, filter, route) }

// Do runs req through the filter with a merged config.
func (h *Host) Do(merged any, req *http.Request, s envoytest.Stream) envoytest.Response {
	return h.h.Do(h.p, merged, req, s)
}
