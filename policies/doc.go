// Package policies loads, validates, compiles and evaluates Istio AuthorizationPolicy and
// PeerAuthentication objects, for the waypoint (L7) and for ztunnel (the L4 projection).
package policies
