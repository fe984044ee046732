// Package istiooracle holds tests that check the waypoint's routing translation and the routing and egress objects' validation against istiod's own code (istio.io/istio's pilot route translation and validation webhook), which only tests import.
package istiooracle
