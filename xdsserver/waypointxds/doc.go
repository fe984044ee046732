// Package waypointxds translates the mesh model into the Envoy xDS resources of each waypoint (Istio's connect_terminate → main_internal → connect_originate shape, with the goambient.authz Go filter configured over ECDS).
package waypointxds
