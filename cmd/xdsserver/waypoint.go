package main

import (
	"log/slog"

	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/server"
	"github.com/goambient/goambient/xdsserver/waypointxds"
)

// waypointPusher translates the waypoints of each mesh and serves them. A waypoint whose new
// resources fail validation keeps its last good ones (or gets none, if it never had any):
// Envoy would reject them, and a rejected listener update leaves it with stale config anyway.
type waypointPusher struct {
	log      *slog.Logger
	serve    func(*waypointxds.Resources)               // the server's SetWaypoints
	validate func(*waypointxds.WaypointResources) error // waypointxds.ValidateWaypoint
	opts     waypointxds.Options
	good     map[string]*waypointxds.WaypointResources // last resources that passed validation
}

func newWaypointPusher(log *slog.Logger, srv *server.Server) *waypointPusher {
	return &waypointPusher{log: log, serve: srv.SetWaypoints, validate: waypointxds.ValidateWaypoint,
		good: map[string]*waypointxds.WaypointResources{}}
}

// push translates m's waypoints and serves them. SDS secrets are referenced by name only
// (default, ROOTCA): a private key is never sent over the plaintext xDS port; the TLS listener
// adds them for each authenticated waypoint (secure.go, server.RegisterSecure).
func (p *waypointPusher) push(m *model.Mesh) {
	r := waypointxds.Translate(m, p.opts)
	for _, w := range r.Warnings {
		p.log.Info("waypoint translation warning", "warning", w.Error())
	}
	good := map[string]*waypointxds.WaypointResources{}
	for key, w := range r.Waypoints {
		if err := p.validate(w); err != nil {
			p.log.Error("waypoint resources are invalid: keeping the last good ones", "waypoint", key, "error", err.Error())
			if last, ok := p.good[key]; ok {
				r.Waypoints[key], good[key] = last, last
			} else {
				delete(r.Waypoints, key)
			}
			continue
		}
		good[key] = w
	}
	p.good = good
	p.serve(r)
	p.log.Info("waypoints pushed", "waypoints", len(r.Waypoints), "warnings", len(r.Warnings))
}
