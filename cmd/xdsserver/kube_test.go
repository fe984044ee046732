package main

import (
	"flag"
	"io"
	"testing"
)

// TestWaypointByHostname: in Kubernetes mode waypoints are referred to by hostname, as istiod
// does, unless --waypoint-hostname=false; from folders by VIP unless --waypoint-hostname.
func TestWaypointByHostname(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		kubernetes bool
		want       bool
	}{
		{nil, true, true},
		{nil, false, false},
		{[]string{"--waypoint-hostname=false"}, true, false},
		{[]string{"--waypoint-hostname"}, false, true},
	} {
		fs := flag.NewFlagSet("xdsserver", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		v := fs.Bool("waypoint-hostname", false, "")
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		if got := waypointByHostname(fs, *v, tc.kubernetes); got != tc.want {
			t.Errorf("%v, kubernetes %v: hostname %v, want %v", tc.args, tc.kubernetes, got, tc.want)
		}
	}
}
