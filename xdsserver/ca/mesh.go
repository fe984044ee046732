package ca

import (
	"sync/atomic"

	"github.com/goambient/goambient/xdsserver/model"
)

// Mesh answers what the authorization of a request needs to know about the current mesh.
type Mesh interface {
	// OnNode reports whether an ambient workload of service account ns/sa runs on node.
	OnNode(node, ns, sa string) bool
	// WaypointServiceAccount returns the service account of waypoint (or ingress Gateway)
	// ns/name, if it exists.
	WaypointServiceAccount(ns, name string) (string, bool)
}

// MeshIndex is a Mesh set from each mesh push (Set). Until the first Set it knows nothing,
// and every impersonation is refused.
type MeshIndex struct {
	cur atomic.Pointer[meshIndex]
}

type saNode struct{ node, ns, sa string }

type meshIndex struct {
	onNode    map[saNode]bool
	waypoints map[[2]string]string
}

// Set replaces what the index knows with m.
func (x *MeshIndex) Set(m *model.Mesh) {
	i := &meshIndex{onNode: map[saNode]bool{}, waypoints: map[[2]string]string{}}
	for _, w := range m.Workloads {
		if w.Ambient && w.Node != "" && w.ServiceAccount != "" {
			i.onNode[saNode{w.Node, w.Namespace, w.ServiceAccount}] = true
		}
	}
	for _, wp := range m.Waypoints {
		if wp.ServiceAccount != "" {
			i.waypoints[[2]string{wp.Namespace, wp.Name}] = wp.ServiceAccount
		}
	}
	if m.Ingress != nil { // ingress Gateways authenticate and get their SVID (<gateway>-istio) as waypoints do
		for _, g := range m.Ingress.Gateways {
			i.waypoints[[2]string{g.Namespace, g.Name}] = g.ServiceAccount
		}
	}
	x.cur.Store(i)
}

// OnNode implements Mesh.
func (x *MeshIndex) OnNode(node, ns, sa string) bool {
	i := x.cur.Load()
	return i != nil && i.onNode[saNode{node, ns, sa}]
}

// WaypointServiceAccount implements Mesh.
func (x *MeshIndex) WaypointServiceAccount(ns, name string) (string, bool) {
	i := x.cur.Load()
	if i == nil {
		return "", false
	}
	sa, ok := i.waypoints[[2]string{ns, name}]
	return sa, ok
}
