package main

import (
	"errors"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/source/files"
	"github.com/goambient/goambient/xdsserver/waypointxds"
)

// TestWaypointPusherKeepsLastGood: a waypoint whose new resources fail validation is served
// its last good ones, or nothing when it never had good ones.
func TestWaypointPusherKeepsLastGood(t *testing.T) {
	m, err := files.New(files.Options{Paths: []string{filepath.Join("..", "..", "manifests", "examples", "handson")}, Model: model.DefaultConfig()}).Load()
	if err != nil {
		t.Fatal(err)
	}
	var served *waypointxds.Resources
	broken := false
	p := &waypointPusher{
		log:   slog.New(slog.DiscardHandler),
		serve: func(r *waypointxds.Resources) { served = r },
		validate: func(w *waypointxds.WaypointResources) error {
			if broken {
				return errors.New("broken")
			}
			return waypointxds.ValidateWaypoint(w)
		},
		good: map[string]*waypointxds.WaypointResources{},
	}
	broken = true
	p.push(m)
	if _, ok := served.Waypoints["handson/handson"]; ok {
		t.Fatal("invalid resources without a last good version were served")
	}
	broken = false
	p.push(m)
	first := served.Waypoints["handson/handson"]
	if first == nil {
		t.Fatal("valid resources were not served")
	}
	broken = true
	p.push(m)
	if served.Waypoints["handson/handson"] != first {
		t.Error("invalid resources replaced the last good ones")
	}
}
